"""Hardware detection: fakes only at the NVML and sysctl boundaries; CPU, RAM and llama.cpp are real."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from fitchat.model.hardware import (
    CUDA_REBUILD,
    METAL_REBUILD,
    BackendDevice,
    GiB,
    LlamaBuild,
    detect_hardware,
    parse_isa,
    probe_llama_build,
)
from tests.fakes import FakeGpu, FakeNvml, NoDriverNvml, fake_sysctl


@pytest.fixture(scope="module")
def real_build() -> LlamaBuild:
    return probe_llama_build()


def cuda_build(free: int, total: int) -> LlamaBuild:
    cpu = BackendDevice("CPU", "CPU", "cpu", 8 * GiB, 8 * GiB)
    gpu = BackendDevice("CUDA0", "NVIDIA GeForce RTX 4060", "gpu", free, total)
    return LlamaBuild("0.3.36", True, (gpu, cpu), "CUDA : ARCHS = 890 | AVX2 = 1 |")


def test_one_gpu_8gib_6_free_with_cpu_only_build_warns_with_rebuild_command(real_build: LlamaBuild) -> None:
    nvml = FakeNvml([FakeGpu("NVIDIA GeForce RTX 4060", 8 * GiB, 6 * GiB, (8, 9))])
    hw = detect_hardware(nvml=nvml, build=real_build, system="Linux", machine="x86_64")
    assert [(g.index, g.name, g.total_bytes, g.free_bytes) for g in hw.gpus] == [
        (0, "NVIDIA GeForce RTX 4060", 8 * GiB, 6 * GiB)
    ]
    assert hw.gpus[0].driver_version == "550.54.15"
    assert hw.gpus[0].compute_capability == "8.9"
    assert hw.backend == "cpu"
    assert len(hw.warnings) == 1 and CUDA_REBUILD in hw.warnings[0]
    assert "RTX 4060" in hw.warnings[0]
    assert nvml.shutdowns == 1


def test_one_gpu_with_cuda_build_uses_cuda_and_offers_free_vram() -> None:
    nvml = FakeNvml([FakeGpu("NVIDIA GeForce RTX 4060", 8 * GiB, 6 * GiB, (8, 9))])
    hw = detect_hardware(nvml=nvml, build=cuda_build(6 * GiB, 8 * GiB), system="Linux", machine="x86_64")
    assert hw.backend == "cuda"
    assert hw.warnings == ()
    assert hw.gpu_budgets() == (6 * GiB,)


def test_two_different_gpus() -> None:
    nvml = FakeNvml(
        [FakeGpu("NVIDIA RTX A6000", 48 * GiB, 47 * GiB, (8, 6)), FakeGpu("NVIDIA GeForce RTX 3060", 12 * GiB, 11 * GiB, (8, 6))]
    )
    hw = detect_hardware(nvml=nvml, build=cuda_build(47 * GiB, 48 * GiB), system="Linux", machine="x86_64")
    assert [g.name for g in hw.gpus] == ["NVIDIA RTX A6000", "NVIDIA GeForce RTX 3060"]
    assert [g.index for g in hw.gpus] == [0, 1]
    assert hw.gpu_budgets() == (47 * GiB, 11 * GiB)


def test_driver_missing_gives_empty_list_and_reason(real_build: LlamaBuild) -> None:
    hw = detect_hardware(nvml=NoDriverNvml(), build=real_build, system="Linux", machine="x86_64")
    assert hw.gpus == ()
    assert hw.gpu_reason and "no NVIDIA driver" in hw.gpu_reason
    assert hw.backend == "cpu"
    assert hw.warnings == ()


def test_zero_gpus_reported_by_driver(real_build: LlamaBuild) -> None:
    hw = detect_hardware(nvml=FakeNvml(), build=real_build, system="Linux", machine="x86_64")
    assert hw.gpus == () and hw.gpu_reason == "the NVIDIA driver reports no GPUs"


@pytest.mark.parametrize(
    ("memsize_gib", "wired_mb", "expected_bytes", "source"),
    [
        (16, None, 16 * GiB * 2 // 3, "default"),
        (64, None, 64 * GiB * 3 // 4, "default"),
        (16, "12288", 12288 * 1024 * 1024, "iogpu.wired_limit_mb"),
        (64, "57344", 57344 * 1024 * 1024, "iogpu.wired_limit_mb"),
        (64, "0", 64 * GiB * 3 // 4, "default"),
    ],
)
def test_apple_silicon_working_set(
    real_build: LlamaBuild, memsize_gib: int, wired_mb: str | None, expected_bytes: int, source: str
) -> None:
    values = {"hw.memsize": str(memsize_gib * GiB)}
    if wired_mb is not None:
        values["iogpu.wired_limit_mb"] = wired_mb
    hw = detect_hardware(nvml=NoDriverNvml(), sysctl=fake_sysctl(values), build=real_build, system="Darwin", machine="arm64")
    assert hw.metal is not None
    assert hw.metal.unified_memory_bytes == memsize_gib * GiB
    assert hw.metal.working_set_bytes == expected_bytes
    assert hw.metal.working_set_source == source
    # This build has no Metal: the verdict is the CPU, with the rebuild command.
    assert hw.backend == "cpu"
    assert any(METAL_REBUILD in w for w in hw.warnings)


def test_apple_silicon_with_metal_build_asks_the_metal_device() -> None:
    metal = BackendDevice("Metal", "Apple M3 Max", "gpu", 40 * GiB, 48 * GiB)
    build = LlamaBuild("0.3.36", True, (metal,), "METAL = 1 | NEON = 1 | ARM_FMA = 1 |")
    values = {"hw.memsize": str(64 * GiB), "iogpu.wired_limit_mb": "0"}
    hw = detect_hardware(nvml=NoDriverNvml(), sysctl=fake_sysctl(values), build=build, system="Darwin", machine="arm64")
    assert hw.backend == "metal"
    assert hw.metal is not None and hw.metal.working_set_bytes == 48 * GiB
    assert hw.metal.working_set_source == "llama.cpp"
    assert hw.warnings == ()
    assert hw.gpu_budgets() == (48 * GiB,)
    assert hw.cpu.isa[:2] == ("NEON", "ARM_FMA")


def test_real_cpu_and_ram_match_psutil(real_build: LlamaBuild) -> None:
    hw = detect_hardware(build=real_build)
    assert hw.cpu.physical_cores == psutil.cpu_count(logical=False)
    assert hw.cpu.logical_cores == psutil.cpu_count(logical=True)
    assert hw.ram.total_bytes == psutil.virtual_memory().total
    assert abs(hw.ram.available_bytes - psutil.virtual_memory().available) <= 0.02 * hw.ram.total_bytes


def test_real_llama_build_is_cpu_only_here(real_build: LlamaBuild) -> None:
    assert real_build.error is None
    assert real_build.version.count(".") >= 2
    assert real_build.gpu_offload is False
    assert [d.kind for d in real_build.devices] == ["cpu"]
    assert real_build.devices[0].total_bytes > 0
    assert "AVX" in real_build.system_info or "NEON" in real_build.system_info


def test_parse_isa_reads_only_enabled_flags() -> None:
    info = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 0 | NEON = 0 |"
    assert parse_isa(info) == ("AVX", "AVX2", "FMA", "F16C", "SSE3", "SSSE3")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fitchat", *args], capture_output=True, text=True, timeout=120)


def test_hw_json_contract_on_this_machine() -> None:
    proc = run_cli("hw", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"backend", "gpus", "cpu", "ram", "llama_cpp", "warnings"} <= set(data)
    assert data["backend"] == "cpu"
    assert data["gpus"] == []
    assert {"physical_cores", "logical_cores"} <= set(data["cpu"])
    assert data["cpu"]["physical_cores"] == psutil.cpu_count(logical=False)
    assert {"total_bytes", "available_bytes"} <= set(data["ram"])
    assert abs(data["ram"]["total_bytes"] - psutil.virtual_memory().total) <= 0.02 * psutil.virtual_memory().total
    assert {"version", "gpu_offload", "devices"} <= set(data["llama_cpp"])
    assert data["llama_cpp"]["gpu_offload"] is False
    assert isinstance(data["warnings"], list)


def test_hw_json_gpu_entry_keys() -> None:
    nvml = FakeNvml([FakeGpu("NVIDIA H100", 80 * GiB, 79 * GiB, (9, 0))])
    data = detect_hardware(nvml=nvml, build=cuda_build(79 * GiB, 80 * GiB)).to_json()
    json.dumps(data)
    assert {"index", "name", "total_bytes", "free_bytes"} <= set(data["gpus"][0])
    assert data["backend"] == "cuda"


def test_hw_readable_summary() -> None:
    proc = run_cli("hw")
    assert proc.returncode == 0, proc.stderr
    assert "Backend:   cpu" in proc.stdout
    assert "RAM:" in proc.stdout and "llama-cpp-python" in proc.stdout


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys, fitchat.cli.main\n"
        "fitchat.cli.main.build_parser()\n"
        "heavy = [m for m in ('llama_cpp', 'textual', 'huggingface_hub', 'gguf') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_unknown_command_is_one_line_error() -> None:
    proc = run_cli("frobnicate")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "invalid choice" in proc.stderr
