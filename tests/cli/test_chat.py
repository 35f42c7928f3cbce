"""``fitchat chat``: one-shot, --json, stdin, the REPL (in a real pseudo-terminal), history commands,
and a kill -9 in the middle of a reply followed by a resume."""

from __future__ import annotations

import io
import json
import os
import pty
import resource
import select
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fitchat.chat.history import History
from fitchat.chat.session import ChatSession
from fitchat.cli.chat import JSON_STATS, Repl
from fitchat.cli.main import main
from fitchat.llama.engine import ChatEngine, SamplingSettings

FAST = ["--threads", "1", "--temp", "0", "--seed", "1"]


def test_one_shot_streams_the_reply_and_saves_nothing(smollm2: Path, capsys: pytest.CaptureFixture[str],
                                                      private_home: Path) -> None:
    rc = main(["chat", str(smollm2), "-p", "What is the capital of France?", "--max-tokens", "40", *FAST])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "Paris" in out and out.endswith("\n")
    assert "Traceback" not in err
    assert History().list_conversations() == []


def test_json(smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["chat", str(smollm2), "-p", "Name a fruit.", "--json", "--ctx", "1024", "--max-tokens", "16", *FAST])
    out, _ = capsys.readouterr()
    assert rc == 0
    data = json.loads(out)
    assert set(data) == {"reply", "stats"}
    assert data["reply"].strip()
    assert list(data["stats"]) == [*JSON_STATS, "devices"]
    assert data["stats"]["devices"] == [{"name": "CPU", "layers": 31}]  # SmolLM2: 30 blocks and the output layer
    s = data["stats"]
    assert 0 < s["completion_tokens"] <= 16 and s["prompt_tokens"] > 10
    assert (s["n_ctx"], s["n_threads"], s["gpu_layers"]) == (1024, 1, 0)
    assert s["ttft_s"] > 0 and s["decode_tokens_per_s"] > 0 and s["prompt_tokens_per_s"] > 0


def test_cpu_moe_on_a_dense_model_keeps_no_experts_in_ram(smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["chat", str(smollm2), "-p", "Hi.", "--json", "--ctx", "512", "--max-tokens", "4", "--cpu-moe", "4",
               *FAST])
    out, err = capsys.readouterr()
    assert rc == 0, err
    s = json.loads(out)["stats"]
    assert s["moe_cpu_layers"] == 0 and s["completion_tokens"] > 0  # SmolLM2 has no experts to keep in RAM
    assert "retrying" not in err


def test_prompt_on_stdin_and_system_prompt(smollm2: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2 + 2?\n"))
    rc = main(["chat", str(smollm2), "--system", "You are a calculator.", "--json", "--max-tokens", "24", *FAST])
    out, _ = capsys.readouterr()
    assert rc == 0 and json.loads(out)["reply"].strip()


def test_model_references_starter_and_repo_quant(smollm2: Path, private_home: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "starter", "-p", "hi", *FAST]) == 1
    assert "fitchat pull starter" in capsys.readouterr().err
    kept = private_home / "cache" / "fitchat" / "starter" / smollm2.name  # where 'fitchat pull starter' puts it
    kept.parent.mkdir(parents=True)
    kept.symlink_to(smollm2)
    for ref in ("starter", "HuggingFaceTB/SmolLM2-135M-Instruct:Q4_1"):
        assert main(["chat", ref, "-p", "Name a fruit.", "--json", "--max-tokens", "8", *FAST]) == 0
        assert json.loads(capsys.readouterr().out)["reply"].strip()


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["chat"], "", "name a model"),
        (["chat", "/nowhere/model.gguf", "-p", "hi"], "", "no such file"),
        (["chat", "MODEL", "-p", "hi", "--max-tokens", "0"], "", "--max-tokens must be at least 1"),
        (["chat", "MODEL", "-p", "hi", "--temp", "-1"], "", "--temp must be 0 or more"),
        (["chat", "MODEL", "-p", "hi", "--temp", "nan"], "", "--temp must be 0 or more"),
        (["chat", "MODEL", "-p", "hi", "--repeat-penalty", "0"], "", "--repeat-penalty must be more than 0"),
        (["chat", "MODEL"], "   \n", "no prompt"),
        (["chat", "--delete", "99"], "", "no conversation 99"),
    ],
)
def test_errors_are_one_line(argv: list[str], stdin: str, message: str, smollm2: Path,
                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main([str(smollm2) if a == "MODEL" else a for a in argv])
    _, err = capsys.readouterr()
    assert rc in (1, 2)
    assert err.startswith("fitchat: error: ") and message in err and err.count("\n") == 1


def test_repl_commands_multiline_and_history(smollm2: Path, tmp_path: Path) -> None:
    engine = ChatEngine.load(smollm2, n_ctx=2048, n_threads=1)
    history = History()
    try:
        session = ChatSession(engine, history, settings=SamplingSettings(temperature=0.0, max_tokens=24),
                              model_name="smollm2", quant="Q4_1")
        saved = tmp_path / "chat.md"
        lines = iter([
            "/help", '"""First line', "second line", 'third"""', "/stats", "/system Be brief.", "/system",
            "/regen", "Continue \\", "please.", f"/save {saved}", "/nope", "/clear", "Hello!",
        ])

        def read_line(prompt: str) -> str:
            try:
                return next(lines)
            except StopIteration:
                raise EOFError from None

        out, err = io.StringIO(), io.StringIO()
        assert Repl(session, out, err, read_line=read_line).loop() == 0
        log = err.getvalue()
        assert "/system TEXT" in log and "system prompt set" in log and "system prompt: Be brief." in log
        assert "reply tokens at" in log and "unknown command /nope" in log and f"saved to {saved}" in log
        assert "new conversation" in log
        first, second = sorted(history.list_conversations(), key=lambda c: c.id)
        conv = history.load(first.id)
        assert [m.role for m in conv.messages] == ["user", "assistant", "user", "assistant"]
        assert conv.messages[0].content == "First line\nsecond line\nthird"
        assert conv.messages[2].content == "Continue \nplease."
        assert conv.settings["system_prompt"] == "Be brief."
        assert conv.messages[1].stats["completion_tokens"] > 0
        assert saved.read_text().startswith("# First line second line third")
        assert [m.content for m in history.load(second.id).messages][0] == "Hello!"
        assert out.getvalue().count("\n") >= 4  # every reply ends its line
    finally:
        history.close()
        engine.close()


# ---------------------------------------------------------------------- in a real terminal


class Terminal:
    """``fitchat chat`` in a pseudo-terminal: type, read, ctrl+c, ctrl+d, kill."""

    def __init__(self, argv: list[str], *, file_size_limit: int | None = None) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: stdin/stdout/stderr are the terminal
            if file_size_limit is not None:  # writes past this offset fail, as on a full disk
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
            os.execv(sys.executable, [sys.executable, "-m", "fitchat", *argv])
        self.buffer = ""
        self.exit_code: int | None = None
        self._fd_open = True

    def _reaped(self, status: int) -> int:
        self.exit_code = os.waitstatus_to_exitcode(status)
        self._close_fd()
        return self.exit_code

    def _close_fd(self) -> None:
        if self._fd_open:
            self._fd_open = False
            os.close(self.fd)

    def close(self) -> None:
        """Kill the child if it still runs, reap it and close the terminal (idempotent)."""
        if self.exit_code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self._reaped(os.waitpid(self.pid, 0)[1])
            except ChildProcessError:
                self.exit_code = -signal.SIGKILL
        self._close_fd()

    def read_until(self, text: str, timeout: float = 60.0, start: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while text not in self.buffer[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} never appeared; the terminal shows:\n{self.buffer[-2000:]}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    self.buffer += os.read(self.fd, 65536).decode("utf-8", errors="replace")
                except OSError:  # the child is gone
                    break
        return self.buffer.index(text, start) + len(text)

    def read_chars(self, n: int, start: int, timeout: float = 60.0) -> int:
        """Wait until ``n`` characters have arrived after ``start``."""
        deadline = time.monotonic() + timeout
        while len(self.buffer) - start < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"output stalled; the terminal shows:\n{self.buffer[-2000:]}")
            if select.select([self.fd], [], [], min(left, 0.5))[0]:
                self.buffer += os.read(self.fd, 65536).decode("utf-8", errors="replace")
        return len(self.buffer)

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exit_code is not None:
                return self.exit_code
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return self._reaped(status)
            try:
                if select.select([self.fd], [], [], 0.2)[0]:
                    self.buffer += os.read(self.fd, 65536).decode("utf-8", errors="replace")
            except OSError:
                time.sleep(0.05)
        self.close()
        raise AssertionError("fitchat chat did not exit")


@pytest.fixture
def open_terminal() -> Iterator[Callable[[list[str]], Terminal]]:
    """Start ``fitchat`` in terminals; whatever still runs at the end of the test is killed and reaped."""
    opened: list[Terminal] = []

    def start(argv: list[str], **options: Any) -> Terminal:
        opened.append(Terminal(argv, **options))
        return opened[-1]

    yield start
    for term in opened:
        term.close()


REPL_ARGS = ["--threads", "1", "--temp", "0", "--ctx", "2048"]
STORY = "Write a very long story about a dragon who learns to bake bread.\r"


def test_repl_in_a_terminal_ctrl_c_stops_a_reply_ctrl_d_leaves(smollm2: Path, open_terminal: Any) -> None:
    term = open_terminal(["chat", str(smollm2), *REPL_ARGS])
    mark = term.read_until(">>> ")
    assert "Chatting with" in term.buffer
    term.type(STORY)
    mark = term.read_until("bread.", start=mark)
    mark = term.read_chars(40, start=mark)  # the reply is streaming
    term.type("\x03")
    mark = term.read_until("(stopped)", timeout=5, start=mark)
    mark = term.read_until(">>> ", start=mark)
    term.type("/stats\r")
    mark = term.read_until("cancelled", timeout=10, start=mark)
    term.read_until(">>> ", start=mark)
    term.type("\x04")
    assert term.wait() == 0
    conv = History().list_conversations()[0]
    messages = History().load(conv.id).messages
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].finish_reason == "cancelled" and messages[1].content


def test_kill_9_mid_reply_loses_only_that_reply_then_resume(smollm2: Path, private_home: Path,
                                                            open_terminal: Any) -> None:
    term = open_terminal(["chat", str(smollm2), *REPL_ARGS, "--max-tokens", "600"])
    mark = term.read_until(">>> ")
    term.type("What is the capital of France?\r")
    mark = term.read_until(">>> ", start=mark)  # first reply complete
    term.type(STORY)
    mark = term.read_until("bread.", start=mark)
    term.read_chars(40, start=mark)  # the second reply is streaming
    os.kill(term.pid, signal.SIGKILL)
    assert term.wait() == -signal.SIGKILL

    db_path = private_home / "data" / "fitchat" / "history.sqlite3"
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with History() as h:
        conv = h.list_conversations()[0]
        messages = h.load(conv.id).messages
    assert [m.role for m in messages] == ["user", "assistant", "user"]
    assert "Paris" in messages[1].content
    assert messages[2].content == STORY.rstrip("\r")

    term = open_terminal(["chat", "--resume", str(conv.id), *REPL_ARGS, "--max-tokens", "24"])
    mark = term.read_until("/regen answers it")
    mark = term.read_until(">>> ", start=mark)
    term.type("/regen\r")
    mark = term.read_until(">>> ", start=mark)
    term.type("Thank you!\r")
    term.read_until(">>> ", start=mark)
    term.type("\x04")
    assert term.wait() == 0
    with History() as h:
        messages = h.load(conv.id).messages
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert messages[3].finish_reason == "length" and messages[3].content


def test_engine_killed_mid_reply_is_one_line_exit_1_and_the_reply_so_far_is_saved(smollm2: Path,
                                                                                  open_terminal: Any) -> None:
    import psutil

    term = open_terminal(["chat", str(smollm2), *REPL_ARGS, "--max-tokens", "600"])
    mark = term.read_until(">>> ")
    term.type(STORY)
    mark = term.read_until("bread.", start=mark)
    mark = term.read_chars(40, start=mark)  # the reply is streaming, from the engine process
    (engine,) = psutil.Process(term.pid).children()
    engine.send_signal(signal.SIGKILL)
    assert term.wait() == 1
    errors = [line for line in term.buffer.splitlines() if "fitchat: error:" in line]
    assert len(errors) == 1 and "SIGKILL" in errors[0] and "out-of-memory killer" in errors[0]
    assert "Traceback" not in term.buffer
    with History() as h:
        messages = h.load(h.list_conversations()[0].id).messages
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].finish_reason == "interrupted" and messages[1].content.strip()
    assert messages[1].content.strip()[:20] in term.buffer.replace("\r\n", "\n")


def test_history_commands(smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with History() as h:
        conv = h.create("HuggingFaceTB/SmolLM2-135M-Instruct", quant="Q4_1", model_path=str(smollm2))
        h.add_message(conv.id, "user", "Hi there")
        h.add_message(conv.id, "assistant", "Hello!")
    assert main(["chat", "--list"]) == 0
    out = capsys.readouterr().out
    assert "Hi there" in out and "SmolLM2-135M-Instruct:Q4_1" in out
    assert main(["chat", "--list", "--json"]) == 0
    listed: Any = json.loads(capsys.readouterr().out)
    assert listed[0]["id"] == conv.id and listed[0]["messages"] == 2
    assert main(["chat", "--export", str(conv.id)]) == 0
    assert "## Assistant\n\nHello!" in capsys.readouterr().out
    # Resuming one-shot continues the saved conversation and saves the new turn.
    assert main(["chat", "--resume", str(conv.id), "-p", "How are you?", "--max-tokens", "8", *FAST]) == 0
    capsys.readouterr()
    with History() as h:
        assert h.get(conv.id).message_count == 4
    assert main(["chat", "--delete", str(conv.id)]) == 0
    assert "deleted conversation" in capsys.readouterr().out
    assert main(["chat", "--list"]) == 0
    assert "no saved conversations" in capsys.readouterr().out


def test_load_setting_levers_from_fit_reach_the_chat_load(smollm2: Path) -> None:
    """`fitchat fit` names levers (a q8_0 KV cache, a window-sized SWA cache); `chat` takes the same flags."""
    import llama_cpp

    from fitchat.cli.chat import _load, _resolve
    from fitchat.cli.main import build_parser

    args = build_parser().parse_args(["chat", str(smollm2), "--kv-type", "q8_0", "--swa-window", "--n-ubatch", "256",
                                      "--ctx", "1024", "--threads", "1"])
    engine = _load(_resolve(str(smollm2)), args)
    try:
        assert engine.load_kwargs["type_k"] == llama_cpp.GGML_TYPE_Q8_0
        assert engine.load_kwargs["type_v"] == llama_cpp.GGML_TYPE_Q8_0
        assert engine.load_kwargs["swa_full"] is False
        assert engine.load_kwargs["n_ubatch"] == 256
        assert engine.n_ctx == 1024
    finally:
        engine.close()
