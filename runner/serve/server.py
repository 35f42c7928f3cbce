"""Running the app on uvicorn: bind first, load while answering /health with 503, drain on ctrl+c.

The socket is bound before the model loads, so a busy port is one line at once rather than after a
long load. ctrl+c (or SIGTERM) stops accepting connections and lets replies in progress finish for
up to :data:`DRAIN_S` seconds; what is still running then is cancelled, the engines are closed and
the command exits 0.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fitchat.errors import FitchatError
from fitchat.serve.app import ServeConfig, ServedEngine, ServeState, create_app

#: Longest wait for replies in progress after ctrl+c (seconds).
DRAIN_S = 10.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/v1"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; one clear line when that is not possible."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise FitchatError(f"cannot listen on {host}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise FitchatError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


@contextmanager
def _quiet_signals() -> Iterator[None]:
    """uvicorn handles SIGINT/SIGTERM while it runs and raises them again once it has shut down; land
    that second delivery here, so a drained ctrl+c ends with status 0 instead of KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(
    config: ServeConfig,
    load_engine: Callable[[], ServedEngine],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    on_ready: Callable[[str], None] = print,
    on_stopping: Callable[[int], None] | None = None,
    sock: socket.socket | None = None,
) -> int:
    """Serve until ctrl+c; returns the exit status. Load failures raise (after the server stops)."""
    import uvicorn

    state = ServeState(config)
    sock = sock or bind(host, port)
    actual_port = sock.getsockname()[1]

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit and on_stopping is not None:
                on_stopping(state.active)
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(
        create_app(state), log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=int(DRAIN_S), timeout_keep_alive=5,
    ))
    failure: list[BaseException] = []

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await asyncio.to_thread(state.load, load_engine)
        except BaseException as exc:  # a failed load stops the server, then is raised
            failure.append(exc)
            server.should_exit = True
        else:
            state.start()
            if not server.should_exit:
                on_ready(url_for(host, actual_port))
        await serving

    try:
        with _quiet_signals():
            asyncio.run(main())
    finally:
        sock.close()
        state.close()
    if failure:
        raise failure[0]
    return 0
