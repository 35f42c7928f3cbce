"""The chat engine on real llama.cpp with SmolLM2-135M-Instruct (temperature 0, fixed seeds)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fitchat.errors import FitchatError, InvalidModelFile, LoadFailed
from fitchat.llama import engine as eng
from fitchat.llama import threads as tp
from fitchat.llama.engine import (
    ChatEngine,
    ContextOverflow,
    EngineBusy,
    EngineClosed,
    InvalidSampling,
    SamplingSettings,
)

GREEDY = SamplingSettings(temperature=0.0, seed=42, max_tokens=48)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to bake bread."}]


@pytest.fixture(scope="module")
def engine(smollm2: Path) -> Any:
    notices: list[str] = []
    e = ChatEngine.load(smollm2, n_ctx=4096, n_threads=1, on_notice=notices.append)
    e.test_notices = notices
    yield e
    e.close()


def reply(engine: ChatEngine, messages: list[dict[str, str]], settings: SamplingSettings = GREEDY) -> str:
    return "".join(engine.stream(messages, settings))


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("temperature", -0.1, "must be 0 or more"),
    ("temperature", float("nan"), "must be 0 or more"),
    ("top_p", 0.0, "must be more than 0 and at most 1"),
    ("top_p", 1.5, "must be more than 0 and at most 1"),
    ("top_k", -1, "must be 0 or more"),
    ("top_k", 2.5, "must be 0 or more"),
    ("repeat_penalty", 0, "must be more than 0"),
    ("repeat_penalty", float("inf"), "must be more than 0"),
    ("max_tokens", 0, "must be at least 1"),
    ("seed", "7", "must be a whole number"),
    ("min_p", 1.5, "must be 0 or more and at most 1"),
    ("system_prompt", 3, "must be text"),
])
def test_sampling_settings_check_their_ranges_when_made(field: str, value: Any, rule: str) -> None:
    with pytest.raises(InvalidSampling) as caught:
        SamplingSettings(**{field: value})
    assert isinstance(caught.value, FitchatError) and caught.value.field == field
    assert str(caught.value).startswith(f"{field} {rule}") and "\n" not in str(caught.value)
    with pytest.raises(InvalidSampling):  # a copy with one value changed is checked too
        dataclasses.replace(GREEDY, **{field: value})
    assert SamplingSettings(temperature=0, top_p=1, top_k=0, repeat_penalty=1, seed=-3, max_tokens=1, min_p=0)


def test_replies_match_llama_cpp_python_through_the_gguf_template(engine: ChatEngine, smollm2: Path) -> None:
    import llama_cpp

    engine.reset()
    ours = reply(engine, QUESTION)
    assert "Paris" in ours
    with contextlib.redirect_stderr(io.StringIO()):
        bare = llama_cpp.Llama(str(smollm2), n_ctx=4096, n_threads=1, verbose=True, **engine.load_kwargs)
    try:
        theirs = bare.create_chat_completion(QUESTION, temperature=0.0, max_tokens=48, repeat_penalty=1.1, seed=42)
        # Longer than the 64-token penalty window, and sampled at temperature 0.9 with a seed.
        long_greedy = bare.create_chat_completion(STORY, temperature=0.0, max_tokens=80, repeat_penalty=1.3)
        warm = bare.create_chat_completion(STORY, temperature=0.9, top_p=0.9, top_k=30, min_p=0.05,
                                           repeat_penalty=1.2, max_tokens=70, seed=1234)
    finally:
        bare.close()
    assert ours == theirs["choices"][0]["message"]["content"]
    assert reply(engine, STORY, SamplingSettings(temperature=0.0, repeat_penalty=1.3, max_tokens=80)) == \
        long_greedy["choices"][0]["message"]["content"]
    assert reply(engine, STORY, SamplingSettings(temperature=0.9, top_p=0.9, top_k=30, min_p=0.05,
                                                 repeat_penalty=1.2, max_tokens=70, seed=1234)) == \
        warm["choices"][0]["message"]["content"]
    assert engine.has_chat_template
    assert engine.load_kwargs["flash_attn"] is True  # the fit estimate's settings, not llama-cpp-python's


def test_multi_turn_reuses_the_cache_and_matches_a_fresh_evaluation(engine: ChatEngine) -> None:
    engine.reset()
    first = reply(engine, QUESTION)
    turn2 = QUESTION + [{"role": "assistant", "content": first}, {"role": "user", "content": "And of Germany?"}]
    second = reply(engine, turn2)
    stats = engine.last_stats
    assert stats is not None and stats.cached_tokens > 20  # the first turn was not evaluated again
    assert stats.prompt_tokens == engine.count_tokens(turn2)
    assert "Berlin" in second or "Germany" in second
    engine.reset()
    assert reply(engine, turn2) == second
    assert engine.last_stats.cached_tokens == 0


def test_the_token_loop_calls_keep_the_gil() -> None:
    import ctypes

    import llama_cpp

    names = ("llama_vocab_is_eog", "llama_token_to_piece")
    held = eng.gil_holding(llama_cpp, names)
    for name in names:
        assert held[name]._flags_ & ctypes._FUNCFLAG_PYTHONAPI, name  # called without releasing the GIL
        assert not getattr(llama_cpp, name)._flags_ & ctypes._FUNCFLAG_PYTHONAPI
        assert held[name].argtypes == getattr(llama_cpp, name).argtypes


def test_stats(engine: ChatEngine) -> None:
    engine.reset()
    settings = SamplingSettings(temperature=0.0, seed=1, max_tokens=12, system_prompt="You are a poet.")
    text = reply(engine, STORY, settings)
    s = engine.last_stats
    assert text and s is not None
    assert s.finish_reason == "length" and s.completion_tokens == 12
    assert s.prompt_tokens == engine.count_tokens(engine.with_system(STORY, "You are a poet."))
    assert s.context_used == s.prompt_tokens + s.completion_tokens - 1  # the last token is never fed back
    assert 0 < s.ttft_s < 30 and s.prompt_tokens_per_s > 0 and s.decode_tokens_per_s > 0
    assert (s.n_threads, s.n_threads_batch, s.gpu_layers, s.n_ctx) == (1, 1, 0, 4096)
    assert s.elapsed_s >= s.ttft_s
    assert set(s.to_json()) >= {"prompt_tokens", "completion_tokens", "ttft_s", "prompt_tokens_per_s",
                                "decode_tokens_per_s", "n_threads", "gpu_layers", "n_ctx", "context_used"}


def test_a_slow_consumer_does_not_lower_the_decode_rate(engine: ChatEngine) -> None:
    engine.reset()
    start = time.perf_counter()
    pieces = 0
    for _ in engine.stream(STORY, SamplingSettings(temperature=0.0, max_tokens=20)):
        pieces += 1
        time.sleep(0.05)  # a display taking 50 ms a token
    wall_rate = pieces / (time.perf_counter() - start)
    s = engine.last_stats
    assert s.decode_tokens_per_s > 2 * wall_rate  # the display's 50 ms are not counted as decoding


def run_in_thread(engine: ChatEngine, messages: list[dict[str, str]], settings: SamplingSettings,
                  first_piece: threading.Event | None = None) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {"pieces": []}

    def work() -> None:
        for piece in engine.stream(messages, settings):
            out["pieces"].append(piece)
            if first_piece is not None and len(out["pieces"]) >= 5:
                first_piece.set()
        out["ended"] = time.perf_counter()

    t = threading.Thread(target=work)
    t.start()
    return t, out


CANCEL_BOUND_S = 0.1  # the product promise: a cancel ends the reply within 100 ms
CANCEL_ATTEMPTS = 3  # a loaded machine may stall one measurement; the best of three must keep the promise


def test_cancel_mid_stream_within_100ms(engine: ChatEngine) -> None:
    latencies: list[float] = []
    for _ in range(CANCEL_ATTEMPTS):
        engine.reset()
        started = threading.Event()
        t, out = run_in_thread(engine, STORY, SamplingSettings(temperature=0.0, seed=3, max_tokens=2000), started)
        assert started.wait(60)
        asked = time.perf_counter()
        engine.cancel()
        t.join(10)
        assert not t.is_alive()
        latencies.append(out["ended"] - asked)
        assert engine.last_stats.finish_reason == "cancelled"
        assert 5 <= engine.last_stats.completion_tokens < 2000
        if latencies[-1] < CANCEL_BOUND_S:
            break
    assert min(latencies) < CANCEL_BOUND_S, f"cancel took {[f'{x * 1000:.1f} ms' for x in latencies]}"


def wait_prompt_evaluation_started(engine: ChatEngine, timeout: float = 60.0) -> Any:
    """Poll the live stats until the reply in progress is evaluating its prompt; returns those stats.

    The live stats appear once the prompt is tokenised and counted, right before its evaluation; the
    first batch of a long prompt then keeps llama.cpp busy for a good while, with nothing in the cache
    yet (a prefix cached from a partly evaluated batch is not what this test is about).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = engine.current_stats()
        if live is not None and live is not engine.last_stats and live.prompt_tokens:
            assert live.completion_tokens == 0 and live.context_used == 0, "the prompt evaluated too fast to test"
            return live
        time.sleep(0.0005)
    raise AssertionError("prompt evaluation never started")


def test_cancel_during_a_long_prompt_evaluation_within_100ms(engine: ChatEngine) -> None:
    long_text = "The history of bread spans many cultures and centuries. " * 300  # about 3000 tokens
    messages = [{"role": "user", "content": long_text + "\nSummarise."}]
    latencies: list[float] = []
    for _ in range(CANCEL_ATTEMPTS):
        engine.reset()
        t, out = run_in_thread(engine, messages, SamplingSettings(temperature=0.0, max_tokens=8))
        try:
            live = wait_prompt_evaluation_started(engine)
        except BaseException:
            engine.cancel()
            t.join(10)
            raise
        assert live.prompt_tokens > 2000
        asked = time.perf_counter()
        engine.cancel()
        t.join(10)
        assert not t.is_alive()
        latencies.append(out["ended"] - asked)
        assert out["pieces"] == []
        stats = engine.last_stats
        assert stats.finish_reason == "cancelled" and stats.completion_tokens == 0
        assert stats.context_used < stats.prompt_tokens  # stopped before the prompt was evaluated
        if latencies[-1] < CANCEL_BOUND_S:
            break
    assert min(latencies) < CANCEL_BOUND_S, f"cancel took {[f'{x * 1000:.1f} ms' for x in latencies]}"
    # The engine is intact: the cached part of the aborted prompt is consistent and reused.
    assert reply(engine, QUESTION) == reply_fresh(engine, QUESTION)


def reply_fresh(engine: ChatEngine, messages: list[dict[str, str]]) -> str:
    engine.reset()
    return reply(engine, messages)


def test_cancel_before_a_reply_does_not_stop_it(engine: ChatEngine) -> None:
    engine.cancel()
    assert reply(engine, QUESTION)
    assert engine.last_stats.finish_reason == "stop"


def test_regenerate(engine: ChatEngine) -> None:
    warm = SamplingSettings(temperature=1.0, seed=11, max_tokens=24)
    first = reply(engine, QUESTION, warm)
    convo = QUESTION + [{"role": "assistant", "content": first}]
    again = "".join(engine.regenerate(convo, warm, attempt=1))
    assert again != first  # a new seed: a new answer
    assert "".join(engine.regenerate(convo, warm, attempt=1)) == again  # yet reproducible
    assert "".join(engine.regenerate(convo, GREEDY)) == reply(engine, QUESTION)  # greedy stays greedy


def test_one_reply_at_a_time_and_close(smollm2: Path) -> None:
    e = ChatEngine.load(smollm2, n_ctx=512, n_threads=1)
    it = e.stream(QUESTION, GREEDY)
    next(it)
    with pytest.raises(EngineBusy):
        next(e.stream(QUESTION, GREEDY))
    it.close()
    assert e.last_stats.finish_reason == "stop"  # closed by its consumer
    e.close()
    e.close()  # twice is fine
    with pytest.raises(EngineClosed):
        e.stream(QUESTION, GREEDY)


def test_context_overflow_drops_oldest_turns_and_keeps_the_system_prompt(smollm2: Path) -> None:
    notices: list[str] = []
    e = ChatEngine.load(smollm2, n_ctx=512, n_threads=1, on_notice=notices.append)
    try:
        convo: list[dict[str, str]] = []
        for i in range(8):
            convo.append({"role": "user", "content": f"Question {i}: tell me about the number {i} in detail. " * 3})
            convo.append({"role": "assistant", "content": f"The number {i} is a fine number indeed. " * 4})
        convo.append({"role": "user", "content": "What was my last question about?"})
        settings = SamplingSettings(temperature=0.0, max_tokens=40, system_prompt="You are a careful assistant.")
        assert e.count_tokens(e.with_system(convo, settings.system_prompt)) > 512
        tokens, kept, dropped = e.fit_context(e.with_system(convo, settings.system_prompt), settings)
        assert kept[0] == {"role": "system", "content": "You are a careful assistant."}
        assert kept[1]["role"] == "user" and kept[-1] == convo[-1]
        assert dropped % 2 == 0 and dropped > 0
        assert len(tokens) <= 512 - e.reply_reserve(settings)

        text = reply(e, convo, settings)
        assert text
        s = e.last_stats
        assert s.dropped_messages == dropped
        assert s.prompt_tokens + s.completion_tokens <= 512
        assert any(n.startswith(f"context full: left out the {dropped} oldest messages") for n in notices)

        with pytest.raises(ContextOverflow, match="larger context"):
            reply(e, [{"role": "user", "content": "word " * 600}], settings)
        assert reply(e, QUESTION, settings)  # still usable
    finally:
        e.close()


def test_model_without_a_chat_template_gets_a_notice_and_plain_completion(gemma3: Path) -> None:
    notices: list[str] = []
    e = ChatEngine.load(gemma3, n_ctx=1024, n_threads=1, on_notice=notices.append)
    try:
        assert not e.has_chat_template
        assert any("no chat template" in n for n in notices)
        text = reply(e, [{"role": "user", "content": "The three primary colours are"}],
                     SamplingSettings(temperature=0.0, max_tokens=16))
        assert text.strip()  # never an unexplained empty reply
        assert e.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a\n\nb"
    finally:
        e.close()


def test_fallback_ladder_steps_down_to_cpu(smollm2: Path) -> None:
    calls: list[tuple[int, int]] = []

    def loader(path: str, **kwargs: Any) -> Any:
        calls.append((kwargs["n_gpu_layers"], kwargs["n_ctx"]))
        if kwargs["n_gpu_layers"] > 0:  # a GPU this machine lacks, with too little free memory
            raise ValueError("ggml_backend_cuda_buffer_type_alloc_buffer: cudaMalloc failed: out of memory")
        if kwargs["n_ctx"] > 4096:
            raise ValueError("Failed to create llama_context")
        return eng.default_loader(path, **kwargs)

    notices: list[str] = []
    e = ChatEngine.load(smollm2, gpu_layers=20, n_ctx=8192, n_threads=1, loader=loader, on_notice=notices.append)
    try:
        assert calls == [(20, 8192), (10, 8192), (10, 4096), (0, 4096)]
        assert (e.gpu_layers, e.n_ctx) == (0, 4096)
        assert [s.label for s, _ in e.load_report.failures] == ["as planned", "fewer GPU layers (10)",
                                                                "a smaller context (4096)"]
        assert e.load_report.step.label == "CPU only"
        assert notices[1] == "retrying with fewer GPU layers (10): 10 GPU layers, context 8192"
        assert "retrying with CPU only: 0 GPU layers, context 4096" in notices
        assert notices[-1] == "loaded with CPU only: 0 GPU layers, context 4096"
        assert e.notices == notices
        assert reply(e, QUESTION)
    finally:
        e.close()


def test_fallback_ladder_on_a_really_impossible_context(smollm2: Path) -> None:
    import psutil

    # A KV cache four times larger than this machine's RAM: llama.cpp's allocation really fails.
    per_token = 30 * 2 * 192 * 2  # SmolLM2: layers x (K+V) x n_embd_gqa x f16
    huge = min(2**30, 4 * psutil.virtual_memory().total // per_token)
    notices: list[str] = []
    e = ChatEngine.load(smollm2, n_ctx=huge, n_threads=1, gpu_layers=0, on_notice=notices.append)
    try:
        assert e.n_ctx == 4096
        assert "failed to allocate buffer for kv cache" in e.load_report.failures[0][1]
        assert notices[0].startswith(f"loading with 0 GPU layers and context {huge} failed")
        assert reply(e, QUESTION)
    finally:
        e.close()


def test_not_a_memory_failure_is_reported_at_once(tmp_path: Path) -> None:
    import gguf

    bad = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(bad), "no-such-architecture")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    attempts: list[int] = []

    def loader(path: str, **kwargs: Any) -> Any:
        attempts.append(kwargs["n_ctx"])
        return eng.default_loader(path, **kwargs)

    with pytest.raises(InvalidModelFile):  # fitchat's own check comes first
        ChatEngine.load(bad, n_ctx=8192, n_threads=1, gpu_layers=0, loader=loader)
    assert attempts == []
    with pytest.raises(LoadFailed, match="no-such-architecture"):  # llama.cpp's refusal, without retries
        ChatEngine.load(bad, n_ctx=8192, n_threads=1, gpu_layers=0, loader=loader, validate=False)
    assert attempts == [8192]
    with pytest.raises(LoadFailed, match="no model file"):
        ChatEngine.load(tmp_path / "missing.gguf")


def test_threads_are_measured_cached_and_rechecked(smollm2: Path, private_home: Path) -> None:
    notices: list[str] = []
    e = ChatEngine.load(smollm2, n_ctx=1024, on_notice=notices.append)
    try:
        choice = e.threads
        assert choice.source == "calibrated"
        assert choice.n_threads in tp.candidates(*_cores())
        assert choice.decode_measured[1] > 0 and choice.decode_tokens_per_s > 0
        cache_file = private_home / "cache" / "fitchat" / "threads.json"
        assert cache_file.is_file()

        # A reply far below the calibrated speed schedules a re-measure before the next reply.
        e.threads = tp.ThreadChoice(choice.n_threads, choice.n_threads_batch, 1e9, "calibrated")
        e._last_thread_check = 0.0
        reply(e, STORY, SamplingSettings(temperature=0.0, max_tokens=24))
        assert any("well below" in n for n in notices)
        reply(e, QUESTION, SamplingSettings(temperature=0.0, max_tokens=8))
        assert any(n.startswith("threads re-measured") for n in notices)
        assert e.threads.decode_tokens_per_s < 1e9 and e.threads.source == "calibrated"
    finally:
        e.close()
    again = ChatEngine.load(smollm2, n_ctx=1024)
    try:
        assert again.threads.source == "cache"
    finally:
        again.close()
    user = ChatEngine.load(smollm2, n_ctx=1024, n_threads=1, n_threads_batch=2)
    try:
        assert (user.threads.n_threads, user.threads.n_threads_batch, user.threads.source) == (1, 2, "user")
    finally:
        user.close()


def _cores() -> tuple[int, int]:
    import psutil

    return psutil.cpu_count(logical=False) or 1, psutil.cpu_count() or 1


def test_close_releases_memory_before_the_next_load(smollm2: Path) -> None:
    import gc

    import psutil

    proc = psutil.Process()
    before = proc.memory_info().rss
    e = ChatEngine.load(smollm2, n_ctx=32768, n_threads=1)  # a 720 MiB KV cache, written at load
    loaded = proc.memory_info().rss
    e.close()
    gc.collect()
    closed = proc.memory_info().rss
    assert loaded - before > 500 * 2**20
    assert closed - before < 150 * 2**20
    e = ChatEngine.load(smollm2, n_ctx=32768, n_threads=1)
    e.close()
    assert proc.memory_info().rss - closed < 150 * 2**20  # no growth from load to load


@pytest.mark.slow
def test_calibration_with_every_core_but_one_busy_prefers_one_thread(smollm2: Path, tmp_path: Path) -> None:
    """With one core left free, measuring must find that a second decode thread only waits for a busy core."""
    import subprocess
    import sys

    logical = _cores()[1]
    if logical < 2:
        pytest.skip("needs two cores, one to keep busy")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(logical - 1)]
    try:
        time.sleep(0.5)
        e = ChatEngine.load(smollm2, n_ctx=1024, thread_cache=tp.ThreadCache(tmp_path / "threads.json"))
        try:
            assert e.threads.n_threads == 1, e.threads
        finally:
            e.close()
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def _fit_one_turn_at_a_time(e: ChatEngine, messages: list[dict[str, str]], budget: int) -> tuple[list[int], int]:
    """The rule fit_context keeps, written the slow way: drop the oldest turn until the rest fits."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    dropped = 0
    tokens = e.prompt_tokens(system + turns)
    while len(tokens) > budget and len(turns) > 1:
        turns, dropped = turns[1:], dropped + 1
        while len(turns) > 1 and turns[0]["role"] == "assistant":
            turns, dropped = turns[1:], dropped + 1
        tokens = e.prompt_tokens(system + turns)
    return tokens, dropped


def test_a_long_conversation_is_fitted_in_a_few_renders(engine: ChatEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = SamplingSettings(max_tokens=256)
    convo = [{"role": "system", "content": "Be brief."}]
    for i in range(300):
        convo += [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
                  {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]
    convo.append({"role": "user", "content": "And the last one?"})
    budget = engine.n_ctx - engine.reply_reserve(settings)
    want_tokens, want_dropped = _fit_one_turn_at_a_time(engine, convo, budget)
    renders: list[int] = []
    real = engine.prompt_tokens
    monkeypatch.setattr(engine, "prompt_tokens", lambda msgs: renders.append(len(msgs)) or real(msgs))
    tokens, kept, dropped = engine.fit_context(convo, settings)
    assert (tokens, dropped) == (want_tokens, want_dropped) and kept[0]["role"] == "system"
    assert len(renders) <= 12  # 601 messages: bisection, not one render per dropped message
