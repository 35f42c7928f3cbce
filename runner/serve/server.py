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
#: Connections served at once; past it a request gets a 503. A client that never finishes its headers holds
#: its connection (uvicorn has no header timeout; h11 bounds only the bytes), so the count is what is bounded.
MAX_CONNECTIONS = 128


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


class Serving:
    """One run of the server: :meth:`run` blocks until ctrl+c, SIGTERM or :meth:`stop` (from any thread)."""

    def __init__(
        self,
        config: ServeConfig,
        load_engine: Callable[[], ServedEngine],
        *,
        host: str = "127.0.0.1",
        sock: socket.socket | None = None,
        port: int = 8080,
        on_ready: Callable[[str], None] = print,
        on_stopping: Callable[[int], None] | None = None,
    ) -> None:
        import uvicorn

        self.state = state = ServeState(config)
        self.sock = sock or bind(host, port)
        self.url = url_for(host, self.sock.getsockname()[1])
        self._load_engine = load_engine
        self._on_ready = on_ready
        #: The server's event loop while :meth:`run` runs (None before and after).
        self.loop: asyncio.AbstractEventLoop | None = None

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                if not self.should_exit and on_stopping is not None:
                    on_stopping(state.active)
                super().handle_exit(sig, frame)

        self.server = Server(uvicorn.Config(
            create_app(state), log_level="warning", access_log=False, lifespan="off",
            timeout_graceful_shutdown=int(DRAIN_S), timeout_keep_alive=5, limit_concurrency=MAX_CONNECTIONS,
        ))

    def stop(self) -> None:
        """Ask the server to drain and stop (thread-safe)."""
        self.server.should_exit = True

    def run(self) -> int:
        """Serve until stopped; returns the exit status. A failed load raises (after the server stops)."""
        failure: list[BaseException] = []

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            serving = asyncio.create_task(self.server.serve(sockets=[self.sock]))
            try:
                await asyncio.to_thread(self.state.load, self._load_engine)
            except BaseException as exc:  # a failed load stops the server, then is raised
                failure.append(exc)
                self.server.should_exit = True
            else:
                self.state.start()
                if not self.server.should_exit:
                    self._on_ready(self.url)
            await serving

        try:
            with _quiet_signals():
                asyncio.run(main())
        finally:
            self.loop = None
            self.sock.close()
            self.state.close()
        if failure:
            raise failure[0]
        return 0


def serve(config: ServeConfig, load_engine: Callable[[], ServedEngine], **options: Any) -> int:
    """Serve until ctrl+c (see :class:`Serving` for the options); returns the exit status."""
    return Serving(config, load_engine, **options).run()
