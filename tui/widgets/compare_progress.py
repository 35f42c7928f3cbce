"""Compare progress: a bar with tokens done of total, the variant and stage, and a Cancel button."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, ProgressBar, Static

from fitchat.tui.guard import Guarded
from fitchat.tui.render import outside

#: What each fitchat.compare.run stage means to a user.
STAGES = {
    "reference": "scoring the text with the reference",
    "text": "scoring the text",
    "arithmetic": "arithmetic probe",
    "needle": "needle probe",
    "speed": "measuring decode speed",
    "done": "done",
}


def progress_words(p: Any) -> str:
    """``'1,024 of 8,192 tokens · Q4_K_M (file.gguf) · scoring the text'`` for a fitchat.compare.run.Progress."""
    words = f"{p.done:,} of {p.total:,} tokens"
    if p.variant:
        words += f" · {p.variant}"
    if p.stage:
        words += f" · {STAGES.get(p.stage, p.stage)}"
    return words


class CompareProgress(Guarded, Vertical):
    """Shown while a compare runs; posts :class:`CompareProgress.CancelPressed` when the user cancels."""

    class CancelPressed(Message):
        """The user asked the running compare to stop."""

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield ProgressBar(total=None, show_eta=False, id="compare-bar")
            yield Button("Cancel", variant="error", id="compare-cancel")
        yield Static("loading the variants…", id="compare-figures")

    def show(self, p: Any) -> None:
        """Show a fitchat.compare.run.Progress."""
        self.query_one(ProgressBar).update(total=p.total or None, progress=p.done)
        self.query_one("#compare-figures", Static).update(outside(progress_words(p)))  # names a variant's file

    def cancelling(self) -> None:
        self.query_one("#compare-cancel", Button).disabled = True
        self.query_one("#compare-figures", Static).update("cancelling…")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "compare-cancel":
            event.stop()
            self.post_message(self.CancelPressed())
