"""Plans, verdicts and the recommendation. GPUs are faked only at the NVML and sysctl boundaries (and the
llama.cpp build that would drive them), so any machine can run these; the models and estimates are real."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fitchat.errors import FitchatError
from fitchat.hub.remote import fit_remote_repo
from fitchat.model.estimate import DEFAULT_SETTINGS, LoadSettings, estimate
from fitchat.model.gguf_spec import ModelSpec, read_spec
from fitchat.model.hardware import BackendDevice, HardwareInfo, LlamaBuild, detect_hardware
from fitchat.model.plan import (
    Plan,
    choose,
    default_gpu_margin,
    default_ram_margin,
    plan_hardware,
    plan_model,
    plan_variants,
)
from tests.fakes import MAC_16G, FakeGpu, FakeNvml, NoDriverNvml, fake_sysctl
from tests.hubserver import SMOLLM2_REPO, smollm2_files

MiB = 1024**2
GiB = 1024**3
CTX = 8192


CUDA_BUILD = LlamaBuild(
    "0.3.36", True, (BackendDevice("CUDA0", "RTX", "gpu", 8 * GiB, 8 * GiB),), "CUDA : ARCHS = 890 | AVX2 = 1 | FMA = 1 |"
)
CPU_BUILD = LlamaBuild("0.3.36", False, (BackendDevice("CPU", "CPU", "cpu", 16 * GiB, 16 * GiB),), "CPU : AVX2 = 1 | FMA = 1 |")


def gpu_machine(*gpus: tuple[int, int], ram: int | None = 16 * GiB) -> HardwareInfo:
    hw = detect_hardware(nvml=FakeNvml([FakeGpu(total=total, free=free) for free, total in gpus]), build=CUDA_BUILD)
    return plan_hardware(hw, ram=ram)


def cpu_machine(ram: int = 16 * GiB) -> HardwareInfo:
    return plan_hardware(detect_hardware(nvml=NoDriverNvml(), build=CPU_BUILD), ram=ram)


@pytest.fixture(scope="module")
def specs(smollm2_variants: dict[str, Path]) -> dict[str, ModelSpec]:
    return {q: read_spec(p) for q, p in smollm2_variants.items()}


@pytest.fixture(scope="module")
def gemma(gemma3: Path) -> ModelSpec:
    return read_spec(gemma3)


def full_need(spec: ModelSpec, ctx: int = CTX, settings: LoadSettings = DEFAULT_SETTINGS) -> int:
    """GPU bytes of a full offload, as the planner computes them."""
    return estimate(spec, ctx, settings, gpu_layers=spec.n_layers + 1, cpu_isa=("AVX2", "FMA")).gpu_bytes


def recommended(plans: list[Plan]) -> Plan:
    chosen = [p for p in plans if p.recommended]
    assert len(chosen) == 1
    return chosen[0]


# --------------------------------------------------------------------------- margins


def test_default_margins() -> None:
    assert default_gpu_margin(4 * GiB) == 512 * MiB  # small card: the floor, not a quarter of it
    assert default_gpu_margin(8 * GiB) == 8 * GiB // 10
    assert default_gpu_margin(12 * GiB) == 1 * GiB  # large cards: llama.cpp --fit's 1 GiB
    assert default_gpu_margin(80 * GiB) == 1 * GiB
    assert default_ram_margin(8 * GiB) == 512 * MiB
    assert default_ram_margin(32 * GiB) == 32 * GiB // 20
    assert default_ram_margin(256 * GiB) == 2 * GiB


def test_margin_is_the_boundary(specs: dict[str, ModelSpec]) -> None:
    spec = specs["Q8_0"]
    need = full_need(spec)
    total = 4 * GiB
    margin = default_gpu_margin(total)
    assert plan_model(spec, gpu_machine((need + margin, total)), CTX).verdict == "full_gpu"
    assert plan_model(spec, gpu_machine((need + margin - MiB, total)), CTX).verdict == "partial_gpu"
    # A margin given by the caller replaces the default.
    assert plan_model(spec, gpu_machine((need + MiB, total)), CTX, margin_bytes=MiB).verdict == "full_gpu"


# --------------------------------------------------------------------------- verdicts and the recommendation


def test_everything_fits_the_largest_preferred_wins(specs: dict[str, ModelSpec]) -> None:
    plans = plan_variants(specs.values(), gpu_machine((8 * GiB, 8 * GiB)), CTX)
    assert [p.spec.quant for p in plans] == ["Q8_0", "Q5_K_M", "Q4_K_M", "Q4_1"]  # largest first
    assert {p.verdict for p in plans} == {"full_gpu"}
    assert all(p.gpu_layers == p.n_layers == 31 for p in plans)
    best = recommended(plans)
    assert best.spec.quant == "Q8_0"
    assert best.reason.startswith("Q8_0: all 31 layers on GPU at 8k context") and "to spare" in best.reason
    assert all(not p.levers for p in plans)


def test_close_call_names_the_tradeoff(specs: dict[str, ModelSpec]) -> None:
    q8, q5 = full_need(specs["Q8_0"]), full_need(specs["Q5_K_M"])
    total = 4 * GiB
    hw = gpu_machine((default_gpu_margin(total) + (q8 + q5) // 2, total))
    plans = plan_variants(specs.values(), hw, CTX)
    by = {p.spec.quant: p for p in plans}
    assert by["Q8_0"].verdict == "partial_gpu" and by["Q5_K_M"].verdict == "full_gpu"
    best = recommended(plans)
    assert best.spec.quant == "Q5_K_M"
    assert "Q8_0 would need" in best.reason
    assert "Q8_0 fits fully at 4k context but not at 8k" in best.reason
    # Q8_0 is told which settings would lift it.
    assert any("--ctx 4096" in lever for lever in by["Q8_0"].levers)
    assert any("--kv-type q8_0" in lever for lever in by["Q8_0"].levers)


def test_best_partial_offload_when_nothing_fits_fully(specs: dict[str, ModelSpec]) -> None:
    total = 4 * GiB
    hw = gpu_machine((default_gpu_margin(total) + full_need(specs["Q4_1"]) // 2, total))
    plans = plan_variants(specs.values(), hw, CTX)
    assert {p.verdict for p in plans} == {"partial_gpu"}
    best = recommended(plans)
    share = max(p.gpu_layers / p.n_layers for p in plans)
    assert best.gpu_layers / best.n_layers == share
    assert 1 <= best.gpu_layers < best.n_layers
    assert f"{best.gpu_layers} of 31 layers on GPU" in best.reason
    for p in plans:  # the partial estimate really fits the usable GPU memory
        assert p.estimate.gpu_bytes <= p.gpu_budget_bytes


def test_cpu_only_machine(specs: dict[str, ModelSpec]) -> None:
    plans = plan_variants(specs.values(), cpu_machine(16 * GiB), CTX)
    assert {p.verdict for p in plans} == {"cpu"} and all(p.gpu_layers == 0 for p in plans)
    best = recommended(plans)
    assert best.spec.quant == "Q8_0" and "runs on the CPU" in best.reason and "no usable GPU" in best.reason


def test_little_ram(specs: dict[str, ModelSpec]) -> None:
    q8 = estimate(specs["Q8_0"], CTX, cpu_isa=("AVX2",)).total_bytes
    q5 = estimate(specs["Q5_K_M"], CTX, cpu_isa=("AVX2",)).total_bytes
    ram = default_ram_margin(1 * GiB) + (q8 + q5) // 2
    plans = plan_variants(specs.values(), cpu_machine(ram), CTX)
    by = {p.spec.quant: p for p in plans}
    assert by["Q8_0"].verdict == "too_big"
    assert recommended(plans).spec.quant == "Q5_K_M"
    assert any("--ctx 4096" in lever for lever in by["Q8_0"].levers)


def test_nothing_fits_recommends_the_smallest(specs: dict[str, ModelSpec]) -> None:
    plans = plan_variants(specs.values(), cpu_machine(600 * MiB), 65536)
    assert {p.verdict for p in plans} == {"too_big"}
    best = recommended(plans)
    assert best.estimate.total_bytes == min(p.estimate.total_bytes for p in plans)
    assert best.reason.startswith(f"{best.spec.quant}: nothing fits")


def test_choose_prefers_offload_over_size(specs: dict[str, ModelSpec]) -> None:
    # Only the small Q4_1 fits fully: a full offload of a non-preferred quant beats partial ones.
    total = 4 * GiB
    q41, q4km = full_need(specs["Q4_1"]), full_need(specs["Q4_K_M"])
    hw = gpu_machine((default_gpu_margin(total) + (q41 + q4km) // 2, total))
    plans = plan_variants(specs.values(), hw, CTX)
    assert recommended(plans).spec.quant == "Q4_1"
    assert plans[choose(plans)].recommended


def test_gemma_levers_window_swa_and_kv(gemma: ModelSpec) -> None:
    total = 8 * GiB
    window = LoadSettings(swa_full=False)
    need_full, need_window = full_need(gemma, 32768), full_need(gemma, 32768, window)
    assert need_full - need_window > 400 * MiB  # the window cache saves most of the SWA layers' KV
    hw = gpu_machine((default_gpu_margin(total) + need_window + 10 * MiB, total))
    plan = plan_model(gemma, hw, 32768)
    assert plan.verdict == "partial_gpu"
    assert any("--swa-window" in lever and "fits fully on the GPU" in lever for lever in plan.levers)
    assert plan_model(gemma, hw, 32768, window).verdict == "full_gpu"


def test_two_gpus_hold_what_one_cannot(specs: dict[str, ModelSpec]) -> None:
    spec = specs["Q8_0"]
    need = full_need(spec)
    total = 4 * GiB
    margin = default_gpu_margin(total)
    half = margin + need // 2 + 10 * MiB
    assert plan_model(spec, gpu_machine((half, total)), CTX).verdict == "partial_gpu"
    e = estimate(spec, CTX, gpu_layers=31, cpu_isa=("AVX2",))
    two = gpu_machine((half + e.gpu_compute_bytes, total), (half + e.gpu_compute_bytes, total))
    assert plan_model(spec, two, CTX).verdict == "full_gpu"


def test_apple_silicon_working_set(specs: dict[str, ModelSpec]) -> None:
    metal = LlamaBuild(
        "0.3.36", True, (BackendDevice("Metal", "Apple M2", "gpu", 0, 0),), "Metal : EMBED_LIBRARY = 1 | NEON = 1 | DOTPROD = 1 |"
    )
    mac = detect_hardware(nvml=NoDriverNvml(), sysctl=fake_sysctl(MAC_16G), build=metal, system="Darwin", machine="arm64")
    hw = plan_hardware(mac, ram=12 * GiB)
    assert hw.backend == "metal"
    plans = plan_variants(specs.values(), hw, CTX)
    assert recommended(plans).verdict == "full_gpu"
    small = plan_hardware(hw, gpu_mem=full_need(specs["Q8_0"]) // 2 + default_gpu_margin(0))
    assert plan_model(specs["Q8_0"], small, CTX).verdict == "partial_gpu"


def test_plan_hardware_for_another_machine() -> None:
    here = detect_hardware(nvml=NoDriverNvml(), build=CPU_BUILD)
    gpu = plan_hardware(here, gpu_mem=8 * GiB, ram=32 * GiB)
    assert gpu.backend == "cuda" and gpu.gpu_budgets() == (8 * GiB,)
    assert (gpu.ram.total_bytes, gpu.ram.available_bytes) == (32 * GiB, 32 * GiB)
    assert plan_hardware(gpu, gpu_mem=0).backend == "cpu"
    from fitchat.errors import FitchatError

    with pytest.raises(FitchatError):
        plan_hardware(here, ram=0)


def test_plan_json_contract(specs: dict[str, ModelSpec]) -> None:
    plans = plan_variants(specs.values(), gpu_machine((8 * GiB, 8 * GiB)), 4096)
    for p in plans:
        j = p.to_json()
        assert {"file", "quant", "size_bytes", "n_layers", "weights_bytes", "kv_bytes", "compute_bytes", "total_bytes",
                "gpu_layers", "verdict", "recommended", "reason"} <= set(j)
        assert j["verdict"] in ("full_gpu", "partial_gpu", "cpu", "too_big")
        assert j["total_bytes"] == p.estimate.total_bytes


# --------------------------------------------------------------------------- a repo on the Hub


def test_fit_remote_repo(hub, smollm2_variants: dict[str, Path]) -> None:
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    plans = fit_remote_repo(SMOLLM2_REPO, cpu_machine(16 * GiB), 4096)
    assert sorted(p.spec.quant for p in plans) == ["Q4_1", "Q4_K_M", "Q5_K_M", "Q8_0"]
    assert recommended(plans).spec.quant == "Q8_0"
    assert all(p.spec.bytes_read <= 4 * MiB for p in plans)
    # No tensor data was fetched: only headers.
    assert hub.bytes_served() == sum(p.spec.bytes_read for p in plans) < 16 * MiB
    # The same plans as from the local files.
    local_specs = [read_spec(x) for x in smollm2_variants.values()]
    local = {p.spec.quant: p for p in plan_variants(local_specs, cpu_machine(16 * GiB), 4096)}
    for p in plans:
        assert p.estimate.total_bytes == local[p.spec.quant].estimate.total_bytes
    one = fit_remote_repo(SMOLLM2_REPO, cpu_machine(16 * GiB), 4096, quant="q5_k_m")
    assert [p.spec.quant for p in one] == ["Q5_K_M"] and one[0].recommended


def test_fit_remote_repo_reads_the_headers_at_once(hub, smollm2_variants: dict[str, Path]) -> None:
    """Over a slow link the variants' headers come in parallel: the same plans in a fraction of the time."""
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    hub.delay(0.4, route="cdn")
    timed: dict[int, tuple[float, list[tuple[str, int]]]] = {}
    for workers in (1, 4):
        start = time.perf_counter()
        plans = fit_remote_repo(SMOLLM2_REPO, cpu_machine(16 * GiB), 4096, max_workers=workers)
        timed[workers] = (time.perf_counter() - start, [(p.spec.quant, p.estimate.total_bytes) for p in plans])
    assert timed[1][1] == timed[4][1]
    assert timed[1][0] >= 4 * 0.4  # one range read per variant at least, one after another
    assert timed[4][0] < 0.6 * timed[1][0]


# --------------------------------------------------------------------------- devices and workers (fitchat.model.split)


def _workers(*budgets: int) -> tuple:
    from fitchat.model.hardware import RpcDevice

    return tuple(RpcDevice(f"10.0.0.{i + 2}:50052", f"RPC0[10.0.0.{i + 2}:50052]", b, b) for i, b in enumerate(budgets))


def test_every_plan_lists_its_devices_and_they_add_up(specs: dict[str, ModelSpec]) -> None:
    spec = specs["Q8_0"]
    cpu = plan_model(spec, cpu_machine(), CTX)
    assert [(d.name, d.layers) for d in cpu.devices] == [("CPU", cpu.n_layers)]
    assert cpu.devices[0].bytes == cpu.estimate.total_bytes
    need = full_need(spec)
    partial = plan_model(spec, gpu_machine((need // 2 + 512 * MiB, 4 * GiB)), CTX)  # 512 MiB margin
    assert partial.verdict == "partial_gpu"
    cpu_dev, gpu_dev = partial.devices
    assert (cpu_dev.name, gpu_dev.name) == ("CPU", "CUDA0")
    assert gpu_dev.layers == partial.gpu_layers and cpu_dev.layers + gpu_dev.layers == partial.n_layers
    assert gpu_dev.bytes == partial.estimate.gpu_bytes and cpu_dev.bytes == partial.estimate.cpu_bytes
    assert partial.to_json()["devices"][1] == {"name": "CUDA0", "layers": gpu_dev.layers, "bytes": gpu_dev.bytes}


def test_split_over_workers_in_proportion_to_their_memory(specs: dict[str, ModelSpec]) -> None:
    import dataclasses

    spec = specs["Q8_0"]
    hw = dataclasses.replace(cpu_machine(), rpc=_workers(8 * GiB, 24 * GiB))
    plan = plan_model(spec, hw, CTX)
    names = [d.name for d in plan.devices]
    assert names == ["CPU", "RPC0[10.0.0.2:50052]", "RPC0[10.0.0.3:50052]"]
    layers = [d.layers for d in plan.devices]
    assert sum(layers) == plan.n_layers and layers[0] == 0 and plan.verdict == "full_gpu"
    assert layers[1] < layers[2]  # the worker with more memory takes more layers
    assert plan.rpc_endpoints == ("10.0.0.2:50052", "10.0.0.3:50052")
    assert "31 of 31 layers on 2 device(s)" in plan.reason
    # Experts in RAM are not planned across workers: asking for both is one line, not a plan the load would betray.
    with pytest.raises(FitchatError, match="--cpu-moe cannot be combined with --rpc"):
        plan_model(spec, hw, CTX, moe_cpu_layers=4)


def test_what_no_worker_can_hold_stays_on_the_cpu_and_is_explained(specs: dict[str, ModelSpec]) -> None:
    import dataclasses

    from fitchat.model.plan import default_gpu_margin

    spec = specs["Q8_0"]
    # Room for about a third of the model on each worker, after the margin kept free.
    room = full_need(spec) // 3
    hw = dataclasses.replace(cpu_machine(), rpc=_workers(room + default_gpu_margin(room), room + default_gpu_margin(room)))
    plan = plan_model(spec, hw, CTX)
    cpu, a, b = plan.devices
    assert cpu.layers > 0 and a.layers > 0 and b.layers > 0
    assert cpu.layers + a.layers + b.layers == plan.n_layers
    assert plan.verdict == "partial_gpu" and plan.gpu_layers == a.layers + b.layers
    for d in (a, b):
        assert d.bytes <= room
    assert f"{cpu.layers} stay on the CPU because" in plan.reason and "no room for more" in plan.reason
    assert a.name in plan.reason and b.name in plan.reason
    # With --margin the explanation counts that margin: workers this big, keeping 64 MiB, have room for every layer.
    roomy = plan_model(spec, hw, CTX, margin_bytes=64 * 1024**2)
    assert roomy.devices[0].layers == 0 and "stay on the CPU" not in roomy.reason
    # The CPU's share has to fit in RAM too.
    tiny_ram = dataclasses.replace(plan_hardware(cpu_machine(), ram=600 * MiB), rpc=hw.rpc)
    too_big = plan_model(spec, tiny_ram, CTX)
    assert too_big.verdict == "too_big" and "of RAM is usable" in too_big.reason


@pytest.mark.parametrize("name", ["llama", "qwen3moe", "mamba2", "granitehybrid", "lfm2"])
def test_one_device_holding_every_unit_needs_what_a_full_offload_puts_on_the_gpu(name: str, tmp_path: Path) -> None:
    """The split's per-device bytes and the estimate are one model: the recurrent state of Mamba-style and
    hybrid layers, the experts and the output layer go with the device as they go to the GPU."""
    from fitchat.model.estimate import DEFAULT_SETTINGS, estimate
    from fitchat.model.split import device_bytes
    from tests import arch_factory

    spec = read_spec(arch_factory.small_model(name, tmp_path))
    full = estimate(spec, 4096, DEFAULT_SETTINGS, gpu_layers=spec.n_layers + 1)
    assert device_bytes(spec, 4096, DEFAULT_SETTINGS, 0, spec.n_layers + 1) == full.gpu_bytes
    if name in ("mamba2", "granitehybrid", "lfm2"):
        assert full.gpu_recurrent_bytes > 0
