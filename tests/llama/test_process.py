"""The engine in its own process (fitchat.llama.process), on real llama.cpp with SmolLM2-135M-Instruct:
the same replies as in this process, cancel within 100 ms, prefix reuse, and deaths by signal (mid-reply
and during load) that end the engine, never the caller."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fitchat.chat.history import History
from fitchat.chat.session import ChatSession
from fitchat.errors import FitchatError
from fitchat.llama.engine import ChatEngine, SamplingSettings
from fitchat.llama.process import EngineDied, ProcessEngine

GREEDY = SamplingSettings(temperature=0.0, seed=42, max_tokens=48)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = "Write a very long story about a dragon who learns to bake bread."


@pytest.fixture
def engine(smollm2: Path) -> Iterator[ProcessEngine]:
    e = ProcessEngine.load(smollm2, n_ctx=2048, n_threads=1)
    yield e
    e.close()


# Test seams: loaders the engine process uses instead of llama_cpp.Llama, crashing it at the hardware boundary.

def crash_null_read(path: str, **kwargs: Any) -> Any:
    return ctypes.string_at(0)  # SIGSEGV, as a faulty backend would


def crash_abort(path: str, **kwargs: Any) -> Any:
    os.abort()  # SIGABRT, as a GGML_ASSERT does


def crash_illegal_instruction(path: str, **kwargs: Any) -> Any:
    os.kill(os.getpid(), signal.SIGILL)  # as an AMX or AVX-512 instruction the CPU lacks
    time.sleep(5)


def test_replies_match_the_engine_in_this_process_and_reuse_the_prefix(engine: ProcessEngine, smollm2: Path) -> None:
    pieces = list(engine.stream(QUESTION, GREEDY))
    ours = "".join(pieces)
    assert "Paris" in ours and len(pieces) > 3  # streamed, not one block
    first = engine.last_stats
    assert first is not None and first.completion_tokens > 3 and first.cached_tokens == 0
    assert (first.n_ctx, first.n_threads) == (2048, 1) and engine.n_ctx == 2048 and engine.threads.n_threads == 1
    assert engine.count_tokens(QUESTION) == first.prompt_tokens
    assert engine.has_chat_template and engine.load_report.step.label == "as planned"

    follow = [*QUESTION, {"role": "assistant", "content": ours}, {"role": "user", "content": "And of Spain?"}]
    second_reply = "".join(engine.stream(follow, GREEDY))
    second = engine.last_stats
    assert second is not None and second.cached_tokens >= first.prompt_tokens  # the first turn was not evaluated again
    assert second.prompt_tokens - second.cached_tokens < second.prompt_tokens // 2

    local = ChatEngine.load(smollm2, n_ctx=2048, n_threads=1)
    try:
        assert "".join(local.stream(QUESTION, GREEDY)) == ours
        assert "".join(local.stream(follow, GREEDY)) == second_reply
    finally:
        local.close()


def test_cancel_ends_the_reply_within_100_ms(engine: ProcessEngine) -> None:
    settings = SamplingSettings(temperature=0.0, max_tokens=1000)
    pieces = engine.stream([{"role": "user", "content": STORY}], settings)
    count = 0
    delays = []
    for _ in pieces:
        count += 1
        if count == 5:
            t = time.perf_counter()
            engine.cancel()
    delays.append(time.perf_counter() - t)
    assert engine.last_stats is not None and engine.last_stats.finish_reason == "cancelled"
    assert delays[0] < 0.1, f"the reply ended {delays[0] * 1000:.0f} ms after cancel"
    assert engine.last_stats.completion_tokens < 40
    assert "".join(engine.stream(QUESTION, GREEDY))  # the engine goes on


def test_closing_the_iterator_early_stops_the_reply(engine: ProcessEngine) -> None:
    pieces = engine.stream([{"role": "user", "content": STORY}], SamplingSettings(temperature=0.0, max_tokens=1000))
    next(pieces)
    pieces.close()  # type: ignore[attr-defined]
    assert engine.last_stats is not None and engine.last_stats.finish_reason == "cancelled"
    assert "Paris" in "".join(engine.stream(QUESTION, GREEDY))


@pytest.mark.parametrize(("sig", "meaning"), [
    (signal.SIGKILL, "out-of-memory killer"),
    (signal.SIGSEGV, "a crash in llama.cpp"),
])
def test_a_signal_mid_reply_is_one_line_the_reply_so_far_is_kept_and_a_reload_chats_again(
    smollm2: Path, sig: signal.Signals, meaning: str
) -> None:
    engine = ProcessEngine.load(smollm2, n_ctx=2048, n_threads=1)
    history = History()
    session = ChatSession(engine, history, settings=SamplingSettings(temperature=0.0, max_tokens=1000),
                          model_name="smollm2")
    parts: list[str] = []
    with pytest.raises(EngineDied) as caught:
        for piece in session.send(STORY):
            parts.append(piece)
            if len(parts) == 8:
                os.kill(engine.pid, sig)
    died = caught.value
    assert isinstance(died, FitchatError) and died.exit_code == 1
    message = str(died)
    assert "\n" not in message and sig.name in message and meaning in message and died.signal_name == sig.name
    assert not engine.alive
    with pytest.raises(EngineDied):  # every later call says the same
        engine.count_tokens(QUESTION)
    engine.close()

    # The conversation and the reply so far are kept, in the session and in the history.
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    assert session.messages[1]["content"] == "".join(parts) and session.messages[1]["finish_reason"] == "interrupted"
    saved = history.load(session.conversation_id or 0).messages
    assert [(m.role, m.finish_reason) for m in saved] == [("user", None), ("assistant", "interrupted")]
    assert saved[1].content == "".join(parts)

    session.engine = ProcessEngine.load(smollm2, n_ctx=2048, n_threads=1)  # the reload
    try:
        session.settings = GREEDY
        assert "".join(session.send("What is the capital of France?")).strip()
        assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    finally:
        session.engine.close()
        history.close()


@pytest.mark.parametrize(("loader", "name", "meaning"), [
    (crash_null_read, "SIGSEGV", "a crash in llama.cpp"),
    (crash_abort, "SIGABRT", "llama.cpp refused the model or ran out of memory"),
    (crash_illegal_instruction, "SIGILL", "fitchat doctor"),
])
def test_a_native_crash_during_load_is_one_line_naming_the_signal(smollm2: Path, loader: Any, name: str,
                                                                 meaning: str) -> None:
    t = time.perf_counter()
    with pytest.raises(EngineDied) as caught:
        ProcessEngine.load(smollm2, n_ctx=1024, n_threads=1, loader=f"{__name__}:{loader.__name__}")
    message = str(caught.value)
    assert "\n" not in message and name in message and meaning in message
    assert caught.value.signal_name == name
    assert time.perf_counter() - t < 30
    assert os.getpid()  # this process is still here, and loads the model as usual
    with ProcessEngine.load(smollm2, n_ctx=1024, n_threads=1) as again:
        assert "".join(again.stream(QUESTION, GREEDY))


# -- a broken pipe protocol: lines that are not events or requests -------------------------------------

POLLUTION = [b"5\n", b"{}\n", b"[]\n", b"[5]\n", b'["p", 7]\n', b'["err", 1, 2, 3]\n', b"[" * 100_000 + b"\n",
             b"not json at all\n", b"\xff\xfe\n", b"x" * (3 << 20) + b"\n"]


def pollute_events(path: str, **kwargs: Any) -> Any:
    """Test seam: the engine process writes lines that are not events onto its event pipe, then fails its load."""
    import gc

    child = next(o for o in gc.get_objects() if type(o).__name__ == "_Child")
    for line in POLLUTION:
        os.write(child.events.fd, line)
    raise RuntimeError("polluted")


def _within(seconds: float, call: Any) -> Any:
    import threading

    result: list[Any] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, "hung"
    return result[0]


def test_lines_that_are_not_events_are_skipped(smollm2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fitchat.llama import process

    monkeypatch.setattr(process, "MAX_EVENT_BYTES", 1 << 20)  # the 3 MiB line is over it
    outcome = _within(60, lambda: ProcessEngine.load(smollm2, n_threads=1, loader=f"{__name__}:pollute_events"))
    assert isinstance(outcome, FitchatError) and str(outcome).endswith(": polluted"), outcome


def test_requests_that_are_not_objects_leave_the_engine_process_serving() -> None:
    import json
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "fitchat.llama.process", "0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        garbage = b"".join(line for line in POLLUTION if len(line) < 1000) + b'{"op": ["x"]}\n'
        proc.stdin.write(garbage + b'{"op": "call", "name": "count_tokens", "args": [[]]}\n')
        proc.stdin.flush()
        stdout = proc.stdout
        first = _within(60, stdout.readline)
        second = _within(60, stdout.readline)
        assert json.loads(first)[:2] == ["err", "KeyError"]  # {}: one error, not a dead engine
        assert json.loads(second)[:2] == ["err", "EngineError"]  # {"op": ["x"]}: unknown request
        third = json.loads(_within(60, stdout.readline))
        assert third[:2] == ["err", "EngineClosed"]  # the real request still answered
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
