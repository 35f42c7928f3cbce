"""The model screen's "measure with llama.cpp": a real dry run on a Hub variant's header (nothing downloaded),
on a file on disk, and the one-line error when the Hub fails. The Hub is tests/hubserver.py with the real
SmolLM2 variants; the machine is a fixed CPU-only HardwareInfo, like this build."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fitchat.errors import FitchatError
from fitchat.hub.store import list_local
from fitchat.model.split import PlanDevice
from fitchat.tui.screens.model import ModelScreen
from fitchat.tui.services import Services
from fitchat.tui.widgets.measure_panel import MeasurePanel
from fitchat.tui.widgets.variants_table import VariantsTable
from tests.hubserver import SMOLLM2_REPO, smollm2_files
from tests.tui_support import RecordingApp, cpu_machine, notifications, screen_text, wait_for


def make_app(endpoint: str) -> RecordingApp:
    return RecordingApp(Services(hardware=cpu_machine(), endpoint=endpoint, n_threads=1))


async def open_repo(pilot, app: RecordingApp) -> ModelScreen:
    app.open_model(repo=SMOLLM2_REPO)
    await wait_for(pilot, lambda: isinstance(app.screen, ModelScreen), what="the model screen")
    screen = app.screen
    await wait_for(pilot, lambda: len(screen.specs) == 4, timeout=60, what="the variants")
    return screen


@contextlib.asynccontextmanager
async def model_screen(hub, variants) -> AsyncIterator[tuple[RecordingApp, Any, ModelScreen]]:
    """(app, pilot, screen): SmolLM2's repository on ``hub`` and its model screen open in a running app."""
    hub.add_repo(SMOLLM2_REPO, smollm2_files(variants))
    app = make_app(hub.endpoint)
    async with app.run_test(size=(100, 40)) as pilot:
        yield app, pilot, await open_repo(pilot, app)


def panel_text(screen: ModelScreen) -> str:
    return str(screen.query_one(MeasurePanel).render())


async def test_measure_a_variant_on_the_hub_from_its_header(hub, smollm2_variants) -> None:
    hub.delay(1.0, route="cdn", match="Q8_0")  # the header read is on its way long enough to be seen
    async with model_screen(hub, smollm2_variants) as (app, pilot, screen):
        table = screen.query_one(VariantsTable)
        table.move_cursor(row=[p.spec.quant for p in table.plans].index("Q8_0"))
        await pilot.pause()
        assert "m Measure" in " ".join(screen_text(app).split()) or "Measure" in screen_text(app)
        panel = screen.query_one(MeasurePanel)
        assert not panel.display
        served_before = hub.bytes_served()
        await pilot.press("m")
        assert panel.display and screen.measuring == "Q8_0 at 4,096 tokens"
        await wait_for(pilot, lambda: "header" in panel_text(screen), what="the progress line")
        await pilot.press("m")  # one at a time
        assert any("Already measuring" in m for m in notifications(app, "warning"))
        await wait_for(pilot, lambda: screen.measuring is None, timeout=60, what="the measurement")
        text = panel_text(screen)
        assert notifications(app, "error") == []
        assert "Q8_0 at 4,096 tokens" in text and "llama.cpp dry run (no_alloc)" in text
        for part in ("weights", "KV cache", "compute", "output", "total*"):
            assert part in text, part
        assert "not sized by a dry run" in text  # a dry run allocates no weights
        total_line = next(ln for ln in text.splitlines() if ln.strip().startswith("total*"))
        assert "✓ within tolerance" in total_line
        # SmolLM2 at 4k with fitchat's defaults: a 90 MiB KV cache (30 layers x 3 KV heads x 64 x (K + V) x f16 x 4096 cells).
        kv_line = next(ln for ln in text.splitlines() if ln.strip().startswith("KV cache"))
        assert kv_line.count("90.0 MiB") == 2, kv_line
        # Only the header crossed the network: nothing was downloaded.
        size = smollm2_variants["Q8_0"].stat().st_size
        assert hub.bytes_served() - served_before < size // 10
        assert list_local() == []
        assert "Measured by llama.cpp" in screen_text(app)


async def test_measure_a_file_on_disk(hub, smollm2_variants) -> None:
    async with model_screen(hub, smollm2_variants) as (app, pilot, screen):
        table = screen.query_one(VariantsTable)
        table.move_cursor(row=[p.spec.quant for p in table.plans].index("Q4_1"))
        await pilot.press("d")
        await wait_for(pilot, lambda: "Q4_1" in screen.on_disk and not screen.downloading, timeout=60,
                       what="the download")
        hub.fail(503, route="any", times=None)  # the file on disk is measured where it is: the Hub is not asked
        await pilot.press("m")
        await wait_for(pilot, lambda: screen.measuring is None, timeout=60, what="the measurement")
        text = panel_text(screen)
        assert "file on disk" not in text  # the progress line is gone, the figures are there
        assert "Q4_1 at 4,096 tokens" in text and "✓ within tolerance" in text
        assert notifications(app, "error") == []


async def test_a_hub_failure_is_one_line_in_the_panel(hub, smollm2_variants) -> None:
    async with model_screen(hub, smollm2_variants) as (app, pilot, screen):
        hub.fail(503, route="any", times=None)
        await pilot.press("m")
        await wait_for(pilot, lambda: screen.measuring is None, timeout=60, what="the failure")
        text = panel_text(screen)
        assert text.startswith("Could not measure ") and len(text.splitlines()) == 1, text
        assert "503" in text or "Hub" in text, text
        assert "Traceback" not in text
        assert app.is_running
        # The screen is still usable: the next try, with the Hub back, measures.
        hub.clear_faults()
        await pilot.press("m")
        await wait_for(pilot, lambda: screen.measuring is None and "tolerance" in panel_text(screen), timeout=60,
                       what="the measurement after the Hub came back")


def test_a_plan_split_over_workers_is_not_measured_here(smollm2) -> None:
    services = Services(hardware=cpu_machine(), endpoint="http://127.0.0.1:9", n_threads=1)
    plan = services.local_plan(smollm2, cpu_machine(), 2048)
    split = dataclasses.replace(plan, devices=(PlanDevice("CPU", 0, 1), PlanDevice("RPC0[127.0.0.1:50052]", 31, 1,
                                                                                  "127.0.0.1:50052")))
    with pytest.raises(FitchatError, match="this machine alone, not over RPC workers"):
        services.measure_variant(split, repo=None, local_path=smollm2)
    assert services.measure_variant(plan, repo=None, local_path=smollm2).compute_bytes > 0  # the plan of this machine
