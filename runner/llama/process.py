"""The chat engine in its own process: a llama.cpp crash ends that process, never fitchat.

:class:`ProcessEngine` has :class:`fitchat.llama.engine.ChatEngine`'s public methods and attributes
(load with the plan and the fallback ladder, measured threads, streamed replies, cancel, stats,
prefix reuse, close), so the TUI, ``fitchat chat`` and anything written against ``ChatEngine`` take
either. The model lives in a child, ``python -m fitchat.llama.process``, which keeps one
``ChatEngine`` (and so its KV cache: prefix reuse between turns works as before).

When the child dies, whatever the signal (SIGILL from instructions the CPU lacks, SIGSEGV,
SIGABRT from a ``GGML_ASSERT``, SIGKILL from the out-of-memory killer), the call in progress and
every later one raise :class:`EngineDied`: one line naming the signal and what it likely means.
The caller keeps the reply so far (:class:`fitchat.chat.session.ChatSession` saves it, marked
``interrupted``) and may load the model again.

The protocol, one JSON object a line on the child's stdin (requests) and on a private copy of its
stdout (events; the child points file descriptor 1 at its stderr, so stray prints from llama.cpp or
llama-cpp-python never mix into it). Nothing is pickled; data crosses as the core's frozen
dataclasses written out field by field (``SamplingSettings``, ``ChatStats``, ``LoadReport``,
``ThreadChoice``).

Requests (parent -> child), one at a time except ``cancel`` and ``live``::

    {"op": "load", "path", "plan": {settings, context, gpu_layers, n_layers, moe_cpu_layers, devices} | null,
     "n_ctx", "n_threads", "n_threads_batch", "gpu_layers", "moe_cpu_layers", "settings", "calibrate",
     "thread_cache", "validate", "loader"}
    {"op": "stream", "messages", "settings", "attempt": null | int}   # attempt: regenerate
    {"op": "call", "name", "args"}       # count_tokens, tokenize, render, prompt_tokens, fit_context,
                                         # reply_reserve, reset, set_threads, calibrate_threads
    {"op": "cancel"} / {"op": "live"}    # handled at once by the child's control thread
    {"op": "close"}

Events (child -> parent)::

    ["p", text]                          # reply pieces (one per token; the parent joins those that
                                         # arrive together into one piece)
    ["n", text]                          # a notice (fallback rung, dropped messages, re-measured threads)
    ["done", stats, threads]             # the reply ended
    ["ok", value]                        # a load or call ended (load: the engine's figures)
    ["err", type name, message, extra]   # the request failed; re-raised in the parent as that type
    ["live", stats | null]               # answer to "live"

The child's control thread reads every request: ``cancel`` sets the engine's cancel flag and its
:class:`fitchat.llama.runtime.AbortFlag` (a decode stops within one graph node) and ``live`` reads
the reply's figures so far, both at once; the rest go to the main thread, which alone calls llama.cpp
(one OpenMP team). End of input (the parent is gone) cancels and closes.

Test seam: ``ProcessEngine.load(loader="module:function")`` makes the child build its ``Llama`` with
that function instead of :func:`fitchat.llama.engine.default_loader`; the tests use it to crash the
child at the hardware boundary on purpose (a null read, an abort). Nothing else passes it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitchat.child import MAX_LINE_BYTES, LineWriter, bounded_lines, encode_line, module_command, parse_line
from fitchat.errors import FitchatError
from fitchat.llama.engine import (
    ChatStats,
    EngineBusy,
    EngineClosed,
    EngineError,
    LoadReport,
    LoadStep,
    Notice,
    SamplingSettings,
)
from fitchat.llama.signals import signal_meaning, signal_name
from fitchat.llama.threads import ThreadChoice

if TYPE_CHECKING:
    from fitchat.llama.engine import ChatEngine
    from fitchat.llama.threads import ThreadCache
    from fitchat.model.estimate import LoadSettings
    from fitchat.model.plan import Plan

#: Seconds ``close`` waits for the child to free the model and exit before killing it.
CLOSE_TIMEOUT_S = 10.0
#: Seconds the engine process lives on once its parent is gone (end of input), to finish what it was doing.
#: More than the parent's own wait in ``close``: an engine still busy after that is held by llama.cpp.
ORPHAN_GRACE_S = CLOSE_TIMEOUT_S + 5.0
#: Lines of the child's stderr kept (llama.cpp's last words before a crash), see :attr:`ProcessEngine.log_tail`.
LOG_TAIL = 40
#: ggml_abort's line: ``…/ggml-rpc.cpp:354: Remote RPC server crashed …``.
_ABORT_LINE = re.compile(r"\.(?:c|cc|cpp|h):\d+: \S")

#: What each deadly signal likely means, for the one line :class:`EngineDied` says.

#: The engine methods a ``call`` request may run in the child.
CALLS = frozenset({
    "count_tokens", "tokenize", "render", "prompt_tokens", "fit_context", "reply_reserve", "reset",
    "set_threads", "calibrate_threads",
})


class EngineDied(FitchatError):
    """The engine process ended unasked (a signal or an exit status); the model must be loaded again.

    ``signal_name`` is e.g. ``"SIGSEGV"`` (None for a plain exit), ``returncode`` the child's.
    """

    def __init__(self, message: str, *, signal_name: str | None = None, returncode: int | None = None) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.returncode = returncode


def death_message(returncode: int | None, *, process: str = "the model's engine process",
                  then: str = "load the model again") -> tuple[str, str | None]:
    """One line for a child that ended with ``returncode`` (negative: killed by that signal), and the signal's name.

    ``process`` names the child and ``then`` says what to do next; every child that runs llama.cpp
    (the engine, a compare's worker) reports its death in these words.
    """
    if returncode is not None and returncode < 0:
        name = signal_name(returncode)
        return f"{process} died of {name}: {signal_meaning(name)}; {then}", name
    if returncode is None:
        return f"{process} stopped answering; {then}", None
    return f"{process} exited with status {returncode}; {then}", None


# ---------------------------------------------------------------- data across the pipe


def _stats(data: dict[str, Any] | None) -> ChatStats | None:
    if not data:
        return None
    data = dict(data)
    data["devices"] = tuple((str(name), int(layers)) for name, layers in data.get("devices") or ())
    return ChatStats(**data)


def _threads(data: dict[str, Any]) -> ThreadChoice:
    data = dict(data)
    for key in ("decode_measured", "batch_measured"):  # JSON keys are text
        data[key] = {int(k): float(v) for k, v in (data.get(key) or {}).items()}
    return ThreadChoice(**data)


def _report(data: dict[str, Any]) -> LoadReport:
    return LoadReport(
        step=LoadStep(**data["step"]),
        failures=tuple((LoadStep(**s), str(r)) for s, r in data["failures"]),
        load_s=float(data["load_s"]),
    )


def _error(name: str, message: str, extra: dict[str, Any]) -> BaseException:
    """The exception the child raised, rebuilt from its type's name (fitchat's own, or a builtin)."""
    from fitchat import errors
    from fitchat.llama import engine

    if name == "InvalidSampling":
        return engine.InvalidSampling(str(extra.get("field", "")), str(extra.get("rule", message)))
    for module in (engine, errors, sys.modules[__name__]):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, FitchatError):
            try:
                return cls(message)
            except TypeError:
                break
    import builtins

    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except TypeError:
            pass
    return EngineError(message or name)


# ---------------------------------------------------------------- the parent's side


class ProcessEngine:
    """A :class:`ChatEngine` in a child process, with the same public methods. One reply at a time;
    :meth:`cancel` and :meth:`current_stats` are thread-safe."""

    def __init__(self, proc: subprocess.Popen[bytes], on_notice: Notice | None) -> None:
        self._proc = proc
        self.pid = proc.pid
        self._on_notice = on_notice
        self._events: queue.Queue[Any] = queue.Queue()
        self._live: queue.Queue[Any] = queue.Queue()
        self._write_lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._closed = False
        self._died: EngineDied | None = None
        self._streaming = False
        #: llama.cpp's and Python's last lines on the child's stderr (why it died, when it says).
        self.log_tail: deque[str] = deque(maxlen=LOG_TAIL)
        #: llama.cpp's abort lines (``file.cpp:123: message``): gdb's backtrace after one can fill the tail.
        self.abort_lines: deque[str] = deque(maxlen=4)
        self.notices: list[str] = []
        self.last_stats: ChatStats | None = None
        self.path = ""
        self.gpu_layers = 0
        self.moe_cpu_layers = 0
        self.devices: tuple[tuple[str, int], ...] = ()  # (device, layers) as loaded
        self.load_kwargs: dict[str, Any] = {}
        self.load_report = LoadReport(LoadStep(0, 0, "as planned"))
        self.n_ctx = self.n_batch = self.n_ctx_train = 0
        self.add_bos = False
        self.chat_template: str | None = None
        self.has_chat_template = False
        self.model_label = ""
        self.threads = ThreadChoice(0, 0, 0.0, "default")
        threading.Thread(target=self._read_events, name="fitchat-engine-events", daemon=True).start()
        self._log_reader = threading.Thread(target=self._read_log, name="fitchat-engine-log", daemon=True)
        self._log_reader.start()
        #: The RPC workers the loaded plan puts layers on: named when ggml-rpc's abort ends the engine.
        self.workers: tuple[str, ...] = ()

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        plan: Plan | None = None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        gpu_layers: int | None = None,
        settings: LoadSettings | dict[str, Any] | None = None,
        on_notice: Notice | None = None,
        loader: str | None = None,
        calibrate: bool = True,
        thread_cache: ThreadCache | None = None,
        validate: bool = True,
        niceness: int = 0,
        moe_cpu_layers: int | None = None,
    ) -> ProcessEngine:
        """Start the engine process and load ``path`` there, as :meth:`ChatEngine.load` does.

        ``niceness``: how much less urgent than fitchat the engine runs (a UI's keys come first).
        ``loader``: the test seam described in the module docstring.
        """
        env = dict(os.environ)
        if loader is not None:  # the seam's module may live where only this process looks (tests/)
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        proc = subprocess.Popen(
            module_command("fitchat.llama.process", str(int(niceness))),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            start_new_session=True,  # ctrl+c in the terminal is fitchat's to handle, not the engine's
        )
        engine = cls(proc, on_notice)
        engine.workers = tuple(dict.fromkeys(d.endpoint for d in getattr(plan, "devices", ()) if d.endpoint))
        settings_json = settings if isinstance(settings, dict) or settings is None else dict(settings.llama_kwargs())
        plan_json = None
        if plan is not None:
            plan_json = {"settings": dict(plan.settings.llama_kwargs()), "context": int(plan.context),
                         "gpu_layers": int(plan.gpu_layers), "n_layers": int(getattr(plan, "n_layers", 0) or 0),
                         "moe_cpu_layers": int(getattr(plan, "moe_cpu_layers", 0) or 0),
                         "devices": [{"name": d.name, "layers": int(d.layers), "endpoint": d.endpoint,
                                      "index": int(d.index)} for d in getattr(plan, "devices", ())]}
        request = {
            "op": "load", "path": str(path), "plan": plan_json, "n_ctx": n_ctx, "n_threads": n_threads,
            "n_threads_batch": n_threads_batch, "gpu_layers": gpu_layers, "moe_cpu_layers": moe_cpu_layers,
            "settings": settings_json,
            "calibrate": calibrate, "validate": validate, "loader": loader,
            "thread_cache": str(thread_cache.path) if thread_cache is not None else None,
        }
        try:
            info = engine._request(request)
        except BaseException:
            engine._kill()
            raise
        engine._loaded(info)
        return engine

    def _loaded(self, info: dict[str, Any]) -> None:
        self.path = info["path"]
        self.gpu_layers = int(info["gpu_layers"])
        self.moe_cpu_layers = int(info.get("moe_cpu_layers", 0))
        self.load_kwargs = dict(info["load_kwargs"])
        self.load_report = _report(info["load_report"])
        self.n_ctx, self.n_batch, self.n_ctx_train = int(info["n_ctx"]), int(info["n_batch"]), int(info["n_ctx_train"])
        self.add_bos = bool(info["add_bos"])
        self.chat_template = info["chat_template"]
        self.has_chat_template = bool(info["has_chat_template"])
        self.model_label = info["model_label"]
        self.threads = _threads(info["threads"])
        self.devices = tuple((str(n), int(k)) for n, k in info.get("devices") or ())

    # ------------------------------------------------------------------ the pipe

    def _send(self, message: dict[str, Any]) -> None:
        data = encode_line(message)
        with self._write_lock:
            self._write(data)

    def _write(self, data: bytes) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(data)
            stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the reader sees the end and tells the waiting call

    def _read_events(self) -> None:
        """Events to the queues until the child's end; a line that is not an event is skipped, and the
        end is always told (a reader that died would leave every later call waiting for good)."""
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            for line in bounded_lines(stdout, MAX_EVENT_BYTES):
                event = _event(line)
                if event is None:
                    continue
                if event[0] == "live":
                    self._live.put(event[1])
                else:
                    self._events.put(event)
        finally:
            self._events.put(["dead"])
            self._live.put(None)

    def _read_log(self) -> None:
        stderr = self._proc.stderr
        assert stderr is not None
        for line in stderr:
            text = line.decode("utf-8", errors="replace").rstrip()
            if text:
                self.log_tail.append(text)
                if _ABORT_LINE.search(text):
                    self.abort_lines.append(text)

    def _dead(self) -> EngineDied:
        if self._died is None:
            try:
                rc: int | None = self._proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                rc = None
            message, name = death_message(rc)
            if self.workers:
                from fitchat.llama.rpc import engine_abort

                self._log_reader.join(timeout=1.0)  # its last words: ggml-rpc's abort line
                why = engine_abort([*self.abort_lines, *self.log_tail], self.workers)
                if why:
                    message = f"{why}; the model's engine process stopped; load the model again"
            self._died = EngineDied(message, signal_name=name, returncode=rc)
        return self._died

    def _next(self) -> Any:
        """The next event for the request in progress (notices are told on the way)."""
        while True:
            event = self._events.get()
            kind = event[0]
            if kind == "n":
                self._notice(event[1])
            elif kind == "dead":
                self._events.put(event)  # every later wait sees it too
                raise self._dead()
            else:
                return event

    def _notice(self, text: str) -> None:
        self.notices.append(text)
        if self._on_notice is not None:
            self._on_notice(text)

    def _check_open(self) -> None:
        if self._died is not None:
            raise self._died
        if self._closed:
            raise EngineClosed("the model was closed; load it again")

    def _request(self, message: dict[str, Any]) -> Any:
        self._check_open()
        with self._call_lock:
            self._send(message)
            event = self._next()
        if event[0] == "err":
            raise _error(event[1], event[2], event[3])
        return event[1]

    def _call(self, name: str, *args: Any) -> Any:
        return self._request({"op": "call", "name": name, "args": list(args)})

    # ------------------------------------------------------------------ the reply

    def stream(self, messages: Sequence[dict[str, str]], settings: SamplingSettings | None = None) -> Iterator[str]:
        """Stream the reply to ``messages`` (as :meth:`ChatEngine.stream`); :class:`EngineDied` if the engine dies."""
        self._check_open()
        return self._stream(list(messages), settings or SamplingSettings(), None)

    def regenerate(
        self, messages: Sequence[dict[str, str]], settings: SamplingSettings | None = None, attempt: int = 1
    ) -> Iterator[str]:
        """Stream a new answer in place of the last one (as :meth:`ChatEngine.regenerate`)."""
        self._check_open()
        return self._stream(list(messages), settings or SamplingSettings(), attempt)

    def complete(self, prompt: str, settings: SamplingSettings | None = None) -> Iterator[str]:
        """Stream a plain continuation of ``prompt`` (as :meth:`ChatEngine.complete`)."""
        self._check_open()
        return self._stream([], settings or SamplingSettings(), None, prompt)

    def _stream(self, messages: list[dict[str, str]], settings: SamplingSettings, attempt: int | None,
                prompt: str | None = None) -> Iterator[str]:
        if not self._call_lock.acquire(blocking=False):
            raise EngineBusy("a reply is already streaming on this model; cancel it or wait")
        finished = False
        try:
            self._check_open()
            self._streaming = True
            msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
            self._send({"op": "stream", "messages": msgs, "settings": asdict(settings), "attempt": attempt,
                        "prompt": prompt})
            events = self._events
            while True:
                event = self._next()
                kind = event[0]
                if kind == "p":
                    parts = [event[1]]
                    while True:  # pieces that arrived together go out as one
                        try:
                            more = events.get_nowait()
                        except queue.Empty:
                            break
                        if more[0] != "p":
                            _requeue(events, more)
                            break
                        parts.append(more[1])
                    yield "".join(parts)
                elif kind == "done":
                    finished = True
                    self.last_stats = _stats(event[1])
                    self.threads = _threads(event[2])
                    return
                elif kind == "err":
                    finished = True
                    raise _error(event[1], event[2], event[3])
        finally:
            if not finished and self._died is None and self._proc.poll() is None:
                # The consumer left early (closed the iterator): stop the reply and wait for its end.
                self._send({"op": "cancel"})
                with contextlib.suppress(EngineDied):
                    while True:
                        event = self._next()
                        if event[0] == "done":
                            self.last_stats = _stats(event[1])
                            self.threads = _threads(event[2])
                            break
                        if event[0] == "err":
                            break
            self._streaming = False
            self._call_lock.release()

    def cancel(self) -> None:
        """Stop the reply in progress, within one graph node (thread-safe)."""
        if self._died is None and not self._closed:
            self._send({"op": "cancel"})

    def current_stats(self) -> ChatStats | None:
        """Live figures for the reply in progress, else the last reply's."""
        if not self._streaming or self._died is not None:
            return self.last_stats
        with self._write_lock:  # one "live" question at a time
            self._send_unlocked({"op": "live"})
            try:
                data = self._live.get(timeout=1.0)
            except queue.Empty:
                data = None
        return _stats(data) or self.last_stats

    def _send_unlocked(self, message: dict[str, Any]) -> None:
        self._write(encode_line(message))

    # ------------------------------------------------------------------ the rest of ChatEngine's API

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return int(self._call("count_tokens", [dict(m) for m in messages]))

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        return [int(t) for t in self._call("tokenize", text, special, add_bos)]

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        return str(self._call("render", [dict(m) for m in messages]))

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return [int(t) for t in self._call("prompt_tokens", [dict(m) for m in messages])]

    def fit_context(
        self, messages: Sequence[dict[str, str]], settings: SamplingSettings
    ) -> tuple[list[int], list[dict[str, str]], int]:
        tokens, kept, dropped = self._call("fit_context", [dict(m) for m in messages], asdict(settings))
        return list(tokens), list(kept), int(dropped)

    def reply_reserve(self, settings: SamplingSettings) -> int:
        return int(self._call("reply_reserve", asdict(settings)))

    @staticmethod
    def with_system(messages: Sequence[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
        from fitchat.llama.engine import ChatEngine

        return ChatEngine.with_system(messages, system_prompt)

    def reset(self) -> None:
        """Forget the cached conversation (the next reply evaluates its whole prompt)."""
        self._call("reset")

    def set_threads(self, n_threads: int, n_threads_batch: int | None = None, source: str = "user") -> None:
        self.threads = _threads(self._call("set_threads", n_threads, n_threads_batch, source))

    def calibrate_threads(self, counts: Sequence[int] | None = None) -> ThreadChoice:
        self.threads = _threads(self._call("calibrate_threads", list(counts) if counts else None))
        return self.threads

    @property
    def alive(self) -> bool:
        """Whether the engine process is running."""
        return self._died is None and self._proc.poll() is None

    def close(self) -> None:
        """Free the model and end the engine process (a dead one is only reaped)."""
        if self._closed:
            return
        self._closed = True
        if self._died is None and self._proc.poll() is None:
            self._send({"op": "cancel"})
            got = self._call_lock.acquire(timeout=CLOSE_TIMEOUT_S)
            try:
                self._send({"op": "close"})
                with contextlib.suppress(OSError, ValueError):
                    assert self._proc.stdin is not None
                    self._proc.stdin.close()
                try:
                    self._proc.wait(timeout=CLOSE_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self._kill()
            finally:
                if got:
                    self._call_lock.release()
        else:
            self._kill()

    def _kill(self) -> None:
        with contextlib.suppress(OSError):
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5.0)

    def __enter__(self) -> ProcessEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _requeue(events: queue.Queue[Any], event: Any) -> None:
    """Put ``event`` back at the head of ``events`` (it belongs to the next wait)."""
    with events.mutex:
        events.queue.appendleft(event)
        events.not_empty.notify()


# ---------------------------------------------------------------- the child's side


#: Longest event line read (bytes); a longer one is skipped. Real ones: a reply piece, a load's figures
#: (with the chat template), a tokenized prompt; well under this.
MAX_EVENT_BYTES = MAX_LINE_BYTES
#: Events the parent knows, with how many fields follow the kind.
EVENT_FIELDS = {"p": 1, "n": 1, "done": 2, "ok": 1, "err": 3, "live": 1}




def _event(line: bytes) -> list[Any] | None:
    """An event line as ``[kind, *fields]``, or None for anything else (a stray print, a damaged line)."""
    event = parse_line(line)
    if not isinstance(event, list) or not event or not isinstance(event[0], str):
        return None
    fields = EVENT_FIELDS.get(event[0])
    if fields is None or len(event) != fields + 1:
        return None
    if event[0] in ("p", "n") and not isinstance(event[1], str):
        return None
    if event[0] == "err" and not (isinstance(event[1], str) and isinstance(event[3], dict)):
        return None
    return event


class _Child:
    """The engine process: the main thread serves requests with one ChatEngine; the control thread reads them."""

    def __init__(self, out_fd: int) -> None:
        self.events = LineWriter(out_fd)
        self.send = self.events.send
        self._requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.engine: ChatEngine | None = None

    def control(self) -> None:
        """Read requests: cancel and live figures at once, the rest for the main thread; end of input ends all."""
        for line in sys.stdin.buffer:
            request = parse_line(line)
            if not isinstance(request, dict):
                continue  # not a request (the parent writes only objects): skipped, as a line that is not JSON
            op = request.get("op")
            if op == "cancel":
                if self.engine is not None:
                    self.engine.cancel()
            elif op == "live":
                stats = self.engine.current_stats() if self.engine is not None else None
                self.send(["live", stats.to_json() if stats is not None else None])
            else:
                self._requests.put(request)
        if self.engine is not None:
            self.engine.cancel()
        self._requests.put(None)
        # The parent is gone. The main thread ends at once unless llama.cpp holds it (a load waiting on an RPC
        # worker that went silent waits without end): past the grace, end the process rather than outlive fitchat.
        time.sleep(ORPHAN_GRACE_S)
        os._exit(1)

    def serve(self) -> int:
        threading.Thread(target=self.control, name="fitchat-engine-control", daemon=True).start()
        while True:
            request = self._requests.get()
            if request is None or request.get("op") == "close":
                if self.engine is not None:
                    self.engine.close()
                return 0
            try:
                self._serve(request)
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent, typed
                extra = {k: getattr(exc, k) for k in ("field", "rule") if isinstance(getattr(exc, k, None), str)}
                self.send(["err", type(exc).__name__, str(exc), extra])

    def _serve(self, request: dict[str, Any]) -> None:
        op = request["op"]
        if op == "load":
            self.engine = self._load(request)
            self.send(["ok", self._info(self.engine)])
        elif op == "stream":
            self._reply(request)
        elif op == "call":
            self.send(["ok", self._call(request["name"], request["args"])])
        else:
            raise EngineError(f"unknown request {op!r}")

    def _load(self, r: dict[str, Any]) -> ChatEngine:
        from fitchat.llama.engine import ChatEngine
        from fitchat.llama.threads import ThreadCache

        plan = _PlanView(**r["plan"]) if r["plan"] else None
        loader = None
        if r.get("loader"):
            module, _, name = str(r["loader"]).partition(":")
            loader = getattr(importlib.import_module(module), name)
        cache = ThreadCache(Path(r["thread_cache"])) if r.get("thread_cache") else None
        return ChatEngine.load(
            r["path"], plan=plan, n_ctx=r["n_ctx"], n_threads=r["n_threads"],
            n_threads_batch=r["n_threads_batch"], gpu_layers=r["gpu_layers"], settings=r["settings"],
            on_notice=lambda text: self.send(["n", text]), loader=loader, calibrate=r["calibrate"],
            thread_cache=cache, validate=r["validate"], moe_cpu_layers=r.get("moe_cpu_layers"),
        )

    @staticmethod
    def _info(e: ChatEngine) -> dict[str, Any]:
        report = e.load_report
        return {
            "path": e.path, "gpu_layers": e.gpu_layers, "moe_cpu_layers": e.moe_cpu_layers,
            "load_kwargs": e.load_kwargs,
            "load_report": {"step": asdict(report.step), "failures": [[asdict(s), r] for s, r in report.failures],
                            "load_s": report.load_s},
            "n_ctx": e.n_ctx, "n_batch": e.n_batch, "n_ctx_train": e.n_ctx_train, "add_bos": e.add_bos,
            "chat_template": e.chat_template, "has_chat_template": e.has_chat_template, "model_label": e.model_label,
            "threads": asdict(e.threads), "devices": [list(d) for d in e.devices],
        }

    def _reply(self, r: dict[str, Any]) -> None:
        engine = self._engine()
        settings = SamplingSettings(**r["settings"])
        if r.get("prompt") is not None:
            pieces = engine.complete(str(r["prompt"]), settings)
        elif r.get("attempt") is not None:
            pieces = engine.regenerate(r["messages"], settings, attempt=int(r["attempt"]))
        else:
            pieces = engine.stream(r["messages"], settings)
        send = self.send
        for piece in pieces:
            send(["p", piece])
        stats = engine.last_stats
        send(["done", stats.to_json() if stats is not None else None, asdict(engine.threads)])

    def _call(self, name: str, args: list[Any]) -> Any:
        engine = self._engine()
        if name not in CALLS:
            raise EngineError(f"unknown engine call {name!r}")
        if name in ("fit_context", "reply_reserve"):
            args = [*args[:-1], SamplingSettings(**args[-1])]
        if name == "tokenize":
            return engine.tokenize(args[0], special=bool(args[1]), add_bos=bool(args[2]))
        if name == "set_threads":
            engine.set_threads(int(args[0]), args[1], str(args[2]))
            return asdict(engine.threads)
        if name == "calibrate_threads":
            return asdict(engine.calibrate_threads(args[0]))
        return getattr(engine, name)(*args)

    def _engine(self) -> ChatEngine:
        if self.engine is None:
            raise EngineClosed("no model is loaded in the engine process")
        return self.engine


class _PlanView:
    """The parts of a ``Plan`` that ``ChatEngine.load`` reads, as they crossed the pipe."""

    def __init__(self, settings: dict[str, Any], context: int, gpu_layers: int, n_layers: int,
                 moe_cpu_layers: int = 0, devices: Sequence[dict[str, Any]] = ()) -> None:
        self.settings, self.context, self.gpu_layers, self.n_layers = settings, context, gpu_layers, n_layers
        self.moe_cpu_layers = moe_cpu_layers
        self.devices = list(devices)


def main(argv: Sequence[str] | None = None) -> int:
    """The engine process's entry: events go to a private copy of stdout; fd 1 then points at stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a reply stops
    if argv and int(argv[0]) > 0 and hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(int(argv[0]))
    return _Child(out_fd).serve()


if __name__ == "__main__":
    sys.exit(main())
