"""The UI's one door into fitchat's core: each method is a blocking call made from a worker.

Nothing here decides anything; it forwards to the core functions that do, importing them
on first use so that the first screen paints before llama.cpp or huggingface_hub load.
The app holds one :class:`Services`; tests pass their own (e.g. a fixed ``HardwareInfo``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # the core's types, without importing the core before the first screen paints
    from fitchat.chat.history import History
    from fitchat.chat.session import ChatSession
    from fitchat.compare.run import Candidate, CompareReport, CompareSettings, Progress
    from fitchat.hub.catalog import CatalogEntry, SearchHit
    from fitchat.hub.recommend import Recommendation
    from fitchat.hub.store import LocalModel
    from fitchat.llama.engine import SamplingSettings
    from fitchat.llama.process import ProcessEngine
    from fitchat.model.estimate import LoadSettings
    from fitchat.model.gguf_spec import ModelSpec
    from fitchat.model.hardware import HardwareInfo
    from fitchat.model.measure import Measurement
    from fitchat.model.plan import Plan
    from fitchat.serve.controller import ServeController, ServingStatus

T = TypeVar("T")
#: The UI serves the loaded model on this machine only (the CLI's ``fitchat serve --host`` is the way to more).
SERVE_HOST = "127.0.0.1"
#: The name (prefix) of the one thread that computes with llama.cpp.
LLAMA_THREAD = "fitchat-llama"
#: How much less urgent than the UI that thread is (nice steps; Linux only). With every core
#: decoding, the UI's short bursts then take a core at once: keys are handled within 50 ms
#: (bench/tui_latency.py: 60/60 in three runs, against 58-59/60 without).
LLAMA_NICENESS = 3


#: How long a failed query of the workers is said again instead of asked again (seconds).
WORKER_FAILURE_KEPT_S = 15.0

@dataclass
class Services:
    """Calls into the core. ``hardware``, when given, replaces detection (planning for another machine)."""

    hardware: HardwareInfo | None = None
    endpoint: str | None = field(default_factory=lambda: os.environ.get("HF_ENDPOINT") or None)
    token: str | None = field(default_factory=lambda: os.environ.get("HF_TOKEN") or None)
    history_path: Path | None = None
    export_dir: Path | None = None
    #: Decode threads for chat; None lets the engine measure the best count (cached per machine).
    n_threads: int | None = None
    #: Catalog entries the first-run suggestion picks from; None: the bundled curated list.
    first_model_candidates: list[CatalogEntry] | None = None
    #: How ``compare`` measures (fitchat.compare.run.CompareSettings); None: its defaults with ``n_threads``.
    compare_settings: CompareSettings | None = None
    #: The port the loaded model is served on first (the next free one when it is taken).
    serve_port: int = 8080
    #: ``fitchat worker``\s a chat's model is split over (``--rpc``; the chat settings dialog sets them).
    rpc: tuple[str, ...] = ()
    _rpc_devices: tuple[Any, ...] | None = field(default=None, init=False, repr=False)
    #: The last failed query of the workers and when (time.monotonic): said again for a while, not asked again.
    _rpc_failure: tuple[float, Exception] | None = field(default=None, init=False, repr=False)
    _rpc_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _history: History | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _llama: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _server: ServeController | None = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ the llama.cpp thread

    def on_llama_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the app's one llama.cpp thread and wait for its result.

        llama.cpp's OpenMP threads belong to the thread that calls it, and Textual's thread workers
        run on pooled threads that outlive their work, each keeping its OpenMP team. Once those
        outnumber the cores, libgomp stops spinning at its barriers and decoding with several
        threads runs at half speed or worse. Every call that computes with llama.cpp (load, reply,
        compare) goes through this one thread, so there is one team.
        """
        if threading.current_thread().name.startswith(LLAMA_THREAD):
            return fn(*args, **kwargs)
        return self._llama_pool().submit(fn, *args, **kwargs).result()

    def _llama_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._llama is None:
                self._llama = ThreadPoolExecutor(max_workers=1, thread_name_prefix=LLAMA_THREAD,
                                                 initializer=lower_llama_priority)
            return self._llama

    # ------------------------------------------------------------------ machine

    def detect_hardware(self) -> HardwareInfo:
        """The injected hardware, or a fresh probe of this machine."""
        if self.hardware is not None:
            return self.hardware
        from fitchat.model.hardware import detect_hardware

        return detect_hardware()

    # ------------------------------------------------------------------ local models

    def local_models(self) -> list[LocalModel]:
        """Models on disk (fitchat.hub.store.list_local)."""
        from fitchat.hub.store import list_local

        return list(list_local())

    def import_file(self, path: str) -> LocalModel:
        """Register a local .gguf (validated by fitchat.hub.store)."""
        from fitchat.hub.store import import_file

        return import_file(Path(path).expanduser())

    def remove(self, ref: str) -> list[LocalModel]:
        """Delete a model from disk."""
        from fitchat.hub.store import remove

        return list(remove(ref))

    def load_settings(self) -> LoadSettings:
        """The load settings plans assume: fitchat's defaults as this llama.cpp build loads them here."""
        from fitchat.llama.smoke import settings_for_this_build
        from fitchat.model.estimate import DEFAULT_SETTINGS

        return settings_for_this_build(DEFAULT_SETTINGS)

    def local_plan(self, path: Path, hw: HardwareInfo, ctx: int) -> Plan:
        """The fit of one local file at ``ctx`` (split over the workers, when some are set)."""
        from fitchat.model.gguf_spec import read_spec
        from fitchat.model.plan import plan_model

        return plan_model(read_spec(path), self.with_workers(hw), ctx, self.load_settings())

    def set_workers(self, endpoints: tuple[str, ...]) -> None:
        """Use these workers for the next load (their devices are asked once, at the next plan)."""
        with self._lock:
            self.rpc, self._rpc_devices, self._rpc_failure = tuple(endpoints), None, None

    def with_workers(self, hw: HardwareInfo) -> HardwareInfo:
        """``hw`` with the workers' devices (asked once per set of workers: a worker serves one client at a
        time, so it cannot be asked again while a chat's model is loaded on it)."""
        if not self.rpc:
            return hw
        import dataclasses

        from fitchat.llama.rpc import query_workers

        with self._rpc_lock:  # one query at a time: the home screen and a chat may plan at once
            if self._rpc_devices is None:
                failed = self._rpc_failure
                if failed is not None and time.monotonic() - failed[0] < WORKER_FAILURE_KEPT_S:
                    raise failed[1]  # a worker that is down costs one timeout, not one per model row
                try:
                    self._rpc_devices = query_workers(self.rpc)
                except Exception as exc:
                    self._rpc_failure = (time.monotonic(), exc)
                    raise
            return dataclasses.replace(hw, rpc=self._rpc_devices)

    def default_ctx(self) -> int:
        """The context length plans start from."""
        from fitchat.model.estimate import DEFAULT_CTX

        return int(DEFAULT_CTX)

    # ------------------------------------------------------------------ hub

    def curated(self) -> list[CatalogEntry]:
        """The bundled catalog."""
        from fitchat.hub.catalog import curated

        return list(curated())

    def search(self, text: str, limit: int = 30) -> list[SearchHit]:
        """Hub search for GGUF repos."""
        from fitchat.hub.catalog import search

        return list(search(text, limit=limit, endpoint=self.endpoint, token=self.token))

    def hub_reachable(self) -> bool:
        """Whether the Hub (or HF_ENDPOINT) answers; False offline, never raises."""
        from fitchat.hub.client import hub_reachable

        try:
            return bool(hub_reachable(endpoint=self.endpoint, token=self.token))
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False

    def remote_plans(self, repo: str, hw: HardwareInfo, ctx: int) -> list[Plan]:
        """Every GGUF variant of ``repo`` planned at ``ctx`` (headers read remotely; split over the workers, when
        some are set, as a file on disk is)."""
        from fitchat.hub.remote import fit_remote_repo

        return list(fit_remote_repo(repo, self.with_workers(hw), ctx, endpoint=self.endpoint, token=self.token))

    def recommend_first_model(self, hw: HardwareInfo, ctx: int) -> Recommendation | None:
        """The catalog model to suggest when nothing is on disk (a Recommendation), or None."""
        from fitchat.hub.recommend import recommend_first_model

        return recommend_first_model(
            hw, ctx, endpoint=self.endpoint, token=self.token, candidates=self.first_model_candidates
        )

    def replan(self, specs: list[ModelSpec], hw: HardwareInfo, ctx: int) -> list[Plan]:
        """Plan already-read specs at another context (no network beyond the workers, asked once)."""
        from fitchat.model.plan import plan_variants

        return list(plan_variants(specs, self.with_workers(hw), ctx, self.load_settings()))

    def pull(
        self,
        ref: str,
        *,
        quant: str | None,
        ctx: int,
        progress_class: type | None,
        cancel: threading.Event,
        notice: Callable[[str], None] | None = None,
    ) -> LocalModel:
        """Download a variant (or ``starter``); returns the LocalModel."""
        from fitchat.hub.download import pull

        return pull(
            ref, quant=quant, ctx=ctx, progress_class=progress_class, cancel=cancel,
            notice=notice, endpoint=self.endpoint, token=self.token,
        )

    def measure_variant(self, plan: Plan, *, repo: str | None, local_path: Path | None,
                        on_stage: Callable[[str], None] = lambda _stage: None) -> Measurement:
        """llama.cpp's dry run (fitchat.model.measure) for ``plan``'s variant at its context, settings and offload.

        A file on disk is measured where it is; a variant on the Hub by its header alone, read by HTTP
        Range into a sparse file of its full size (nothing downloaded). ``on_stage`` hears each step.
        """
        from fitchat.model.measure import measure, measure_header

        if any(d.endpoint for d in plan.devices):  # a dry run here would be set against a split's estimate
            from fitchat.errors import FitchatError

            raise FitchatError("measuring runs llama.cpp on this machine alone, not over RPC workers; "
                               "clear the workers in the chat settings (F2) to measure")
        if local_path is not None:
            on_stage("llama.cpp dry run on the file on disk")
            return measure(local_path, plan.context, plan.settings, mode="dry_run", gpu_layers=plan.gpu_layers,
                           moe_cpu_layers=plan.moe_cpu_layers)
        if not repo:
            from fitchat.errors import FitchatError

            raise FitchatError(f"{plan.spec.file} is neither on disk nor in a Hub repo")
        from fitchat.hub.remote import read_remote_header

        on_stage("reading its header from the Hub (HTTP Range, no download)")
        header = read_remote_header(repo, plan.spec.file, endpoint=self.endpoint, token=self.token)
        on_stage(f"llama.cpp dry run on the header ({len(header.parts[0].head) / 1024**2:.1f} MiB read)")
        return measure_header([(p.size_bytes, p.head) for p in header.parts], plan.context, plan.settings,
                              gpu_layers=plan.gpu_layers, moe_cpu_layers=plan.moe_cpu_layers, label=plan.spec.file)

    def measure_checks(self, plan: Plan, measurement: Measurement) -> tuple[Any, ...]:
        """The estimate beside ``measurement``, part by part, with the tolerance verdicts (PartCheck rows)."""
        from fitchat.model.measure import part_checks

        return part_checks(plan.estimate, measurement)

    # ------------------------------------------------------------------ compare

    def compare_candidates(self, repo: str) -> list[Candidate]:
        """The variants of ``repo`` on disk, as fitchat.compare.run candidates (headers read and validated)."""
        from fitchat.compare.run import resolve_sources

        return list(resolve_sources([repo]))

    def compare(
        self,
        candidates: list[Candidate],
        *,
        hw: HardwareInfo | None,
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event,
    ) -> CompareReport:
        """Compare the variants against the most precise one that fits (a CompareReport); cached results are reused."""
        from fitchat.compare.run import CompareSettings
        from fitchat.compare.run import compare as run_compare

        settings = self.compare_settings or CompareSettings(n_threads=self.n_threads)
        hw = hw or self.detect_hardware()
        return self.on_llama_thread(run_compare, candidates, settings=settings, hw=hw, progress=progress, cancel=cancel)

    # ------------------------------------------------------------------ chat

    def load_engine(self, path: Path, *, plan: Plan | None, n_ctx: int | None,
                    on_notice: Callable[[str], None]) -> ProcessEngine:
        """Load a model for chatting, in its own process (fitchat.llama.process): a crash in llama.cpp ends
        that process with a :class:`fitchat.llama.process.EngineDied`, never the app. The engine runs
        ``LLAMA_NICENESS`` steps less urgent than the UI, as the llama.cpp thread did in this process."""
        from fitchat.llama.process import ProcessEngine

        return ProcessEngine.load(
            path, plan=plan, n_ctx=n_ctx, n_threads=self.n_threads, on_notice=on_notice, niceness=LLAMA_NICENESS
        )

    def new_chat(
        self,
        *,
        engine: ProcessEngine | None,
        model_name: str,
        quant: str | None,
        model_path: str,
        settings: SamplingSettings,
        on_warning: Callable[[str], None],
    ) -> ChatSession:
        """A new conversation, saved to the history as it goes (unsaved, warned once, when the history cannot open)."""
        from fitchat.chat.session import ChatSession
        from fitchat.errors import HistoryError

        try:
            history = self.history()
        except HistoryError as exc:
            on_warning(f"{exc}; this chat goes on, unsaved")
            history = None
        session = ChatSession(engine, history, settings=settings, model_name=model_name, quant=quant,
                              model_path=model_path, on_warning=on_warning)
        if history is None:
            session.unsaved_reason = "the history could not be opened"
        return session

    def resume_chat(self, conversation_id: int, *, engine: ProcessEngine | None,
                    on_warning: Callable[[str], None]) -> ChatSession:
        """A saved conversation, continued as the CLI's ``--resume`` continues it."""
        from fitchat.chat.session import ChatSession

        return ChatSession.resume(engine, self.history(), conversation_id, on_warning=on_warning)

    def stream_reply(self, pieces: Iterator[str], on_piece: Callable[[str], None],
                     cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Run a session's reply (``session.reply()``), calling ``on_piece`` with each piece, on the llama.cpp thread.

        While the model is served the reply first waits its turn (:meth:`engine_turn`); False when
        ``cancelled()`` turned true before it came (the reply never started).
        """
        with self.engine_turn(cancelled) as mine:
            if not mine:
                return False

            def run() -> None:
                try:
                    for piece in pieces:
                        on_piece(piece)
                finally:
                    close = getattr(pieces, "close", None)
                    if close is not None:
                        close()  # ends the reply (and frees the engine) even when on_piece failed

            self.on_llama_thread(run)
        return True

    def close_engine(self, engine: ProcessEngine) -> None:
        """Free ``engine`` on the llama.cpp thread once its reply (already cancelled) has ended; returns at once.

        :meth:`close` waits for it, so the model is never freed mid-decode nor left to the
        interpreter's exit (where a half-freed model aborts the process). An engine being served
        stops being served first (its API replies drain).
        """
        self._llama_pool().submit(self._close_engine, engine)

    def _close_engine(self, engine: ProcessEngine) -> None:
        server = self._server
        if server is not None and server.serves(engine):
            server.stop()
        _close_quietly(engine)

    # ------------------------------------------------------------------ serving the loaded model

    def start_serving(self, engine: ProcessEngine, model_id: str, aliases: tuple[str, ...] = ()) -> ServingStatus:
        """Serve ``engine`` over the OpenAI-compatible API on 127.0.0.1 (fitchat.serve.controller); the
        chat and the API then take turns on it. One line (FitchatError) when that is not possible."""
        return self._serving().start(engine, model_id, aliases=aliases, host=SERVE_HOST, port=self.serve_port)

    def stop_serving(self) -> ServingStatus:
        """Stop serving (API replies in progress get a few seconds to finish); harmless when not serving."""
        server = self._server
        if server is None:
            from fitchat.serve.controller import ServingStatus

            return ServingStatus(False)
        return server.stop()

    def serving_status(self) -> ServingStatus:
        """Whether the loaded model is served, where, and how busy the API is."""
        server = self._server
        if server is None:
            from fitchat.serve.controller import ServingStatus

            return ServingStatus(False)
        return server.status()

    @contextmanager
    def engine_turn(self, cancelled: Callable[[], bool] = lambda: False) -> Iterator[bool]:
        """Hold the chat's engine against the API's requests while it is served (at once when it is not).

        Yields False when ``cancelled()`` turned true while waiting; the engine must then be left alone.
        """
        server = self._server
        if server is None:
            yield True
            return
        with server.turn(cancelled) as mine:
            yield mine

    def _serving(self) -> ServeController:
        with self._lock:
            if self._server is None:
                from fitchat.serve.controller import ServeController

                self._server = ServeController()
            return self._server

    def default_sampling(self) -> SamplingSettings:
        """The engine's default sampling settings."""
        from fitchat.llama.engine import DEFAULT_SAMPLING

        return DEFAULT_SAMPLING

    def history(self) -> History:
        """The conversation store (opened once)."""
        with self._lock:
            if self._history is None:
                from fitchat.chat.history import History

                self._history = History(self.history_path)
            return self._history

    def close(self) -> None:
        """Close what was opened."""
        self.stop_serving()
        with self._lock:
            if self._history is not None:
                self._history.close()
                self._history = None
            pool, self._llama = self._llama, None
        if pool is not None:
            pool.shutdown(wait=True)


def _close_quietly(engine: ProcessEngine) -> None:
    try:
        engine.close()
    except Exception:  # noqa: BLE001 - nothing left to tell
        pass


def lower_llama_priority(niceness: int = LLAMA_NICENESS) -> bool:
    """Make the calling thread (and the OpenMP threads it will start) ``niceness`` steps less urgent.

    Run on the llama.cpp thread before its first call. Linux gives each thread its own nice value
    and new threads inherit it, so the whole decoding team yields to the UI thread: a keypress or a
    frame then runs at once instead of sharing a core with a decode thread. The UI's CPU time is
    the same either way. False where the OS has no per-thread priority (macOS, Windows) or refuses.
    """
    if not (sys.platform.startswith("linux") and hasattr(os, "setpriority")):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
    except OSError:
        return False
    return True
