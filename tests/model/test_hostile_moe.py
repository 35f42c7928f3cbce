"""Hostile MoE, MLA and recurrent headers, and hostile expert counts: a tensor named for a block the model
lacks is refused in one line when the header is read; numbers the estimate uses give a finite plan; no count
of blocks whose experts stay in RAM makes an override pattern that costs time or memory, for fitchat or for
llama.cpp's regex engine."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from fitchat.cli.main import main
from fitchat.model.estimate import EXPERTS_REGEX, expert_override_pattern
from fitchat.model.gguf_spec import MAX_LAYERS, read_spec
from fitchat.model.measure import MeasureFailed, measure
from tests import moe_factory
from tests.model.test_hostile_gguf import refused

N_LAYERS, N_EMBD, N_HEAD, N_HEAD_KV, HEAD, N_EXPERT, N_USED, N_FF_EXP, N_VOCAB = 4, 256, 4, 2, 64, 8, 2, 256, 512


def small_moe(path: Path, *, kv: dict[str, int | float] | None = None, extra: tuple[str, ...] = (),
              drop: tuple[str, ...] = (), arch: str = "qwen3moe") -> Path:
    """A small sparse qwen3moe-shaped header, with metadata changed and extra expert-shaped tensors."""
    base: dict[str, int | float] = {
        "block_count": N_LAYERS, "context_length": 4096, "embedding_length": N_EMBD, "feed_forward_length": 512,
        "attention.head_count": N_HEAD, "attention.head_count_kv": N_HEAD_KV, "attention.key_length": HEAD,
        "attention.value_length": HEAD, "expert_count": N_EXPERT, "expert_used_count": N_USED,
        "expert_feed_forward_length": N_FF_EXP,
    }
    base.update(kv or {})
    for key in drop:
        base.pop(key)
    exps = (N_EMBD, N_FF_EXP, N_EXPERT)
    t: list[tuple[str, tuple[int, ...], str]] = [("token_embd.weight", (N_EMBD, N_VOCAB), "F16")]
    for i in range(N_LAYERS):
        t += [(f"blk.{i}.attn_norm.weight", (N_EMBD,), "F32"),
              (f"blk.{i}.attn_q.weight", (N_EMBD, N_HEAD * HEAD), "F16"),
              (f"blk.{i}.attn_k.weight", (N_EMBD, N_HEAD_KV * HEAD), "F16"),
              (f"blk.{i}.attn_v.weight", (N_EMBD, N_HEAD_KV * HEAD), "F16"),
              (f"blk.{i}.ffn_up_exps.weight", exps, "F16"),
              (f"blk.{i}.ffn_down_exps.weight", (N_FF_EXP, N_EMBD, N_EXPERT), "F16")]
    t += [(name, exps, "F16") for name in extra]
    t += [("output_norm.weight", (N_EMBD,), "F32"), ("output.weight", (N_EMBD, N_VOCAB), "F16")]
    return moe_factory._write(path, arch, base, N_VOCAB, t, None)


@pytest.mark.parametrize("name", [
    "blk.x.ffn_up_exps.weight",
    "blk.x.attn_q.weight",
    "blk..ffn_up_exps.weight",
    "blk.-1.ffn_up_exps.weight",
    "blk.01.ffn_up_exps.weight",
    "blk.4.ffn_up_exps.weight",  # block_count is 4
    "blk.99999999999.ffn_up_exps.weight",
    "blk.\u0663.ffn_up_exps.weight",  # an Arabic-Indic 3: Python's int() reads it, llama.cpp never writes it
    "blk.\u00b2.attn_q.weight",
    "blk.[red]x[/].ffn_up_exps.weight",
    "blk.\x1b[2J.attn_q.weight",
    "blk.",
])
def test_a_tensor_of_a_block_the_model_lacks_is_refused(tmp_path: Path, name: str) -> None:
    path = small_moe(tmp_path / "m.gguf", extra=(name,))
    message = refused(lambda: read_spec(path), seconds=0.5)
    assert "names no block of the model's 4" in message and "blk.0 to blk.3" in message
    assert "\x1b" not in message


def test_fit_on_a_tensor_of_no_block_is_one_line_with_or_without_a_gpu(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """With a GPU to place layers on, the estimate used to read the block number and fail inside."""
    path = str(small_moe(tmp_path / "m.gguf", extra=("blk.x.ffn_up_exps.weight",)))
    for extra in ([], ["--gpu-mem", "8G"], ["--gpu-mem", "8G", "--cpu-moe", "all", "--json"]):
        assert main(["fit", path, *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("fitchat: error:") and "names no block" in err, err


@pytest.mark.parametrize("case", [
    {"attention.kv_lora_rank": 2**32 - 1, "attention.key_length_mla": 2**32 - 1, "attention.value_length_mla": 2**32 - 1},
    {"ssm.conv_kernel": 2**32 - 1, "ssm.inner_size": 2**32 - 1, "ssm.state_size": 2**32 - 1, "ssm.group_count": 2**32 - 1},
    {"ssm.conv_kernel": 0, "ssm.inner_size": 0, "ssm.state_size": 0, "ssm.group_count": 0},
    {"shortconv.l_cache": 2**32 - 1},
    {"expert_used_count": 2**32 - 1, "expert_feed_forward_length": 2**32 - 1},
    {"expert_used_count": 100},  # more chosen than there are experts
    {"expert_count": 0},
])
@pytest.mark.parametrize("arch", ["qwen3moe", "mamba2", "lfm2"])
def test_extreme_dimensions_give_a_finite_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               case: dict[str, int], arch: str) -> None:
    path = str(small_moe(tmp_path / "m.gguf", kv=case, arch=arch))
    start = time.perf_counter()
    for moe in ("0", "2", "all"):
        assert main(["fit", path, "--gpu-mem", "8G", "--ram", "64G", "--cpu-moe", moe, "--json"]) == 0
        variant = json.loads(capsys.readouterr().out)["variants"][0]
        numbers = [v for k, v in variant.items() if k.endswith("_bytes")]
        assert len(numbers) >= 6 and all(isinstance(v, int) and v >= 0 for v in numbers), variant
        assert variant["verdict"] and variant["reason"]
    assert time.perf_counter() - start < 10


def test_experts_without_an_expert_count_plan_as_dense(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(small_moe(tmp_path / "m.gguf", drop=("expert_count", "expert_used_count")))
    assert main(["fit", path, "--gpu-mem", "8G", "--cpu-moe", "2", "--json"]) == 0
    variant = json.loads(capsys.readouterr().out)["variants"][0]
    assert variant["moe_cpu_layers"] == 0
    assert any("no MoE experts" in note for note in variant["notes"])


# --------------------------------------------------------------------------- the override pattern


@pytest.mark.parametrize("n", [1, 3, 9, 10, 11, 48, 99, 100, 101, 1000, 12345, MAX_LAYERS - 1])
def test_the_pattern_matches_exactly_the_first_blocks(n: int) -> None:
    pattern = re.compile(expert_override_pattern(n) or "")
    for i in sorted({0, 1, 9, 10, 11, 99, 100, 101, n - 2, n - 1, n, n + 1, 10 * n, 10 * n + 1} - {-1}):
        assert bool(pattern.search(f"blk.{i}.ffn_up_exps.weight")) == (i < n), (n, i)
    assert not pattern.search("blk.0.attn_q.weight")


@pytest.mark.parametrize("n", [MAX_LAYERS - 1, MAX_LAYERS, 10**9, 10**18, 10**300])
def test_no_count_makes_a_long_pattern(n: int) -> None:
    """It was one alternative per block: 10^9 blocks were a 10 GB string, and 16,000 a pattern llama.cpp
    compiled once per tensor."""
    start = time.perf_counter()
    pattern = expert_override_pattern(n)
    assert time.perf_counter() - start < 0.01
    assert pattern is not None and len(pattern) < 300
    if n >= MAX_LAYERS:
        assert pattern == EXPERTS_REGEX  # no model has more blocks: every block's experts


def test_a_huge_count_through_the_measuring_child_keeps_every_expert_in_ram(tmp_path: Path) -> None:
    """The count crosses a JSON pipe to a child that builds the override and runs llama.cpp's dry run."""
    path = moe_factory.small_qwen3moe(tmp_path / "small.gguf")
    start = time.perf_counter()
    meas = measure(path, 512, mode="dry_run", moe_cpu_layers=10**12)
    assert time.perf_counter() - start < 60
    assert sorted(name for name, _ in meas.overridden) == sorted(
        f"blk.{i}.ffn_{kind}_exps.weight" for i in range(4) for kind in ("gate", "up", "down"))


def test_a_header_llama_cpp_asserts_on_is_measured_as_its_assertion(tmp_path: Path) -> None:
    """More experts chosen than there are: llama.cpp's GGML_ASSERT kills the measuring child; the one line names
    the assertion, not the last of the backtrace gdb prints after it."""
    path = small_moe(tmp_path / "m.gguf", kv={"expert_used_count": 100})
    with pytest.raises(MeasureFailed) as info:
        measure(path, 512, mode="dry_run")
    message = str(info.value)
    assert "\n" not in message and "GGML_ASSERT" in message and "n_expert" in message, message
