"""``fitchat worker``: its ready line, ctrl+c, and the one-line errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from fitchat.paths import cache_dir
from tests.rpc_support import free_port, start_worker


def test_worker_says_it_is_ready_and_ctrl_c_ends_it(rpc_build: None) -> None:
    worker = start_worker(cache=False)
    try:
        line = worker.ready_line
        assert line.startswith(f"listening on {worker.endpoint}: lending CPU "), line
        assert "free of" in line
        with socket.create_connection(("127.0.0.1", worker.port), timeout=2):
            pass  # it accepts connections
        worker.proc.send_signal(signal.SIGINT)
        assert worker.proc.wait(10) == 0
        time.sleep(0.2)
        assert f"worker on {worker.endpoint} stopped" in worker.lines
        assert not (cache_dir() / "rpc").exists()  # no tensor cache unless --cache asks for one
    finally:
        worker.kill()


def test_worker_on_a_port_in_use_is_one_line(rpc_build: None) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "fitchat", "worker", "--host", "0.0.0.0", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "NO authentication" in proc.stderr  # a non-loopback host is warned about, loudly
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fitchat: error:")]
    assert errors == [f"fitchat: error: cannot listen on 0.0.0.0:{port}: Address already in use"], proc.stderr


def test_worker_bad_arguments_are_one_line(rpc_build: None) -> None:
    for args, words in ((["--port", "0"], "the port must be a number"), (["--device", "NOPE"], "no device named"),
                        (["--host", "bad host"], "is not a host name"), (["--threads", "0"], "from 1 to 512"),
                        (["--threads", "513"], "from 1 to 512"), (["--threads", "1" + "0" * 23], "from 1 to 512"),
                        (["--host", "a..b"], "is not a host name")):
        proc = subprocess.run([sys.executable, "-m", "fitchat", "worker", "--port", str(free_port()), *args]
                              if "--port" not in args else [sys.executable, "-m", "fitchat", "worker", *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode in (1, 2), (args, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
