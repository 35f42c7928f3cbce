"""What a smaller quant costs, measured on this machine: ``fitchat compare``.

For a set of GGUF variants of one model this reads each variant's next-token distributions over a
text and compares them with a reference variant (the highest precision that fits), then runs task
probes (exact arithmetic, needle-in-a-haystack recall) and times decoding.

Scoring follows llama.cpp's ``llama-perplexity`` (``--kl-divergence-base`` / ``--kl-divergence``):

- the text is tokenized once, with the special tokens the model adds (BOS where the vocabulary asks
  for it), one trailing newline dropped as ``-f`` does;
- it is cut into ``n_chunks`` chunks of ``ctx`` tokens; each chunk is evaluated from an empty KV cache
  with its first token replaced by BOS when the model adds one;
- only the second half of each chunk is scored: positions ``ctx/2 .. ctx-2`` predict the next token,
  ``ctx - 1 - ctx/2`` tokens per chunk;
- the reference's log-probabilities are stored as llama.cpp stores them, 16 bits per vocabulary entry
  (the file is llama.cpp's own ``--kl-divergence-base`` format, so either tool can read it);
- perplexity is ``exp(mean NLL)``; KL divergence sums ``p_ref · (log p_ref − log p)`` over the
  tokens whose reference log-probability is above −16, averaged over all scored tokens ("Mean KLD");
  top-1 agreement is the share of scored tokens where both pick the same most likely token ("Same top p").

One refinement: the variant's log-probabilities go through the same 16-bit encoding before they are
set against the reference's, so a model compared with itself scores a KL divergence of exactly 0 and
100% agreement; against llama-perplexity this moves the figures by well under 0.1%.

The reference's log-probabilities are computed once and cached; each result is cached per
(file sha256, reference sha256, text, context, budget, probe set), so a second run is instant.
Everything is bounded by a token budget per variant, reports progress, and can be cancelled;
a cancelled run leaves no partial cache entry.

The bundled text is chapters I–III of Lewis Carroll's *Alice's Adventures in Wonderland* (1865),
in the public domain, without any edition's licence header.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitchat import paths
from fitchat.compare import probes
from fitchat.errors import Cancelled, FitchatError, LoadFailed, ModelNotFound
from fitchat.format import human_bytes
from fitchat.model.plan import verdict_label
from fitchat.model.quants import is_model_gguf, split_part

if TYPE_CHECKING:
    import numpy as np

    from fitchat.llama.runtime import AbortFlag
    from fitchat.model.hardware import HardwareInfo

#: Bumped whenever a change would make cached results differ.
SCORING_VERSION = 1
#: llama-perplexity's default context.
DEFAULT_CTX = 512
#: Tokens each variant may evaluate (text chunks, probe prompts and generated tokens together).
DEFAULT_BUDGET = 8192
MIN_CTX = 64
BUNDLED_TEXT = "alice_ch1-3.txt"
BUNDLED_TEXT_NAME = "the bundled text (Alice's Adventures in Wonderland, chapters I-III)"
LOGITS_MAGIC = b"_logits_"
#: Reference log-probability files kept in the cache (the newest ones).
KEEP_REFERENCES = 3
#: Most tokens generated for one probe answer.
ANSWER_TOKENS = 12
#: Prompt tokens before the timed decode.
SPEED_PROMPT_TOKENS = 16
#: Vocabulary entries scored at once per worker: blocks of rows are sized to this, which bounds the
#: memory of the numpy work (a few float32 arrays of this many entries per worker).
_BLOCK_ENTRIES = 4_000_000
_MAX_ROW_BLOCK = 64
#: Threads scoring blocks of rows (numpy releases the GIL).
_SCORE_WORKERS = 4


def _row_block(n_vocab: int) -> int:
    return max(4, min(_MAX_ROW_BLOCK, _BLOCK_ENTRIES // max(1, n_vocab)))

ProgressCallback = Callable[["Progress"], None]


class CompareError(FitchatError):
    """A compare cannot run as asked (bad text, budget, context or set of files)."""


class BudgetTooSmall(CompareError):
    """The token budget does not cover the probes and one chunk of text."""


class TextTooShort(CompareError):
    """The text has fewer tokens than one context."""


class VocabMismatch(CompareError):
    """A variant does not share the reference's vocabulary, so its distributions cannot be compared."""


# -- settings and results -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSet:
    """Which probes run. Part of every cache key: change it and results are measured again."""

    seed: int = 0
    arithmetic: int = 20
    needle_depths: tuple[float, ...] = (0.1, 0.5, 0.9)
    speed_tokens: int = 64

    def key(self) -> dict[str, Any]:
        return {"seed": self.seed, "arithmetic": self.arithmetic, "needle_depths": list(self.needle_depths),
                "speed_tokens": self.speed_tokens, "preamble": probes.ARITHMETIC_PREAMBLE}


@dataclass(frozen=True)
class CompareSettings:
    """How to compare: context, text, budget per variant, probes, threads."""

    ctx: int = DEFAULT_CTX
    budget: int = DEFAULT_BUDGET
    text_path: Path | None = None
    probes: ProbeSet = field(default_factory=ProbeSet)
    n_threads: int | None = None


@dataclass(frozen=True)
class Candidate:
    """One GGUF file to compare."""

    path: Path
    quant: str
    size_bytes: int
    sha256: str | None = None
    repo: str | None = None
    vocab_size: int | None = None
    spec: Any = field(default=None, compare=False, repr=False)  # fitchat.model.gguf_spec.ModelSpec when read

    @property
    def file(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Progress:
    """Where a compare stands: ``done`` of ``total`` tokens, on ``variant``, at ``stage``."""

    done: int
    total: int
    variant: str
    stage: str  # "reference", "text", "arithmetic", "needle", "speed", "done"

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


@dataclass(frozen=True)
class ProbeAnswer:
    kind: str  # "arithmetic" or "needle"
    question: str
    expected: int
    reply: str
    correct: bool


def _finite(x: float | None) -> float | None:
    """JSON has no NaN or infinity: a figure that is not a finite number is reported as null."""
    return x if x is not None and math.isfinite(x) else None


@dataclass(frozen=True)
class VariantResult:
    """One variant's row of the table. ``top1_agreement`` is a fraction (0..1)."""

    file: str
    path: str
    quant: str
    size_bytes: int
    sha256: str
    is_reference: bool
    ppl: float | None = None
    mean_kld: float | None = None
    top1_agreement: float | None = None
    tokens_scored: int = 0
    arithmetic_correct: int = 0
    arithmetic_total: int = 0
    needle_found: int = 0
    needle_total: int = 0
    decode_tokens_per_s: float | None = None
    answers: tuple[ProbeAnswer, ...] = ()
    fit: str | None = None  # "full_gpu", "partial_gpu", "cpu", "too_big" or None (not planned)
    fit_label: str = "?"
    skipped: str | None = None
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "path": self.path,
            "quant": self.quant,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "is_reference": self.is_reference,
            "fit": self.fit,
            "ppl": _finite(self.ppl),
            "mean_kld": _finite(self.mean_kld),
            "top1_agreement": _finite(self.top1_agreement),
            "tokens_scored": self.tokens_scored,
            "arithmetic": {"correct": self.arithmetic_correct, "total": self.arithmetic_total},
            "needle": {"found": self.needle_found, "total": self.needle_total},
            "decode_tokens_per_s": _finite(self.decode_tokens_per_s),
            "skipped": self.skipped,
            "cached": self.cached,
            "answers": [asdict(a) for a in self.answers],
        }


@dataclass(frozen=True)
class CompareReport:
    """The whole comparison: the reference's row first, then the other variants."""

    reference: VariantResult
    variants: tuple[VariantResult, ...]
    ctx: int
    budget: int
    text: str
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": {"file": self.reference.file, "quant": self.reference.quant,
                          "size_bytes": self.reference.size_bytes, "sha256": self.reference.sha256},
            "ctx": self.ctx,
            "budget": self.budget,
            "text": self.text,
            "notes": list(self.notes),
            "verdict": verdict_lines(self),
            "variants": [v.to_json() for v in self.variants],
        }


# -- text -----------------------------------------------------------------------------------------


def bundled_text_path() -> Path:
    """The public-domain text shipped with fitchat."""
    return paths.package_data(BUNDLED_TEXT)


def read_text(path: Path | None = None) -> bytes:
    """The text to score, as UTF-8 bytes, with one trailing newline dropped (as llama.cpp's ``-f`` does)."""
    p = Path(path) if path is not None else bundled_text_path()
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CompareError(f"cannot read {p}: {exc.strerror or exc}; give a readable UTF-8 text file with --text") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise CompareError(f"{p} is not UTF-8 text; give a UTF-8 text file with --text") from None
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data.strip():
        raise CompareError(f"{p} is empty; give a text of a few thousand words with --text")
    return data


# -- sources --------------------------------------------------------------------------------------


def _candidate_for_path(path: Path, *, sha256: str | None = None, repo: str | None = None) -> Candidate:
    """A candidate for a GGUF file, validated with ``fitchat.model.gguf_spec.read_spec`` before llama.cpp sees it."""
    from fitchat.model.gguf_spec import read_spec

    spec = read_spec(path)
    return Candidate(path=path.resolve(), quant=spec.quant, size_bytes=spec.size_bytes, sha256=sha256, repo=repo,
                     vocab_size=spec.vocab_size, spec=spec)


def _is_first_part(name: str) -> bool:
    split = split_part(name)
    return split is None or split[1] == 1


def resolve_sources(sources: Sequence[str]) -> list[Candidate]:
    """GGUF files from local paths, folders of GGUF files, or Hub repos with downloaded variants."""
    found: list[Candidate] = []
    for source in sources:
        p = Path(source).expanduser()
        if p.is_file():
            found.append(_candidate_for_path(p))
        elif p.is_dir():
            files = sorted(f for f in p.glob("*.gguf") if _is_first_part(f.name) and is_model_gguf(f.name))
            if not files:
                raise ModelNotFound(f"no GGUF files in {p}; point compare at a folder of .gguf variants")
            found.extend(_candidate_for_path(f) for f in files)
        elif source.lower().endswith(".gguf") or source.startswith(("/", ".", "~")):
            raise ModelNotFound(f"{source}: no such file or folder")
        else:
            from fitchat.hub.store import find_local, parse_ref, resolve_model

            repo, quant = parse_ref(source)
            # every downloaded variant of a repo (or the one named), else starter / local/NAME / a file name
            local = find_local(repo, quant) or [resolve_model(source)]
            found.extend(_candidate_for_path(m.path, sha256=m.sha256, repo=m.repo) for m in local)
    unique: dict[Path, Candidate] = {}
    for c in found:
        unique.setdefault(c.path, c)
    return list(unique.values())


def wanted_quants(quants: Sequence[str]) -> list[str]:
    """``quants`` upper-cased without blanks; :class:`CompareError` when that leaves none."""
    wanted = [q.strip().upper() for q in quants if q.strip()]
    if not wanted:
        raise CompareError("--quants names no variant; give e.g. Q4_K_M,Q8_0")
    return wanted


def select_quants(candidates: Sequence[Candidate], quants: Sequence[str] | None) -> list[Candidate]:
    """The candidates whose quant is in ``quants`` (all when None); names every quant that is missing."""
    if not quants:
        return list(candidates)
    wanted = wanted_quants(quants)
    have = {c.quant.upper() for c in candidates}
    missing = [q for q in wanted if q not in have]
    if missing:
        raise ModelNotFound(f"{', '.join(missing)} not among the variants found ({', '.join(sorted(have))}); "
                            "pull it first or drop it from --quants")
    return [c for c in candidates if c.quant.upper() in wanted]


def precision_rank(c: Candidate) -> tuple[float, int]:
    """Higher is more precise: bits per weight of the quant, then file size."""
    from fitchat.model.quants import quant_bits

    return (quant_bits(c.quant) or 0.0, c.size_bytes)


# -- fit ------------------------------------------------------------------------------------------


def _plan_for(c: Candidate, hw: HardwareInfo, ctx: int) -> Any:
    """``fitchat.model.plan.plan_model`` for a candidate at this context."""
    from fitchat.model.gguf_spec import read_spec
    from fitchat.model.plan import plan_model

    return plan_model(c.spec if c.spec is not None else read_spec(c.path), hw, ctx)


def plan_candidates(candidates: Sequence[Candidate], hw: HardwareInfo | None, ctx: int) -> dict[Path, Any]:
    """Fit plans per candidate path (what fits, how many GPU layers)."""
    if hw is None:
        from fitchat.model.hardware import detect_hardware

        hw = detect_hardware()
    return {c.path: _plan_for(c, hw, ctx) for c in candidates}


def gpu_layers_for(plan: Any) -> int:
    """``n_gpu_layers`` for llama.cpp from a plan (-1 = all)."""
    if plan is None:
        return 0
    if plan.verdict == "full_gpu":
        return -1
    if plan.verdict == "partial_gpu":
        return int(plan.gpu_layers)
    return 0


def _identity(c: Candidate) -> tuple[Any, ...]:
    """What makes two files variants of one model: architecture, vocabulary and parameter count."""
    if c.spec is None:
        return (c.vocab_size,)
    return (c.spec.architecture, c.spec.vocab_size, c.spec.n_params)


def _one_model(chosen: Sequence[Candidate]) -> tuple[Any, ...]:
    first = chosen[0]
    for c in chosen[1:]:
        if _identity(c) != _identity(first):
            raise VocabMismatch(f"{first.file} and {c.file} are different models "
                                f"({_describe(first)} against {_describe(c)}); compare variants of one model")
    return _identity(first)


def _describe(c: Candidate) -> str:
    if c.spec is None:
        return f"{c.vocab_size} tokens"
    return f"{c.spec.architecture}, {c.spec.n_params / 1e6:.0f}M parameters, {c.spec.vocab_size} tokens"


def pick_reference(candidates: Sequence[Candidate], plans: dict[Path, Any], ctx: int) -> tuple[Candidate, str | None]:
    """The most precise variant that fits (F16/BF16 before Q8_0 …), and a note when the best one does not."""
    ranked = sorted(candidates, key=precision_rank, reverse=True)
    best = ranked[0]
    for c in ranked:
        plan = plans.get(c.path)
        if plan is None or plan.verdict != "too_big":
            note = None
            if c is not best:
                note = (f"{best.quant} does not fit this machine at context {ctx}; "
                        f"{c.quant}, the most precise variant that does, is the reference")
            return c, note
    raise CompareError(f"none of the variants fits this machine at context {ctx}; try a smaller --ctx or smaller variants")


# -- cache ----------------------------------------------------------------------------------------


def cache_root() -> Path:
    return paths.cache_dir() / "compare"


def _atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    """sha256 of a model file, remembered per (path, size, mtime) so a second run does not hash again."""
    from fitchat.hub.starter import sha256_file

    st = path.stat()
    index_path = cache_root() / "sha256.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    key = str(path.resolve())
    entry = index.get(key)
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return str(entry["sha256"])
    digest = sha256_file(path)
    index[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _atomic_write_json(index_path, index)
    return digest


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


def _reference_key(ref_sha: str, text_sha: str, settings: CompareSettings) -> str:
    return _key({"v": SCORING_VERSION, "ref": ref_sha, "text": text_sha, "ctx": settings.ctx,
                 "budget": settings.budget, "probes": settings.probes.key()})


def _result_key(sha: str, ref_sha: str, text_sha: str, settings: CompareSettings) -> str:
    return _key({"v": SCORING_VERSION, "file": sha, "ref": ref_sha, "text": text_sha, "ctx": settings.ctx,
                 "budget": settings.budget, "probes": settings.probes.key()})


def result_from_json(data: dict[str, Any]) -> VariantResult:
    """A :class:`VariantResult` from its fields as ``dataclasses.asdict`` wrote them (the cache, the worker's answer)."""
    data = dict(data)
    data["answers"] = tuple(ProbeAnswer(**a) for a in data.get("answers", ()))
    return VariantResult(**data)


def _load_result(key: str) -> VariantResult | None:
    try:
        return result_from_json(json.loads((cache_root() / "results" / f"{key}.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _save_result(key: str, result: VariantResult) -> None:
    data = asdict(result)
    data["cached"] = False
    _atomic_write_json(cache_root() / "results" / f"{key}.json", data)


@dataclass(frozen=True)
class RunPlan:
    """What each variant evaluates, fixed by the reference's tokenizer and the budget."""

    n_text_tokens: int
    n_chunks: int
    needle_chars: int
    probe_tokens: int
    n_vocab: int

    def tokens_per_variant(self, ctx: int) -> int:
        return self.n_chunks * ctx + self.probe_tokens


class ReferenceLogits:
    """llama.cpp's ``--kl-divergence-base`` file: header, the tokens, then 16-bit log-prob rows per chunk."""

    def __init__(self, path: Path) -> None:
        import numpy as np

        self.path = path
        with open(path, "rb") as fh:
            head = fh.read(20)
            if len(head) < 20 or head[:8] != LOGITS_MAGIC:
                raise CompareError(f"{path} is not a llama.cpp log-probability file")
            self.n_ctx, self.n_vocab, self.n_chunk = (int(x) for x in np.frombuffer(head[8:20], dtype=np.int32))
        self.nv = 2 * ((self.n_vocab + 1) // 2) + 4
        self.rows_per_chunk = self.n_ctx - 1 - self.n_ctx // 2
        tokens_off = 20
        self.tokens = np.memmap(path, dtype=np.int32, mode="r", offset=tokens_off, shape=(self.n_chunk * self.n_ctx,))
        rows_off = tokens_off + 4 * self.n_chunk * self.n_ctx
        expected = rows_off + 2 * self.nv * self.rows_per_chunk * self.n_chunk
        if path.stat().st_size != expected:
            raise CompareError(f"{path} is truncated ({path.stat().st_size} of {expected} bytes)")
        self.rows = np.memmap(path, dtype=np.uint16, mode="r", offset=rows_off,
                              shape=(self.n_chunk * self.rows_per_chunk, self.nv))

    def chunk_rows(self, chunk: int) -> np.ndarray:
        r = self.rows_per_chunk
        return self.rows[chunk * r:(chunk + 1) * r]

    def close(self) -> None:
        for name in ("rows", "tokens"):
            arr = getattr(self, name, None)
            mm = getattr(arr, "_mmap", None)
            if mm is not None:
                with contextlib.suppress(Exception):
                    mm.close()


class _LogitsWriter:
    """Writes a reference file under a temporary name; only ``commit`` makes it visible."""

    def __init__(self, path: Path, n_ctx: int, n_vocab: int, n_chunk: int, tokens: Sequence[int]) -> None:
        import numpy as np

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        self.fh = open(self.tmp, "wb")
        self.fh.write(LOGITS_MAGIC)
        self.fh.write(np.array([n_ctx, n_vocab, n_chunk], dtype=np.int32).tobytes())
        self.fh.write(np.asarray(tokens[: n_chunk * n_ctx], dtype=np.int32).tobytes())

    def write(self, rows: np.ndarray) -> None:
        self.fh.write(rows.tobytes())

    def commit(self) -> None:
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


def _prune_references(keep: int = KEEP_REFERENCES) -> None:
    folder = cache_root() / "reference"
    files = sorted(folder.glob("*.logits"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        for p in (old, old.with_suffix(".plan.json")):
            with contextlib.suppress(OSError):
                p.unlink()


# -- scoring (numpy, llama.cpp's arithmetic) ------------------------------------------------------


@dataclass(frozen=True)
class _Encoded:
    """One block of logits through llama.cpp's 16-bit log-prob encoding, with the pieces scoring reuses."""

    rows: np.ndarray  # (n, nv) uint16: the file's rows
    q: np.ndarray  # (n, n_vocab) float32: the integer codes
    top: np.ndarray  # (n,) float32: max_logit + log_sum_exp, so log p = logit - top
    floor: np.ndarray  # (n,) float32: the clamped min_logit; codes at or below it are 0
    scale: np.ndarray  # (n,) float32
    min_log_prob: np.ndarray  # (n,) float32


def _encode(logits: np.ndarray) -> _Encoded:
    import numpy as np

    L = np.asarray(logits, dtype=np.float32)
    n, n_vocab = L.shape
    nv = 2 * ((n_vocab + 1) // 2) + 4
    mx = L.max(axis=1)
    mn = np.maximum(L.min(axis=1), mx - np.float32(16))
    # llama.cpp: sum of expf(logit - max) in double, log of it stored as float
    work = L - mx[:, None]
    np.exp(work, out=work)
    lse = np.log(work.sum(axis=1, dtype=np.float64)).astype(np.float32)
    min_log_prob = (mn - mx) - lse
    scale = (mx - mn) / np.float32(65535)
    live = scale != 0
    inv = np.ones_like(scale)
    inv[live] = np.float32(1) / scale[live]
    # nearest_int(inv_scale * (logit - min_logit)) for logits above min_logit, else 0; round-half-even
    # as the FPU does. Codes of logits at or below the floor come out <= 0 and are clipped to 0.
    q = np.subtract(L, mn[:, None], out=work)
    q *= inv[:, None]
    np.rint(q, out=q)
    np.clip(q, 0, 65535, out=q)
    if not live.all():
        q[~live] = 0
    rows = np.zeros((n, nv), dtype=np.uint16)
    head = rows[:, :4].view(np.float32)
    head[:, 0] = scale
    head[:, 1] = min_log_prob
    rows[:, 4:4 + n_vocab] = q
    return _Encoded(rows=rows, q=q, top=mx + lse, floor=mn, scale=scale, min_log_prob=min_log_prob)


def encode_logprobs(logits: np.ndarray) -> np.ndarray:
    """llama.cpp's 16-bit log-probability rows for float32 logits of shape (n, n_vocab).

    Each row: two float32 (scale, min log-prob) in its first four uint16, then one uint16 per
    vocabulary entry, ``round((logit - min_logit) / scale)`` with ``min_logit`` clamped to
    ``max_logit - 16`` and entries at or below it stored as 0.
    """
    return _encode(logits).rows


def _decode_rows(rows: np.ndarray, n_vocab: int) -> np.ndarray:
    """Log-probabilities from encoded rows, as llama.cpp reads them (float32)."""
    import numpy as np

    head = np.ascontiguousarray(rows[:, :4]).view(np.float32)
    out = rows[:, 4:4 + n_vocab].astype(np.float32)
    out *= head[:, 0:1]
    out += head[:, 1:2]
    return out


@dataclass
class ScoreSums:
    """Running sums over scored tokens (double precision, as llama.cpp keeps them)."""

    nll: float = 0.0
    nll_base: float = 0.0
    kld: float = 0.0
    same_top: int = 0
    count: int = 0

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count) if self.count else float("nan")

    @property
    def ppl_base(self) -> float:
        return math.exp(self.nll_base / self.count) if self.count else float("nan")

    @property
    def mean_kld(self) -> float:
        return self.kld / self.count if self.count else float("nan")

    @property
    def top1(self) -> float:
        return self.same_top / self.count if self.count else float("nan")

    def add(self, other: ScoreSums) -> None:
        self.nll += other.nll
        self.nll_base += other.nll_base
        self.kld += other.kld
        self.same_top += other.same_top
        self.count += other.count


def score_rows(logits: np.ndarray, base_rows: np.ndarray, targets: Sequence[int], sums: ScoreSums,
               pool: Executor | None = None) -> None:
    """Add rows of variant logits, scored against the reference's encoded rows, to ``sums``.

    With ``pool``, blocks of rows are scored in parallel (numpy releases the GIL); the sums are added
    in row order either way, so the result does not depend on it.
    """
    _score_blocks(logits, base_rows, targets, sums, pool)


def _score_blocks(logits: np.ndarray, base_rows: np.ndarray | None, targets: Sequence[int], sums: ScoreSums,
                  pool: Executor | None) -> np.ndarray | None:
    """Score blocks of rows; with ``base_rows=None`` the logits are the reference's own (rows returned)."""
    import numpy as np

    L_all = np.asarray(logits, dtype=np.float32)
    tg_all = np.asarray(targets, dtype=np.int64)
    block = _row_block(L_all.shape[1])

    def one(s: int) -> tuple[ScoreSums, np.ndarray]:
        L = L_all[s:s + block]
        enc = _encode(L)
        base = enc.rows if base_rows is None else np.asarray(base_rows[s:s + block])
        part = ScoreSums()
        _score_block(L, enc, base, tg_all[s:s + block], part)
        return part, enc.rows

    starts = range(0, L_all.shape[0], block)
    done = list(pool.map(one, starts)) if pool is not None and len(starts) > 1 else [one(s) for s in starts]
    for part, _ in done:
        sums.add(part)
    if base_rows is None:
        return np.concatenate([rows for _, rows in done])
    return None


def _score_block(L: np.ndarray, mine: _Encoded, base: np.ndarray, tg: np.ndarray, sums: ScoreSums) -> None:
    """llama.cpp's per-token KL divergence, NLL and top-1 test, with the variant's side encoded like the base's."""
    import numpy as np

    n, n_vocab = L.shape
    idx = np.arange(n)
    nll = mine.top - L[idx, tg]
    lp_base = _decode_rows(base, n_vocab)
    nll_base = -lp_base[idx, tg]
    keep = lp_base > np.float32(-16)  # llama.cpp sums over the reference's tokens above -16
    # the variant's log-probs through the same encoding: q * scale + min_log_prob
    diff = mine.q * mine.scale[:, None]
    diff += mine.min_log_prob[:, None]
    np.subtract(lp_base, diff, out=diff)
    # below its clamped floor the variant's code is 0; there llama.cpp's exact log-prob stands instead
    exact = (L < mine.floor[:, None]) & keep
    if exact.any():
        np.subtract(lp_base, L, out=diff, where=exact)
        np.add(diff, mine.top[:, None], out=diff, where=exact)
    p_base = np.zeros_like(lp_base)
    np.exp(lp_base, out=p_base, where=keep)
    diff *= p_base
    sums.kld += float(diff.sum(axis=1, dtype=np.float64).sum())
    sums.nll += float(nll.astype(np.float64).sum())
    sums.nll_base += float(nll_base.astype(np.float64).sum())
    sums.same_top += int((base[:, 4:4 + n_vocab].argmax(axis=1) == mine.q.argmax(axis=1)).sum())
    sums.count += n


# -- llama.cpp ------------------------------------------------------------------------------------


def _load_kwargs() -> dict[str, Any]:
    """The load settings ``fitchat fit`` assumes, so what is compared is what chat loads."""
    from fitchat.model.estimate import DEFAULT_SETTINGS

    kwargs = dict(DEFAULT_SETTINGS.llama_kwargs())
    kwargs.pop("n_batch", None)
    kwargs.pop("n_ubatch", None)
    return kwargs


class ScoringModel:
    """One model loaded for scoring and probes, driven through llama.cpp's C API (greedy, exact)."""

    def __init__(self, path: Path, *, ctx: int, n_threads: int | None = None, n_gpu_layers: int = 0,
                 cancel: threading.Event | None = None) -> None:
        import llama_cpp

        self.lc = llama_cpp
        self.path = Path(path)
        self.n_ctx = ctx
        self.n_batch = min(ctx, 512)
        self.cancel = cancel
        kwargs = _load_kwargs()
        kwargs.update(n_ctx=ctx, n_batch=self.n_batch, n_ubatch=self.n_batch, n_gpu_layers=n_gpu_layers,
                      logits_all=False)
        if n_threads:
            kwargs.update(n_threads=n_threads, n_threads_batch=n_threads)
        # llama.cpp's log goes to the shared buffer while this model lives (an aborted decode logs an error
        # line that says nothing to the user); it is given back on close, unless a chat engine still holds it.
        from fitchat.llama.runtime import LlamaLog, quiet_load

        self._log: LlamaLog | None = LlamaLog.shared().install()
        self._log.take()
        try:
            with quiet_load() as prints:
                self.llm: Any = llama_cpp.Llama(model_path=str(self.path), verbose=True, **kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            lines = [ln for ln in [*self._log.take(), *prints.getvalue().splitlines()]
                     if "error" in ln.lower() or "failed" in ln.lower()]
            self._release_log()
            raise LoadFailed(f"llama.cpp could not load {self.path.name}: {lines[-1].strip() if lines else exc}") from None
        except BaseException:
            self._release_log()
            raise
        self.ctx = self.llm._ctx.ctx
        self.vocab = self.llm._model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.bos: int | None = (int(llama_cpp.llama_vocab_bos(self.vocab))
                                if llama_cpp.llama_vocab_get_add_bos(self.vocab) else None)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._abort: AbortFlag | None = None
        if cancel is not None:
            from fitchat.llama.runtime import AbortFlag

            self._abort = AbortFlag(poll=cancel.is_set).attach(self.ctx)

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            self.lc.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "llm", None) is not None:
            if self._abort is not None:
                self._abort.detach(self.ctx)
            self.llm.close()
            self.llm = None
        self._release_log()

    def _release_log(self) -> None:
        """Give back this model's hold on llama.cpp's log (once)."""
        log, self._log = getattr(self, "_log", None), None
        if log is not None:
            log.restore()

    def __enter__(self) -> ScoringModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tokenize(self, text: bytes | str, *, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else text
        return list(self.llm.tokenize(data, add_bos=add_special, special=False))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="ignore")

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("compare cancelled")

    def clear(self) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)

    def _decode(self, tokens: Sequence[int], pos0: int, want: Sequence[int]) -> int:
        self.check_cancel()
        b = self.batch
        for k, tok in enumerate(tokens):
            b.token[k] = tok
            b.pos[k] = pos0 + k
            b.n_seq_id[k] = 1
            b.seq_id[k][0] = 0
            b.logits[k] = want[k]
        b.n_tokens = len(tokens)
        rc = self.lc.llama_decode(self.ctx, b)
        if rc == 2 or (self.cancel is not None and self.cancel.is_set()):
            raise Cancelled("compare cancelled")
        if rc != 0:
            raise CompareError(f"llama.cpp failed to evaluate {self.path.name} (llama_decode returned {rc})")
        return sum(1 for w in want if w)

    def _logits(self, n_out: int) -> np.ndarray:
        import numpy as np

        return np.ctypeslib.as_array(self.lc.llama_get_logits(self.ctx), shape=(n_out, self.n_vocab))

    def chunk_logits(self, chunk: Sequence[int]) -> Iterator[tuple[int, int, np.ndarray | None]]:
        """Evaluate one chunk from an empty cache (BOS first when the model adds one), as llama-perplexity does.

        Yields ``(position, n_tokens, logits)`` per batch: ``logits`` holds the rows for the positions from
        ``len(chunk)//2`` on that this batch covered (None when it covered none), starting at ``position``;
        the array is a view valid until the next decode.
        """
        n = len(chunk)
        first = n // 2
        toks = list(chunk)
        if self.bos is not None:
            toks[0] = self.bos
        self.clear()
        for j in range(0, n, self.n_batch):
            piece = toks[j:j + self.n_batch]
            want = [1 if j + k >= first else 0 for k in range(len(piece))]
            n_out = self._decode(piece, j, want)
            yield j + len(piece) - n_out, len(piece), (self._logits(n_out) if n_out else None)

    def greedy(self, prompt: Sequence[int], max_new: int, stop: Callable[[str], bool] | None = None,
               on_token: Callable[[], None] | None = None) -> tuple[str, int, float]:
        """Greedy completion (temperature 0): ``(text, timed decode steps, seconds spent in them)``."""
        import numpy as np

        if len(prompt) + 1 > self.n_ctx:
            raise CompareError(f"a probe prompt of {len(prompt)} tokens does not fit context {self.n_ctx}")
        self.clear()
        n = len(prompt)
        for j in range(0, n, self.n_batch):
            piece = list(prompt[j:j + self.n_batch])
            want = [0] * len(piece)
            if j + len(piece) == n:
                want[-1] = 1
            self._decode(piece, j, want)
        logits = self._logits(1)[0]
        out: list[int] = []
        text = ""
        steps, spent, pos = 0, 0.0, n
        while True:
            tok = int(np.argmax(logits))
            if self.lc.llama_vocab_is_eog(self.vocab, tok):
                break
            out.append(tok)
            if on_token is not None:
                on_token()
            text = self.detokenize(out)
            if len(out) >= max_new or (stop is not None and stop(text)) or pos + 1 >= self.n_ctx:
                break
            t0 = time.perf_counter()
            self._decode([tok], pos, [1])
            logits = self._logits(1)[0]
            spent += time.perf_counter() - t0
            steps += 1
            pos += 1
        return text, steps, spent


# -- running --------------------------------------------------------------------------------------


class _Tracker:
    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback = callback
        self.total = max(1, total)
        self.done = 0
        self.variant = ""
        self.stage = ""

    def set_total(self, total: int) -> None:
        self.total = max(self.done, total, 1)
        self.emit()

    def at(self, variant: str, stage: str) -> None:
        self.variant, self.stage = variant, stage
        self.emit()

    def add(self, n: int) -> None:
        self.done += n
        self.emit()

    def emit(self) -> None:
        if self.callback is not None:
            self.callback(Progress(min(self.done, self.total), self.total, self.variant, self.stage))


def _needle_filler() -> str:
    return bundled_text_path().read_text(encoding="utf-8")


def _size_needle(model: ScoringModel, settings: CompareSettings) -> int:
    """Characters of filler that make the needle prompts fill the context, leaving room for the answer."""
    depths = settings.probes.needle_depths
    if not depths:
        return 0
    filler = _needle_filler()
    limit = settings.ctx - ANSWER_TOKENS - 1
    chars_per_token = len(filler) / max(1, len(model.tokenize(filler)))
    n_chars = max(16, int(limit * chars_per_token))
    for _ in range(60):
        cases = probes.needle_cases(settings.probes.seed, filler, n_chars, depths)
        longest = max(len(model.tokenize(c.prompt)) for c in cases)
        if longest <= limit:
            return n_chars
        n_chars = int(n_chars * min(0.97, limit / longest))
        if n_chars < 16:
            break
    raise CompareError(f"context {settings.ctx} is too small for the needle probe; use --ctx {MIN_CTX} or more")


def _probe_prompts(settings: CompareSettings,
                   needle_chars: int) -> tuple[list[probes.ArithmeticProblem], list[probes.NeedleCase]]:
    arith = list(probes.arithmetic_problems(settings.probes.seed, settings.probes.arithmetic))
    needles: list[probes.NeedleCase] = []
    if settings.probes.needle_depths:
        needles = list(probes.needle_cases(settings.probes.seed, _needle_filler(), needle_chars, settings.probes.needle_depths))
    return arith, needles


def make_plan(model: ScoringModel, text_tokens: Sequence[int], settings: CompareSettings) -> RunPlan:
    """Fix the chunks and probes for this budget, with the reference's tokenizer."""
    ctx = settings.ctx
    if len(text_tokens) < ctx:
        raise TextTooShort(f"the text has {len(text_tokens)} tokens, fewer than one context of {ctx}; "
                           "give a longer --text or a smaller --ctx")
    needle_chars = _size_needle(model, settings)
    arith, needles = _probe_prompts(settings, needle_chars)
    probe_tokens = sum(len(model.tokenize(p.prompt)) + ANSWER_TOKENS for p in arith)
    probe_tokens += sum(len(model.tokenize(c.prompt)) + ANSWER_TOKENS for c in needles)
    if settings.probes.speed_tokens:
        probe_tokens += SPEED_PROMPT_TOKENS + settings.probes.speed_tokens
    room = settings.budget - probe_tokens
    n_chunks = min(len(text_tokens) // ctx, max(0, room) // ctx)
    if n_chunks < 1:
        raise BudgetTooSmall(f"a budget of {settings.budget} tokens does not cover the probes ({probe_tokens} tokens) "
                             f"and one chunk of text ({ctx}); use --budget {probe_tokens + ctx} or more, or a smaller --ctx")
    return RunPlan(n_text_tokens=len(text_tokens), n_chunks=n_chunks, needle_chars=needle_chars,
                   probe_tokens=probe_tokens, n_vocab=model.n_vocab)


@dataclass
class _Measured:
    sums: ScoreSums
    arithmetic: tuple[int, int]
    needle: tuple[int, int]
    tok_s: float | None
    answers: tuple[ProbeAnswer, ...]


def _score_text(model: ScoringModel, ref: ReferenceLogits | None, writer: _LogitsWriter | None,
                tokens: Sequence[int], n_chunks: int, tracker: _Tracker) -> ScoreSums:
    """Evaluate the chunks; with a writer, also produce the reference rows it scores against."""
    ctx = model.n_ctx
    sums = ScoreSums()
    workers = max(1, min(_SCORE_WORKERS, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fitchat-score") as pool:
        for c in range(n_chunks):
            _score_chunk(model, ref, writer, list(tokens[c * ctx:(c + 1) * ctx]), c, sums, tracker, pool)
    return sums


def _score_chunk(model: ScoringModel, ref: ReferenceLogits | None, writer: _LogitsWriter | None, chunk: list[int],
                 c: int, sums: ScoreSums, tracker: _Tracker, pool: Executor) -> None:
    ctx = model.n_ctx
    first = ctx // 2
    n_rows = ctx - 1 - first
    base = ref.chunk_rows(c) if ref is not None else None
    row = 0  # rows of this chunk done (row r = position first + r)
    for pos, n_tokens, logits in model.chunk_logits(chunk):
        if logits is not None:
            # keep positions first .. ctx-2 (the last one predicts past the chunk)
            lo = first - pos if pos < first else 0
            hi = min(logits.shape[0], ctx - 1 - pos)
            if hi > lo:
                L = logits[lo:hi]
                targets = chunk[pos + lo + 1:pos + hi + 1]
                if writer is not None:
                    own_rows = _score_blocks(L, None, targets, sums, pool)
                    assert own_rows is not None  # base_rows=None: the reference's own rows come back
                    writer.write(own_rows)
                else:
                    assert base is not None  # not the reference: its rows were read above
                    _score_blocks(L, base[row:row + (hi - lo)], targets, sums, pool)
                row += hi - lo
        tracker.add(n_tokens)
    if row != n_rows:  # pragma: no cover - guards the slicing above
        raise CompareError(f"internal error: scored {row} of {n_rows} rows in chunk {c}")


def _run_probes(model: ScoringModel, plan: RunPlan, settings: CompareSettings, text_tokens: Sequence[int],
                tracker: _Tracker, label: str) -> tuple[tuple[int, int], tuple[int, int], float | None, tuple[ProbeAnswer, ...]]:
    arith, needles = _probe_prompts(settings, plan.needle_chars)
    answers: list[ProbeAnswer] = []
    tracker.at(label, "arithmetic")
    for p in arith:
        prompt = model.tokenize(p.prompt)
        reply, _, _ = model.greedy(prompt, ANSWER_TOKENS, stop=lambda t: "\n" in t.lstrip(" "))
        tracker.add(len(prompt) + ANSWER_TOKENS)
        answers.append(ProbeAnswer("arithmetic", p.expression, p.answer, reply.strip(), probes.check_arithmetic(p, reply)))
    tracker.at(label, "needle")
    for case in needles:
        prompt = model.tokenize(case.prompt)
        reply, _, _ = model.greedy(prompt, ANSWER_TOKENS, stop=lambda t: "\n" in t or "." in t)
        tracker.add(len(prompt) + ANSWER_TOKENS)
        answers.append(ProbeAnswer("needle", f"{case.colour} door at depth {case.depth:g}", case.value, reply.strip(),
                                   probes.check_needle(case, reply)))
    tok_s = None
    if settings.probes.speed_tokens:
        tracker.at(label, "speed")
        prompt = list(text_tokens[:SPEED_PROMPT_TOKENS])
        _, steps, spent = model.greedy(prompt, settings.probes.speed_tokens + 1)
        tracker.add(SPEED_PROMPT_TOKENS + settings.probes.speed_tokens)
        tok_s = steps / spent if steps and spent > 0 else None
    a = [x for x in answers if x.kind == "arithmetic"]
    n = [x for x in answers if x.kind == "needle"]
    return (sum(x.correct for x in a), len(a)), (sum(x.correct for x in n), len(n)), tok_s, tuple(answers)


def _result(c: Candidate, sha: str, is_ref: bool, m: _Measured, plan: Any) -> VariantResult:
    return VariantResult(
        file=c.file, path=str(c.path), quant=c.quant, size_bytes=c.size_bytes, sha256=sha, is_reference=is_ref,
        ppl=m.sums.ppl, mean_kld=m.sums.mean_kld, top1_agreement=m.sums.top1, tokens_scored=m.sums.count,
        arithmetic_correct=m.arithmetic[0], arithmetic_total=m.arithmetic[1],
        needle_found=m.needle[0], needle_total=m.needle[1], decode_tokens_per_s=m.tok_s, answers=m.answers,
        fit=getattr(plan, "verdict", None), fit_label=verdict_label(plan),
    )


def compare(
    candidates: Sequence[Candidate],
    *,
    only: Sequence[Candidate] | None = None,
    settings: CompareSettings = CompareSettings(),
    hw: HardwareInfo | None = None,
    plans: dict[Path, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> CompareReport:
    """Compare ``only`` (default: all ``candidates``) against the most precise candidate that fits.

    ``plans`` maps paths to ``fitchat.model.plan.Plan`` (computed with ``fitchat.model.plan.plan_model`` when None).
    Raises :class:`Cancelled` when ``cancel`` is set; finished variants stay cached. The measuring runs
    in a worker process (:mod:`fitchat.compare.worker`); when that dies, whatever the signal,
    :class:`fitchat.compare.worker.WorkerDied` says so in one line and nothing partial is cached.
    """
    if not candidates:
        raise ModelNotFound("nothing to compare; give GGUF files, a folder of them, or a downloaded repo")
    if settings.ctx < MIN_CTX:
        raise CompareError(f"--ctx {settings.ctx} is too small; use {MIN_CTX} or more (llama-perplexity's default is 512)")
    if settings.budget < 1:
        raise BudgetTooSmall("--budget must be a positive number of tokens")
    text = read_text(settings.text_path)
    text_sha = hashlib.sha256(text).hexdigest()
    text_name = str(settings.text_path) if settings.text_path else BUNDLED_TEXT_NAME
    if plans is None:
        plans = plan_candidates(list(candidates) + [c for c in (only or ()) if c not in candidates], hw, settings.ctx)
    chosen = list(only) if only is not None else list(candidates)
    model = _one_model(chosen)
    pool = [c for c in candidates if _identity(c) == model] or chosen
    reference, note = pick_reference(pool, plans, settings.ctx)
    notes = [note] if note else []

    shas = {reference.path: reference.sha256 or file_sha256(reference.path)}
    seen: set[str] = {shas[reference.path]}
    others: list[Candidate] = []
    for c in sorted(chosen, key=precision_rank, reverse=True):
        sha = shas.get(c.path) or c.sha256 or file_sha256(c.path)
        shas[c.path] = sha
        if sha not in seen:
            seen.add(sha)
            others.append(c)
    ref_sha = shas[reference.path]
    order = [reference, *others]

    results: dict[Path, VariantResult] = {}
    todo: list[Candidate] = []
    for c in order:
        plan = plans.get(c.path)
        cached = _load_result(_result_key(shas[c.path], ref_sha, text_sha, settings))
        if cached is not None:
            results[c.path] = replace(cached, cached=True, fit=getattr(plan, "verdict", None), fit_label=verdict_label(plan),
                                      path=str(c.path), file=c.file)
        elif plan is not None and plan.verdict == "too_big" and c is not reference:
            results[c.path] = VariantResult(file=c.file, path=str(c.path), quant=c.quant, size_bytes=c.size_bytes,
                                            sha256=shas[c.path], is_reference=False, fit="too_big", fit_label=verdict_label(plan),
                                            skipped=f"does not fit this machine at context {settings.ctx}")
        else:
            todo.append(c)

    if todo:  # llama.cpp runs in a worker process: a crash there is an error here, not the end of fitchat
        from fitchat.compare import worker

        results.update(worker.measure(todo, reference, shas, text, text_sha, settings, plans, progress, cancel))

    rows = tuple(results[c.path] for c in order)
    return CompareReport(reference=rows[0], variants=rows, ctx=settings.ctx, budget=settings.budget,
                         text=text_name, notes=tuple(notes))


def _measure(todo: list[Candidate], reference: Candidate, shas: dict[Path, str], text: bytes, text_sha: str,
             settings: CompareSettings, plans: dict[Path, Any], results: dict[Path, VariantResult],
             progress: ProgressCallback | None, cancel: threading.Event | None) -> None:
    ref_sha = shas[reference.path]
    ref_key = _reference_key(ref_sha, text_sha, settings)
    ref_dir = cache_root() / "reference"
    logits_path = ref_dir / f"{ref_key}.logits"
    plan_path = ref_dir / f"{ref_key}.plan.json"
    tracker = _Tracker(progress, settings.budget * len(todo))

    run_plan: RunPlan | None = None
    if logits_path.is_file() and plan_path.is_file():
        try:
            run_plan = RunPlan(**json.loads(plan_path.read_text()))
            os.utime(logits_path)
        except (OSError, ValueError, TypeError):
            run_plan = None

    def label(c: Candidate) -> str:
        return f"{c.quant} ({c.file})"

    def finish(c: Candidate, m: _Measured) -> None:
        res = _result(c, shas[c.path], c is reference, m, plans.get(c.path))
        _save_result(_result_key(shas[c.path], ref_sha, text_sha, settings), res)
        results[c.path] = res

    remaining = list(todo)
    if run_plan is None:
        # The reference pass: tokenize, fix the plan, write the reference rows (scoring itself on the way).
        tracker.at(label(reference), "reference")
        with _open(reference, settings, plans, cancel) as model:
            tokens = model.tokenize(text)
            run_plan = make_plan(model, tokens, settings)
            per_variant = run_plan.tokens_per_variant(settings.ctx)
            extra = 0 if reference in remaining else run_plan.n_chunks * settings.ctx
            tracker.set_total(per_variant * len(remaining) + extra)
            writer = _LogitsWriter(logits_path, settings.ctx, model.n_vocab, run_plan.n_chunks, tokens)
            try:
                sums = _score_text(model, None, writer, tokens, run_plan.n_chunks, tracker)
                measured = None
                if reference in remaining:
                    arith, needle, tok_s, answers = _run_probes(model, run_plan, settings, tokens, tracker, label(reference))
                    measured = _Measured(sums, arith, needle, tok_s, answers)
            except BaseException:
                writer.abort()
                raise
            writer.commit()
            _atomic_write_json(plan_path, asdict(run_plan))
            _prune_references()
            if measured is not None:
                finish(reference, measured)
                remaining.remove(reference)
    else:
        tracker.set_total(run_plan.tokens_per_variant(settings.ctx) * len(remaining))

    ref = ReferenceLogits(logits_path)
    try:
        tokens = [int(t) for t in ref.tokens]
        for c in remaining:
            tracker.at(label(c), "text")
            with _open(c, settings, plans, cancel) as model:
                if model.n_vocab != ref.n_vocab:
                    raise VocabMismatch(f"{c.file} has a vocabulary of {model.n_vocab} tokens and the reference "
                                        f"{reference.file} has {ref.n_vocab}; compare variants of one model")
                sums = _score_text(model, ref, None, tokens, run_plan.n_chunks, tracker)
                arith, needle, tok_s, answers = _run_probes(model, run_plan, settings, tokens, tracker, label(c))
            finish(c, _Measured(sums, arith, needle, tok_s, answers))
    finally:
        ref.close()
    tracker.done = tracker.total
    tracker.at("", "done")


def score_variant(path: Path, reference: Path, *, n_threads: int | None = None, n_gpu_layers: int = 0,
                  cancel: threading.Event | None = None, progress: ProgressCallback | None = None) -> ScoreSums:
    """Score one GGUF file against a reference log-probability file (fitchat's or llama-perplexity's own).

    The context, chunks and tokens come from the file, as with ``llama-perplexity --kl-divergence``.
    """
    ref = ReferenceLogits(Path(reference))
    try:
        tracker = _Tracker(progress, ref.n_chunk * ref.n_ctx)
        tracker.at(Path(path).name, "text")
        with ScoringModel(Path(path), ctx=ref.n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers, cancel=cancel) as model:
            if model.n_vocab != ref.n_vocab:
                raise VocabMismatch(f"{Path(path).name} has a vocabulary of {model.n_vocab} tokens and the reference "
                                    f"file has {ref.n_vocab}; compare variants of one model")
            return _score_text(model, ref, None, [int(t) for t in ref.tokens], ref.n_chunk, tracker)
    finally:
        ref.close()


@contextlib.contextmanager
def _open(c: Candidate, settings: CompareSettings, plans: dict[Path, Any],
          cancel: threading.Event | None) -> Iterator[ScoringModel]:
    model = ScoringModel(c.path, ctx=settings.ctx, n_threads=settings.n_threads,
                         n_gpu_layers=gpu_layers_for(plans.get(c.path)), cancel=cancel)
    try:
        yield model
    finally:
        model.close()


# -- words ----------------------------------------------------------------------------------------


#: What a cell shows when there is no figure (a skipped variant, a probe not run, no finite value).
DASH = "—"
TABLE_HEAD = ("Variant", "Size", "Fit", "tok/s", "PPL", "Mean KLD", "Top-1", "Arith", "Needle")


def _num(x: float | None, fmt: str) -> str:
    return DASH if x is None or not math.isfinite(x) else format(x, fmt)


def _pct(x: float | None) -> str:
    return DASH if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def variant_cells(v: VariantResult) -> tuple[str, ...]:
    """One variant's cells, in ``TABLE_HEAD``'s order (the CLI table and the TUI's show the same)."""
    name = v.quant + (" (ref)" if v.is_reference else "")
    if v.skipped:
        return (name, human_bytes(v.size_bytes), v.fit_label) + (DASH,) * 6
    return (
        name,
        human_bytes(v.size_bytes),
        v.fit_label,
        _num(v.decode_tokens_per_s, ".1f"),
        _num(v.ppl, ".3f"),
        _num(v.mean_kld, ".5f"),
        _pct(v.top1_agreement),
        f"{v.arithmetic_correct}/{v.arithmetic_total}" if v.arithmetic_total else DASH,
        f"{v.needle_found}/{v.needle_total}" if v.needle_total else DASH,
    )


def verdict_lines(report: CompareReport) -> list[str]:
    """The comparison in plain words, one sentence per variant, then the closest and the fastest."""
    ref = report.reference
    lines: list[str] = list(report.notes)
    measured = []
    for v in report.variants:
        if v.is_reference:
            continue
        if v.skipped:
            lines.append(f"{v.quant} was not measured: it {v.skipped}.")
            continue
        measured.append(v)
        words = f"{v.quant} agrees with {ref.quant} on {_pct(v.top1_agreement)} of tokens"
        if v.decode_tokens_per_s and ref.decode_tokens_per_s:
            ratio = v.decode_tokens_per_s / ref.decode_tokens_per_s
            if ratio >= 1.05:
                words += f" and runs {ratio:.1f}× faster here"
            elif ratio <= 1 / 1.05:
                words += f" and runs {1 / ratio:.1f}× slower here"
            else:
                words += " and runs at the same speed here"
        words += (f"; arithmetic {v.arithmetic_correct}/{v.arithmetic_total} "
                  f"against {ref.arithmetic_correct}/{ref.arithmetic_total}")
        if v.needle_total:
            words += f", needle {v.needle_found}/{v.needle_total} against {ref.needle_found}/{ref.needle_total}"
        if v.ppl and ref.ppl:
            words += f", perplexity {v.ppl:.2f} against {ref.ppl:.2f} ({100 * (v.ppl / ref.ppl - 1):+.1f}%)"
        lines.append(words + ".")
    if len(measured) > 1:
        closest = min(measured, key=lambda v: v.mean_kld if v.mean_kld is not None else math.inf)
        lines.append(f"Closest to {ref.quant}: {closest.quant} (mean KLD {closest.mean_kld:.4f}).")
        timed = [v for v in measured if v.decode_tokens_per_s]
        if timed:
            fastest = max(timed, key=lambda v: v.decode_tokens_per_s or 0)
            lines.append(f"Fastest: {fastest.quant} ({fastest.decode_tokens_per_s:.0f} tok/s).")
    if not measured and not any(v.skipped for v in report.variants if not v.is_reference):
        lines.append(f"Only {ref.quant} was given: nothing to compare it with; add other variants.")
    return lines


def render_table(report: CompareReport) -> str:
    """A fixed-width table: one row per variant, the reference first."""
    rows = [TABLE_HEAD, *(variant_cells(v) for v in report.variants)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEAD))]
    out = []
    for i, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
