"""``fitchat worker``: lend this machine's memory and compute to another fitchat over llama.cpp's RPC.

The server is llama.cpp's own (``ggml_backend_rpc_start_server`` in libggml-rpc), called through ctypes
rather than by starting llama.cpp's ``rpc-server`` program: llama-cpp-python ships the libraries but not
that program, so a wheel built with ``-DGGML_RPC=ON`` has the server function and nothing else to find.
The function blocks for as long as it serves, so it runs in a daemon thread; the main thread only waits,
which keeps ctrl+c (and SIGTERM) working: they end the process cleanly with one line.

The protocol has no authentication (llama.cpp calls it insecure): a worker binds to 127.0.0.1 unless
``--host`` says otherwise, and then warns. Reach a worker on another machine through an SSH tunnel
(``ssh -L 50052:localhost:50052 worker-host``) or on a private network you trust.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, TextIO

#: Seconds the worker waits for its server to accept connections before it gives up.
READY_TIMEOUT_S = 15.0
#: ggml's GGML_MAX_N_THREADS: a CPU worker given more dies at the first graph a client sends.
MAX_THREADS = 512

WARNING = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
WARNING: this worker listens on {host}, not only on this machine.
llama.cpp's RPC protocol has NO authentication and NO encryption: anyone who can
reach {host}:{port} can use this machine's memory and run computations on it.
Use it only on a private network you trust, or keep the default (127.0.0.1) and
reach it through an SSH tunnel: ssh -L {port}:localhost:{port} THIS-HOST
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


def register(subparsers: Any) -> None:
    from fitchat.llama.rpc import DEFAULT_PORT

    p = subparsers.add_parser(
        "worker",
        help="lend this machine's memory and compute to another fitchat (llama.cpp RPC)",
        description="Start llama.cpp's RPC server here, so that 'fitchat chat --rpc HOST:PORT' on another "
        "machine can put layers on this one. The protocol has no authentication: the worker listens on "
        "127.0.0.1 unless --host says otherwise; reach it through an SSH tunnel or a private network.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: physical cores)")
    p.add_argument("--device", action="append", default=[], metavar="D",
                   help="a device to lend, as llama.cpp names it (CPU, CUDA0, Metal …); repeat for more "
                   "(default: every GPU, else the CPU)")
    p.add_argument("--cache", nargs="?", const="", default=None, metavar="DIR",
                   help="keep the tensors the worker is sent, so a reload sends less; in DIR, or fitchat's cache "
                   "folder (rpc/) without one. Off by default, as in llama.cpp's rpc-server: the cache grows with "
                   "every model sent, and anyone who can reach the worker can fill it")
    p.set_defaults(func=run)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _private_stdout() -> TextIO:
    """Our own copy of stdout; file descriptor 1 then goes to stderr, so llama.cpp's own prints (``Accepted
    client connection`` …) never mix into what the worker says on stdout."""
    saved = os.dup(1)
    sys.stdout.flush()
    os.dup2(2, 1)
    return os.fdopen(saved, "w", buffering=1)


def _wait_ready(host: str, port: int, server: threading.Thread, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.is_alive():
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def run(args: argparse.Namespace) -> int:
    from fitchat.errors import FitchatError
    from fitchat.format import human_bytes
    from fitchat.llama import rpc
    from fitchat.paths import cache_dir

    rpc.require_rpc()
    (endpoint,) = rpc.parse_endpoints(f"{args.host}:{args.port}")
    host = endpoint.rpartition(":")[0]
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise FitchatError(f"--threads must be from 1 to {MAX_THREADS}")
    cache: str | None = None
    if args.cache is not None:
        cache = os.path.abspath(args.cache) if args.cache else str(cache_dir() / "rpc")
        try:
            os.makedirs(cache, exist_ok=True)
        except OSError as exc:
            raise FitchatError(f"cannot use {cache} as the worker's cache: {exc.strerror or exc}") from None
    if not _loopback(host):
        print(WARNING.format(host=host, port=args.port), file=sys.stderr, flush=True)
    # A port in use: say so in one line (llama.cpp would only print "Failed to create server socket").
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((socket.gethostbyname(host), args.port))
    except OSError as exc:
        raise FitchatError(f"cannot listen on {endpoint}: {exc.strerror or exc}") from None
    devices = rpc.worker_devices(args.device)
    threads = args.threads or min(_physical_cores(), MAX_THREADS)

    out = _private_stdout()
    server = threading.Thread(target=rpc.start_server, args=(endpoint, devices, threads, cache),
                              name="rpc-server", daemon=True)
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        server.start()
        if not _wait_ready(host, args.port, server, READY_TIMEOUT_S):
            raise FitchatError(f"llama.cpp's RPC server did not start on {endpoint} (see its messages above)")
        offered = ", ".join(f"{d.name} {human_bytes(d.free_bytes)} free of {human_bytes(d.total_bytes)}"
                            for d in devices)
        print(f"listening on {endpoint}: lending {offered}; {threads} threads; ctrl+c to stop", file=out, flush=True)
        while server.is_alive() and not stop.is_set():
            stop.wait(0.5)
        if not server.is_alive():
            raise FitchatError(f"llama.cpp's RPC server on {endpoint} stopped (see its messages above)")
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"worker on {endpoint} stopped", file=out, flush=True)
    out.flush()
    sys.stderr.flush()
    # The server thread sits in accept() inside llama.cpp and cannot be told to stop; leave now.
    os._exit(0)


def _physical_cores() -> int:
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:  # pragma: no cover
        return os.cpu_count() or 1
