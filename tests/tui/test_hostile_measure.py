"""The model screen's "measure with llama.cpp" against a hostile Hub and an impatient user: a stalling,
lying or endless server ends the measure in one line in the panel within the Hub's deadline; leaving the
screen mid-measure leaves the app running without an error; markup in what the Hub says is shown as text."""

from __future__ import annotations

import time

import pytest

from fitchat.tui.screens.model import ModelScreen
from tests.tui.test_measure import model_screen, open_repo, panel_text
from tests.tui_support import notifications, wait_for

DEADLINE_S = 1.0


@pytest.fixture(autouse=True)
def _short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITCHAT_HUB_DEADLINE", str(DEADLINE_S))


async def _measure_fails(pilot, screen: ModelScreen, *, within: float) -> str:
    start = time.perf_counter()
    await pilot.press("m")
    await wait_for(pilot, lambda: screen.measuring is None, timeout=within + 30, what="the failure")
    assert time.perf_counter() - start < within
    text = panel_text(screen)
    assert text.startswith("Could not measure ") and len(text.splitlines()) == 1, text
    assert "Traceback" not in text and "internal error" not in text, text
    return text


@pytest.mark.parametrize("fault", ["drip", "lie_size", "huge_size"])
async def test_a_hostile_hub_while_measuring_is_one_line(hub, smollm2_variants, fault: str) -> None:
    async with model_screen(hub, smollm2_variants) as (app, pilot, screen):
        if fault == "drip":
            hub.drip(0.3, route="cdn")
        elif fault == "lie_size":
            hub.lie_size(10**6)  # a header cannot be read past the end the Hub announces
        else:
            hub.lie_size(2**62)  # 4 EiB: more than any file system holds, even sparse
        await _measure_fails(pilot, screen, within=20)
        assert app.is_running and notifications(app, "error") == []
        hub.clear_faults()  # the screen still measures once the Hub behaves
        await pilot.press("m")
        await wait_for(pilot, lambda: screen.measuring is None and "tolerance" in panel_text(screen), timeout=60,
                       what="the measurement after the Hub came back")


async def test_an_endless_body_is_read_only_as_far_as_the_header(hub, smollm2_variants) -> None:
    """The CDN sends the file and then zeros forever: the Range reads take what they asked for and hang up."""
    async with model_screen(hub, smollm2_variants) as (app, pilot, screen):
        hub.endless()
        start = time.perf_counter()
        await pilot.press("m")
        await wait_for(pilot, lambda: screen.measuring is None, timeout=60, what="the measurement")
        assert time.perf_counter() - start < 30
        assert "tolerance" in panel_text(screen)


async def test_leaving_the_screen_mid_measure(hub, smollm2_variants) -> None:
    async with model_screen(hub, smollm2_variants) as (app, pilot, screen):
        hub.delay(1.5, route="cdn")
        await pilot.press("m", "m", "m")  # one at a time, the rest say so
        assert screen.measuring is not None
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ModelScreen), what="leaving the screen")
        await pilot.pause(4.0)  # the header read and the dry run end with no screen to show them
        assert app.is_running
        assert notifications(app, "error") == []
        # Back on a model screen, measuring works.
        hub.clear_faults()
        screen = await open_repo(pilot, app)
        await pilot.press("m")
        await wait_for(pilot, lambda: screen.measuring is None and "tolerance" in panel_text(screen), timeout=60,
                       what="the measurement on the screen opened again")
