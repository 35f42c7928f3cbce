"""bench/gpu_calibrate.py and bench/cuda_build.sh, as far as a machine without a GPU can run them.

The calibration runs for real on the CPU build (llama.cpp dry runs on SmolLM2 and on a real-scale
Llama-3.1-8B header); the per-device split is checked on llama.cpp's CUDA buffer lines as it prints
them; the CUDA build recipe is checked through its --dry-run, against a stand-in nvcc (the hardware boundary).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fitchat.model.estimate import DEFAULT_SETTINGS, estimate
from fitchat.model.gguf_spec import read_spec
from fitchat.model.hardware import probe_llama_build
from fitchat.model.measure import device_bytes, measurement_from_log

ROOT = Path(__file__).resolve().parent.parent
CALIBRATE = ROOT / "bench" / "gpu_calibrate.py"
CUDA_BUILD = ROOT / "bench" / "cuda_build.sh"
MiB = 1024 * 1024


def load_calibrate():
    spec = importlib.util.spec_from_file_location("gpu_calibrate", CALIBRATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_calibrate", module)  # its dataclasses look their module up there
    spec.loader.exec_module(sys.modules["gpu_calibrate"])
    return sys.modules["gpu_calibrate"]


def test_quick_run_measures_and_says_when_there_is_no_gpu(smollm2_variants) -> None:
    proc = subprocess.run([sys.executable, str(CALIBRATE), "--quick", "--json"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    has_gpu = any(d.kind in ("gpu", "igpu") for d in probe_llama_build().devices)
    if not has_gpu:
        assert "No GPU device found" in proc.stderr
        assert out["gpus"] == []
        assert [(r["model"], r["plan"], r["context"]) for r in out["results"]] == [("SmolLM2-135M Q4_K_M", "cpu", 2048)]
    result = out["results"][0]
    rows = {r["figure"]: r for r in result["rows"]}
    assert set(rows) >= {"KV cache", "output", "sum"}
    # SmolLM2 at 2048 tokens: 30 layers x 3 KV heads x 64 x (K + V) x 2 bytes x 2048 cells = 45 MiB, as llama.cpp says.
    assert rows["KV cache"]["measured"] == 45 * MiB == rows["KV cache"]["estimated"]
    assert all(r["within"] for r in result["rows"]), result["rows"]
    assert out["worst"]["of_tolerance"] <= 1.0
    assert "CPU" in result["devices"] and result["devices"]["CPU"]["compute"] > 0


# llama.cpp's lines for Llama-3.1-8B with 16 of 33 layers on an H200 (a dry run: model and KV buffers say 0).
CUDA_LOG = """\
load_tensors:        CUDA0 model buffer size =     0.00 MiB
load_tensors:   CPU_Mapped model buffer size =     0.00 MiB
llama_kv_cache:        CUDA0 KV buffer size =     0.00 MiB
llama_kv_cache:          CPU KV buffer size =     0.00 MiB
llama_kv_cache: size =  512.00 MiB (  4096 cells,  32 layers,  1/1 seqs), K (f16):  256.00 MiB, V (f16):  256.00 MiB
llama_context:  CUDA_Host  output buffer size =     0.49 MiB
llama_context:      CUDA0 compute buffer size =   669.48 MiB
llama_context:  CUDA_Host compute buffer size =    16.01 MiB
"""


def test_cuda_buffer_lines_are_split_per_device(smollm2: Path) -> None:
    calibrate = load_calibrate()
    meas = measurement_from_log(CUDA_LOG, mode="dry_run", context=4096, settings=DEFAULT_SETTINGS, gpu_layers=16)
    devices = device_bytes(meas)
    assert set(devices) == {"CUDA0", "CPU_Mapped", "CPU", "CUDA_Host"}
    assert devices["CUDA0"]["compute"] == round(669.48 * MiB) and devices["CUDA_Host"]["output"] == round(0.49 * MiB)
    assert meas.kv_bytes == 512 * MiB
    assert [d for d in devices if calibrate.is_gpu_buffer(d)] == ["CUDA0"]
    est = estimate(read_spec(smollm2), 4096, DEFAULT_SETTINGS, gpu_layers=16)
    rows = {name: (e, m) for name, e, m in calibrate.rows_for(est, meas)}
    assert rows["GPU compute"] == (est.gpu_compute_bytes, round(669.48 * MiB))
    assert rows["host compute"] == (est.compute_bytes - est.gpu_compute_bytes, round(16.01 * MiB))
    assert rows["sum"][1] == meas.kv_bytes + meas.compute_bytes + meas.output_bytes


def test_real_scale_headers_are_sparse_and_dry_run(tmp_path: Path) -> None:
    calibrate = load_calibrate()
    subjects = {s.name: s for s in calibrate.real_scale_models(tmp_path)}
    subject = subjects["Llama-3.1-8B (header)"]
    spec = read_spec(subject.path)
    assert (spec.n_layers, spec.n_embd, spec.n_head, spec.n_head_kv, spec.vocab_size) == (32, 4096, 32, 8, 128256)
    assert subject.path.stat().st_size > 4e9 and subject.path.stat().st_blocks * 512 < 64 * MiB
    [meas] = calibrate.run_subject(subject, [(2048, DEFAULT_SETTINGS)], calibrate.PlanCase("cpu", 0))
    # 32 layers x 8 KV heads x 128 x (K + V) x 2 bytes x 2048 cells
    assert meas.kv_bytes == 256 * MiB == estimate(spec, 2048).kv_bytes
    moe = read_spec(subjects["Qwen3-30B-A3B (header)"].path)
    assert [p.name for p in calibrate.plans_for(moe, gpu=True)] == ["cpu", "full", "split", "moe-ram"]


def test_plans_without_a_gpu_and_with_one(smollm2: Path) -> None:
    calibrate = load_calibrate()
    spec = read_spec(smollm2)
    assert [p.name for p in calibrate.plans_for(spec, gpu=False)] == ["cpu"]
    plans = {p.name: p for p in calibrate.plans_for(spec, gpu=True)}
    assert plans["full"].gpu_layers == spec.n_layers + 1 and 0 < plans["split"].gpu_layers < spec.n_layers
    assert "moe-ram" not in plans  # a dense model


# --------------------------------------------------------------------------- the CUDA build recipe


def fake_toolkit(root: Path, *, cublas: bool) -> Path:
    """A CUDA 13.0 toolkit folder whose nvcc only answers --version (the build itself is not run)."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    if cublas:
        (root / "include" / "cublas_v2.h").write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    return root


def cuda_build(*args: str, toolkit: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable, CUDA_HOME=str(toolkit),
               PATH=f"{toolkit / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", str(CUDA_BUILD), *args], capture_output=True, text=True, timeout=60, env=env)


def test_cuda_build_dry_run_prints_the_recipe(tmp_path: Path) -> None:
    import llama_cpp

    out = tmp_path / "out"
    proc = cuda_build("--dry-run", "--out", str(out), "--jobs", "16", toolkit=fake_toolkit(tmp_path / "cuda", cublas=True))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "CUDA 13.0" in text
    assert f"llama-cpp-python=={llama_cpp.__version__}" in text  # the same llama.cpp as the installed build
    cmake = next(ln for ln in text.splitlines() if ln.startswith("+ cmake -S"))
    for flag in ("-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF", "-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90",
                 "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_NATIVE=OFF"):
        assert flag in cmake, flag
    assert "nvidia-cublas" not in text  # the toolkit has cuBLAS
    assert "--target llama -j 16" in text
    assert f"LLAMA_CPP_LIB_PATH={out}/bin python bench/gpu_calibrate.py" in text
    assert "dry run: nothing was built" in text
    assert not out.exists() and not Path(f"{out}.work").exists()


def test_cuda_build_takes_cublas_from_pip_when_the_toolkit_lacks_it(tmp_path: Path) -> None:
    proc = cuda_build("--dry-run", "--out", str(tmp_path / "out"), toolkit=fake_toolkit(tmp_path / "cuda", cublas=False))
    assert proc.returncode == 0, proc.stderr
    assert "cuBLAS: not in" in proc.stdout
    assert "pip install --quiet --no-deps --target" in proc.stdout and "nvidia-cublas==13.\\*" in proc.stdout
    assert "-DCUDA_cublas_LIBRARY=" in proc.stdout


def test_cuda_build_refuses_bad_options_in_one_line(tmp_path: Path) -> None:
    toolkit = fake_toolkit(tmp_path / "cuda", cublas=True)
    for args in (["--jobs", "many"], ["--frobnicate"], ["--arch", "9 0"]):
        proc = cuda_build("--dry-run", *args, toolkit=toolkit)
        assert proc.returncode == 2, args
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("cuda_build.sh: "), proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_cuda_build_is_shellcheck_clean() -> None:
    lint = subprocess.run(["shellcheck", str(CUDA_BUILD)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
