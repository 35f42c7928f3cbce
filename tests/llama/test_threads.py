"""Thread policy: candidates, the choice from measured speeds, the cache and the re-check rule.

The speeds fed to the choice here are the ones measured on this project's 2-core machine
(SmolLM2: idle 133 tok/s with 2 threads vs 99 with 1; with the other core busy 11 vs 78); the
engine tests run the same policy against real llama.cpp probes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fitchat.llama import threads as tp


def test_candidates() -> None:
    assert tp.candidates(1, 1) == (1,)
    assert tp.candidates(1, 2) == (1, 2)
    assert tp.candidates(2, 2) == (1, 2)
    assert tp.candidates(2, 4) == (1, 2)
    assert tp.candidates(6, 12) == (1, 2, 4, 6)
    assert tp.candidates(16, 32) == (1, 2, 4, 8, 16)


def test_size_class() -> None:
    assert tp.size_class(98_362_432) == "64MiB-128MiB"
    assert tp.size_class(144_811_072) == "128MiB-256MiB"
    assert tp.size_class(4_920_000_000) == "4GiB-8GiB"
    assert tp.size_class(0) == "1MiB-2MiB"


def table_probe(tokens_per_s: dict[int, float], calls: list[tuple[int, float]]) -> tp.DecodeProbe:
    def probe(n: int, steps: int, limit_s: float) -> float:
        calls.append((n, limit_s))
        seconds = 1.0 / tokens_per_s[n]
        return seconds if seconds * (steps + 1) <= limit_s else float("inf")

    return probe


def test_idle_machine_picks_two_threads() -> None:
    calls: list[tuple[int, float]] = []
    choice = tp.calibrate(table_probe({1: 99.0, 2: 133.0}, calls), None, (1, 2))
    assert (choice.n_threads, choice.decode_tokens_per_s) == (2, 133.0)
    assert choice.n_threads_batch == 2  # no batch probe: follows the decode choice
    assert choice.source == "calibrated"
    assert [n for n, _ in calls] == [1, 2, 1, 2]  # interleaved rounds


def test_busy_core_picks_one_thread_and_cuts_the_slow_count_short() -> None:
    calls: list[tuple[int, float]] = []
    choice = tp.calibrate(table_probe({1: 78.0, 2: 11.0}, calls), None, (1, 2), steps=6)
    assert choice.n_threads == 1
    assert choice.decode_measured[2] == 0.0  # cut off at twice the best time: never waited out
    limit_for_two = [limit for n, limit in calls if n == 2][0]
    assert limit_for_two == pytest.approx(7 * tp.CUT_SHORT_FACTOR / 78.0 + 0.05)
    assert [n for n, _ in calls] == [1, 2]  # clearly behind: not tried in the second round


def test_batch_threads_chosen_separately() -> None:
    def batch(n: int, limit_s: float) -> float:
        return {1: 0.5, 2: 0.3, 4: 0.9}[n]

    choice = tp.calibrate(table_probe({1: 50.0, 2: 40.0, 4: 30.0}, []), batch, (1, 2, 4), batch_tokens=32)
    assert choice.n_threads == 1
    assert choice.n_threads_batch == 2
    assert choice.batch_measured[2] == pytest.approx(32 / 0.3)
    assert 4 not in choice.batch_measured or choice.batch_measured[4] < choice.batch_measured[2]


def test_cache_round_trip_and_expiry(tmp_path: Path) -> None:
    cache = tp.ThreadCache(tmp_path / "threads.json")
    key = tp.cache_key(tp.machine_key("cpu", 2, 2, "cpu", 0), 98_362_432)
    assert cache.get(key) is None
    choice = tp.ThreadChoice(1, 2, 78.0, "calibrated", {1: 78.0, 2: 11.0}, {1: 300.0, 2: 500.0}, time.time())
    cache.put(key, choice)
    got = cache.get(key)
    assert got is not None and got.source == "cache"
    assert (got.n_threads, got.n_threads_batch, got.decode_measured) == (1, 2, {1: 78.0, 2: 11.0})
    assert cache.get(key, now=time.time() + tp.CACHE_MAX_AGE_S + 1) is None
    # A different size class or offload mode is a different entry.
    assert cache.get(tp.cache_key(tp.machine_key("cpu", 2, 2, "cpu", 0), 3_000_000_000)) is None
    assert tp.machine_key("cpu", 2, 2, "cuda", 10) != tp.machine_key("cpu", 2, 2, "cpu", 0)
    # A damaged cache file is ignored, then rewritten.
    cache.path.write_text("{not json")
    assert cache.get(key) is None
    cache.put(key, choice)
    assert json.loads(cache.path.read_text())[key]["n_threads"] == 1


def test_recheck_rule() -> None:
    now = time.time()
    calibrated = tp.ThreadChoice(2, 2, 133.0, "calibrated", measured_at=now - 100)
    old_check = now - tp.RECHECK_MIN_INTERVAL_S - 1
    assert tp.needs_recheck(calibrated, 11.0, 64, old_check, now)  # the other core got busy
    assert not tp.needs_recheck(calibrated, 99.0, 64, old_check, now)  # within normal variation
    assert not tp.needs_recheck(calibrated, 11.0, 5, old_check, now)  # too short to judge
    assert not tp.needs_recheck(calibrated, 11.0, 64, now - 1, now)  # just measured
    user = tp.ThreadChoice(2, 2, 133.0, "user")
    assert not tp.needs_recheck(user, 11.0, 64, old_check, now)  # the user's choice stands
