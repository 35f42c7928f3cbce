"""Time from starting ``fitchat`` to its first frame in a real terminal (tmux), against a bare Textual app.

    python bench/tui_first_paint.py [--runs 7]

Each run opens a tmux window running the command and polls ``tmux capture-pane`` until the
frame shows: for fitchat the home screen's "This machine" panel (first paint) and then its
"Backend" line (hardware detected in a worker, llama.cpp loaded). The baseline, in the same run,
is a minimal Textual app (Header, a Static, Footer) started the same way: the ratio is what
fitchat adds to Textual's own start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BARE_APP = """
from textual.app import App
from textual.widgets import Footer, Header, Static

class Bare(App):
    def compose(self):
        yield Header()
        yield Static("bare textual app")
        yield Footer()

Bare().run()
"""


def tmux(sock: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True).stdout


def time_to(sock: str, command: str, patterns: list[str], timeout: float = 30.0) -> list[float]:
    """Seconds until each pattern first shows on the window's screen."""
    name = f"w{uuid.uuid4().hex[:6]}"
    start = time.perf_counter()
    tmux(sock, "new-window", "-d", "-t", "base", "-n", name, command)
    found: list[float] = []
    deadline = start + timeout
    while len(found) < len(patterns) and time.perf_counter() < deadline:
        screen = tmux(sock, "capture-pane", "-p", "-t", f"base:{name}")
        while len(found) < len(patterns) and patterns[len(found)] in screen:
            found.append(time.perf_counter() - start)
        time.sleep(0.003)
    tmux(sock, "kill-window", "-t", f"base:{name}")
    if len(found) < len(patterns):
        raise SystemExit(f"{command!r} never showed {patterns[len(found)]!r}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        raise SystemExit("tmux is not installed")
    home = Path(tempfile.mkdtemp(prefix="fitchat-bench-"))
    env = {f"XDG_{v}_HOME": str(home / v) for v in ("DATA", "CACHE", "CONFIG")}
    env.update(HF_HUB_OFFLINE="1", TERM="xterm-256color")
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    bare = home / "bare.py"
    bare.write_text(BARE_APP)
    python = sys.executable
    sock = f"fitchat-bench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-s", "base", "-x", "100", "-y", "30", "sleep 3600"],
                   check=True, env=dict(os.environ, **env))
    try:
        bare_times, paint, hw = [], [], []
        for _ in range(args.runs):
            bare_times.append(time_to(sock, f"cd {ROOT} && env {exports} {python} {bare}", ["bare textual app"])[0])
            first, detected = time_to(sock, f"cd {ROOT} && env {exports} {python} -m fitchat", ["This machine", "Backend"])
            paint.append(first)
            hw.append(detected)
    finally:
        tmux(sock, "kill-server")
    b, p, h = statistics.median(bare_times), statistics.median(paint), statistics.median(hw)
    print(f"bare Textual app: first frame median {b * 1000:.0f} ms "
          f"(min {min(bare_times) * 1000:.0f}, max {max(bare_times) * 1000:.0f})")
    print(f"fitchat: first paint median {p * 1000:.0f} ms (min {min(paint) * 1000:.0f}, max {max(paint) * 1000:.0f}), "
          f"{p / b:.2f}x the bare app; hardware on screen at {h * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
