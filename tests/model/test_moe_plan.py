"""MoE experts in RAM: the estimate's placement, the planner's choice (llama.cpp's --fit order), the
recommendation, ``fitchat fit``'s table and JSON, and llama.cpp's dry runs with the override.

Qwen3-30B-A3B is a real-scale header (tests/moe_factory.py, a sparse file); the GPU is faked at the NVML
boundary (tests/fakes.py), the estimates and llama.cpp's dry runs are real."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fitchat.cli.main import main
from fitchat.model.estimate import (
    EXPERTS_REGEX,
    estimate,
    expert_layers,
    expert_override_pattern,
    is_expert_tensor,
)
from fitchat.model.gguf_spec import ModelSpec, read_spec
from fitchat.model.hardware import parse_isa, probe_llama_build
from fitchat.model.measure import accuracy_failures, measure
from fitchat.model.plan import choose, plan_model, plan_tier, plan_variants, verdict_label
from tests import moe_factory
from tests.model.test_plan import cpu_machine, gpu_machine

MiB = 1024**2
GiB = 1024**3
ISA = ("AVX2", "FMA")


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("qwen3-30b-a3b")
    return {
        "Q4_K_M": moe_factory.qwen3_30b_a3b(folder / "Qwen3-30B-A3B-Q4_K_M.gguf"),
        "Q8_0": moe_factory.qwen3moe(folder / "Qwen3-30B-A3B-Q8_0.gguf", n_layers=48, n_embd=2048, n_head=32,
                                     n_head_kv=4, head_dim=128, n_expert=128, n_expert_used=8, n_ff_exp=768,
                                     n_vocab=151936, quant="Q8_0"),
    }


@pytest.fixture(scope="module")
def q4(headers: dict[str, Path]) -> ModelSpec:
    return read_spec(headers["Q4_K_M"])


def build_isa() -> tuple[str, ...]:
    """This build's CPU features, as fitchat plans with them (they decide the repacked and AMX copies llama.cpp logs)."""
    return parse_isa(probe_llama_build().system_info)


def expert_bytes(spec: ModelSpec, blocks: range) -> int:
    return sum(t.n_bytes for t in spec.tensors if is_expert_tensor(t.name) and int(t.name.split(".")[1]) in blocks)


def test_the_header_is_qwen3_30b_a3b_at_real_scale(q4: ModelSpec) -> None:
    assert (q4.architecture, q4.n_layers, q4.n_expert, q4.n_expert_used, q4.n_ff_expert) == ("qwen3moe", 48, 128, 8, 768)
    assert 17 * GiB < q4.size_bytes < 17.6 * GiB  # the published Q4_K_M is 18.6 GB
    assert expert_layers(q4) == 48
    assert expert_bytes(q4, range(48)) > 0.9 * q4.size_bytes  # nearly all of a MoE model is experts


def test_the_override_pattern_matches_the_experts_of_the_first_blocks_only() -> None:
    pattern = re.compile(expert_override_pattern(3) or "")
    assert pattern.search("blk.2.ffn_down_exps.weight") and pattern.search("blk.0.ffn_gate_up_exps.weight")
    assert pattern.search("blk.1.ffn_up_chexps.weight")
    for name in ("blk.10.ffn_up_exps.weight", "blk.21.ffn_up_exps.weight", "blk.3.ffn_up_exps.weight",
                 "blk.0.ffn_gate_inp.weight", "blk.0.ffn_up_shexp.weight", "blk.0.attn_q.weight"):
        assert not pattern.search(name), name
    assert expert_override_pattern(0) is None
    assert expert_override_pattern(-1) == EXPERTS_REGEX  # every block: llama.cpp's own --cpu-moe pattern


def test_the_estimate_keeps_the_experts_of_the_first_blocks_on_the_cpu(q4: ModelSpec) -> None:
    n_off = q4.n_layers + 1
    full = estimate(q4, 4096, gpu_layers=n_off, cpu_isa=ISA)
    held = estimate(q4, 4096, gpu_layers=n_off, cpu_isa=ISA, moe_cpu_layers=20)
    moved = expert_bytes(q4, range(20))
    assert held.moe_cpu_layers == 20 and full.moe_cpu_layers == 0
    assert held.gpu_weights_bytes == full.gpu_weights_bytes - moved
    assert held.weights_bytes - held.repack_bytes == full.weights_bytes - full.repack_bytes  # same tensors, moved
    assert held.repack_bytes > 0  # Q4_K experts on an AVX2 CPU get their CPU_REPACK copy, overridden or not
    assert held.gpu_kv_bytes == full.gpu_kv_bytes  # attention stays on the GPU
    # The GPU copies one expert tensor kept in RAM at a time for a large batch (op offload).
    largest = max(t.n_bytes for t in q4.tensors if is_expert_tensor(t.name) and int(t.name.split(".")[1]) < 20)
    assert held.gpu_compute_bytes == full.gpu_compute_bytes + largest
    assert held.compute_bytes - held.gpu_compute_bytes < 8 * MiB  # the CPU only runs one-token expert batches
    # More experts in RAM: less on the GPU, more in RAM; -1 is every block.
    gpu = [estimate(q4, 4096, gpu_layers=n_off, cpu_isa=ISA, moe_cpu_layers=n).gpu_bytes for n in (1, 12, 24, 48)]
    assert gpu == sorted(gpu, reverse=True)
    assert estimate(q4, 4096, gpu_layers=n_off, cpu_isa=ISA, moe_cpu_layers=-1).moe_cpu_layers == 48
    # On the CPU alone the override changes nothing, and a dense model has no experts to move.
    assert estimate(q4, 4096, cpu_isa=ISA, moe_cpu_layers=20).total_bytes == estimate(q4, 4096, cpu_isa=ISA).total_bytes


def test_an_8gb_gpu_keeps_every_layer_with_the_fewest_experts_in_ram_that_fit(q4: ModelSpec) -> None:
    hw = gpu_machine((8 * GiB, 8 * GiB), ram=64 * GiB)
    plan = plan_model(q4, hw)
    n = plan.moe_cpu_layers
    assert plan.verdict == "partial_gpu" and plan.gpu_layers == plan.n_layers == 49
    assert 0 < n < 48
    assert plan.estimate.gpu_bytes <= plan.gpu_budget_bytes and plan.estimate.cpu_bytes <= plan.ram_budget_bytes
    one_fewer = estimate(q4, plan.context, plan.settings, gpu_layers=49, cpu_isa=hw.cpu.isa or None, moe_cpu_layers=n - 1)
    assert one_fewer.gpu_bytes > plan.gpu_budget_bytes  # the fewest that fit, as llama.cpp's --fit chooses
    assert plan.reason.startswith(f"all layers on GPU, experts of {n} of 48 layers in RAM at 4k context")
    assert verdict_label(plan) == f"GPU, experts {n}/48 in RAM"
    assert plan.to_json()["moe_cpu_layers"] == n and plan.to_json()["verdict"] == "partial_gpu"
    # A bigger GPU keeps fewer experts in RAM; one that holds everything needs none.
    assert 0 < plan_model(q4, gpu_machine((16 * GiB, 16 * GiB), ram=64 * GiB)).moe_cpu_layers < n
    big = plan_model(q4, gpu_machine((24 * GiB, 24 * GiB), ram=64 * GiB))
    assert (big.verdict, big.moe_cpu_layers, big.to_json()["moe_cpu_layers"]) == ("full_gpu", 0, 0)


def test_cpu_moe_by_hand_and_machines_without_a_gpu(q4: ModelSpec) -> None:
    hw = gpu_machine((8 * GiB, 8 * GiB), ram=64 * GiB)
    every = plan_model(q4, hw, moe_cpu_layers=-1)
    assert (every.verdict, every.gpu_layers, every.moe_cpu_layers) == ("partial_gpu", 49, 48)
    split = plan_model(q4, hw, moe_cpu_layers=0)  # --cpu-moe 0: a plain layer split
    assert split.verdict == "partial_gpu" and split.moe_cpu_layers == 0 and 0 < split.gpu_layers < 49
    assert verdict_label(split) == f"GPU {split.gpu_layers}/49 layers"
    cpu = plan_model(q4, cpu_machine(ram=64 * GiB))
    assert (cpu.verdict, cpu.moe_cpu_layers) == ("cpu", 0)


def test_experts_in_ram_beat_a_layer_split_in_the_recommendation(headers: dict[str, Path], q4: ModelSpec) -> None:
    hw = gpu_machine((8 * GiB, 8 * GiB), ram=64 * GiB)
    split = plan_model(q4, hw, moe_cpu_layers=0)
    held = plan_model(q4, hw)
    assert split.gpu_layers <= 20  # about 12 to 18 of 49 layers fit an 8 GB card
    assert plan_tier(held) > plan_tier(split)
    assert choose([split, held]) == 1 and choose([held, split]) == 0
    # Both quants at once: the recommended one keeps every layer on the GPU.
    plans = plan_variants([read_spec(p) for p in headers.values()], hw)
    best = next(p for p in plans if p.recommended)
    assert best.moe_cpu_layers > 0 and best.gpu_layers == 49
    assert "experts of" in best.reason and "layers in RAM" in best.reason


def test_fit_shows_the_plan_in_its_table_and_json(headers: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = str(headers["Q4_K_M"])
    assert main(["fit", path, "--gpu-mem", "8G", "--ram", "64G", "--json"]) == 0
    [variant] = json.loads(capsys.readouterr().out)["variants"]
    n = variant["moe_cpu_layers"]
    assert variant["verdict"] == "partial_gpu" and variant["gpu_layers"] == 49 and 0 < n < 48
    assert main(["fit", path, "--gpu-mem", "8G", "--ram", "64G"]) == 0
    out = capsys.readouterr().out
    assert f"GPU, experts {n}/48 in RAM" in out
    assert f"Q4_K_M: all layers on GPU, experts of {n} of 48 layers in RAM (chat loads it so; by hand: --cpu-moe {n})" in out
    assert main(["fit", path, "--gpu-mem", "8G", "--ram", "64G", "--cpu-moe", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["variants"][0]["moe_cpu_layers"] == 48
    with pytest.raises(SystemExit) as usage:
        main(["fit", path, "--cpu-moe", "some"])
    assert usage.value.code == 2
    assert "cannot read 'some' as --cpu-moe" in capsys.readouterr().err


def test_dry_run_with_experts_in_ram_matches_the_estimate(q4: ModelSpec, headers: dict[str, Path]) -> None:
    """llama.cpp's own dry run on the real-scale header, with the override fitchat loads with."""
    meas = measure(headers["Q4_K_M"], 4096, mode="dry_run", moe_cpu_layers=20)
    names = {name for name, _ in meas.overridden}
    assert names == {t.name for t in q4.tensors if is_expert_tensor(t.name) and int(t.name.split(".")[1]) < 20}
    assert len(names) == 60
    # Overridden to the CPU, they still take the CPU's repacked copy where the type has one (Q4_K), as estimated.
    kinds = dict(meas.overridden)
    assert kinds["blk.0.ffn_gate_exps.weight"] in ("CPU_REPACK", "AMX", "CPU")
    assert accuracy_failures(estimate(q4, 4096, moe_cpu_layers=20, cpu_isa=build_isa()), meas) == []


def test_a_real_load_with_experts_in_ram_matches_the_estimate(tmp_path: Path) -> None:
    """A small qwen3moe loaded for real on this CPU: the override changes buffer names, not totals."""
    path = moe_factory.small_qwen3moe(tmp_path / "small-qwen3moe.gguf")
    spec = read_spec(path)
    plain = measure(path, 2048, mode="load")
    held = measure(path, 2048, mode="load", moe_cpu_layers=2)
    assert plain.overridden == ()
    assert sorted(name for name, _ in held.overridden) == sorted(
        f"blk.{i}.ffn_{kind}_exps.weight" for i in (0, 1) for kind in ("gate", "up", "down"))
    assert {buft for _, buft in held.overridden} <= {"CPU", "CPU_REPACK", "AMX"}
    assert held.weights_bytes == plain.weights_bytes and held.total_bytes == plain.total_bytes
    assert accuracy_failures(estimate(spec, 2048, moe_cpu_layers=2, cpu_isa=build_isa()), held) == []


def test_a_gpu_too_small_for_every_layer_splits_layers_with_every_expert_in_ram(q4: ModelSpec) -> None:
    hw = gpu_machine((2 * GiB, 2 * GiB), ram=64 * GiB)  # 1.5 GiB usable: less than the layers without experts
    plan = plan_model(q4, hw)
    plain = plan_model(q4, hw, moe_cpu_layers=0)
    assert plan.verdict == plain.verdict == "partial_gpu"
    assert plan.moe_cpu_layers == 48 and plain.gpu_layers < plan.gpu_layers < 49
    assert verdict_label(plan) == f"GPU, {plan.gpu_layers}/49 layers, experts 48/48 in RAM"
    assert plan.reason.startswith(f"{plan.gpu_layers} of 49 layers on GPU, experts of 48 of 48 layers in RAM")
    assert choose([plain, plan]) == 1  # more layers on the GPU


def test_on_a_cuda_machine_experts_in_ram_keep_no_repacked_copy(q4: ModelSpec) -> None:
    """A CUDA build lists its pinned host buffer ahead of the repacked types and, with mmap, swaps it for the
    plain CPU buffer: the experts in RAM cost their file bytes once, so 16 GB of RAM and an 8 GB GPU run it."""
    cuda = estimate(q4, 4096, gpu_layers=49, cpu_isa=ISA, moe_cpu_layers=20, gpu_host_buffer=True)
    cpu_build = estimate(q4, 4096, gpu_layers=49, cpu_isa=ISA, moe_cpu_layers=20)
    assert cuda.repack_bytes == 0 < cpu_build.repack_bytes
    assert cuda.cpu_bytes == cpu_build.cpu_bytes - cpu_build.repack_bytes
    plan = plan_model(q4, gpu_machine((8 * GiB, 8 * GiB), ram=16 * GiB))
    assert plan.verdict == "partial_gpu" and plan.gpu_layers == 49 and plan.moe_cpu_layers > 0
    assert plan.estimate.repack_bytes == 0 and plan.estimate.cpu_bytes <= plan.ram_budget_bytes


def test_the_plans_devices_hold_the_experts_where_the_estimate_puts_them(q4: ModelSpec) -> None:
    """``fit --json``'s per-device bytes: the experts count on the GPU when they are there, in RAM when kept there,
    and a split over devices carries each block's experts with the block."""
    from fitchat.model.split import device_bytes

    kinds = []
    for gpu in (40 * GiB, 8 * GiB, 2 * GiB):  # all on the GPU, experts in RAM, a split with every expert in RAM
        plan = plan_model(q4, gpu_machine((gpu, gpu), ram=64 * GiB), 4096)
        kinds.append((plan.verdict, plan.moe_cpu_layers > 0, plan.gpu_layers == plan.n_layers))
        devices = {d.name: d for d in plan.devices}
        assert sum(d.layers for d in plan.devices) == plan.n_layers
        assert devices["CPU"].bytes == plan.estimate.cpu_bytes
        assert sum(d.bytes for n, d in devices.items() if n != "CPU") == plan.estimate.gpu_bytes
    assert kinds == [("full_gpu", False, True), ("partial_gpu", True, True), ("partial_gpu", True, False)]
    every_block = device_bytes(q4, 4096, plan.settings, 0, q4.n_layers + 1)
    assert every_block > expert_bytes(q4, range(q4.n_layers)) > 10 * GiB
