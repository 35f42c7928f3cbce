"""The chat engine: one llama.cpp model, streamed replies, cancel, context fitting and stats.

``ChatEngine.load`` opens a GGUF with the settings the fit estimate assumed (GPU layers, MoE experts
kept in RAM, context, flash attention, batch sizes, KV cache types) and walks a fallback ladder when that
fails for lack of memory: the experts of every layer in RAM (a MoE plan that kept only some there), fewer
GPU layers, then a smaller context, then CPU only, telling the user each step.

Replies are rendered through the model's own chat template on llama-cpp-python's sandboxed Jinja
path and decoded by a lean loop on llama.cpp's C API: one decode, one sample and one piece per
token, with no Python bookkeeping beyond that. The KV cache is reused across turns (only the new
part of the conversation is evaluated). ``cancel()`` takes effect within one graph node even in the
middle of a long prompt evaluation, through :class:`fitchat.llama.runtime.AbortFlag` (polled without
Python or the GIL); llama.cpp's log is held through that module's :class:`LlamaLog`. The loop's short C calls (end-of-generation
check, token text, logits address) keep the GIL (:func:`gil_holding`): only ``llama_decode`` lets
it go, so a busy UI thread in the same process delays a token at most once, not at every call.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import ctypes.util
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fitchat.errors import FitchatError, LoadFailed
from fitchat.format import printable
from fitchat.llama import threads as thread_policy
from fitchat.llama.runtime import AbortFlag, LlamaLog, quiet_load
from fitchat.llama.smoke import guard_load

if TYPE_CHECKING:
    from llama_cpp import Llama

    from fitchat.llama.chat_template import BoundedChatFormatter
    from fitchat.model.estimate import LoadSettings
    from fitchat.model.hardware import CpuInfo

Notice = Callable[[str], None]


class LoadPlan(Protocol):
    """What a load reads of a plan (``fitchat.model.plan.Plan``, or the same fields sent to the engine process)."""

    @property
    def settings(self) -> LoadSettings | dict[str, Any]: ...
    @property
    def context(self) -> int: ...
    @property
    def gpu_layers(self) -> int: ...
    @property
    def n_layers(self) -> int: ...
    # (and optionally ``moe_cpu_layers``: read with getattr, 0 when absent)
#: Builds the ``llama_cpp.Llama`` for a path and ``Llama`` keyword arguments (replaceable in tests).
Loader = Callable[..., "Llama"]

#: Context used when neither a plan nor the caller names one (the fit estimate's default).
FALLBACK_CTX = 4096
#: The smallest context the fallback ladder goes down to.
MIN_CTX = 512
#: Reply budget (tokens) kept free when fitting a conversation, unless max_tokens says otherwise.
DEFAULT_REPLY_RESERVE = 1024
#: Replies of a model without a chat template stop here unless max_tokens says otherwise.
PLAIN_COMPLETION_MAX_TOKENS = 512

_MEMORY_HINTS = re.compile(
    r"out of memory|failed to allocate|unable to allocate|cannot allocate|not enough memory|"
    r"insufficient memory|alloc(ate)?_buffer|cudaMalloc|ErrorOutOfDeviceMemory|std::bad_alloc|"
    r"failed to create llama_context|buffer for kv cache",
    re.IGNORECASE,
)


class EngineError(FitchatError):
    """The chat engine was used in a way it cannot serve."""


class EngineBusy(EngineError):
    """A reply is already streaming on this engine (one engine, one reply at a time)."""


class EngineClosed(EngineError):
    """The engine was closed; load the model again."""


class ContextOverflow(EngineError):
    """The newest message alone does not fit the context."""


class ChatTemplateError(EngineError):
    """The model's chat template is broken, or could not render the conversation within its limits."""


class RenderCancelled(EngineError):
    """The user stopped a reply while the chat template was still rendering the conversation."""

    exit_code = 130


class InvalidSampling(EngineError, ValueError):
    """A sampling setting is out of its range; ``field`` names it and ``rule`` says what it must be.

    Raised when a :class:`SamplingSettings` is made, so no front end can hand the sampler a value it
    would divide by or misread. The CLI words it with its flag, the settings dialog with its label.
    """

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field} {rule}")


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: Each sampling field: (accepts the value, what it must be). One table, read by ``__post_init__``.
SAMPLING_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (lambda v: _real(v) and v >= 0, "must be 0 or more (0 is greedy)"),
    "top_p": (lambda v: _real(v) and 0 < v <= 1, "must be more than 0 and at most 1 (e.g. 0.95)"),
    "top_k": (lambda v: _whole(v) and v >= 0, "must be 0 or more (0 turns top-k off)"),
    "repeat_penalty": (lambda v: _real(v) and v > 0, "must be more than 0 (1 turns it off)"),
    "seed": (lambda v: v is None or _whole(v), "must be a whole number"),
    "max_tokens": (lambda v: v is None or (_whole(v) and v >= 1), "must be at least 1"),
    "system_prompt": (lambda v: v is None or isinstance(v, str), "must be text"),
    "min_p": (lambda v: _real(v) and 0 <= v <= 1, "must be 0 or more and at most 1 (e.g. 0.05)"),
    "frequency_penalty": (lambda v: _real(v) and -2 <= v <= 2, "must be between -2 and 2 (0 turns it off)"),
    "presence_penalty": (lambda v: _real(v) and -2 <= v <= 2, "must be between -2 and 2 (0 turns it off)"),
}


@dataclass(frozen=True)
class SamplingSettings:
    """How a reply is sampled. ``temperature <= 0`` is greedy; ``seed=None`` is random.

    Every value is checked when the settings are made (:data:`SAMPLING_RULES`): a bad one is an
    :class:`InvalidSampling`, whichever front end it came from.
    """

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    seed: int | None = None
    max_tokens: int | None = None
    system_prompt: str | None = None
    min_p: float = 0.05
    frequency_penalty: float = 0.0  # OpenAI's: minus count × this, over the repeat penalty's window
    presence_penalty: float = 0.0  # OpenAI's: minus this once a token has appeared in that window

    def __post_init__(self) -> None:
        for name, (accepts, rule) in SAMPLING_RULES.items():
            if not accepts(getattr(self, name)):
                raise InvalidSampling(name, rule)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SamplingSettings:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


#: What a chat uses unless the user says otherwise (Ollama-like: warm sampling, mild repeat penalty).
DEFAULT_SAMPLING = SamplingSettings()


@dataclass(frozen=True)
class ChatStats:
    """Figures for one reply. TTFT and rates are wall-clock; the decode rate leaves out the time the
    consumer held the stream between tokens (a slow display is not a slow model)."""

    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    prompt_tokens_per_s: float
    decode_tokens_per_s: float
    n_threads: int
    gpu_layers: int
    n_ctx: int
    context_used: int
    n_threads_batch: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the KV cache (not evaluated again)
    moe_cpu_layers: int = 0  # blocks whose MoE experts stay in RAM (-1: all)
    finish_reason: str = "stop"  # "stop", "length", "context", "cancelled"
    dropped_messages: int = 0  # oldest messages left out to fit the context
    elapsed_s: float = 0.0
    devices: tuple[tuple[str, int], ...] = ()  # (device, layers) as loaded: the CPU first, then offload devices

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["devices"] = [[name, layers] for name, layers in self.devices]  # as JSON gives it back
        return data


@dataclass(frozen=True)
class LoadStep:
    """One rung of the fallback ladder."""

    gpu_layers: int
    n_ctx: int
    label: str
    moe_cpu_layers: int = 0  # blocks whose MoE experts stay in RAM (-1: all)


@dataclass(frozen=True)
class LoadReport:
    """What the load did: the rung that worked and the failures before it."""

    step: LoadStep
    failures: tuple[tuple[LoadStep, str], ...] = field(default=())
    load_s: float = 0.0


def fallback_ladder(gpu_layers: int, n_ctx: int, n_layers: int | None = None,
                    moe_cpu_layers: int = 0) -> list[LoadStep]:
    """The rungs tried in order: as planned, the experts of every layer in RAM, fewer GPU layers, a smaller
    context, CPU only.

    ``gpu_layers == -1`` means all layers; halving it needs ``n_layers`` (offloadable layers, as
    in ``Plan.n_layers``). ``moe_cpu_layers`` (-1: all) keeps the experts of that many first blocks in
    RAM; a plan that kept only some there tries all of them before it gives up GPU layers, and the
    rungs after it keep them there (less on the GPU costs less speed that way than fewer layers).
    """
    steps = [LoadStep(gpu_layers, n_ctx, "as planned", moe_cpu_layers)]
    moe = moe_cpu_layers
    if moe > 0 and gpu_layers != 0 and (n_layers is None or moe < n_layers - 1):
        moe = -1
        steps.append(LoadStep(gpu_layers, n_ctx, "the experts of every layer in RAM", moe))
    offload = gpu_layers if gpu_layers >= 0 else (n_layers or 0)
    fewer = offload // 2
    layers = gpu_layers
    if offload > 0 and fewer > 0:
        layers = fewer
        steps.append(LoadStep(fewer, n_ctx, f"fewer GPU layers ({fewer})", moe))
    small_ctx = max(MIN_CTX, min(n_ctx // 2, FALLBACK_CTX))
    if small_ctx < n_ctx:
        steps.append(LoadStep(layers, small_ctx, f"a smaller context ({small_ctx})", moe))
    if gpu_layers != 0:
        steps.append(LoadStep(0, min(small_ctx, n_ctx), "CPU only"))
    return steps


def is_memory_failure(message: str, log_lines: Sequence[str] = ()) -> bool:
    """Whether a load failure looks like lack of memory (worth a smaller rung)."""
    return bool(_MEMORY_HINTS.search(message)) or any(_MEMORY_HINTS.search(line) for line in log_lines)


def failure_reason(message: str, log_lines: Sequence[str]) -> str:
    """One line: llama.cpp's most telling log line (a memory error, else an error with its cause)."""

    def score(line: str) -> int:
        low = line.lower()
        if _MEMORY_HINTS.search(line):
            return 3
        if "error" in low or "unknown" in low:
            return 2
        return 1 if "failed" in low else 0

    best = max(log_lines[::-1], key=score, default="")  # the latest line among equals
    reason = best if best and score(best) else (message or "unknown error")
    return printable(reason, 300, one_line=True).strip() or "unknown error"  # log lines quote the file's strings


def template_failure(exc: BaseException) -> str:
    """One printable line for why a chat template failed (with the line of a syntax error)."""
    from jinja2 import TemplateSyntaxError

    if isinstance(exc, RecursionError):
        return "it calls itself without end"
    if isinstance(exc, MemoryError):
        return "it ran out of memory"
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    lineno = getattr(exc, "lineno", None)
    where = f"line {lineno}: " if isinstance(exc, TemplateSyntaxError) and lineno else ""
    return where + printable(message, 200, one_line=True).strip()


def default_loader(path: str, **kwargs: Any) -> Llama:
    """``llama_cpp.Llama(path, **kwargs)`` loaded quietly (:func:`fitchat.llama.runtime.quiet_load`), with
    the chat templates in the file left uncompiled there (fitchat renders them itself, within limits:
    see fitchat.llama.chat_template)."""
    import llama_cpp

    from fitchat.llama.chat_template import bounded_llama_templates

    with quiet_load(), bounded_llama_templates():
        return llama_cpp.Llama(model_path=path, verbose=True, **kwargs)


def gil_holding(lc: Any, names: Sequence[str]) -> dict[str, Any]:
    """``lc``'s C functions ``names``, bound so that calling them keeps the GIL.

    ctypes lets the GIL go around every foreign call and must take it back afterwards; while
    another Python thread (a UI) holds it, taking it back waits up to ``sys.getswitchinterval()``.
    For calls of a few microseconds that wait is pure loss, so the token loop calls these through
    a ``PyDLL`` view of the same library. Falls back to ``lc``'s own bindings where that fails.
    """
    funcs = {name: getattr(lc, name) for name in names}
    lib = getattr(getattr(lc, "llama_cpp", None), "_lib", None)
    if lib is None:
        return funcs
    try:
        held_lib = ctypes.PyDLL(lib._name, handle=lib._handle)
        for name, src in list(funcs.items()):
            fn = getattr(held_lib, name)
            fn.argtypes, fn.restype = src.argtypes, src.restype
            funcs[name] = fn
    except (AttributeError, OSError, TypeError):  # pragma: no cover - a binding without ctypes metadata
        return {name: getattr(lc, name) for name in names}
    return funcs


@contextlib.contextmanager
def experts_in_ram(moe_cpu_layers: int) -> Iterator[None]:
    """Loads in this thread keep the MoE experts of the first ``moe_cpu_layers`` blocks (-1: all) in RAM.

    ``Llama`` has no argument for llama.cpp's ``tensor_buft_overrides``; it goes in through
    :func:`fitchat.llama.smoke.model_params_override`, with the array kept alive for the load.
    """
    from fitchat.model.overrides import expert_overrides

    overrides = expert_overrides(moe_cpu_layers)
    if overrides is None:
        yield
        return
    from fitchat.llama.smoke import model_params_override

    with model_params_override(tensor_buft_overrides=overrides.address):
        yield
    del overrides  # the array lived through the load


def _default_load_kwargs() -> dict[str, Any]:
    from fitchat.model.estimate import DEFAULT_SETTINGS

    return dict(DEFAULT_SETTINGS.llama_kwargs())


def _settings_kwargs(settings: LoadSettings | dict[str, Any] | None) -> dict[str, Any]:
    if settings is None:
        return _default_load_kwargs()
    if isinstance(settings, dict):
        return dict(settings)
    return dict(settings.llama_kwargs())


def _offload_targets(plan: LoadPlan | None) -> list[dict[str, Any]]:
    """The plan's offload devices in llama.cpp's order ({name, layers, endpoint, index}); the CPU left out."""
    out = []
    for d in getattr(plan, "devices", None) or ():
        d = d if isinstance(d, dict) else {"name": d.name, "layers": d.layers, "endpoint": d.endpoint,
                                           "index": d.index}
        if d["name"] != "CPU":
            out.append({"name": d["name"], "layers": int(d["layers"]), "endpoint": d.get("endpoint", ""),
                        "index": int(d.get("index", 0))})
    return out


def _placed(targets: Sequence[dict[str, Any]], gpu_layers: int, n_blocks: int) -> tuple[tuple[str, int], ...]:
    """(device, layers) as llama.cpp places ``gpu_layers`` of ``n_blocks + 1`` units over ``targets``."""
    from fitchat.model.split import CPU, assign_units

    n_units = n_blocks + 1
    g = n_units if gpu_layers < 0 else min(gpu_layers, n_units)
    if not targets:
        return ((CPU, n_units - g),) + ((("GPU", g),) if g else ())
    weights = [float(max(t["layers"], 0)) for t in targets]
    cpu, counts = assign_units(n_units, g, weights if any(weights) else [1.0] * len(targets))
    return ((CPU, cpu),) + tuple((t["name"], n) for t, n in zip(targets, counts))


class ChatEngine:
    """One loaded model. Not thread-safe except :meth:`cancel`; one reply at a time."""

    def __init__(
        self,
        llm: Llama,
        *,
        path: str,
        gpu_layers: int,
        load_kwargs: dict[str, Any],
        report: LoadReport,
        on_notice: Notice | None = None,
        moe_cpu_layers: int = 0,
    ) -> None:
        import llama_cpp
        self._lc = llama_cpp
        self.llm = llm
        self.path = path
        self.gpu_layers = gpu_layers
        self.moe_cpu_layers = moe_cpu_layers
        self.load_kwargs = load_kwargs
        self.load_report = report
        #: (device, layers) as llama.cpp placed them: the CPU first, then the offload devices (set by load).
        self.devices: tuple[tuple[str, int], ...] = ()
        #: Whether layers run on RPC workers: then no C call that may wait for them keeps the GIL.
        self.remote = False
        self.notices: list[str] = []
        self._on_notice = on_notice
        self._ctx = llm.ctx
        self._model = llm.model
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._mem = llama_cpp.llama_get_memory(llm.ctx)
        self.n_ctx = int(llama_cpp.llama_n_ctx(llm.ctx))
        self.n_batch = int(llama_cpp.llama_n_batch(llm.ctx))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(llm.model))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        held = gil_holding(llama_cpp, ("llama_vocab_is_eog", "llama_token_to_piece"))
        self._held = (held["llama_vocab_is_eog"], held["llama_token_to_piece"])  # for the token loop
        self._kv: list[int] = []  # tokens held in the KV cache, by position
        self._busy = threading.Lock()
        self._cancel = threading.Event()
        self._closed = False
        self.last_stats: ChatStats | None = None
        self._live: dict[str, Any] | None = None

        # cancel() aborts a decode within one graph node, without a Python call per node.
        self._abort = AbortFlag().attach(self._ctx)

        metadata = getattr(llm, "metadata", {}) or {}
        self.chat_template: str | None = metadata.get("tokenizer.chat_template") or None
        self._formatter: BoundedChatFormatter | None = None
        if self.chat_template:
            from fitchat.llama.chat_template import BoundedChatFormatter

            eos_id = int(llama_cpp.llama_vocab_eos(self._vocab))
            bos_id = int(llama_cpp.llama_vocab_bos(self._vocab))
            self._formatter = BoundedChatFormatter(
                template=self.chat_template,
                eos_token=self._token_text(eos_id),
                bos_token=self._token_text(bos_id),
                stop_token_ids=[eos_id],
            )
            try:
                self._formatter.compile()
            except Exception as exc:  # any failure to compile is the file's, told in one line
                raise ChatTemplateError(
                    f"the chat template of {self.model_label} is broken ({template_failure(exc)}); "
                    "this file cannot be used for chat: pick another file or quant of the model"
                ) from exc
        else:
            self._notice(
                "this model has no chat template (probably a base model): it will continue your text "
                "as plain completion rather than answer as a chat assistant"
            )

        self.threads = thread_policy.ThreadChoice(
            int(llama_cpp.llama_n_threads(self._ctx)), int(llama_cpp.llama_n_threads_batch(self._ctx)), 0.0, "default"
        )
        self._last_thread_check = 0.0
        self._recheck_pending = False
        self._thread_cache_key: str | None = None
        self._thread_cache: thread_policy.ThreadCache | None = None
        self._log: LlamaLog | None = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        plan: LoadPlan | None = None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        gpu_layers: int | None = None,
        settings: LoadSettings | dict[str, Any] | None = None,
        on_notice: Notice | None = None,
        loader: Loader | None = None,
        calibrate: bool = True,
        thread_cache: thread_policy.ThreadCache | None = None,
        validate: bool = True,
        moe_cpu_layers: int | None = None,
    ) -> ChatEngine:
        """Load a GGUF as ``plan`` says (or with explicit settings), walking the fallback ladder.

        ``settings``: a ``fitchat.model.estimate.LoadSettings`` or a dict of ``Llama`` keyword args
        (defaults to the fit estimate's ``DEFAULT_SETTINGS``). ``n_threads``: a user override; without
        it the thread counts are measured (``calibrate``) and cached in ``thread_cache``.
        ``loader(path, **kwargs)`` builds the ``llama_cpp.Llama`` (replaceable in tests). Without a
        plan the file is first checked with ``fitchat.model.gguf_spec.read_spec`` (``validate``), so a bad
        file is one clear line rather than whatever llama.cpp makes of it. ``moe_cpu_layers`` (-1: all)
        keeps the MoE experts of that many first blocks in RAM (``--cpu-moe``), overriding the plan's.
        """
        path = str(path)
        if not Path(path).is_file():
            raise LoadFailed(f"no model file at {path}")
        if plan is None and validate:
            from fitchat.model.gguf_spec import read_spec

            read_spec(path)
        n_layers: int | None = None
        planned_moe = 0
        if plan is not None:
            planned_moe = int(getattr(plan, "moe_cpu_layers", 0) or 0)
            kwargs = _settings_kwargs(plan.settings)
            planned_ctx = int(plan.context)
            planned_gpu = int(plan.gpu_layers)
            n_layers = int(getattr(plan, "n_layers", 0)) or None
        else:
            kwargs = _settings_kwargs(settings)
            planned_ctx = FALLBACK_CTX
            planned_gpu = 0
            if gpu_layers is None:
                from fitchat.model.hardware import local_gpu_offload

                planned_gpu = -1 if local_gpu_offload() else 0
        if n_ctx is not None:
            planned_ctx = int(n_ctx)
        if gpu_layers is not None:
            planned_gpu = int(gpu_layers)
        if moe_cpu_layers is not None:
            planned_moe = int(moe_cpu_layers)
        for key in ("n_ctx", "n_gpu_layers", "model_path", "verbose"):
            kwargs.pop(key, None)
        targets = _offload_targets(plan)
        split = any(t["endpoint"] for t in targets)  # over RPC workers: fitchat.llama.rpc registers them
        if split:
            from fitchat.llama.rpc import load_devices, tensor_split

            kwargs["tensor_split"] = tensor_split(targets)

        early: list[str] = []

        def notify(message: str) -> None:
            early.append(message)
            if on_notice is not None:
                on_notice(message)

        cpu = _cpu_info()
        start_threads = n_threads or max(1, cpu.physical_cores)
        start_batch = n_threads_batch or start_threads

        load = loader or default_loader
        failures: list[tuple[LoadStep, str]] = []
        llm = None
        step = LoadStep(planned_gpu, planned_ctx, "as planned", planned_moe)
        t0 = time.perf_counter()
        log = LlamaLog.shared().install()
        try:
            # A build that dies on this CPU (the AMX crash) is found by a smoke decode in a child process,
            # cached per library and CPU; inside the block, loads leave out the extra buffer types if so.
            with guard_load(path, on_notice=notify), (load_devices(targets) if split else contextlib.nullcontext()):
                for step in fallback_ladder(planned_gpu, planned_ctx, n_layers, planned_moe):
                    if failures:
                        notify(f"retrying with {step.label}: {step.gpu_layers} GPU layers, context {step.n_ctx}")
                    log.take()
                    try:
                        with experts_in_ram(step.moe_cpu_layers):
                            llm = load(
                                path,
                                n_gpu_layers=step.gpu_layers,
                                n_ctx=step.n_ctx,
                                n_threads=start_threads,
                                n_threads_batch=start_batch,
                                **kwargs,
                            )
                        break
                    except (ValueError, RuntimeError, MemoryError, OSError) as exc:
                        lines = log.take()
                        reason = failure_reason(str(exc), lines)
                        failures.append((step, reason))
                        if not is_memory_failure(str(exc), lines):
                            raise LoadFailed(f"llama.cpp could not load {Path(path).name}: {reason}") from exc
                        notify(f"loading with {step.gpu_layers} GPU layers and context {step.n_ctx} failed: {reason}")
        except BaseException:
            log.restore()
            raise
        if llm is None:
            log.restore()
            tried = "; ".join(f"{s.label} ({s.gpu_layers} GPU layers, ctx {s.n_ctx}): {r}" for s, r in failures)
            raise LoadFailed(
                f"could not load {Path(path).name} even on the CPU with a small context ({tried}); "
                "free some memory or pick a smaller quant ('fitchat fit MODEL' shows what fits)"
            )
        report = LoadReport(step, tuple(failures), time.perf_counter() - t0)
        try:
            engine = cls(llm, path=path, gpu_layers=step.gpu_layers, load_kwargs=kwargs, report=report,
                         on_notice=on_notice, moe_cpu_layers=step.moe_cpu_layers)
        except BaseException:
            llm.close()
            log.restore()
            raise
        engine._log = log
        engine.notices[:0] = early
        engine.devices = _placed(targets, step.gpu_layers, int(engine._lc.llama_model_n_layer(engine._model)))
        engine.remote = split
        if engine.remote:  # token text and end-of-generation checks: no network, but keep the rule simple
            engine._held = (engine._lc.llama_vocab_is_eog, engine._lc.llama_token_to_piece)
        if failures:
            engine._notice(f"loaded with {step.label}: {step.gpu_layers} GPU layers, context {engine.n_ctx}")
        try:
            if n_threads is not None:
                engine.set_threads(n_threads, n_threads_batch or n_threads)
            elif calibrate:
                engine._thread_cache = thread_cache or thread_policy.ThreadCache()
                engine._thread_cache_key = thread_policy.cache_key(
                    thread_policy.machine_key(
                        cpu.model, cpu.physical_cores, cpu.logical_cores, _offload_backend(), engine.gpu_layers
                    ),
                    Path(path).stat().st_size,
                )
                cached = engine._thread_cache.get(engine._thread_cache_key)
                if cached is not None:
                    engine._lc.llama_set_n_threads(engine._ctx, cached.n_threads, cached.n_threads_batch)
                    engine.threads = cached
                    engine._last_thread_check = time.time()
                else:
                    engine.calibrate_threads()
        except BaseException:
            engine.close()
            raise
        return engine

    # ------------------------------------------------------------------ basics

    def _notice(self, message: str) -> None:
        self.notices.append(message)
        if self._on_notice is not None:
            self._on_notice(message)

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text = self._lc.llama_vocab_get_text(self._vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    @property
    def has_chat_template(self) -> bool:
        """False for models (usually base models) that carry no chat template."""
        return self._formatter is not None

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("the model was closed; load it again")

    def close(self) -> None:
        """Free the model and its context (call before loading the next model)."""
        if self._closed:
            return
        self.cancel()
        if not self._busy.acquire(timeout=5.0):
            raise EngineBusy("a reply is still streaming; finish or close its iterator before closing the model")
        try:
            self._closed = True
            self._abort.detach(self._ctx)
            self.llm.close()
            if self._log is not None:
                self._log.restore()
                self._log = None
        finally:
            self._busy.release()

    def __enter__(self) -> ChatEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget the cached conversation (the next reply evaluates its whole prompt)."""
        self._check_open()
        with self._busy:
            self._lc.llama_memory_clear(self._mem, True)
            self._kv = []

    def cancel(self) -> None:
        """Stop the reply in progress, within one graph node (thread-safe)."""
        self._cancel.set()
        self._abort.set()

    # ------------------------------------------------------------------ threads

    def set_threads(self, n_threads: int, n_threads_batch: int | None = None, source: str = "user") -> None:
        """Use these thread counts (a user override is never re-measured)."""
        nb = n_threads_batch or n_threads
        self._lc.llama_set_n_threads(self._ctx, int(n_threads), int(nb))
        self.threads = thread_policy.ThreadChoice(int(n_threads), int(nb), 0.0, source)

    def _probe_tokens(self, n: int) -> list[int]:
        base = self.tokenize("The quick brown fox jumps over the lazy dog. " * 4, special=False, add_bos=False)
        base = base or [max(0, int(self._lc.llama_vocab_bos(self._vocab)))]
        return (base * (n // len(base) + 1))[:n]

    def _decode_probe(self, start: int) -> thread_policy.DecodeProbe:
        lc, ctx = self._lc, self._ctx
        tokens = self._probe_tokens(64)

        def probe(n_threads: int, steps: int, limit_s: float) -> float:
            lc.llama_set_n_threads(ctx, n_threads, self.threads.n_threads_batch)
            arr = (lc.llama_token * 1)()
            batch = lc.llama_batch_get_one(arr, 1)
            times = []
            try:
                with self._abort.time_limit(limit_s):
                    for i in range(steps + 1):  # the first step warms the thread pool up
                        arr[0] = tokens[i % len(tokens)]
                        t = time.perf_counter()
                        if lc.llama_decode(ctx, batch) != 0:
                            return float("inf")
                        if i:
                            times.append(time.perf_counter() - t)
            finally:
                lc.llama_memory_seq_rm(self._mem, 0, start, -1)
            return thread_policy.median_step_seconds(times)

        return probe

    def _batch_probe(self, start: int, n_tokens: int) -> thread_policy.BatchProbe:
        lc, ctx = self._lc, self._ctx
        arr = (lc.llama_token * n_tokens)(*self._probe_tokens(n_tokens))

        def probe(n_threads_batch: int, limit_s: float) -> float:
            lc.llama_set_n_threads(ctx, self.threads.n_threads, n_threads_batch)
            try:
                with self._abort.time_limit(limit_s):
                    t = time.perf_counter()
                    rc = lc.llama_decode(ctx, lc.llama_batch_get_one(arr, n_tokens))
                    elapsed = time.perf_counter() - t
            finally:
                lc.llama_memory_seq_rm(self._mem, 0, start, -1)
            return elapsed if rc == 0 else float("inf")

        return probe

    def calibrate_threads(self, counts: Sequence[int] | None = None) -> thread_policy.ThreadChoice:
        """Time a few decode steps (and a short batch) at each candidate count; use the fastest."""
        self._check_open()
        if not self._busy.acquire(blocking=False):
            raise EngineBusy("a reply is streaming; measure threads after it")
        try:
            return self._calibrate(counts)
        finally:
            self._busy.release()

    def _calibrate(self, counts: Sequence[int] | None = None) -> thread_policy.ThreadChoice:
        cpu = _cpu_info()
        counts = tuple(counts or thread_policy.candidates(cpu.physical_cores, cpu.logical_cores))
        start = len(self._kv)
        if start + 80 > self.n_ctx:  # no room after the conversation: measure from an empty cache
            self._lc.llama_memory_clear(self._mem, True)
            self._kv = []
            start = 0
        self._abort.clear()
        decode = self._decode_probe(start)
        # Size the run to the model: a slow first step means fewer steps.
        first = decode(counts[0], 1, thread_policy.FIRST_PROBE_LIMIT_S)
        steps, rounds, batch_tokens = (6, 2, 32) if first < 0.05 else (3, 1, 16) if first < 0.25 else (2, 1, 8)
        choice = thread_policy.calibrate(
            decode, self._batch_probe(start, batch_tokens), counts,
            steps=steps, rounds=rounds, batch_tokens=batch_tokens,
        )
        self._lc.llama_set_n_threads(self._ctx, choice.n_threads, choice.n_threads_batch)
        self.threads = choice
        self._last_thread_check = time.time()
        self._recheck_pending = False
        if self._thread_cache is not None and self._thread_cache_key is not None:
            self._thread_cache.put(self._thread_cache_key, choice)
        return choice

    # ------------------------------------------------------------------ prompts

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        """Tokens of ``text`` (``special``: parse control tokens such as ``<|im_start|>``)."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt text: the chat template with the generation prompt, or plain text without one.

        The template runs within the limits of fitchat.llama.chat_template (time, sizes, the engine's cancel);
        a template that fails them is a :class:`ChatTemplateError` naming the model, at once.
        """
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self._formatter is None:
            return "\n\n".join(m["content"] for m in msgs if m["content"])
        from fitchat.llama.chat_template import TemplateCancelled, TemplateLimitExceeded

        try:
            return self._formatter(messages=msgs).prompt
        except (TemplateLimitExceeded, TemplateCancelled, RecursionError, MemoryError) as exc:
            raise self._template_failure(exc) from exc
        except Exception as exc:  # jinja2 errors and the template's raise_exception (ValueError)
            if msgs and msgs[0]["role"] == "system" and len(msgs) > 1:
                # Templates without a system role: fold it into the first user turn.
                merged = [dict(msgs[1], content=msgs[0]["content"] + "\n\n" + msgs[1]["content"])] + msgs[2:]
                try:
                    return self._formatter(messages=merged).prompt
                except (TemplateLimitExceeded, TemplateCancelled, RecursionError, MemoryError) as again:
                    raise self._template_failure(again) from again
                except Exception:  # noqa: BLE001 - the first failure is the one to tell
                    pass
            raise ChatTemplateError(
                f"the chat template of {self.model_label} could not render this conversation: "
                f"{template_failure(exc)}"
            ) from exc

    def _template_failure(self, exc: BaseException) -> EngineError:
        from fitchat.llama.chat_template import TemplateCancelled

        if isinstance(exc, TemplateCancelled):
            return RenderCancelled("stopped while the chat template was rendering the conversation")
        return ChatTemplateError(
            f"the chat template of {self.model_label} was stopped: {template_failure(exc)} "
            "(real templates take a millisecond and a few KiB; this file's is faulty or hostile: pick another file)"
        )

    @property
    def model_label(self) -> str:
        """The model's file name, safe to print."""
        return printable(Path(self.path).name, 80, one_line=True)

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The tokens the model will see for ``messages`` (generation prompt included)."""
        text = self.render(messages)
        if self._formatter is None:
            return self.tokenize(text, special=False, add_bos=self.add_bos)
        return self.tokenize(text, special=True, add_bos=False)

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        """How many context tokens ``messages`` take, as rendered for a reply."""
        self._check_open()
        return len(self.prompt_tokens(messages))

    @staticmethod
    def with_system(messages: Sequence[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
        """``messages`` with ``system_prompt`` first (replacing any system message) when it is set."""
        msgs = [dict(m) for m in messages]
        if system_prompt:
            msgs = [m for m in msgs if m["role"] != "system"]
            msgs.insert(0, {"role": "system", "content": system_prompt})
        return msgs

    def reply_reserve(self, settings: SamplingSettings) -> int:
        """Tokens kept free for the reply when fitting a conversation."""
        want = settings.max_tokens if settings.max_tokens else DEFAULT_REPLY_RESERVE
        return max(1, min(want, self.n_ctx // 4 if not settings.max_tokens else self.n_ctx // 2))

    def fit_context(
        self, messages: Sequence[dict[str, str]], settings: SamplingSettings
    ) -> tuple[list[int], list[dict[str, str]], int]:
        """Prompt tokens for the longest tail of the conversation that fits, keeping the system prompt.

        Returns (tokens, messages kept, number dropped). Drops the oldest turns first (a user
        message with the reply that followed it); raises :class:`ContextOverflow` when the newest
        message alone does not fit. The tail is found by bisection over the places a turn starts, so
        a conversation of thousands of messages is rendered a dozen times, not once per message.
        """
        msgs = list(messages)
        budget = self.n_ctx - self.reply_reserve(settings)
        system = [m for m in msgs[:1] if m["role"] == "system"]
        turns = msgs[len(system):]
        # Where the kept tail may start: the first message, each later one that is not a reply, the last.
        starts = [0] + [i for i in range(1, len(turns)) if turns[i]["role"] != "assistant" or i == len(turns) - 1]
        tokens = self.prompt_tokens(system + turns)
        dropped = 0
        if len(tokens) > budget and len(starts) > 1:
            lo, hi = 1, len(starts) - 1  # the smallest start whose tail fits, else the last start
            best: tuple[int, list[int]] | None = None
            while lo <= hi:
                mid = (lo + hi) // 2
                candidate = self.prompt_tokens(system + turns[starts[mid]:])
                if len(candidate) <= budget:
                    best, hi = (starts[mid], candidate), mid - 1
                else:
                    lo = mid + 1
            if best is None:
                best = (starts[-1], self.prompt_tokens(system + turns[starts[-1]:]))
            dropped, tokens = best
            turns = turns[dropped:]
        if len(tokens) > budget:
            raise ContextOverflow(
                f"the message takes {len(tokens)} tokens with the system prompt, but the context holds "
                f"{self.n_ctx} with {self.n_ctx - budget} kept for the reply; shorten it or load with a larger "
                "context (--ctx)"
            )
        return tokens, system + turns, dropped

    # ------------------------------------------------------------------ sampling

    def _sampler(self, settings: SamplingSettings) -> TokenSampler:
        return TokenSampler(self._lc, self._ctx, int(self._lc.llama_vocab_n_tokens(self._vocab)), settings,
                            keep_gil=not self.remote)

    # ------------------------------------------------------------------ the reply

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Keep the cached prefix shared with ``tokens``; returns how many tokens need no evaluation."""
        kv = self._kv
        n = 0
        limit = min(len(kv), len(tokens) - 1)  # always evaluate at least one token for fresh logits
        while n < limit and kv[n] == tokens[n]:
            n += 1
        if n < len(kv):
            if n == 0 or not self._lc.llama_memory_seq_rm(self._mem, 0, n, -1):
                self._lc.llama_memory_clear(self._mem, True)
                n = 0
            del kv[n:]
        return n

    def _eval(self, tokens: list[int]) -> int:
        """Evaluate prompt tokens in batches; returns llama_decode's code (0 ok, 2 aborted)."""
        lc, ctx = self._lc, self._ctx
        for i in range(0, len(tokens), self.n_batch):
            if self._cancel.is_set():
                return 2
            chunk = tokens[i : i + self.n_batch]
            arr = (lc.llama_token * len(chunk))(*chunk)
            rc = lc.llama_decode(ctx, lc.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                lc.llama_memory_seq_rm(self._mem, 0, len(self._kv), -1)
                return int(rc)
            self._kv.extend(chunk)
        return 0

    def stream(self, messages: Sequence[dict[str, str]], settings: SamplingSettings | None = None) -> Iterator[str]:
        """Stream the assistant's reply to ``messages`` as text pieces; stats land in :attr:`last_stats`.

        ``messages`` are ``{"role", "content"}`` dicts ending with the user's turn. Stops at the
        model's end-of-generation token, ``max_tokens``, a full context, or :meth:`cancel`.
        """
        settings = settings or SamplingSettings()
        self._check_open()
        return self._stream(list(messages), settings)

    def complete(self, prompt: str, settings: SamplingSettings | None = None) -> Iterator[str]:
        """Stream a plain continuation of ``prompt`` (no chat template): what ``/v1/completions`` serves."""
        settings = settings or SamplingSettings()
        self._check_open()
        return self._stream([], settings, prompt)

    def completion_tokens(self, prompt: str, settings: SamplingSettings) -> list[int]:
        """The tokens of a plain ``prompt``; :class:`ContextOverflow` when it leaves no room for the reply."""
        tokens = self.tokenize(prompt, special=False, add_bos=self.add_bos)
        budget = self.n_ctx - self.reply_reserve(settings)
        if len(tokens) > budget:
            raise ContextOverflow(
                f"the prompt takes {len(tokens)} tokens, but the context holds {self.n_ctx} with "
                f"{self.n_ctx - budget} kept for the reply; shorten it or load with a larger context (--ctx)"
            )
        return tokens or [max(0, int(self._lc.llama_vocab_bos(self._vocab)))]

    def regenerate(
        self, messages: Sequence[dict[str, str]], settings: SamplingSettings | None = None, attempt: int = 1
    ) -> Iterator[str]:
        """Stream a new answer in place of the last one: trailing assistant messages are left out.

        A fixed seed moves by ``attempt`` so the new answer differs yet stays reproducible.
        """
        settings = settings or SamplingSettings()
        msgs = list(messages)
        while msgs and msgs[-1]["role"] == "assistant":
            msgs.pop()
        if settings.seed is not None:
            settings = replace(settings, seed=settings.seed + attempt)
        return self.stream(msgs, settings)

    def current_stats(self) -> ChatStats | None:
        """Live figures for the reply in progress (for a status bar), else the last reply's."""
        live = self._live
        if live is None:
            return self.last_stats
        return self._stats(live, time.perf_counter())

    def _stats(self, live: dict[str, Any], now: float) -> ChatStats:
        t0, t_prompt, t_first, t_last = live["t0"], live["t_prompt"], live["t_first"], live["t_last"]
        evaluated = live["evaluated"]
        prompt_s = (t_prompt - live["t_eval"]) if t_prompt else 0.0
        steps = live["sampled"] - 1
        # Decoding time excludes the moments the consumer held the stream (a slow UI is not a slow model).
        decode_s = (t_last - t_first - live["suspended"]) if (t_first and t_last) else 0.0
        return ChatStats(
            prompt_tokens=live["prompt_tokens"],
            completion_tokens=live["completion_tokens"],
            ttft_s=(t_first - t0) if t_first else 0.0,
            prompt_tokens_per_s=evaluated / prompt_s if prompt_s > 0 else 0.0,
            decode_tokens_per_s=steps / decode_s if steps > 0 and decode_s > 0 else 0.0,
            n_threads=self.threads.n_threads,
            gpu_layers=self.gpu_layers,
            moe_cpu_layers=self.moe_cpu_layers,
            n_ctx=self.n_ctx,
            context_used=len(self._kv),
            n_threads_batch=self.threads.n_threads_batch,
            cached_tokens=live["cached"],
            finish_reason=live["finish"],
            dropped_messages=live["dropped"],
            elapsed_s=now - t0,
            devices=self.devices,
        )

    def _stream(
        self, messages: list[dict[str, str]], settings: SamplingSettings, prompt: str | None = None
    ) -> Iterator[str]:
        if not self._busy.acquire(blocking=False):
            raise EngineBusy("a reply is already streaming on this model; cancel it or wait")
        lc = self._lc
        sampler = None
        live: dict[str, Any] = {
            "t0": time.perf_counter(), "t_eval": 0.0, "t_prompt": 0.0, "t_first": 0.0, "t_last": 0.0,
            "prompt_tokens": 0, "completion_tokens": 0, "sampled": 0, "evaluated": 0, "cached": 0,
            "finish": "stop", "dropped": 0, "suspended": 0.0,
        }
        text_out = False
        try:
            self._cancel.clear()
            self._abort.clear()
            if self._recheck_pending:
                old = self.threads
                new = self._calibrate()
                self._notice(
                    f"threads re-measured: {new.n_threads} for decoding ({new.decode_tokens_per_s:.0f} tok/s), "
                    f"was {old.n_threads}"
                )
            msgs = self.with_system(messages, settings.system_prompt)
            with self._formatter.limits(cancelled=self._cancel.is_set) if self._formatter else contextlib.nullcontext():
                tokens, _kept, dropped = (  # ctrl+c reaches the template too
                    self.fit_context(msgs, settings) if prompt is None else (self.completion_tokens(prompt, settings), [], 0)
                )
            if dropped:
                self._notice(
                    f"context full: left out the {dropped} oldest message{'s' if dropped != 1 else ''} to fit "
                    f"{self.n_ctx} tokens (the system prompt is kept)"
                )
            max_tokens = settings.max_tokens or (PLAIN_COMPLETION_MAX_TOKENS if self._formatter is None else None)
            live.update(prompt_tokens=len(tokens), dropped=dropped)
            self._live = live
            sampler = self._sampler(settings)
            cached = self._reuse_prefix(tokens)
            live["cached"] = cached
            live["t_eval"] = time.perf_counter()
            rc = self._eval(tokens[cached:])
            live["t_prompt"] = time.perf_counter()
            live["evaluated"] = len(tokens) - cached
            if rc == 2:
                live["finish"] = "cancelled"
                return
            if rc != 0:
                raise EngineError(f"llama.cpp failed to evaluate the prompt (llama_decode returned {rc})")

            # The hot loop: locals only, one decode + one sample + one piece per token.
            ctx, vocab, sample = self._ctx, self._vocab, sampler.sample
            decode, (is_eog, to_piece) = lc.llama_decode, self._held
            cancel = self._cancel
            kv = self._kv
            n_ctx = self.n_ctx
            arr = (lc.llama_token * 1)()
            batch = lc.llama_batch_get_one(arr, 1)
            buf = ctypes.create_string_buffer(256)
            utf8 = codecs.getincrementaldecoder("utf-8")("replace")
            clock = time.perf_counter
            limit = max_tokens if max_tokens else n_ctx
            produced = 0
            suspended = 0.0  # time spent handed over to the consumer (not decoding)
            while True:
                token = sample()
                now = clock()
                if not live["t_first"]:
                    live["t_first"] = now
                live["t_last"] = now
                live["suspended"] = suspended
                live["sampled"] += 1
                if is_eog(vocab, token):
                    break
                n = to_piece(vocab, token, buf, 256, 0, False)
                if n < 0:  # piece longer than the buffer
                    big = ctypes.create_string_buffer(-n)
                    n = to_piece(vocab, token, big, -n, 0, False)
                    piece = utf8.decode(big.raw[:n])
                else:
                    piece = utf8.decode(buf[:n])  # type: ignore[arg-type]  # a char buffer's slice is bytes
                produced += 1
                live["completion_tokens"] = produced
                if piece:
                    text_out = text_out or not piece.isspace()
                    handed = clock()
                    yield piece
                    suspended += clock() - handed
                if cancel.is_set():
                    live["finish"] = "cancelled"
                    break
                if produced >= limit:
                    live["finish"] = "length"
                    break
                if len(kv) >= n_ctx:
                    live["finish"] = "context"
                    break
                arr[0] = token
                rc = decode(ctx, batch)
                if rc != 0:
                    lc.llama_memory_seq_rm(self._mem, 0, len(kv), -1)
                    if rc == 2:
                        live["finish"] = "cancelled"
                        break
                    raise EngineError(f"llama.cpp failed while decoding (llama_decode returned {rc})")
                kv.append(token)
            tail = utf8.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            end = time.perf_counter()
            if sampler is not None:
                sampler.close()
            self._abort.clear()
            if self._live is live:
                stats = self._stats(live, end)
                self.last_stats = stats
                self._live = None
                self._after_reply(stats, text_out)
            self._busy.release()

    def _after_reply(self, stats: ChatStats, text_out: bool) -> None:
        if stats.finish_reason == "stop" and not text_out:
            self._notice(
                "the model ended its reply without any text"
                + ("" if self.has_chat_template else " (a base model without a chat template often does)")
            )
        elif stats.finish_reason == "context":
            self._notice(f"the reply stopped because the context ({self.n_ctx} tokens) is full")
        if thread_policy.needs_recheck(
            self.threads, stats.decode_tokens_per_s, stats.completion_tokens, self._last_thread_check
        ):
            self._recheck_pending = True
            self._notice(
                f"decoding ran at {stats.decode_tokens_per_s:.0f} tok/s, well below the "
                f"{self.threads.decode_tokens_per_s:.0f} measured with {self.threads.n_threads} threads; "
                "the thread count will be measured again before the next reply"
            )


class TokenSampler:
    """Picks the next token exactly as llama.cpp's chain would, with less work per token.

    The chain llama-cpp-python builds is penalties -> greedy, or penalties -> top-k -> top-p ->
    min-p -> temperature -> dist. llama.cpp's penalties sampler looks every vocabulary entry up in a
    hash map (about 0.45 ms a token for a 49k vocabulary); here the repeat penalty is applied in
    place to the logits of the at most 64 recent tokens it concerns, with the same float32
    arithmetic, and greedy is an argmax over the logits (first maximum, as llama.cpp's greedy
    sampler) without building the candidate array. Temperature sampling still runs llama.cpp's
    own samplers on the penalised logits, so seeded replies stay reproducible and identical.
    """

    LAST_N = 64

    def __init__(self, lc: Any, ctx: Any, n_vocab: int, settings: SamplingSettings, *, keep_gil: bool = True) -> None:
        """``keep_gil=False`` for a model split over RPC workers: reading the logits waits for them over the
        network, and ggml-rpc's own threads may need the GIL meanwhile (its log goes to Python)."""
        import numpy as np

        self._np = np
        self._ctx = ctx
        self._n_vocab = n_vocab
        self._greedy = settings.temperature <= 0
        self._penalty = np.float32(settings.repeat_penalty)
        self._repeat = float(settings.repeat_penalty) != 1.0
        self._frequency = np.float32(settings.frequency_penalty)
        self._presence = np.float32(settings.presence_penalty)
        self._counted = float(settings.frequency_penalty) != 0.0 or float(settings.presence_penalty) != 0.0
        self._penalize = self._repeat or self._counted
        self._window: deque[int] = deque()
        self._counts: dict[int, int] = {}
        self._view: Any = None
        self._view_addr = 0
        addr = ctypes.cast(lc.llama_get_logits_ith, ctypes.c_void_p).value
        if addr is None:  # pragma: no cover - the library exports it
            raise EngineError("llama.cpp has no llama_get_logits_ith")
        functype = ctypes.PYFUNCTYPE if keep_gil else ctypes.CFUNCTYPE
        self._logits_addr = functype(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)(addr)
        self._chain = None
        if not self._greedy:
            from llama_cpp import _internals

            chain = _internals.LlamaSampler()
            chain.add_top_k(int(settings.top_k))
            chain.add_top_p(float(settings.top_p), 1)
            chain.add_min_p(float(settings.min_p), 1)
            chain.add_temp(float(settings.temperature))
            chain.add_dist(lc.LLAMA_DEFAULT_SEED if settings.seed is None else int(settings.seed) & 0xFFFFFFFF)
            self._chain = chain
            self._chain_sample = lc.llama_sampler_sample
            self._chain_ptr = chain.sampler

    def _logits(self) -> Any:
        addr = self._logits_addr(self._ctx, -1)
        if addr != self._view_addr:
            self._view = self._np.ctypeslib.as_array((ctypes.c_float * self._n_vocab).from_address(addr))
            self._view_addr = addr
        return self._view

    def sample(self) -> int:
        """The next token for the logits of the last evaluated position."""
        counts = self._counts
        if self._penalize and counts:
            np = self._np
            logits = self._logits()
            idx = np.fromiter(counts, dtype=np.int32, count=len(counts))
            values = logits[idx]
            if self._repeat:
                values = np.where(values <= 0, values * self._penalty, values / self._penalty)
            if self._counted:  # after the repeat penalty, as llama.cpp's penalties sampler does
                n = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
                values = values - (n * self._frequency + self._presence)
            logits[idx] = values
        if self._greedy:
            token = int(self._logits().argmax())
        else:
            token = int(self._chain_sample(self._chain_ptr, self._ctx, -1))
        if self._penalize:
            window = self._window
            window.append(token)
            counts[token] = counts.get(token, 0) + 1
            if len(window) > self.LAST_N:
                old = window.popleft()
                if counts[old] == 1:
                    del counts[old]
                else:
                    counts[old] -= 1
        return token

    def close(self) -> None:
        if self._chain is not None:
            self._chain.close()
            self._chain = None


def _offload_backend() -> str:
    from fitchat.model.hardware import local_gpu_offload

    return "gpu" if local_gpu_offload() else "cpu"


def _cpu_info() -> CpuInfo:
    from fitchat.model.hardware import probe_cpu

    return probe_cpu("")
