"""The TUI's pure helpers: bars, verdict words, the update coalescer and the download progress relay."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from fitchat.tui.coalesce import SHARED_CORE_BUDGET, SPARE_CORE_BUDGET, BusyPacer, Coalescer, ui_cpu_budget, usable_cores
from fitchat.tui.progress import relay_class
from fitchat.tui.render import FREE, FULL, MARGIN, Segment, stacked_bar, usage_bar, verdict_label
from fitchat.tui.widgets.chat_message import code_blocks
from fitchat.tui.widgets.fit_picture import device_loads
from tests.tui_support import GiB, cpu_machine, cuda_machine


def test_usage_bar_fills_in_proportion() -> None:
    assert usage_bar(5, 10, 10).plain == FULL * 5 + FREE * 5
    assert usage_bar(1, 1000, 10).plain == FULL + FREE * 9  # a little is never drawn as nothing
    assert usage_bar(0, 0, 6).plain == FREE * 6


def test_stacked_bar_shows_margin_and_overflow() -> None:
    fits = stacked_bar([Segment("w", 4, "$primary"), Segment("kv", 2, "$accent")], budget=20, width=20, margin=4)
    assert fits.plain == FULL * 6 + FREE * 10 + MARGIN * 4
    over = stacked_bar([Segment("w", 30, "$primary")], budget=20, width=20, margin=0)
    assert "│" in over.plain  # where the budget ends
    assert over.plain.index("│") < 20


def test_verdict_words() -> None:
    plan = SimpleNamespace(verdict="partial_gpu", gpu_layers=12, n_layers=31)
    assert verdict_label(plan) == "GPU 12/31 layers"
    assert verdict_label(SimpleNamespace(verdict="too_big")) == "too big"


def test_device_loads_follow_the_estimate_split() -> None:
    est = SimpleNamespace(weights_bytes=600, kv_bytes=200, compute_bytes=100, overhead_bytes=0, total_bytes=1000,
                          gpu_bytes=700, cpu_bytes=300, gpu_weights_bytes=400, gpu_kv_bytes=150, gpu_compute_bytes=100)
    plan = SimpleNamespace(estimate=est, margin_bytes=64, ram_budget_bytes=20 * GiB)
    gpu, ram = device_loads(plan, cuda_machine())
    assert gpu.name == "GPU 0" and gpu.used == 700 and gpu.margin == 64
    assert ram.name == "RAM" and ram.used == 300 and ram.margin == 24 * GiB - 20 * GiB
    (only,) = device_loads(plan, cpu_machine())
    assert only.name == "RAM"


def test_coalescer_posts_slow_pieces_at_once_and_joins_fast_ones() -> None:
    now = [0.0]
    posts: list[tuple[str, int]] = []
    out = Coalescer(lambda text, n: posts.append((text, n)), 0.1, clock=lambda: now[0])
    for t, piece in ((0.0, "a"), (0.2, "b"), (0.21, "c"), (0.25, "d"), (0.31, "e")):
        now[0] = t
        out.add(piece)
    out.flush()
    assert posts == [("a", 1), ("b", 1), ("cde", 3)]
    assert "".join(p for p, _ in posts) == "abcde"


def test_busy_pacer_spaces_updates_while_the_ui_thread_is_over_budget() -> None:
    wall, cpu = [0.0], [0.0]
    out = Coalescer(lambda text, n: None, 0.1)
    pacer = BusyPacer(out, budget=0.1, floor=0.1, ceiling=0.3, window=0.5,
                      clock=lambda: wall[0], cpu_clock=lambda: cpu[0])

    def window(busy: float) -> float:
        pacer.sample()
        wall[0] += 0.5
        cpu[0] += 0.5 * busy
        pacer.sample()
        return out.interval

    pacer.sample()
    assert window(0.15) == pytest.approx(0.15)  # 1.5x over budget: 1.5x the interval
    assert window(0.30) == pytest.approx(0.3)  # capped at the ceiling
    assert pacer.busy == pytest.approx(0.30)
    assert window(0.08) == pytest.approx(0.3)  # under budget but not by half: unchanged
    assert window(0.02) == pytest.approx(0.225)
    for _ in range(10):
        window(0.01)
    assert out.interval == pytest.approx(0.1)  # back to the floor, never below
    assert pacer.interval == out.interval


def test_ui_budget_is_tight_only_when_decoding_takes_every_core() -> None:
    assert SHARED_CORE_BUDGET < SPARE_CORE_BUDGET
    assert ui_cpu_budget(2, 2) == SHARED_CORE_BUDGET
    assert ui_cpu_budget(3, 2) == SHARED_CORE_BUDGET  # oversubscribed: still every core
    assert ui_cpu_budget(None, 2) == SHARED_CORE_BUDGET  # unknown: assume the worst
    assert ui_cpu_budget(1, 2) == SPARE_CORE_BUDGET
    assert ui_cpu_budget(8, 8, all_layers_on_gpu=True) == SPARE_CORE_BUDGET
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)


def test_progress_relay_reports_every_bar() -> None:
    events = []
    Relay = relay_class(events.append)
    with Relay(total=100, initial=10, desc="part 1", unit="B", unit_scale=True) as bar:
        bar.update(40)
        bar.update(50)
    assert [(e.n, e.total) for e in events] == [(10, 100), (50, 100), (100, 100), (100, 100)]
    assert events[-1].closed
    with Relay(total=5) as second:
        second.update(5)
    assert {e.bar for e in events} == {1, 2}


def test_code_blocks() -> None:
    text = "x\n\n```py\na = 1\n```\n\n    indented\n\n```\nb\n```\n"
    assert code_blocks(text) == ["a = 1\n", "indented\n", "b\n"]
