"""The compare screen, driven with Pilot on the real SmolLM2 variants placed in the Hugging Face cache.

The machine is a fixed HardwareInfo; the measuring is real (llama.cpp), at a small context and budget.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from fitchat.compare import run as C
from fitchat.compare import worker
from fitchat.hub.store import import_file
from fitchat.tui.app import FitchatApp
from fitchat.tui.screens.compare import CompareScreen
from fitchat.tui.screens.home import HomeScreen
from fitchat.tui.services import Services
from fitchat.tui.widgets.compare_table import CompareTable
from fitchat.tui.widgets.local_models import LocalModels
from tests.models import place_in_hf_cache
from tests.tui_support import RecordingApp, cpu_machine, notifications, screen_text, wait_for

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
QUICK = C.CompareSettings(ctx=128, budget=800, n_threads=2,
                          probes=C.ProbeSet(seed=0, arithmetic=1, needle_depths=(0.5,), speed_tokens=16))
#: Long enough that the cancel lands in the reference pass.
LONG = C.CompareSettings(ctx=128, budget=20_000, n_threads=1,
                         probes=C.ProbeSet(seed=0, arithmetic=0, needle_depths=(), speed_tokens=0))


def place_repo(variants: dict[str, Path], quants: tuple[str, ...]) -> None:
    place_in_hf_cache(REPO, [variants[q] for q in quants], commit="b" * 40)


def make_app(settings: C.CompareSettings, endpoint: str) -> RecordingApp:
    return RecordingApp(Services(hardware=cpu_machine(), endpoint=endpoint, n_threads=1, compare_settings=settings))


def cache_files() -> list[Path]:
    root = C.cache_root()
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "sha256.json") if root.exists() else []


async def open_compare(pilot, app: FitchatApp) -> CompareScreen:
    table = app.screen.query_one(LocalModels)
    await wait_for(pilot, lambda: len(table.models) == 2, what="the two local variants")
    table.focus()
    await pilot.press("k")
    await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="the compare screen")
    return app.screen


async def test_k_compares_the_variants_on_disk(smollm2_variants, unreachable_endpoint: str) -> None:
    place_repo(smollm2_variants, ("Q8_0", "Q4_K_M"))
    app = make_app(QUICK, unreachable_endpoint)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_compare(pilot, app)
        await wait_for(pilot, lambda: screen.report is not None or notifications(app, "error"), timeout=90, what="the comparison")
        assert notifications(app, "error") == []
        table = screen.query_one(CompareTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert [r[0] for r in rows] == ["Q8_0 (ref)", "Q4_K_M"]
        ref, q4 = rows
        assert ref[2] == "CPU" and ref[5] == "0.00000" and ref[6] == "100.0%"
        assert re.fullmatch(r"[01]/1", ref[7]) and re.fullmatch(r"[01]/1", ref[8])
        assert re.fullmatch(r"[01]/1", q4[7]) and re.fullmatch(r"[01]/1", q4[8])
        q4_result = screen.report.variants[1]
        assert q4[6] == f"{100 * q4_result.top1_agreement:.1f}%" and 0.5 < q4_result.top1_agreement < 1.0
        assert float(q4[5]) > 0 and float(q4[4]) > 1 and float(q4[3]) > 0
        assert screen.verdict[0].startswith(f"Q4_K_M agrees with Q8_0 on {q4[6]} of tokens")
        await pilot.pause()
        text = " ".join(screen_text(app).split())
        assert "Q4_K_M agrees with Q8_0 on" in text and "perplexity" in text
        assert "Context 128, 800 tokens per variant" in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen), what="home again")
        # the command palette opens it too; the second run comes from the cache
        await pilot.press("ctrl+p", *"Compare variants")
        await wait_for(pilot, lambda: "Quality and speed of the highlighted" in screen_text(app), what="the palette entry")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare from the palette")
        again = app.screen
        await wait_for(pilot, lambda: again.report is not None or notifications(app, "error"), timeout=30,
                       what="the cached comparison")
        assert all(v.cached for v in again.report.variants)
        await pilot.pause()
        assert "2 of 2 rows from the cache" in " ".join(screen_text(app).split())


async def test_cancel_returns_home_and_caches_nothing_partial(smollm2_variants, unreachable_endpoint: str) -> None:
    place_repo(smollm2_variants, ("Q8_0", "Q4_K_M"))
    app = make_app(LONG, unreachable_endpoint)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_compare(pilot, app)
        figures = screen.query_one("#compare-figures")
        await wait_for(pilot, lambda: "scoring the text with the reference" in str(figures.render())
                       or notifications(app, "error"), timeout=60, what="the reference pass")
        assert re.search(r"[\d,]+ of [\d,]+ tokens · Q8_0", str(figures.render()))
        await pilot.click("#compare-cancel")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen), timeout=30, what="home after cancel")
        assert notifications(app, "error") == []
        assert any("Compare cancelled" in m for m in notifications(app))
        assert screen.report is None
    assert cache_files() == []  # no reference log-probs, no result, no partial file left behind


async def test_a_killed_worker_leaves_the_app_up_with_a_notification(smollm2_variants, unreachable_endpoint: str) -> None:
    """SIGKILL to the compare's worker process (as the out-of-memory killer sends it) mid-run."""
    place_repo(smollm2_variants, ("Q8_0", "Q4_K_M"))
    app = make_app(LONG, unreachable_endpoint)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_compare(pilot, app)
        figures = screen.query_one("#compare-figures")
        await wait_for(pilot, lambda: re.search(r"[1-9][\d,]* of [\d,]+ tokens · Q8_0", str(figures.render()))
                       or notifications(app, "error"), timeout=60, what="the reference pass")
        (pid,) = worker.running()
        os.kill(pid, signal.SIGKILL)
        await wait_for(pilot, lambda: notifications(app, "error"), timeout=30, what="the notification")
        (error,) = notifications(app, "error")
        assert "died of SIGKILL" in error and "\n" not in error, error
        assert app.is_running and app.screen is screen and screen.report is None
        await pilot.pause()
        assert "The compare did not finish" in screen_text(app)
        # the app still answers: escape goes home
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen), what="home again")
    assert worker.running() == []
    assert cache_files() == []  # nothing partial from the dead worker


async def test_a_single_file_says_compare_needs_two_variants(smollm2_variants, unreachable_endpoint: str) -> None:
    import_file(smollm2_variants["Q4_K_M"])
    app = make_app(QUICK, unreachable_endpoint)
    async with app.run_test(size=(120, 36)) as pilot:
        table = app.screen.query_one(LocalModels)
        await wait_for(pilot, lambda: len(table.models) == 1, what="the local file")
        table.focus()
        await pilot.press("k")
        await pilot.pause()
        assert isinstance(app.screen, HomeScreen)
        warnings = notifications(app, "warning")
        assert any("two or more variants of one model" in w for w in warnings), warnings
