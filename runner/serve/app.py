"""The HTTP app: OpenAI's routes over a pool of engines, one request per engine at a time, first come first served.

An engine is not thread-safe and does one reply at a time, so each engine has its own worker thread
and a request holds an engine from its first token to its last. Requests beyond the free engines
wait in arrival order. A client that goes away cancels its own reply (the engine's ``cancel``,
which takes effect within one graph node) and the engine passes to the next request in line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fitchat.errors import FitchatError
from fitchat.format import quoted
from fitchat.serve import api
from fitchat.serve.api import ApiError, Job

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from fitchat.llama.engine import ChatStats, SamplingSettings

#: How often a waiting or generating request checks whether its client is still there (seconds).
DISCONNECT_POLL_S = 0.25
#: Longest wait for a request's whole body (seconds); 8 MiB arrives well within it on any real link.
BODY_TIMEOUT_S = 60.0


class ServedEngine(Protocol):
    """What the server needs of an engine: the part of ``fitchat.llama.engine.ChatEngine`` it uses."""

    n_ctx: int
    last_stats: ChatStats | None

    def stream(self, messages: Sequence[dict[str, str]], settings: SamplingSettings | None = None) -> Iterator[str]: ...

    def complete(self, prompt: str, settings: SamplingSettings | None = None) -> Iterator[str]: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ServeConfig:
    """What is served and to whom."""

    model_id: str  # the id /v1/models lists and replies carry
    aliases: tuple[str, ...] = ()  # other names a request's "model" may use for it
    api_key: str | None = None
    parallel: int = 1
    created: int = field(default_factory=api.now)

    def knows(self, name: str) -> bool:
        return name == self.model_id or name in self.aliases


@dataclass
class Slot:
    """One engine and the one thread that drives it."""

    engine: ServedEngine
    worker: ThreadPoolExecutor


class EnginePool:
    """Free engines handed to waiting requests strictly in arrival order."""

    def __init__(self) -> None:
        self._free: deque[Slot] = deque()
        self._waiters: deque[asyncio.Future[Slot]] = deque()

    def add(self, slot: Slot) -> None:
        self.release(slot)

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> Slot:
        if self._free and not self.waiting:
            return self._free.popleft()
        fut: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # handed over just as the request went away: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self, slot: Slot) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(slot)
                return
        self._free.append(slot)


class ServeState:
    """The server's engines and whether they are loaded yet."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.pool = EnginePool()
        self.slots: list[Slot] = []
        self.ready = False
        self.active = 0  # requests holding or waiting for an engine

    def load(self, load_engine: Any) -> None:
        """Load ``config.parallel`` engines with ``load_engine()`` (blocking; run it off the event loop)."""
        for i in range(self.config.parallel):
            slot = Slot(load_engine(), ThreadPoolExecutor(1, thread_name_prefix=f"fitchat-engine-{i}"))
            self.slots.append(slot)

    def start(self) -> None:
        """Open for requests (on the event loop, after :meth:`load`)."""
        for slot in self.slots:
            self.pool.add(slot)
        self.ready = True

    def close(self) -> None:
        """Stop every reply and free every engine."""
        self.ready = False
        for slot in self.slots:
            slot.engine.cancel()
            slot.worker.shutdown(wait=True)
            slot.engine.close()
        self.slots.clear()


# ---------------------------------------------------------------- running one job


class Disconnected(Exception):
    """The client went away."""


class Client(Protocol):
    """Who waits for an engine: an HTTP request, or another program's own turn (fitchat.serve.controller)."""

    async def is_disconnected(self) -> bool: ...


def _engine_error(exc: FitchatError) -> ApiError:
    from fitchat.llama.engine import ChatTemplateError, ContextOverflow

    message = str(exc)
    if isinstance(exc, ContextOverflow):
        return ApiError(400, message, param="messages", code="context_length_exceeded")
    if isinstance(exc, ChatTemplateError):
        return ApiError(400, message, param="messages", code="template_error")
    return ApiError(500, message, type="server_error", code="engine_error")


FINISH = {"stop": "stop", "length": "length", "context": "length", "cancelled": "stop"}


def _work(slot: Slot, job: Job, emit: Any, abandon: threading.Event) -> None:
    """Runs on the engine's thread: the reply, stop sequences cut out, handed to ``emit`` piece by piece."""
    engine = slot.engine
    scanner = api.StopScanner(job.stops)
    try:
        pieces = engine.stream(job.message_dicts(), job.settings) if job.kind == "chat" else \
            engine.complete(job.prompt, job.settings)
        try:
            for piece in pieces:
                text = scanner.feed(piece)
                if text:
                    emit(("text", text))
                if scanner.stopped or abandon.is_set():
                    break
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # ends the engine's reply here (its stats count what was sampled)
        if not scanner.stopped:
            tail = scanner.flush()
            if tail:
                emit(("text", tail))
        stats = engine.last_stats
        prompt_tokens, completion_tokens = (stats.prompt_tokens, stats.completion_tokens) if stats else (0, 0)
        finish = "stop" if scanner.stopped else FINISH.get(stats.finish_reason if stats else "stop", "stop")
        emit(("end", finish, api.usage(prompt_tokens, completion_tokens)))
    except FitchatError as exc:
        emit(("error", _engine_error(exc)))
    except Exception as exc:  # noqa: BLE001 - a reply's failure is its request's 500, not the server's end
        emit(("error", ApiError(500, f"{type(exc).__name__}: {exc}", type="server_error", code="engine_error")))


async def acquire_for(pool: EnginePool, request: Client) -> Slot:
    """An engine for this request, in arrival order; :class:`Disconnected` if the client leaves first."""
    task = asyncio.ensure_future(pool.acquire())
    try:
        while True:
            done, _ = await asyncio.wait([task], timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise Disconnected
    except BaseException:
        if not task.done():
            task.cancel()  # acquire() passes on an engine it was handed meanwhile
        elif not task.cancelled() and task.exception() is None:
            pool.release(task.result())
        raise


async def run_job(state: ServeState, job: Job, request: Request) -> AsyncIterator[tuple[Any, ...]]:
    """The job's events: ("text", str)..., then ("end", finish_reason, usage) or ("error", ApiError).

    Ends early, without an end event, when the client goes away; the engine is then cancelled and
    handed on only after its thread has finished with it.
    """
    import anyio

    state.active += 1
    try:
        slot = await acquire_for(state.pool, request)
    except Disconnected:  # gone while waiting: nobody to answer, nothing to log
        state.active -= 1
        return
    except BaseException:
        state.active -= 1
        raise
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    abandon = threading.Event()

    def emit(event: tuple[Any, ...]) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    done = loop.run_in_executor(slot.worker, _work, slot, job, emit, abandon)
    try:
        while True:
            try:
                event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            yield event
            if event[0] != "text":
                return
    finally:
        if not done.done():
            abandon.set()
            slot.engine.cancel()
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await done
        state.pool.release(slot)
        state.active -= 1


# ---------------------------------------------------------------- the routes


def _check_key(state: ServeState, request: Request) -> None:
    key = state.config.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")


def _check_ready(state: ServeState) -> None:
    if not state.ready:
        raise ApiError(503, "the model is still loading; try again shortly", type="server_error", code="loading")


async def _read_body(request: Request) -> bytes:
    """The body, bounded in size while it arrives (413) and in time (408: a body that never ends holds no
    connection for good; uvicorn itself waits for a body forever)."""
    length = request.headers.get("content-length", "")
    too_big = ApiError(413, f"the request body is larger than {api.MAX_BODY_BYTES} bytes", code="body_too_large")
    if length.isdigit() and int(length) > api.MAX_BODY_BYTES:
        raise too_big

    async def collect() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > api.MAX_BODY_BYTES:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(collect(), BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s",
                       code="body_timeout") from None


def _model_for(state: ServeState, data: dict[str, Any]) -> str:
    name = data.get("model")
    if name is None:
        return state.config.model_id
    if not isinstance(name, str):
        raise api.bad("'model' must be a string", "model")
    if not state.config.knows(name):
        raise ApiError(404, f"the model {quoted(name)} is not served here; this server serves "
                       f"{quoted(state.config.model_id)}", param="model", code="model_not_found")
    return state.config.model_id


def create_app(state: ServeState) -> Starlette:
    """The Starlette app over ``state``."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def error_response(exc: ApiError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(ApiError(exc.status_code, str(exc.detail), type=kind))

    async def on_crash(request: Request, exc: Exception) -> Response:
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    async def health(request: Request) -> Response:
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "model": state.config.model_id})

    async def models(request: Request) -> Response:
        _check_key(state, request)
        return JSONResponse(api.models_body(state.config.model_id, state.config.created))

    async def generate(request: Request, parse: Any) -> Response:
        _check_key(state, request)
        _check_ready(state)
        data = api.parse_json(await _read_body(request))
        job = parse(data, _model_for(state, data))
        rid, created = api.new_id(job.kind), api.now()
        if job.stream:
            return StreamingResponse(_sse(job, rid, created, request), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        parts: list[str] = []
        async for event in run_job(state, job, request):
            if event[0] == "text":
                parts.append(event[1])
            elif event[0] == "error":
                raise event[1]
            else:
                return JSONResponse(api.reply_body(job, rid, created, "".join(parts), event[1], event[2]))
        return JSONResponse({}, status_code=499)  # the client went away: nobody reads this

    async def _sse(job: Job, rid: str, created: int, request: Request) -> AsyncIterator[bytes]:
        if job.kind == "chat":
            yield api.sse(api.chunk_body(job, rid, created, role=True, text=""))
        async for event in run_job(state, job, request):
            if event[0] == "text":
                yield api.sse(api.chunk_body(job, rid, created, text=event[1]))
            elif event[0] == "error":
                yield api.sse(event[1].body())
                yield api.sse("[DONE]")
                return
            else:
                _, finish, use = event
                yield api.sse(api.chunk_body(job, rid, created, finish=finish,
                                             text=None if job.kind == "chat" else ""))
                if job.include_usage:
                    yield api.sse(api.chunk_body(job, rid, created, use=use, empty=True))
                yield api.sse("[DONE]")

    async def chat(request: Request) -> Response:
        return await generate(request, api.parse_chat)

    async def completions(request: Request) -> Response:
        return await generate(request, api.parse_completion)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ],
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error, Exception: on_crash},
    )
