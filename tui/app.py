"""The Textual application: screens, app-wide state (hardware, Hub reachability) and commands."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterable
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.content import Content
from textual.notifications import SeverityLevel
from textual.reactive import reactive
from textual.screen import Screen

from fitchat.format import printable
from fitchat.model.hardware import HardwareInfo
from fitchat.tui.guard import Guarded
from fitchat.tui.notify import error_message
from fitchat.tui.render import NAME_CHARS
from fitchat.tui.services import Services

LIGHT_THEME = "textual-light"
#: How long the UI thread may keep the GIL while the generation thread waits for it (Python's
#: default is 5 ms). Each token, llama.cpp's loop takes the GIL back once after ``llama_decode``;
#: with the default it could wait 5 ms behind a frame being composed, a third of a token's time.
GIL_SWITCH_INTERVAL_S = 0.0005
#: Pause between the first frame and the background probes (the writer thread needs the GIL).
PROBE_DELAY_S = 0.15
DARK_THEME = "textual-dark"
#: Longest notification: an error's message and advice, not a 250 MB value quoted in it.
NOTIFY_CHARS = 500


class FitchatApp(Guarded, App[None]):
    """fitchat's terminal UI."""

    TITLE = "fitchat"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+t", "toggle_theme", "Theme", show=False),
    ]

    hardware: reactive[HardwareInfo | None] = reactive(None)
    hub_online: reactive[bool | None] = reactive(None)

    def __init__(
        self,
        services: Services | None = None,
        *,
        hardware: HardwareInfo | None = None,
        theme: str | None = None,
        check_hub: bool = True,
    ) -> None:
        super().__init__()
        self.services = services or Services(hardware=hardware)
        if hardware is not None and self.services.hardware is None:
            self.services.hardware = hardware
        self._check_hub = check_hub
        #: Sampling settings for new replies (fitchat.llama.engine.SamplingSettings), set on first use.
        self.sampling: Any = None
        self._switch_interval = sys.getswitchinterval()
        if theme:
            self.theme = theme

    # ------------------------------------------------------------------ start-up

    def get_default_screen(self) -> Screen[Any]:
        from fitchat.tui.screens.home import HomeScreen

        return HomeScreen()

    def on_mount(self) -> None:
        sys.setswitchinterval(min(self._switch_interval, GIL_SWITCH_INTERVAL_S))
        if self.services.hardware is not None:
            self.hardware = self.services.hardware
        # The probes import llama.cpp and huggingface_hub, holding the GIL for a while: start them
        # once the first frame is composed and has had time to reach the terminal.
        self.call_after_refresh(self.set_timer, PROBE_DELAY_S, self._start_probes)

    def _start_probes(self) -> None:
        if self.services.hardware is None:
            self.detect_hardware()
        if self._check_hub:
            self.check_hub()

    @work(thread=True, exclusive=True, group="hardware", exit_on_error=False)
    def detect_hardware(self) -> None:
        """Probe the machine after the first paint (llama.cpp loads here)."""
        try:
            hw = self.services.detect_hardware()
        except Exception as exc:  # noqa: BLE001 - shown, never raised
            self.call_from_thread(self.report_error, exc)
            return
        self.call_from_thread(setattr, self, "hardware", hw)

    @work(thread=True, exclusive=True, group="hub", exit_on_error=False)
    def check_hub(self) -> None:
        """Find out whether the Hub answers; the offline banner follows ``hub_online``."""
        online = self.services.hub_reachable()
        self.call_from_thread(setattr, self, "hub_online", online)

    # ------------------------------------------------------------------ navigation

    def open_model(self, *, repo: str | None = None, local: Any = None) -> None:
        """Show a repo's variants (or one local file) with their fit."""
        from fitchat.tui.screens.model import ModelScreen

        self.push_screen(ModelScreen(repo=repo, local=local))

    def open_chat(self, model: Any, conversation_id: int | None = None, context: int | None = None) -> None:
        """Chat with a local model (optionally resuming a conversation, at a chosen context)."""
        from fitchat.tui.screens.chat import ChatScreen

        self.push_screen(ChatScreen(model, conversation_id=conversation_id, context=context))

    def open_compare(self, repo: str) -> None:
        """Compare the variants of ``repo`` that are on disk."""
        from fitchat.tui.screens.compare import CompareScreen

        self.push_screen(CompareScreen(repo))

    def action_go_home(self) -> None:
        while len(self.screen_stack) > 2:
            self.pop_screen()
        if len(self.screen_stack) == 2:
            self.pop_screen()

    def action_toggle_theme(self) -> None:
        self.theme = LIGHT_THEME if self.current_theme.dark else DARK_THEME

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Every notification, plain text: nothing in one is read as markup, and no control character reaches the terminal.

        Notifications carry names (a model, a repo, a search) and error messages from outside; as
        markup, ``[/b]`` in one of them ended the app. Widgets' ``notify`` lands here too; fitchat's
        own messages use no markup, so ``markup`` is ignored.
        """
        super().notify(
            printable(message, NOTIFY_CHARS),
            title=printable(title, NAME_CHARS, one_line=True),
            severity=severity,
            timeout=timeout,
            markup=False,
        )

    def format_title(self, title: str, sub_title: str) -> Content:
        """Every screen's header: the subtitle names a model, a file or a repo, shown printable on one line."""
        return super().format_title(printable(title, NAME_CHARS, one_line=True),
                                    printable(sub_title, NAME_CHARS, one_line=True))

    def report_error(self, exc: BaseException) -> None:
        """Show an error as a notification (never a traceback)."""
        self.notify(error_message(exc), title="Error", severity="error", timeout=8)

    # ------------------------------------------------------------------ command palette

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Home", "Hardware, models on disk, catalog and search", self.action_go_home)
        yield SystemCommand("Toggle light/dark theme", "Switch between the light and dark themes", self.action_toggle_theme)
        for title, help_text, action in getattr(screen, "PALETTE", ()):
            yield SystemCommand(title, help_text, getattr(screen, f"action_{action}"))

    def settle_heap(self) -> None:
        """Collect, then set aside every object alive now (modules, widgets, the loaded model).

        A full collection holds the GIL, so it pauses the UI and llama.cpp's token loop alike; with
        everything from start-up in the heap it scans tens of thousands of objects, which runs to
        a noticeable stall, several times a minute while a reply streams. Called when a model is
        ready, those collections then scan only what came after.
        """
        gc.collect()
        gc.freeze()

    def on_unmount(self) -> None:
        sys.setswitchinterval(self._switch_interval)
        gc.unfreeze()
        self.services.close()


def run_app() -> int:
    """Run the UI until the user quits."""
    app = FitchatApp()
    app.run()
    _leave_promptly()
    return int(app.return_code or 0)


def _leave_promptly(grace_s: float = 2.0) -> None:
    """Quit now even if a network probe is still waiting on a slow connection.

    Downloads and replies are cancelled when their screens close; what may linger is a Hub request
    stuck in a connect timeout, in a worker thread Python would otherwise wait for at exit.
    """
    import os
    import sys
    import threading
    import time

    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.current_thread()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
