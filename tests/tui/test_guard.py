"""An exception in a UI handler is a notification and a log entry; the app goes on."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

from textual.app import App, ComposeResult
from textual.dom import DOMNode
from textual.reactive import reactive
from textual.widgets import Input

import fitchat.tui
from fitchat import paths
from fitchat.tui.guard import HANDLER_PREFIXES, LOG_NAME, Guarded, on
from fitchat.tui.services import Services
from tests.tui.test_chat import GREEDY, ask, open_chat
from tests.tui_support import NotificationLog, RecordingApp, cpu_machine, link_starter, notifications, wait_for


def tui_classes() -> list[type]:
    found = []
    for info in pkgutil.walk_packages(fitchat.tui.__path__, "fitchat.tui."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, DOMNode):
                found.append(cls)
    return found


def test_every_handler_of_the_ui_is_guarded() -> None:
    classes = tui_classes()
    assert len(classes) > 20
    unguarded = [c.__name__ for c in classes if not issubclass(c, Guarded)]
    assert unguarded == []
    for cls in classes:
        for name, value in vars(cls).items():
            if name.startswith(HANDLER_PREFIXES) and inspect.isfunction(value):
                assert getattr(value, "__fitchat_guarded__", False), f"{cls.__name__}.{name}"
        for handlers in vars(cls).get("_decorated_handlers", {}).values():
            for method, _selectors in handlers:
                assert getattr(method, "__fitchat_guarded__", False), f"{cls.__name__}.{method.__name__}"


class Fragile(NotificationLog, Guarded, App[None]):
    """Each kind of handler fails once: an async action, a watcher and an @on handler."""

    BINDINGS = [("b", "boom", "Boom")]
    level: reactive[int] = reactive(0)

    def compose(self) -> ComposeResult:
        yield Input(id="box")

    async def action_boom(self) -> None:
        raise RuntimeError("the action failed")

    def watch_level(self, level: int) -> None:
        if level:
            raise ValueError(f"level {level} is not allowed")

    @on(Input.Changed)
    def changed(self, event: Input.Changed) -> None:
        if event.value == "x":
            raise KeyError("x")


async def test_handler_exceptions_become_notifications_and_the_app_goes_on() -> None:
    app = Fragile()
    async with app.run_test() as pilot:
        app.set_focus(None)
        await pilot.press("b")
        app.level = 3
        app.query_one(Input).focus()
        await pilot.press("x", "y")
        await pilot.pause()
        assert app.is_running
        assert app.query_one(Input).value == "xy"
        assert notifications(app, "error") == ["RuntimeError: the action failed", "ValueError: level 3 is not allowed",
                                    "KeyError: 'x'"]
    log = (paths.cache_dir() / LOG_NAME).read_text()
    assert "Traceback" in log and "raise RuntimeError" in log and "raise KeyError" in log


async def test_a_failing_clipboard_in_the_chat_is_one_line(smollm2: Path, tmp_path: Path,
                                                          unreachable_endpoint: str) -> None:
    link_starter(smollm2)
    services = Services(hardware=cpu_machine(), endpoint=unreachable_endpoint, n_threads=1, export_dir=tmp_path)
    app = RecordingApp(services)
    app.sampling = GREEDY

    def no_clipboard(text: str) -> None:
        raise OSError("the terminal refused the clipboard")

    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_chat(pilot, app)
        await ask(pilot, screen, "Hi")
        app.copy_to_clipboard = no_clipboard  # the terminal boundary fails
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: notifications(app, "error"), what="the error notification")
        assert notifications(app, "error") == ["OSError: the terminal refused the clipboard"]
        reply = await ask(pilot, screen, "And again")  # the chat goes on
        assert reply.text
    assert "OSError: the terminal refused the clipboard" in (paths.cache_dir() / LOG_NAME).read_text()
