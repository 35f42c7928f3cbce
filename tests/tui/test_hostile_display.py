"""Text from outside fitchat is shown as text: never read as markup, never passed to the terminal as controls.

A search typed by the user, repo ids from a mirror, file names of local models, exception messages and GPU
names reach the TUI and the CLI. Markup in them (``[/b]``) once ended the app with ``MarkupError``; escape
sequences in them (``ESC]0;TITLE BEL``, ``ESC[2J``) retitled and cleared the terminal. The Hub is the local
Hub-compatible server, the models are real GGUFs; only the machine (the hardware boundary) is faked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.app import App, ComposeResult

from fitchat.cli.main import ERROR_CHARS, main
from fitchat.hub import store
from fitchat.model.hardware import GpuInfo, HardwareInfo
from fitchat.tui.app import FitchatApp
from fitchat.tui.guard import report
from fitchat.tui.screens.model import ModelScreen
from fitchat.tui.services import Services
from fitchat.tui.widgets.catalog_table import CatalogTable
from fitchat.tui.widgets.chat_message import ChatMessage
from fitchat.tui.widgets.history_sidebar import HistorySidebar
from fitchat.tui.widgets.local_models import LocalModels
from fitchat.tui.widgets.message_log import MessageLog
from fitchat.tui.widgets.variants_table import VariantsTable
from tests import REPO_ROOT
from tests.hubserver import SMOLLM2_REPO, smollm2_files
from tests.tui_support import RecordingApp, cpu_machine, cuda_machine, notifications, screen_text, wait_for

#: What no screen, line or notification may hold: C0 controls (ESC, BEL …) but newline, DEL, C1, separators.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
#: Retitles the terminal, then clears it.
RETITLE_AND_CLEAR = "\x1b]0;T\x07\x1b[2J"
#: A repo id a mirror could list: closing tags that match nothing, an unclosed one, escape sequences.
MIRROR_REPO = f"mirror/qwen [/b][red]x[/ {RETITLE_AND_CLEAR}gguf"
#: A file name (no '/' allowed): markup that would style or add a click action, escape sequences.
HOSTILE_FILE = f"evil [red]x[b] [@click=app.quit]q {RETITLE_AND_CLEAR}.gguf"


def make_app(hardware: HardwareInfo, endpoint: str) -> RecordingApp:
    return RecordingApp(Services(hardware=hardware, endpoint=endpoint, n_threads=1))


def assert_plain(app: FitchatApp, *literals: str) -> None:
    """The app still runs, and its screen and notifications show ``literals`` as typed, without a control character."""
    assert app.is_running and app.return_code is None
    text = screen_text(app)
    assert not CONTROL.search(text), repr(CONTROL.search(text))
    for message in notifications(app):
        assert not CONTROL.search(message), repr(message)
    for literal in literals:
        assert literal in text, (literal, text)


def hostile_model(smollm2: Path, folder: Path) -> store.LocalModel:
    """SmolLM2 under a hostile file name, imported as a user would (the link keeps the name given)."""
    link = folder / HOSTILE_FILE
    link.symlink_to(smollm2)
    return store.import_file(link)


# --------------------------------------------------------------------------- TUI


@pytest.mark.parametrize("typed", ["qwen [/b]", "[red]x[/"])
async def test_markup_typed_into_the_hub_search_shows_literally(typed: str, hub, smollm2_variants) -> None:
    hub.add_repo(MIRROR_REPO, smollm2_files(smollm2_variants), downloads=10)
    app = make_app(cpu_machine(), hub.endpoint)
    async with app.run_test(size=(120, 30), notifications=True) as pilot:
        await wait_for(pilot, lambda: app.hub_online is True, what="the Hub check")
        await pilot.press("slash", *typed, "enter")
        results = app.screen.query_one("#search-results", CatalogTable)
        await wait_for(pilot, lambda: len(results.entries) == 1 or notifications(app), what="the search")
        assert [e.repo for e in results.entries] == [MIRROR_REPO]
        await pilot.pause()
        assert_plain(app, typed, "mirror/qwen [/b][red]x[/ gguf")


async def test_markup_in_a_search_that_matches_nothing_shows_literally(hub) -> None:
    app = make_app(cpu_machine(), hub.endpoint)
    async with app.run_test(size=(120, 30), notifications=True) as pilot:
        await wait_for(pilot, lambda: app.hub_online is True, what="the Hub check")
        await pilot.press("slash", *"qwen [/b]", "enter")
        await wait_for(pilot, lambda: notifications(app), what="the answer")
        await pilot.pause()
        assert notifications(app) == ["No GGUF models match 'qwen [/b]'"]
        assert_plain(app, "No GGUF models match 'qwen [/b]'")


async def test_markup_in_a_search_that_fails_offline_shows_literally(unreachable_endpoint: str) -> None:
    app = make_app(cpu_machine(), unreachable_endpoint)
    async with app.run_test(size=(120, 30), notifications=True) as pilot:
        await pilot.press("slash", *"[red]x[/", "enter")
        await wait_for(pilot, lambda: notifications(app), what="the error")
        await pilot.pause()
        assert "cannot reach the Hub" in notifications(app)[0]
        assert_plain(app, "[red]x[/")


async def test_a_local_model_with_a_hostile_name_shows_literally(smollm2: Path, tmp_path: Path,
                                                                  unreachable_endpoint: str) -> None:
    model = hostile_model(smollm2, tmp_path)
    shown = "evil [red]x[b] [@click=app.quit]q "  # the name with its escape sequences gone
    app = make_app(cpu_machine(), unreachable_endpoint)
    async with app.run_test(size=(140, 30), notifications=True) as pilot:
        table = app.screen.query_one(LocalModels)
        await wait_for(pilot, lambda: table.row_count == 1, what="the local model")
        await wait_for(pilot, lambda: "CPU" in screen_text(app), what="its fit")
        assert_plain(app, model.ref.split("/", 1)[1])  # imported names are reduced to safe characters
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelScreen), what="the model screen")
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.specs) == 1, what="the local plan")
        await pilot.pause()
        assert screen.query_one(VariantsTable).row_count == 1
        assert f"{shown}.gguf" in screen_text(app)  # the header names the file
        assert_plain(app, shown)
        assert model.path.name == HOSTILE_FILE  # shown plainly, kept as it is


async def test_exception_messages_become_plain_notifications(tmp_path: Path, unreachable_endpoint: str) -> None:
    app = make_app(cpu_machine(), unreachable_endpoint)
    async with app.run_test(size=(120, 30), notifications=True) as pilot:
        # A real failure: importing a path that does not exist (its name is in the message).
        app.screen.import_file(str(tmp_path / f"gone [/] {RETITLE_AND_CLEAR}.gguf"))
        await wait_for(pilot, lambda: notifications(app), what="the import error")
        # A handler's exception, as fitchat.tui.guard reports it, holding a closing tag and an escape sequence.
        report(app.screen, RuntimeError(f"template failed: [/] {RETITLE_AND_CLEAR}[b]" + "x" * 100_000))
        await wait_for(pilot, lambda: len(notifications(app)) == 2, what="the handler's error")
        await pilot.pause()
        first, second = notifications(app)
        assert "gone [/] " in first and "no such file" in first
        assert second.startswith("RuntimeError: template failed: [/] [b]") and len(second) <= 500
        assert_plain(app, "gone [/]")


class OneReply(App[None]):
    """A conversation of one message, as the chat screen mounts it (the role and text come from a model or the history)."""

    def compose(self) -> ComposeResult:
        with MessageLog():
            yield ChatMessage("[/b]tool" + RETITLE_AND_CLEAR)


async def test_a_reply_with_escape_sequences_reaches_the_screen_as_text() -> None:
    app = OneReply()
    async with app.run_test(size=(80, 20)) as pilot:
        message = app.query_one(ChatMessage)
        # Streamed in pieces that cut a sequence in two, as tokens would.
        for piece in ["Here [/b] is ", "\x1b]0;T", "ITLE\x07 a **bold** ", "\x1b[2", "J reply"]:
            await message.append(piece)
        await message.finish(f"42 tokens · {RETITLE_AND_CLEAR}[/]")
        await pilot.pause()
        text = screen_text(app)
        assert not CONTROL.search(text), repr(CONTROL.search(text))
        assert "[/b]tool" in text and "Here [/b] is" in text and "bold" in text and "42 tokens · [/]" in text
        assert message.text.count("\x1b") == 2  # the model's text is kept as written (copy, history)


class OneSidebar(App[None]):
    def compose(self) -> ComposeResult:
        yield HistorySidebar()


async def test_history_titles_and_models_show_literally() -> None:
    from types import SimpleNamespace

    app = OneSidebar()
    async with app.run_test(size=(60, 12)) as pilot:
        conv = SimpleNamespace(id=1, title=f"qwen [/b] {RETITLE_AND_CLEAR}", model=f"/m/[red]x[b]{RETITLE_AND_CLEAR}.gguf",
                               message_count=2)
        app.query_one(HistorySidebar).show([conv], current_id=1)
        await pilot.pause()
        shown = str(app.query_one(HistorySidebar).query_one("OptionList").get_option_at_index(0).prompt)
        for text in (shown, screen_text(app)):
            assert not CONTROL.search(text), repr(CONTROL.search(text))
        assert "qwen [/b]" in shown and "[red]x[b]" in shown


# --------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m fitchat ARGS`` with this checkout first on the path (the private home is in the environment)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "fitchat", *args], capture_output=True, text=True, env=env, check=False,
                          timeout=60, cwd=REPO_ROOT)


def assert_printable(*outputs: str) -> None:
    for out in outputs:
        assert not CONTROL.search(out), repr(CONTROL.search(out))
        assert "Traceback" not in out


def test_cli_error_line_is_printable_one_line_and_bounded(tmp_path: Path) -> None:
    start = time.monotonic()
    missing = str(tmp_path / f"gone [/b] {RETITLE_AND_CLEAR}" / ("y" * 200) / ("z" * 3000 + ".gguf"))
    done = run_cli("fit", missing)
    assert time.monotonic() - start < 30
    assert done.returncode != 0 and done.stdout == ""
    assert_printable(done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fitchat: error: ")
    assert "gone [/b] " in lines[0] and len(lines[0]) <= len("fitchat: error: ") + ERROR_CHARS


def hostile_gpu_machine() -> HardwareInfo:
    """What NVML could report for a tampered driver: a GPU name with escape sequences and a newline."""
    hw = cuda_machine()
    gpu = hw.gpus[0]
    name = f"RTX [/b]\n{RETITLE_AND_CLEAR}9090"
    return HardwareInfo(
        backend=hw.backend, gpus=(GpuInfo(gpu.index, name, gpu.total_bytes, gpu.free_bytes, "550\x1b[1m", "8.9"),),
        gpu_reason=None, cpu=hw.cpu, ram=hw.ram, metal=None, llama_cpp=hw.llama_cpp, os=hw.os, arch=hw.arch,
        warnings=(f"warning from the driver {RETITLE_AND_CLEAR}",),
    )


def test_cli_prints_hostile_model_and_gpu_names_as_text(smollm2: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fitchat.model.hardware.detect_hardware", hostile_gpu_machine)
    link = tmp_path / HOSTILE_FILE
    link.symlink_to(smollm2)
    assert main(["import", str(link)]) == 0
    assert_printable(*capfd.readouterr())
    (imported,) = [m for m in store.list_local() if m.source == "imported"]
    for argv in (["ls"], ["fit", str(link)], ["fit", imported.ref], ["hw"]):
        assert main(argv) == 0, argv
        out, err = capfd.readouterr()
        assert_printable(out, err)
        if argv[0] == "ls":
            assert imported.ref.split("/", 1)[1] in out, (argv, out)
        if argv[0] == "fit":  # the file name, kept as it is, shown plainly
            assert "evil [red]x[b] [@click=app.quit]q" in out, (argv, out)
        if argv[0] in ("fit", "hw"):
            assert "RTX [/b]" in out and "9090" in out, (argv, out)


def test_cli_internal_error_from_outside_is_printable(capfd: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_driver() -> HardwareInfo:
        raise RuntimeError(f"NVML said [/] {RETITLE_AND_CLEAR}\n" + "x" * 1_000_000)

    monkeypatch.delenv("FITCHAT_DEBUG", raising=False)
    monkeypatch.setattr("fitchat.model.hardware.detect_hardware", broken_driver)
    assert main(["hw"]) == 2
    out, err = capfd.readouterr()
    assert out == ""
    assert_printable(err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fitchat: internal error: RuntimeError: NVML said [/] ")
    assert len(lines[0]) < ERROR_CHARS + 200


def test_cli_search_table_prints_mirror_repo_ids_as_text(hub, smollm2_variants) -> None:
    hub.add_repo(MIRROR_REPO, smollm2_files(smollm2_variants), downloads=10)
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants), downloads=5)
    done = run_cli("search", "gguf")
    assert done.returncode == 0, done.stderr
    assert_printable(done.stdout, done.stderr)
    assert "mirror/qwen [/b][red]x[/ gguf" in done.stdout


async def test_a_reply_opens_only_web_links(monkeypatch: pytest.MonkeyPatch) -> None:
    from textual.widgets import Markdown

    from fitchat.tui.widgets.reply_markdown import ReplyMarkdown, is_web_link

    assert is_web_link("https://example.com/x") and is_web_link("HTTP://host")
    assert not any(is_web_link(h) for h in ("file:///etc/passwd", "javascript:alert(1)", "https://", "x-app://do", "/etc"))

    class OneReply(App[None]):
        def compose(self) -> ComposeResult:
            yield ReplyMarkdown("[a](file:///etc/passwd) [b](https://example.com/)")

    app = OneReply()
    opened: list[str] = []
    monkeypatch.setattr(app, "open_url", lambda url, **kw: opened.append(url))
    async with app.run_test(size=(60, 10)) as pilot:
        md = app.query_one(ReplyMarkdown)
        for href in ("file:///etc/passwd", "https://example.com/"):
            md.post_message(Markdown.LinkClicked(md, href))
        await pilot.pause()
    assert opened == ["https://example.com/"]
