"""Thread counts chosen by measurement, not by core count.

On a small machine the best ``n_threads`` depends on the load of the moment: with one core busy,
llama.cpp's OpenMP threads wait on it and two threads can decode several times slower than one.
So the engine times a few decode steps (and a short batch) at each candidate count, keeps the
fastest, and caches the result per machine and model size class. When a reply decodes well below
the calibrated speed, the engine measures again before the next reply.

This module holds the policy (candidates, the choice, the cache, when to re-check); the engine
supplies the probes that run llama.cpp.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fitchat import paths

#: A reply decoding slower than this fraction of the calibrated speed triggers a re-check.
RECHECK_RATIO = 0.5
#: Replies shorter than this many decode steps are too noisy to judge.
RECHECK_MIN_TOKENS = 16
#: At most one re-check per this many seconds.
RECHECK_MIN_INTERVAL_S = 30.0
#: Cached calibrations older than this are measured again at load.
CACHE_MAX_AGE_S = 7 * 24 * 3600.0
#: Stop trying more threads once a count is this much slower than the best so far.
GIVE_UP_RATIO = 0.7

#: A count slower per step than this many times the best so far is cut short (its time is capped).
CUT_SHORT_FACTOR = 2.0
#: Time cap for the first count tried (nothing to compare with yet), in seconds.
FIRST_PROBE_LIMIT_S = 10.0

#: ``probe(n_threads, steps, limit_s) -> seconds per step`` (median; ``inf`` when cut off at
#: ``limit_s`` seconds in all). The engine runs llama.cpp.
DecodeProbe = Callable[[int, int, float], float]
#: ``probe(n_threads, limit_s) -> seconds`` for one short prompt batch (``inf`` when cut off).
BatchProbe = Callable[[int, float], float]


@dataclass(frozen=True)
class ThreadChoice:
    """The thread counts in use and where they came from."""

    n_threads: int
    n_threads_batch: int
    decode_tokens_per_s: float  # measured at n_threads (0 when not measured)
    source: str  # "calibrated", "cache" or "user"
    decode_measured: dict[int, float] = field(default_factory=dict)  # threads -> tok/s
    batch_measured: dict[int, float] = field(default_factory=dict)  # threads -> tok/s
    measured_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["decode_measured"] = {str(k): v for k, v in self.decode_measured.items()}
        d["batch_measured"] = {str(k): v for k, v in self.batch_measured.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ThreadChoice:
        return cls(
            n_threads=int(d["n_threads"]),
            n_threads_batch=int(d["n_threads_batch"]),
            decode_tokens_per_s=float(d.get("decode_tokens_per_s", 0.0)),
            source=str(d.get("source", "cache")),
            decode_measured={int(k): float(v) for k, v in d.get("decode_measured", {}).items()},
            batch_measured={int(k): float(v) for k, v in d.get("batch_measured", {}).items()},
            measured_at=float(d.get("measured_at", 0.0)),
        )


def candidates(physical_cores: int, logical_cores: int | None = None) -> tuple[int, ...]:
    """Counts worth trying: 1, powers of two below the physical cores, and the physical cores.

    Hyper-threads rarely help llama.cpp (it is bound by memory bandwidth and SIMD units), so the
    logical count is tried only where there is a single physical core.
    """
    physical = max(1, physical_cores)
    counts = {1, physical}
    n = 2
    while n < physical:
        counts.add(n)
        n *= 2
    if physical == 1 and logical_cores and logical_cores > 1:
        counts.add(min(logical_cores, 2))
    return tuple(sorted(counts))


def size_class(size_bytes: int) -> str:
    """The power-of-two bucket of a model's size (``"128MiB-256MiB"``); speed ranks hold within one."""
    mib = max(1, size_bytes) / (1024 * 1024)
    low = 1
    while low * 2 <= mib:
        low *= 2
    return f"{_mib(low)}-{_mib(low * 2)}"


def _mib(n: int) -> str:
    return f"{n // 1024}GiB" if n >= 1024 else f"{n}MiB"


def machine_key(cpu_model: str, physical_cores: int, logical_cores: int, backend: str, gpu_layers: int) -> str:
    """Identifies a machine and offload mode: calibrations hold only there."""
    offload = "cpu" if gpu_layers == 0 else f"{backend}-offload"
    raw = f"{platform.node()}|{cpu_model}|{physical_cores}|{logical_cores}|{offload}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def cache_key(machine: str, model_size_bytes: int) -> str:
    """The cache entry for a machine and a model size class."""
    return f"{machine}/{size_class(model_size_bytes)}"


class ThreadCache:
    """Calibrations in ``$XDG_CACHE_HOME/fitchat/threads.json`` (written atomically)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else paths.cache_dir() / "threads.json"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str, max_age_s: float = CACHE_MAX_AGE_S, now: float | None = None) -> ThreadChoice | None:
        """The cached choice, or None when absent, unreadable or stale."""
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            choice = ThreadChoice.from_json(entry)
        except (KeyError, TypeError, ValueError):
            return None
        if (now if now is not None else time.time()) - choice.measured_at > max_age_s:
            return None
        return ThreadChoice(
            choice.n_threads, choice.n_threads_batch, choice.decode_tokens_per_s, "cache",
            choice.decode_measured, choice.batch_measured, choice.measured_at,
        )

    def put(self, key: str, choice: ThreadChoice) -> None:
        """Store a calibration (best effort: a read-only cache is not an error)."""
        data = self._read()
        data[key] = choice.to_json()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".threads-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            pass


def pick_decode_threads(
    probe: DecodeProbe, counts: Sequence[int], steps: int = 6, rounds: int = 2
) -> dict[int, float]:
    """Tokens per second at each count: the best of ``rounds`` interleaved medians of ``steps`` steps.

    Interleaving (1, 2, 1, 2 …) spreads a passing disturbance over all counts; counts above one that
    is clearly slower than the best so far are not tried (more threads will not recover), a slow
    count is cut off at twice the best time, and a count clearly behind is not tried again.
    """
    measured: dict[int, float] = {}
    active = list(counts)
    for _ in range(max(1, rounds)):
        best = max(measured.values(), default=0.0)
        tried: list[int] = []
        for n in active:
            limit = FIRST_PROBE_LIMIT_S if best <= 0 else (steps + 1) * CUT_SHORT_FACTOR / best + 0.05
            seconds = probe(n, steps, limit)
            tps = 1.0 / seconds if 0 < seconds < float("inf") else 0.0
            measured[n] = max(measured.get(n, 0.0), tps)
            tried.append(n)
            best = max(best, measured[n])
            if measured[n] < GIVE_UP_RATIO * best:
                break
        best = max(measured.values(), default=0.0)
        active = [n for n in tried if measured[n] >= GIVE_UP_RATIO * best]
        if len(active) < 2:
            break
    return measured


def pick_batch_threads(probe: BatchProbe, counts: Sequence[int], n_tokens: int) -> dict[int, float]:
    """Prompt tokens per second at each count, stopping once a count is clearly slower."""
    measured: dict[int, float] = {}
    best_s = float("inf")
    for n in counts:
        limit = FIRST_PROBE_LIMIT_S if best_s == float("inf") else CUT_SHORT_FACTOR * best_s + 0.05
        seconds = probe(n, limit)
        measured[n] = n_tokens / seconds if 0 < seconds < float("inf") else 0.0
        best_s = min(best_s, seconds)
        if measured[n] < GIVE_UP_RATIO * max(measured.values()):
            break
    return measured


def calibrate(
    decode_probe: DecodeProbe,
    batch_probe: BatchProbe | None,
    counts: Sequence[int],
    *,
    steps: int = 6,
    rounds: int = 2,
    batch_tokens: int = 32,
    now: float | None = None,
) -> ThreadChoice:
    """Measure each count and return the fastest for decoding and for prompt batches."""
    decode = pick_decode_threads(decode_probe, counts, steps=steps, rounds=rounds)
    n_threads = max(decode, key=lambda n: (decode[n], -n))
    batch = pick_batch_threads(batch_probe, counts, batch_tokens) if batch_probe is not None else {}
    n_batch = max(batch, key=lambda n: (batch[n], -n)) if batch else n_threads
    return ThreadChoice(
        n_threads=n_threads,
        n_threads_batch=n_batch,
        decode_tokens_per_s=decode[n_threads],
        source="calibrated",
        decode_measured=decode,
        batch_measured=batch,
        measured_at=now if now is not None else time.time(),
    )


def median_step_seconds(times: Sequence[float]) -> float:
    """The median of per-step timings (robust to a single preempted step)."""
    return statistics.median(times) if times else 0.0


def needs_recheck(
    choice: ThreadChoice,
    observed_tokens_per_s: float,
    decode_steps: int,
    last_check: float,
    now: float | None = None,
) -> bool:
    """Whether a reply decoded so far below the calibrated speed that the threads should be measured again."""
    if choice.source == "user" or choice.decode_tokens_per_s <= 0 or decode_steps < RECHECK_MIN_TOKENS:
        return False
    if (now if now is not None else time.time()) - last_check < RECHECK_MIN_INTERVAL_S:
        return False
    return observed_tokens_per_s < RECHECK_RATIO * choice.decode_tokens_per_s
