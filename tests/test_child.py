"""fitchat's child processes start the same way from a venv and from the standalone bundle."""

from __future__ import annotations

import sys

import pytest

from fitchat import child


def test_a_child_is_python_dash_m_in_a_venv() -> None:
    assert child.module_command("fitchat.llama.process", "3") == [sys.executable, "-m", "fitchat.llama.process", "3"]


def test_in_the_bundle_a_child_is_the_bundle_with_the_child_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert child.module_command("fitchat.compare.worker") == [sys.executable, child.CHILD_FLAG, "fitchat.compare.worker"]


def test_only_fitchats_own_children_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError):
        child.module_command("os")
    assert child.run_child_module(["http.server"]) == 2
    assert "--fitchat-child takes one of" in capsys.readouterr().err


def test_any_text_crosses_the_pipe() -> None:
    """A path with bytes that are not UTF-8 (lone surrogates in Python) must not stop a message."""
    value = ["run", {"path": "/m/caf\udce9.gguf", "text": "héllo ☃"}]
    line = child.encode_line(value)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert child.parse_line(line) == value


def test_crash_line_names_the_assertion_not_gdbs_backtrace() -> None:
    from fitchat.child import crash_line

    stderr = (
        "llama_model_loader: loaded meta data\n"
        "/tmp/pip-install-x/vendor/llama.cpp/src/llama-model.cpp:1362: GGML_ASSERT(n_expert_used_max <= n_expert) failed\n"
        'warning: File "/x/python3.11-gdb.py" auto-loading has been declined\n'
        "30\t../sysdeps/unix/sysv/linux/wait4.c: No such file or directory.\n"
        "360\t../csu/libc-start.c: No such file or directory.\n"
    )
    assert crash_line(stderr) == "llama-model.cpp:1362: GGML_ASSERT(n_expert_used_max <= n_expert) failed"
    assert crash_line("just the end\n") == "just the end"
    assert crash_line("") == "no output"
    assert crash_line("error: \x1b[2J" + "x" * 1000, limit=50).count("\x1b") == 0
    assert len(crash_line("error " + "x" * 1000, limit=50)) <= 50
