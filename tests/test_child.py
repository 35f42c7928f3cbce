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
