"""A compare's llama.cpp work in its own process: a crash in llama.cpp ends that process, never fitchat.

:func:`fitchat.compare.run.compare` reads headers, hashes files and looks up the cache in fitchat's
own process; the variants left to measure (the reference pass, the text, the probes, the timed
decode: everything that touches ``llama_cpp``) are measured by :func:`measure` in a child,
``python -m fitchat.compare.worker``, started with ``subprocess`` (no fork: the parent has threads).
The child writes finished results to the cache itself, exactly as an in-process run did, and a
cancelled run leaves no partial cache entry.

When the child dies, whatever the signal (SIGILL from instructions the CPU lacks, SIGSEGV, SIGABRT
from a ``GGML_ASSERT``, SIGKILL from the out-of-memory killer), :func:`measure` raises
:class:`WorkerDied`: one line naming the signal and what it likely means, in the words of
:func:`fitchat.llama.process.death_message`. Finished variants stay cached; the temporary files of
the dead child are removed.

The protocol, one JSON object a line on the child's stdin (requests) and on a private copy of its
stdout (events; the child points file descriptor 1 at its stderr, so llama.cpp's prints never mix in).
Nothing is pickled; data crosses as the frozen dataclasses written out field by field::

    {"op": "run", "todo": [candidate, ...], "reference": path, "shas": {path: sha}, "text": str,
     "text_sha", "settings": {...}, "plans": {path: {"verdict", "gpu_layers", "n_layers"} | null}}
    {"op": "cancel"}                    # at any time; end of input (the parent is gone) cancels too

    ["progress", done, total, variant, stage]
    ["ok", {path: VariantResult fields}]
    ["err", type name, message]         # re-raised in the parent as that fitchat type

SIGTERM cancels as the ``cancel`` request does: the decode in progress stops within one graph node.

Test seam: :func:`running` lists the pids of the workers this process has started and not yet
reaped; the tests kill one with SIGKILL to crash a compare on purpose.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fitchat.child import LineWriter, bounded_lines, encode_line, module_command, parse_line
from fitchat.compare import run as C
from fitchat.errors import Cancelled, FitchatError

#: Seconds a cancelled worker has to stop by itself before it is killed.
CANCEL_GRACE_S = 10.0
#: Lines of the worker's stderr kept (llama.cpp's last words before a crash).
LOG_TAIL = 40
#: How the death line names the child, and what to do next.
PROCESS_NAME = "the compare's worker process"
AFTER_DEATH = "finished variants stay cached; run the compare again"

_running: set[int] = set()
_running_lock = threading.Lock()


class WorkerDied(C.CompareError):
    """The compare's worker process ended unasked (a signal or an exit status) before it answered.

    ``signal_name`` is e.g. ``"SIGKILL"`` (None for a plain exit), ``returncode`` the child's.
    """

    def __init__(self, message: str, *, signal_name: str | None = None, returncode: int | None = None) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.returncode = returncode


def running() -> list[int]:
    """Pids of the compare workers this process runs now (the tests' seam, see the module docstring)."""
    with _running_lock:
        return sorted(_running)


# ---------------------------------------------------------------- data across the pipe


def _candidate_json(c: C.Candidate) -> dict[str, Any]:
    return {"path": str(c.path), "quant": c.quant, "size_bytes": c.size_bytes, "sha256": c.sha256,
            "repo": c.repo, "vocab_size": c.vocab_size}


def _settings_json(s: C.CompareSettings) -> dict[str, Any]:
    return {"ctx": s.ctx, "budget": s.budget, "text_path": str(s.text_path) if s.text_path is not None else None,
            "probes": asdict(s.probes), "n_threads": s.n_threads}


def _settings(data: dict[str, Any]) -> C.CompareSettings:
    p = dict(data["probes"])
    p["needle_depths"] = tuple(p["needle_depths"])
    return C.CompareSettings(ctx=int(data["ctx"]), budget=int(data["budget"]),
                             text_path=Path(data["text_path"]) if data["text_path"] is not None else None,
                             probes=C.ProbeSet(**p), n_threads=data["n_threads"])


class _PlanView:
    """The parts of a ``Plan`` that measuring reads (``gpu_layers_for``, ``verdict_label``), as they crossed the pipe."""

    def __init__(self, verdict: str, gpu_layers: int, n_layers: int) -> None:
        self.verdict, self.gpu_layers, self.n_layers = verdict, gpu_layers, n_layers


def _plan_json(plan: Any) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {"verdict": str(plan.verdict), "gpu_layers": int(getattr(plan, "gpu_layers", 0) or 0),
            "n_layers": int(getattr(plan, "n_layers", 0) or 0)}


def _error(name: str, message: str) -> BaseException:
    """The exception the child raised, rebuilt from its type's name (fitchat's own)."""
    from fitchat import errors

    for module in (C, errors):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, FitchatError):
            with contextlib.suppress(TypeError):
                return cls(message)
    return C.CompareError(f"the compare failed in its worker process: {name}: {message}")


# ---------------------------------------------------------------- the parent's side


def measure(todo: Sequence[C.Candidate], reference: C.Candidate, shas: dict[Path, str], text: bytes, text_sha: str,
            settings: C.CompareSettings, plans: dict[Path, Any], progress: C.ProgressCallback | None,
            cancel: threading.Event | None) -> dict[Path, C.VariantResult]:
    """Measure ``todo`` against ``reference`` in a worker process; the results by path (also cached).

    Raises :class:`Cancelled` when ``cancel`` is set, :class:`WorkerDied` when the worker dies, and
    the worker's own errors (``VocabMismatch``, ``LoadFailed`` …) as themselves.
    """
    paths_needed = {c.path for c in todo} | {reference.path}
    request = {
        "op": "run", "todo": [_candidate_json(c) for c in todo], "reference": _candidate_json(reference),
        "shas": {str(p): shas[p] for p in paths_needed}, "text": text.decode("utf-8"), "text_sha": text_sha,
        "settings": _settings_json(settings), "plans": {str(p): _plan_json(plans.get(p)) for p in paths_needed},
    }
    proc = subprocess.Popen(
        module_command("fitchat.compare.worker"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,  # ctrl+c in the terminal is fitchat's to handle: it cancels
    )
    with _running_lock:
        _running.add(proc.pid)
    events: queue.Queue[Any] = queue.Queue()
    log: deque[str] = deque(maxlen=LOG_TAIL)
    threading.Thread(target=_read_events, args=(proc, events), name="fitchat-compare-events", daemon=True).start()
    threading.Thread(target=_read_log, args=(proc, log), name="fitchat-compare-log", daemon=True).start()
    finished = False
    try:
        _send(proc, request)
        cancel_sent: float | None = None
        while True:
            if cancel is not None and cancel.is_set() and cancel_sent is None:
                _send(proc, {"op": "cancel"})
                cancel_sent = time.monotonic()
            if cancel_sent is not None and time.monotonic() - cancel_sent > CANCEL_GRACE_S:
                raise Cancelled("compare cancelled")  # the finally below kills the worker
            try:
                event = events.get(timeout=0.05)
            except queue.Empty:
                continue
            kind = event[0]
            if kind == "progress":
                if progress is not None:
                    progress(C.Progress(int(event[1]), int(event[2]), str(event[3]), str(event[4])))
            elif kind == "ok":
                finished = True
                return {Path(p): C.result_from_json(data) for p, data in event[1].items()}
            elif kind == "err":
                finished = True
                raise _error(str(event[1]), str(event[2]))
            elif kind == "dead":
                raise _died(proc)
    finally:
        _end(proc, clean=not finished)


def _send(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    stdin = proc.stdin
    assert stdin is not None
    try:
        stdin.write(encode_line(message))
        stdin.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass  # the reader sees the end and tells the waiting loop


def _read_events(proc: subprocess.Popen[bytes], events: queue.Queue[Any]) -> None:
    stdout = proc.stdout
    assert stdout is not None
    for line in bounded_lines(stdout):
        event = parse_line(line)
        if isinstance(event, list) and event and isinstance(event[0], str):
            events.put(event)
    events.put(["dead"])


def _read_log(proc: subprocess.Popen[bytes], log: deque[str]) -> None:
    stderr = proc.stderr
    assert stderr is not None
    for line in stderr:
        text = line.decode("utf-8", errors="replace").rstrip()
        if text:
            log.append(text)


def _died(proc: subprocess.Popen[bytes]) -> WorkerDied:
    from fitchat.llama.process import death_message

    try:
        rc: int | None = proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        rc = None
    message, name = death_message(rc, process=PROCESS_NAME, then=AFTER_DEATH)
    return WorkerDied(message, signal_name=name, returncode=rc)


def _end(proc: subprocess.Popen[bytes], *, clean: bool) -> None:
    """Reap the worker. One that answered exits by itself (end of input); one that did not (it died, it
    would not stop, or the caller gave up) is killed and its temporary files are removed."""
    with contextlib.suppress(OSError, ValueError):
        assert proc.stdin is not None
        proc.stdin.close()
    if clean:
        with contextlib.suppress(OSError):
            proc.kill()
    try:
        proc.wait(timeout=CANCEL_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
    with _running_lock:
        _running.discard(proc.pid)
    if clean:
        _remove_temporaries(proc.pid)


def _remove_temporaries(pid: int) -> None:
    """The files a worker writes under temporary names (``.NAME.PID.TID.partial`` / ``.tmp``) before it renames them."""
    root = C.cache_root()
    if not root.is_dir():
        return
    for p in root.rglob(f".*.{pid}.*"):
        if p.suffix in (".partial", ".tmp"):
            with contextlib.suppress(OSError):
                p.unlink()


# ---------------------------------------------------------------- the child's side


class _Child:
    """The worker: the main thread measures; the control thread reads requests (cancel at once)."""

    def __init__(self, out_fd: int) -> None:
        self.send = LineWriter(out_fd).send
        self.cancel = threading.Event()
        self._job: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def control(self) -> None:
        for line in sys.stdin.buffer:
            request = parse_line(line)
            if not isinstance(request, dict):
                continue  # not a request: skipped, the worker goes on
            if request.get("op") == "cancel":
                self.cancel.set()
            elif request.get("op") == "run":
                self._job.put(request)
        self.cancel.set()  # the parent is gone
        self._job.put(None)

    def serve(self) -> int:
        threading.Thread(target=self.control, name="fitchat-compare-control", daemon=True).start()
        job = self._job.get()
        if job is None:
            return 0
        try:
            results = self._measure(job)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent, typed
            self.send(["err", type(exc).__name__, str(exc)])
            return 1
        self.send(["ok", {str(p): asdict(r) for p, r in results.items()}])
        return 0

    def _measure(self, r: dict[str, Any]) -> dict[Path, C.VariantResult]:
        by_path: dict[Path, C.Candidate] = {}

        def candidate(data: dict[str, Any]) -> C.Candidate:
            c = C.Candidate(path=Path(data["path"]), quant=data["quant"], size_bytes=int(data["size_bytes"]),
                            sha256=data["sha256"], repo=data["repo"], vocab_size=data["vocab_size"])
            return by_path.setdefault(c.path, c)  # one object per file: the reference is told apart by identity

        reference = candidate(r["reference"])
        todo = [candidate(c) for c in r["todo"]]
        shas = {Path(p): str(s) for p, s in r["shas"].items()}
        plans = {Path(p): _PlanView(**v) for p, v in r["plans"].items() if v is not None}
        results: dict[Path, C.VariantResult] = {}

        def progress(p: C.Progress) -> None:
            self.send(["progress", p.done, p.total, p.variant, p.stage])

        C._measure(todo, reference, shas, r["text"].encode("utf-8"), r["text_sha"], _settings(r["settings"]),
                   plans, results, progress, self.cancel)
        return results


def main() -> int:
    """The worker's entry: events go to a private copy of stdout; fd 1 then points at stderr."""
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    child = _Child(out_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a compare stops
    signal.signal(signal.SIGTERM, lambda *_: child.cancel.set())
    return child.serve()


if __name__ == "__main__":
    sys.exit(main())
