"""The Textual application: a first screen with the machine's hardware summary."""

from __future__ import annotations

from textual import work
from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, Static

from runner.hardware import HardwareInfo


class FitchatApp(App[None]):
    """fitchat's terminal UI."""

    TITLE = "fitchat"
    CSS_PATH = "app.tcss"
    BINDINGS = [("ctrl+q", "quit", "Quit")]

    def __init__(self, hardware: HardwareInfo | None = None) -> None:
        super().__init__()
        self._hardware = hardware

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Detecting hardware…", id="hardware")
        yield Footer()

    def on_mount(self) -> None:
        if self._hardware is not None:
            self.show_hardware(self._hardware)
        else:
            self.detect()

    @work(thread=True, exclusive=True)
    def detect(self) -> None:
        from runner.hardware import detect_hardware

        hw = detect_hardware()
        self.call_from_thread(self.show_hardware, hw)

    def show_hardware(self, hw: HardwareInfo) -> None:
        from runner.commands.hw import render_summary

        self._hardware = hw
        self.query_one("#hardware", Static).update(render_summary(hw))


def run_app() -> int:
    """Run the UI until the user quits."""
    FitchatApp().run()
    return 0
