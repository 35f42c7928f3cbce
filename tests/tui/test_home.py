"""Home and model screens, driven with Pilot: hardware, offline banner, search, fit, download, import, errors.

The Hub is the local Hub-compatible server (tests/hubserver.py) with the real SmolLM2 variants;
the machine is a fixed HardwareInfo (the hardware boundary), whatever machine runs the tests.
"""

from __future__ import annotations

from pathlib import Path

from textual.widgets import ProgressBar

from fitchat.hub.store import list_local
from fitchat.tui.app import FitchatApp
from fitchat.tui.screens.chat import ChatScreen
from fitchat.tui.screens.model import ModelScreen
from fitchat.tui.screens.prompt import PromptScreen
from fitchat.tui.services import Services
from fitchat.tui.widgets.catalog_table import CatalogTable
from fitchat.tui.widgets.context_control import ContextControl, context_steps
from fitchat.tui.widgets.download_panel import DownloadPanel
from fitchat.tui.widgets.local_models import LocalModels
from fitchat.tui.widgets.variants_table import VariantsTable
from tests.hubserver import SMOLLM2_REPO, smollm2_files
from tests.tui_support import (
    RecordingApp,
    cpu_machine,
    cuda_machine,
    mismatched_machine,
    notifications,
    screen_text,
    wait_for,
)


def make_app(hardware, endpoint: str) -> RecordingApp:
    return RecordingApp(Services(hardware=hardware, endpoint=endpoint, n_threads=1))


async def open_repo(pilot, app: FitchatApp, repo: str) -> ModelScreen:
    app.open_model(repo=repo)
    await wait_for(pilot, lambda: isinstance(app.screen, ModelScreen), what="the model screen")
    screen = app.screen
    await wait_for(pilot, lambda: bool(screen.specs) or notifications(app, "error"), what="the variants")
    return screen


async def test_home_shows_the_machine_and_the_offline_banner(unreachable_endpoint: str) -> None:
    app = make_app(cuda_machine(), unreachable_endpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.hub_online is False, what="the Hub check")
        await pilot.pause()
        text = screen_text(app)
        assert "Offline: the Hugging Face Hub cannot be reached" in text
        assert "CUDA" in text and "GPU 0" in text and "7.0 GiB free of 8.0 GiB" in text
        assert "24.0 GiB available of 32.0 GiB" in text
        assert "No models on disk yet" in text
        assert notifications(app, "error") == []


async def test_a_build_without_gpu_support_shows_the_fix(unreachable_endpoint: str) -> None:
    app = make_app(mismatched_machine(), unreachable_endpoint)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        text = " ".join(screen_text(app).split())
        assert "built without GPU offload" in text
        assert 'CMAKE_ARGS="-DGGML_CUDA=on" pip install' in text


async def test_search_fit_context_download_and_chat(hub, smollm2_variants, tmp_path: Path) -> None:
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants), downloads=1234)
    app = make_app(cuda_machine(free_gib=1.0), hub.endpoint)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.hub_online is True, what="the Hub check")
        assert "Offline" not in screen_text(app)
        # Search the Hub and open the result.
        await pilot.press("slash", *"SmolLM2", "enter")
        results = app.screen.query_one("#search-results", CatalogTable)
        await wait_for(pilot, lambda: len(results.entries) == 1, what="search results")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelScreen), what="the model screen")
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.specs) == 4, what="the four variants")
        table = screen.query_one(VariantsTable)
        assert sorted(p.spec.quant for p in table.plans) == ["Q4_1", "Q4_K_M", "Q5_K_M", "Q8_0"]
        assert sum(p.recommended for p in table.plans) == 1
        best = next(p for p in table.plans if p.recommended)
        assert table.current() is best, "the cursor starts on the recommended variant"
        text = screen_text(app)
        assert "★ recommended" in text and "GPU 0" in text and "RAM" in text
        assert "layers" in text  # a 1 GiB GPU takes part of the model
        # The context control re-plans live.
        kv_4k = {p.spec.quant: p.estimate.kv_bytes for p in table.plans}
        await pilot.press("right_square_bracket")
        await wait_for(pilot, lambda: table.plans[0].context == 8192, what="plans at 8k")
        assert screen.query_one(ContextControl).value == 8192
        assert all(p.estimate.kv_bytes > kv_4k[p.spec.quant] for p in table.plans)
        await pilot.press("left_square_bracket")
        await wait_for(pilot, lambda: table.plans[0].context == 4096, what="plans at 4k")
        # Download the smallest variant.
        table.move_cursor(row=[p.spec.quant for p in table.plans].index("Q4_1"))
        await pilot.pause()
        panel = screen.query_one(DownloadPanel)
        # A hidden bar of unknown total would animate (and wake the UI) 15 times a second.
        assert panel.query_one(ProgressBar).percentage is not None
        await pilot.press("d")
        await wait_for(pilot, lambda: not screen.downloading, timeout=60, what="the download")
        assert notifications(app, "error") == []
        assert not panel.has_class("-active")
        assert panel.query_one(ProgressBar).percentage is not None
        assert panel.done_bytes == smollm2_variants["Q4_1"].stat().st_size
        local = [m for m in list_local() if m.repo == SMOLLM2_REPO]
        assert [m.quant for m in local] == ["Q4_1"]
        assert local[0].path.read_bytes() == smollm2_variants["Q4_1"].read_bytes()
        assert "Q4_1" in screen.on_disk
        # Enter on a downloaded variant chats with it.
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat screen")
        chat = app.screen
        await wait_for(pilot, lambda: chat.engine is not None, timeout=60, what="the model to load")
        assert chat.plan is not None and chat.plan.spec.quant == "Q4_1"


async def test_cancel_a_download(hub, smollm2_variants) -> None:
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    hub.slow(4 * 1024 * 1024, match="")
    app = make_app(cpu_machine(), hub.endpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_repo(pilot, app, SMOLLM2_REPO)
        panel = screen.query_one(DownloadPanel)
        await pilot.press("d")
        await wait_for(pilot, lambda: panel.done_bytes > 0, what="some progress")
        assert panel.has_class("-active")
        await wait_for(pilot, lambda: "left" in screen_text(app) or "MiB/s" in screen_text(app), what="rate and ETA")
        await pilot.press("escape")  # the first Esc cancels the download, it does not leave
        await wait_for(pilot, lambda: not screen.downloading, timeout=30, what="the cancel")
        assert app.screen is screen
        # The panel clears ``downloading`` first; the screen's notice follows with the same message.
        await wait_for(pilot, lambda: any("cancelled" in m for m in notifications(app)), what="the notice")
        assert notifications(app, "error") == []
        assert [m for m in list_local() if m.repo == SMOLLM2_REPO] == []
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ModelScreen), what="home")


async def test_headers_load_in_a_worker_and_failures_are_notifications(hub, smollm2_variants) -> None:
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    hub.delay(2.0, route="cdn")  # the headers are read at once: each takes this long
    app = make_app(cpu_machine(), hub.endpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_model(repo=SMOLLM2_REPO)
        await wait_for(pilot, lambda: isinstance(app.screen, ModelScreen), what="the model screen")
        screen = app.screen
        dark = app.current_theme.dark
        await pilot.press("ctrl+t")  # the UI answers while the headers are on their way
        assert app.current_theme.dark != dark
        assert not screen.specs
        await wait_for(pilot, lambda: len(screen.specs) == 4, timeout=60, what="the variants")
        await pilot.press("escape")
        await open_repo(pilot, app, "nobody/no-such-model-GGUF")
        await wait_for(pilot, lambda: notifications(app, "error"), what="an error notification")
        assert "nobody/no-such-model-GGUF" in notifications(app, "error")[-1]
        assert app.is_running


async def type_path(pilot, app: FitchatApp, path: Path) -> None:
    """Answer the import dialog (the text is set at once; typing it key by key is slow under Pilot)."""
    await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen), what="the import dialog")
    app.screen.query_one("#prompt-input").value = str(path)
    await pilot.press("enter")


async def test_import_a_file_and_see_its_fit(smollm2: Path, tmp_path: Path, unreachable_endpoint: str) -> None:
    app = make_app(cpu_machine(), unreachable_endpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        bad = tmp_path / "notes.gguf"
        bad.write_text("not a model")
        await pilot.press("i")
        await type_path(pilot, app, bad)
        await wait_for(pilot, lambda: notifications(app, "error"), what="the error")
        assert app.is_running and not list_local()
        await pilot.press("i")
        await type_path(pilot, app, smollm2)
        table = app.screen.query_one(LocalModels)
        await wait_for(pilot, lambda: table.row_count == 1, what="the imported model")
        await wait_for(pilot, lambda: "CPU" in screen_text(app), what="its fit")
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelScreen), what="the fit details")
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.specs) == 1, what="the local plan")
        assert "runs on the CPU" in " ".join(screen_text(app).split())


async def test_command_palette_has_the_main_actions(unreachable_endpoint: str) -> None:
    app = make_app(cpu_machine(), unreachable_endpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"starter")
        await wait_for(pilot, lambda: "Get the starter model" in screen_text(app), what="the palette entry")
        await pilot.press("escape")
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Get the starter model", "Import a .gguf file", "Search the Hub", "Toggle light/dark theme"} <= titles


def test_context_steps() -> None:
    assert context_steps(8192) == [512, 1024, 2048, 4096, 8192]
    assert context_steps(131072)[-1] == 131072
    assert context_steps(40960)[-2:] == [32768, 40960]
