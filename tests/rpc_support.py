"""``fitchat worker`` processes for the tests, and the one rule for tests that need llama.cpp's RPC backend.

Tests that need RPC take the ``rpc_build`` fixture (tests/conftest.py): without an RPC-enabled build they
skip, saying why, unless ``FITCHAT_REQUIRE_RPC=1`` is set (CI installs the RPC wheel), when they fail.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field

import pytest

from tests.processes import restore_ctrl_c

REQUIRE_ENV = "FITCHAT_REQUIRE_RPC"


def require_rpc_build() -> None:
    """Skip (or fail under FITCHAT_REQUIRE_RPC=1) when the installed llama.cpp has no RPC backend."""
    from fitchat.llama.rpc import RPC_FIX, rpc_available

    if rpc_available():
        return
    why = f"llama.cpp's RPC backend is not in this build: {RPC_FIX}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {why}")
    pytest.skip(f"{why} (set {REQUIRE_ENV}=1 to make this a failure)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Worker:
    """One ``fitchat worker`` process on 127.0.0.1."""

    port: int
    proc: subprocess.Popen[str]
    ready_line: str = ""
    lines: list[str] = field(default_factory=list)
    own_cache: str | None = None  # the cache folder made for it, removed when it ends

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._forget_cache()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._forget_cache()

    def _forget_cache(self) -> None:
        if self.own_cache:
            shutil.rmtree(self.own_cache, ignore_errors=True)


def _prepare_child(data_limit: int | None) -> None:
    restore_ctrl_c()
    if data_limit is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))


def start_worker(*args: str, port: int | None = None, timeout: float = 30.0, data_limit: int | None = None,
                 cache: bool = True) -> Worker:
    """Start ``fitchat worker`` (one thread; with ``cache``, a tensor cache of its own) and wait for its ready line.

    ``data_limit``: the worker's RLIMIT_DATA, so it claims all the RAM (the CPU device's free memory) but
    cannot allocate past the limit: a worker with less memory than it offers.
    """
    port = port or free_port()
    own_cache = None
    if cache and "--cache" not in args:
        own_cache = tempfile.mkdtemp(prefix="fitchat-worker-cache-")
        args = (*args, "--cache", own_cache)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fitchat", "worker", "--port", str(port), "--threads", "1", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        preexec_fn=lambda: _prepare_child(data_limit),
    )
    worker = Worker(port, proc, own_cache=own_cache)
    first = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            worker.lines.append(line.rstrip("\n"))
            first.set()
        first.set()

    threading.Thread(target=read, daemon=True).start()
    if first.wait(timeout) and worker.lines:
        worker.ready_line = worker.lines[0]
        return worker
    worker.kill()
    raise AssertionError(f"fitchat worker on port {port} did not get ready: {worker.lines!r}")


def data_in_use(worker: Worker) -> int:
    """The worker's data segment now (VmData), in bytes."""
    for line in open(f"/proc/{worker.proc.pid}/status"):
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmData in /proc")
