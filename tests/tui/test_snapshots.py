"""Snapshot tests: every screen at 80x24 and 120x40, on fixed machines and fixed model lists.

The machine is a constructed ``HardwareInfo`` (the hardware boundary); models are the real
SmolLM2 files, served by the local Hub where a screen needs one. Frames hold no timings or dates.
Update with ``pytest tests/tui/test_snapshots.py --snapshot-update`` and review the SVGs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fitchat.chat.history import History
from fitchat.tui.app import FitchatApp
from fitchat.tui.screens.chat import ChatScreen
from fitchat.tui.services import Services
from fitchat.tui.widgets.local_models import LocalModels
from tests.hubserver import SMOLLM2_REPO, smollm2_files
from tests.tui_support import cpu_machine, cuda_machine, link_starter, mismatched_machine, wait_for

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]

def make_app(hardware, endpoint: str, tmp_path: Path, theme: str | None = None) -> FitchatApp:
    return FitchatApp(Services(hardware=hardware, endpoint=endpoint, n_threads=1, export_dir=tmp_path), theme=theme)


async def settle(pilot) -> None:
    """Wait for every worker, then stop cursors blinking so frames are stable."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.2)
    await pilot.app.workers.wait_for_complete()
    for widget in pilot.app.screen.query("Input, TextArea"):
        widget.cursor_blink = False
    await pilot.pause(0.1)


async def until_home_ready(pilot) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.hub_online is not None, what="the Hub check")
    await settle(pilot)
    table = app.screen.query_one(LocalModels)
    await wait_for(pilot, lambda: not table.models or "…" not in str(table.get_cell_at((0, 3))), what="fits")
    await settle(pilot)


@pytest.mark.parametrize("size", SIZES)
def test_home(snap_compare, size, smollm2: Path, tmp_path: Path, unreachable_endpoint: str) -> None:
    """Home, offline: hardware of a CPU-only machine, the starter model on disk with its fit, the offline banner."""
    link_starter(smollm2)
    app = make_app(cpu_machine(), unreachable_endpoint, tmp_path)
    assert snap_compare(app, terminal_size=size, run_before=until_home_ready)


@pytest.mark.parametrize("size", SIZES)
def test_home_catalog_with_gpu_warning(snap_compare, size, tmp_path: Path, unreachable_endpoint: str) -> None:
    """Home on a machine whose NVIDIA GPU the llama.cpp build cannot use (warning with its fix); Catalog tab."""
    app = make_app(mismatched_machine(), unreachable_endpoint, tmp_path)

    async def run_before(pilot) -> None:
        await until_home_ready(pilot)
        app.screen.query_one("TabbedContent").active = "catalog-tab"
        app.screen.query_one("#catalog").focus()
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_model_partial_offload(snap_compare, size, hub, smollm2_variants, tmp_path: Path) -> None:
    """Model screen: four SmolLM2 variants from the local Hub on a small GPU (partial offload), Q4_K_M selected."""
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    app = make_app(cuda_machine(free_gib=1.0), hub.endpoint, tmp_path)

    async def run_before(pilot) -> None:
        await until_home_ready(pilot)
        app.open_model(repo=SMOLLM2_REPO)
        await wait_for(pilot, lambda: bool(getattr(app.screen, "specs", None)), timeout=30, what="the variants")
        await settle(pilot)
        await pilot.press("down", "down")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_model_measured(snap_compare, size, hub, smollm2_variants, tmp_path: Path) -> None:
    """Model screen: llama.cpp's dry run on the Q4_K_M header from the local Hub, beside the estimate (CPU machine)."""
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    app = make_app(cpu_machine(), hub.endpoint, tmp_path)

    async def run_before(pilot) -> None:
        await until_home_ready(pilot)
        app.open_model(repo=SMOLLM2_REPO)
        await wait_for(pilot, lambda: bool(getattr(app.screen, "specs", None)), timeout=30, what="the variants")
        await settle(pilot)
        await pilot.press("m")
        await wait_for(pilot, lambda: app.screen.measuring is None, timeout=60, what="the measurement")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_chat_resumed(snap_compare, size, smollm2: Path, tmp_path: Path, unreachable_endpoint: str) -> None:
    """Chat screen: a saved conversation resumed (Markdown with code), status line with context and layers."""
    starter = link_starter(smollm2)
    with History() as history:
        conv = history.create("HuggingFaceTB/SmolLM2-135M-Instruct", quant="Q4_1", model_path=starter)
        history.add_message(conv.id, "user", "How do I print in Python?")
        history.add_message(
            conv.id, "assistant", "Use **print**:\n\n```python\nprint('hello')\n```\n",
            stats={"completion_tokens": 14, "decode_tokens_per_s": 50.0, "ttft_s": 0.12}, finish_reason="stop",
        )
    app = make_app(cpu_machine(), unreachable_endpoint, tmp_path)

    async def run_before(pilot) -> None:
        await until_home_ready(pilot)
        model = app.screen.query_one(LocalModels).models[0]
        app.open_chat(model, conversation_id=conv.id)
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat screen")
        screen = app.screen
        await wait_for(pilot, lambda: screen.engine is not None, timeout=60, what="the model")
        await wait_for(pilot, lambda: screen.status.context_used > 0, what="the context count")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_settings_dialog(snap_compare, size, smollm2: Path, tmp_path: Path, unreachable_endpoint: str) -> None:
    """The chat settings dialog over the chat screen."""
    link_starter(smollm2)
    app = make_app(cpu_machine(), unreachable_endpoint, tmp_path)

    async def run_before(pilot) -> None:
        await until_home_ready(pilot)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat screen")
        screen = app.screen
        await wait_for(pilot, lambda: screen.engine is not None, timeout=60, what="the model")
        await pilot.press("f2")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_import_dialog(snap_compare, size, tmp_path: Path, unreachable_endpoint: str) -> None:
    """The import dialog over the home screen (no models on disk yet)."""
    app = make_app(cpu_machine(), unreachable_endpoint, tmp_path)

    async def run_before(pilot) -> None:
        await until_home_ready(pilot)
        await pilot.press("i")
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_home_light_theme(snap_compare, smollm2: Path, tmp_path: Path, unreachable_endpoint: str) -> None:
    """The home screen in the light theme."""
    link_starter(smollm2)
    app = make_app(cuda_machine(), unreachable_endpoint, tmp_path, theme="textual-light")
    assert snap_compare(app, terminal_size=(80, 24), run_before=until_home_ready)
