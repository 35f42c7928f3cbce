"""End to end: ``fitchat`` in a real terminal (tmux) with the real SmolLM2 model.

The test imports the model with ``fitchat import``, starts ``fitchat`` in a detached tmux session,
opens the model, types a question and reads the streamed answer off the screen with
``tmux capture-pane``. Skipped where tmux is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

FITCHAT = [sys.executable, "-m", "fitchat"]
WIDTH, HEIGHT = 100, 30


class Tmux:
    """One detached tmux session on a private server socket."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"fitchat-test-{uuid.uuid4().hex[:8]}"
        self.env = env

    def run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, env=self.env,
                              check=check, timeout=10)
        return proc.stdout

    def start(self, command: list[str], cwd: Path) -> None:
        line = " ".join(_quote(c) for c in command)
        self.run("new-session", "-d", "-s", "main", "-x", str(WIDTH), "-y", str(HEIGHT), "-c", str(cwd), line)

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.run("send-keys", "-t", "main", *(["-l"] if literal else []), *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "main", check=False)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if re.search(pattern, text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} never appeared on screen; last screen:\n{text}")

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", "main"], capture_output=True,
                              env=self.env).returncode == 0

    def kill(self) -> None:
        self.run("kill-server", check=False)


def reply_words(screen: str) -> list[str]:
    """The words of the assistant's reply in the chat column (right of the history sidebar's border)."""
    column = "\n".join(line.split("\u2595", 1)[1] if "\u2595" in line else line for line in screen.splitlines())
    if "Assistant" not in column:
        return []
    return re.findall(r"[A-Za-z]{2,}", column.rsplit("Assistant", 1)[1].split("Ask anything", 1)[0])


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def test_fitchat_in_tmux_streams_an_answer(smollm2: Path, tmp_path: Path, unreachable_endpoint: str) -> None:
    env = dict(os.environ, TERM="xterm-256color", HF_ENDPOINT=unreachable_endpoint, COLUMNS=str(WIDTH),
               LINES=str(HEIGHT))
    env.pop("TMUX", None)
    repo_root = REPO_ROOT
    imported = subprocess.run([*FITCHAT, "import", str(smollm2)], capture_output=True, text=True, env=env,
                              cwd=repo_root, timeout=60)
    assert imported.returncode == 0, imported.stderr
    tmux = Tmux(env)
    tmux.start(FITCHAT, repo_root)
    try:
        tmux.wait_for(r"On disk", timeout=20)
        tmux.wait_for(r"SmolLM2-135M-Instruct", timeout=20)
        tmux.keys("Enter")
        tmux.wait_for(r"ready", timeout=60)
        # A long story streams for many seconds: the partial reply is on screen while it is generated.
        tmux.keys("Write a very long story about a dragon who learns to bake bread.", literal=True)
        tmux.keys("Enter")
        seen_streaming = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = tmux.screen()
            if "generating" in text and len(reply_words(text)) >= 3:
                seen_streaming = True
                break
            if re.search(r"(ready|stopped) · [\d.]+ tok/s", text):
                break
            time.sleep(0.05)
        assert seen_streaming, f"the answer never showed while it was being generated; last screen:\n{text}"
        tmux.keys("Escape")  # stop it mid-stream, as a user would
        text = tmux.wait_for(r"stopped · [\d.]+ tok/s", timeout=30)
        assert len(reply_words(text)) >= 3, f"no answer on screen:\n{text}"
        assert "TTFT" in text and "/4,096" in text
        tmux.keys("C-q")
        deadline = time.monotonic() + 10
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not tmux.alive(), "ctrl+q did not quit"
    finally:
        tmux.kill()
