"""Starting fitchat's own child processes: the engine, a compare's worker, the smoke decode, a measurement.

Each is ``python -m MODULE ARGS``. In the standalone bundle there is no Python to run with ``-m``:
``sys.executable`` is the bundle itself, so the child is the bundle with :data:`CHILD_FLAG`, and the
bundle's entry point runs the module (:func:`run_child_module`). Only the modules named here can be run so.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from fitchat.format import printable

#: The bundle's first argument when it is started as one of fitchat's children.
CHILD_FLAG = "--fitchat-child"
#: The modules fitchat runs as children.
CHILD_MODULES = frozenset({
    "fitchat.llama.process", "fitchat.compare.worker", "fitchat.llama.smoke", "fitchat.model.measure",
    "fitchat.llama.rpc",
})


def module_command(module: str, *args: str) -> list[str]:
    """The command that runs ``python -m module args`` here, from a venv or from the standalone bundle."""
    if module not in CHILD_MODULES:
        raise ValueError(f"{module} is not one of fitchat's child processes")
    if getattr(sys, "frozen", False):
        return [sys.executable, CHILD_FLAG, module, *args]
    return [sys.executable, "-m", module, *args]


def run_child_module(argv: Sequence[str]) -> int:
    """In the bundle: run ``argv[0]`` (one of :data:`CHILD_MODULES`) as ``__main__`` with the rest as its arguments."""
    if not argv or argv[0] not in CHILD_MODULES:
        print(f"fitchat: error: {CHILD_FLAG} takes one of {', '.join(sorted(CHILD_MODULES))}", file=sys.stderr)
        return 2
    sys.argv = list(argv)
    try:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


#: Longest line read from a child (bytes); a longer one is skipped, never held. Real ones are far shorter.
MAX_LINE_BYTES = 256 << 20


# -- the pipe between fitchat and a child: one JSON value per line, both ways ---------------------------


def encode_line(value: Any) -> bytes:
    """``value`` as one compact JSON line, the way both sides of the pipe write.

    ASCII with escapes, so any ``str`` crosses: a file name with bytes that are not UTF-8 holds lone
    surrogates, which would fail a UTF-8 encode (and leave the other side waiting for the line).
    """
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def parse_line(line: bytes) -> Any:
    """One JSON line, or None when it is not JSON (a stray print, a damaged or absurdly nested line)."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


class LineWriter:
    """Writes one JSON value per line to a file descriptor, whole lines only, from any thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def send(self, value: Any) -> None:
        data = encode_line(value)
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]

def bounded_lines(stream: Any, limit: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """``stream``'s lines, each at most ``limit`` bytes: a longer line is dropped whole and never held."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # drop the rest of the overlong line
                line = stream.readline(1 << 20)
            continue
        yield line


#: A line of a dead child's stderr that says why it died: a failed GGML_ASSERT, a GGML_ABORT, an error.
_TELLING_LINE = re.compile(r"GGML_ASSERT|GGML_ABORT|\berror\b|\bfailed\b|terminate called|Fatal Python error", re.IGNORECASE)
#: The folder before ``file.cpp:123:`` in llama.cpp's assertion lines (the build machine's, of no use here).
_SOURCE_FOLDER = re.compile(r"^\S*/(?=[^/\s]+:\d+:)")


def crash_line(stderr: str, limit: int = 300) -> str:
    """One printable line of a dead child's stderr that says why: the last that names an assertion or an error,
    else the last line. A failed GGML_ASSERT is followed by gdb's backtrace where gdb is installed, whose last
    lines only name source files ("360 ../csu/libc-start.c: No such file or directory.")."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "no output"
    line = next((ln for ln in reversed(lines) if _TELLING_LINE.search(ln)), lines[-1])
    return printable(_SOURCE_FOLDER.sub("", line), limit, one_line=True)
