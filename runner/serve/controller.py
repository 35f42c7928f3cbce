"""Serving an engine another program has loaded (the TUI's chat), from a background thread.

:class:`ServeController` runs :class:`fitchat.serve.server.Serving` (the same app, uvicorn, bind and
drain as ``fitchat serve``) on its own thread over an engine it does not own: stopping the server
leaves the engine loaded for its owner.

Sharing the engine. The owner's own use of it (a chat reply, counting tokens) and the API's
requests must not run on it at once: the engine does one thing at a time and refuses a second
reply. The rule is the server's own: whoever wants the engine waits in the server's queue
(:class:`fitchat.serve.app.EnginePool`), first come first served. An API request that arrives while
the owner holds its :meth:`ServeController.turn` waits, as it waits behind another request; the
owner's turn waits while an API request runs and until those queued before it are done, and may
give up waiting (``cancelled``). Nobody is refused and no reply is cut short, and the owner needs no
second lock: there is one queue for the one engine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fitchat.errors import FitchatError
from fitchat.serve.app import ServeConfig, ServedEngine, Slot, acquire_for
from fitchat.serve.server import DRAIN_S, Serving, bind

if TYPE_CHECKING:
    import socket

    from fitchat.llama.engine import ChatStats, SamplingSettings

#: How many ports after the one asked for are tried when it is taken.
NEXT_PORTS = 20
#: How often a waiting :meth:`ServeController.turn` asks ``cancelled`` (seconds).
TURN_POLL_S = 0.1
#: Longest wait for the server thread to start answering.
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServingStatus:
    """Whether an engine is served, where, and how busy the API has been."""

    serving: bool
    url: str | None = None  # e.g. http://127.0.0.1:8080/v1
    model_id: str | None = None
    served: int = 0  # API replies finished (or cut short by their client)
    in_flight: int = 0  # API requests running or waiting for the engine


class _Lent:
    """The owner's engine as the server sees it: the server's ``close`` leaves it loaded, and its
    ``cancel`` stops only a reply the server itself is running (never the owner's)."""

    def __init__(self, engine: ServedEngine) -> None:
        self.engine = engine
        self.n_ctx = engine.n_ctx
        self.served = 0
        self._replying = False

    @property
    def last_stats(self) -> ChatStats | None:
        return self.engine.last_stats

    @last_stats.setter
    def last_stats(self, value: ChatStats | None) -> None:
        self.engine.last_stats = value

    def stream(self, messages: Sequence[dict[str, str]], settings: SamplingSettings | None = None) -> Iterator[str]:
        return self._reply(self.engine.stream(messages, settings))

    def complete(self, prompt: str, settings: SamplingSettings | None = None) -> Iterator[str]:
        return self._reply(self.engine.complete(prompt, settings))

    def _reply(self, pieces: Iterator[str]) -> Iterator[str]:
        self._replying = True
        try:
            yield from pieces
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
            self._replying = False
            self.served += 1

    def cancel(self) -> None:
        if self._replying:
            self.engine.cancel()

    def close(self) -> None:
        """The owner closes the engine, not the server."""


class _Withdrawn:
    """A turn's stand-in for an HTTP client: it "disconnects" when the owner stops waiting."""

    def __init__(self) -> None:
        self.event = threading.Event()

    async def is_disconnected(self) -> bool:
        return self.event.is_set()


class ServeController:
    """Serve one already-loaded engine over the OpenAI-compatible API until :meth:`stop` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serving: Serving | None = None
        self._thread: threading.Thread | None = None
        self._lent: _Lent | None = None
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ starting and stopping

    def start(
        self,
        engine: ServedEngine,
        model_id: str,
        *,
        aliases: tuple[str, ...] = (),
        host: str = "127.0.0.1",
        port: int = 8080,
        next_free: bool = True,
        api_key: str | None = None,
    ) -> ServingStatus:
        """Serve ``engine`` on ``host:port`` (with ``next_free``, the first free one of the next
        :data:`NEXT_PORTS` when that is taken; port 0 picks any free one). Returns once it answers;
        :class:`FitchatError` (one line) when it cannot listen or is serving already."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise FitchatError(f"already serving on {self._url()}; stop serving first")
            sock = _listen(host, port, NEXT_PORTS if next_free and port else 0)
            lent = _Lent(engine)
            ready = threading.Event()
            serving = Serving(ServeConfig(model_id, aliases=aliases, api_key=api_key), lambda: lent,
                              host=host, sock=sock, on_ready=lambda _url: ready.set())
            self._failure = None
            thread = threading.Thread(target=self._run, args=(serving, ready), name="fitchat-serve", daemon=True)
            self._serving, self._thread, self._lent = serving, thread, lent
            thread.start()
        if not ready.wait(START_TIMEOUT_S) or self._failure is not None:
            self.stop()
            raise FitchatError(f"the server did not start: {self._failure or 'no answer'}")
        return self.status()

    def _run(self, serving: Serving, ready: threading.Event) -> None:
        try:
            serving.run()
        except BaseException as exc:  # noqa: BLE001 - reported by start(); the owner's program goes on
            self._failure = exc
        finally:
            ready.set()

    def stop(self) -> ServingStatus:
        """Stop serving: no new connections; replies in progress get up to :data:`DRAIN_S` seconds,
        then are cancelled. Returns when the server has stopped (bounded), with the last figures."""
        with self._lock:
            serving, thread, lent = self._serving, self._thread, self._lent
            if serving is None or thread is None:
                return self.status()
            serving.stop()
            thread.join(DRAIN_S + 5.0)
            self._serving = self._thread = None
        return ServingStatus(False, served=lent.served if lent is not None else 0)

    def serves(self, engine: object) -> bool:
        """Whether ``engine`` is the one being served."""
        lent = self._lent
        return lent is not None and lent.engine is engine and self.status().serving

    def status(self) -> ServingStatus:
        serving, thread, lent = self._serving, self._thread, self._lent
        if serving is None or thread is None or lent is None or not thread.is_alive():
            return ServingStatus(False, served=lent.served if lent is not None else 0)
        return ServingStatus(True, serving.url, serving.state.config.model_id, lent.served, serving.state.active)

    def _url(self) -> str:
        return self._serving.url if self._serving is not None else ""

    # ------------------------------------------------------------------ the owner's turn

    @contextmanager
    def turn(self, cancelled: Callable[[], bool] = lambda: False) -> Iterator[bool]:
        """Hold the engine for the owner's own use, in the server's queue (see the module's docstring).

        Yields True once the engine is the owner's (at once when nothing is served), False when
        ``cancelled()`` turned true while waiting: the owner then must not use the engine.
        """
        import asyncio
        import concurrent.futures

        serving, thread = self._serving, self._thread
        loop = serving.loop if serving is not None else None
        if serving is None or thread is None or loop is None:
            yield True
            return
        client = _Withdrawn()
        try:
            waiting = asyncio.run_coroutine_threadsafe(acquire_for(serving.state.pool, client), loop)
        except RuntimeError:  # the loop has just closed: nothing is served any more
            yield True
            return
        slot: Slot | None = None
        while True:
            try:
                slot = waiting.result(TURN_POLL_S)
                break
            except concurrent.futures.TimeoutError:
                if not thread.is_alive():  # the server stopped meanwhile; its replies are over
                    break
                if cancelled() and not client.event.is_set():
                    client.event.set()  # acquire_for gives up (passing on an engine handed over meanwhile)
            except Exception:  # noqa: BLE001 - withdrawn (Disconnected) or the server went away
                break
        if slot is not None and client.event.is_set():
            _release(serving, slot)  # handed over just as the owner stopped waiting
            slot = None
        if client.event.is_set():
            yield False
            return
        try:
            yield True
        finally:
            if slot is not None:
                _release(serving, slot)


def _release(serving: Serving, slot: Slot) -> None:
    loop = serving.loop
    if loop is not None:
        with suppress(RuntimeError):  # the loop closed: the server, and its queue, are gone
            loop.call_soon_threadsafe(serving.state.pool.release, slot)


def _listen(host: str, port: int, more: int) -> socket.socket:
    """A socket on ``port``, else on one of the ``more`` ports after it."""
    for candidate in range(port, min(port + more, 65535) + 1):
        try:
            return bind(host, candidate)
        except FitchatError:
            if candidate >= min(port + more, 65535):
                raise
    raise FitchatError(f"cannot listen on {host}:{port}")
