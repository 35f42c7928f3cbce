"""Loading with MoE experts in RAM on real llama.cpp: the override reaches llama_model_params for the load
(and only for it), the fallback ladder puts every layer's experts in RAM before it gives up GPU layers,
and a chat through the engine process with ``--cpu-moe`` answers and reports it."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Any

import pytest

from fitchat.cli.main import main
from fitchat.llama import engine as eng
from fitchat.llama.engine import ChatEngine, LoadStep, SamplingSettings, fallback_ladder
from fitchat.llama.planned import load_planned
from fitchat.model.estimate import expert_override_pattern
from fitchat.model.overrides import cpu_buffer_type
from tests import moe_factory

# Zero weights give equal logits: sampling (not greedy, which finds token 0, an empty piece) picks text.
SAMPLED = SamplingSettings(temperature=1.0, seed=1, max_tokens=8)
HELLO = [{"role": "user", "content": "hello"}]


class _Override(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def overrides_in_effect() -> list[tuple[str, int]]:
    """The tensor_buft_overrides a ``Llama(...)`` made now in this thread would load with."""
    import llama_cpp

    address = llama_cpp.llama_model_default_params().tensor_buft_overrides
    out: list[tuple[str, int]] = []
    if not address:
        return out
    entries = ctypes.cast(address, ctypes.POINTER(_Override))
    i = 0
    while entries[i].pattern is not None:
        out.append((entries[i].pattern.decode(), int(entries[i].buft)))
        i += 1
    return out


@pytest.fixture(scope="module")
def small_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return moe_factory.small_qwen3moe(tmp_path_factory.mktemp("moe") / "small-qwen3moe.gguf")


def test_the_ladder_puts_every_layers_experts_in_ram_before_fewer_layers() -> None:
    assert fallback_ladder(49, 8192, 49, 20) == [
        LoadStep(49, 8192, "as planned", 20),
        LoadStep(49, 8192, "the experts of every layer in RAM", -1),
        LoadStep(24, 8192, "fewer GPU layers (24)", -1),
        LoadStep(24, 4096, "a smaller context (4096)", -1),
        LoadStep(0, 4096, "CPU only", 0),
    ]
    # Already all in RAM (or none): the ladder is the plain one.
    assert [s.moe_cpu_layers for s in fallback_ladder(49, 8192, 49, -1)] == [-1, -1, -1, 0]
    assert [s.moe_cpu_layers for s in fallback_ladder(49, 8192, 49, 0)] == [0, 0, 0, 0]


def test_the_engine_loads_with_the_override_and_only_then(small_moe: Path) -> None:
    seen: list[list[tuple[str, int]]] = []

    def loader(path: str, **kwargs: Any) -> Any:
        seen.append(overrides_in_effect())
        return eng.default_loader(path, **kwargs)

    e = ChatEngine.load(small_moe, n_ctx=512, n_threads=1, gpu_layers=0, moe_cpu_layers=2, loader=loader)
    try:
        assert seen == [[(expert_override_pattern(2), cpu_buffer_type())]]
        assert overrides_in_effect() == []  # the next load elsewhere in this thread is untouched
        assert e.moe_cpu_layers == 2 and e.load_report.step.moe_cpu_layers == 2
        pieces = list(e.stream(HELLO, SAMPLED))
        assert pieces and e.last_stats is not None
        assert e.last_stats.completion_tokens > 0 and e.last_stats.moe_cpu_layers == 2
    finally:
        e.close()


def test_a_failed_load_retries_with_every_layers_experts_in_ram(small_moe: Path) -> None:
    every = expert_override_pattern(-1)
    calls: list[tuple[int, list[str]]] = []

    def loader(path: str, **kwargs: Any) -> Any:
        patterns = [p for p, _ in overrides_in_effect()]
        calls.append((kwargs["n_gpu_layers"], patterns))
        if patterns != [every]:  # a GPU this machine lacks, too small for the planned experts
            raise ValueError("ggml_backend_cuda_buffer_type_alloc_buffer: cudaMalloc failed: out of memory")
        return eng.default_loader(path, **{**kwargs, "n_gpu_layers": 0})

    notices: list[str] = []
    e = ChatEngine.load(small_moe, n_ctx=512, n_threads=1, gpu_layers=5, moe_cpu_layers=1, loader=loader,
                        on_notice=notices.append)
    try:
        assert calls == [(5, [expert_override_pattern(1)]), (5, [every])]
        assert e.moe_cpu_layers == -1 and e.load_report.step.label == "the experts of every layer in RAM"
        assert "retrying with the experts of every layer in RAM: 5 GPU layers, context 512" in notices
    finally:
        e.close()


def test_the_engine_process_chats_with_experts_in_ram(small_moe: Path) -> None:
    engine = load_planned(small_moe, "small-qwen3moe", ctx=512, n_threads=1, moe_cpu_layers=2)
    try:
        assert engine.moe_cpu_layers == 2
        assert list(engine.stream(HELLO, SAMPLED))
        assert engine.last_stats is not None and engine.last_stats.moe_cpu_layers == 2
        assert engine.last_stats.completion_tokens > 0
    finally:
        engine.close()


def test_chat_cpu_moe_json(small_moe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["chat", str(small_moe), "-p", "hello", "--json", "--ctx", "512", "--max-tokens", "8",
               "--cpu-moe", "all", "--threads", "1", "--temp", "1", "--seed", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    stats = json.loads(out)["stats"]
    assert stats["moe_cpu_layers"] == -1 and stats["completion_tokens"] > 0
