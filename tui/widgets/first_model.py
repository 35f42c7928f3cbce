"""First run, online: the catalog model suggested for this machine, downloaded with Enter (or a click)."""

from __future__ import annotations

from typing import Any

from textual.binding import Binding
from textual.content import Content
from textual.message import Message
from textual.widgets import Static

from fitchat.format import human_bytes
from fitchat.tui.guard import Guarded
from fitchat.tui.render import outside, verdict_content

#: Longest reason shown on the card.
REASON_CHARS = 400
SEARCHING_TEXT = "Looking for the best catalog model for this machine…"


def recommendation_content(rec: Any) -> Content:
    """``Recommended for this machine: ORG/NAME QUANT (size, verdict) — press Enter to download`` and the reason."""
    plan = rec.plan
    return Content.assemble(
        "Recommended for this machine: ",
        outside(f"{rec.entry.repo} {plan.spec.quant}", "bold $accent"),
        f" ({human_bytes(plan.spec.size_bytes)}, ",
        verdict_content(plan),
        ") — press ",
        ("Enter", "bold"),
        " to download\n",
        outside(plan.reason, "$text-muted", REASON_CHARS),
    )


class FirstModelCard(Guarded, Static, can_focus=True):
    """Hidden until :meth:`searching` or :meth:`show`; Enter posts :class:`FirstModelCard.Download`."""

    DEFAULT_CSS = """
    FirstModelCard {
        display: none;
        height: auto;
        padding: 0 1;
        margin: 1 1 0 1;
        border: round $success 50%;
    }
    FirstModelCard.-searching { display: block; color: $text-muted; border: round $primary 30%; }
    FirstModelCard.-ready { display: block; }
    FirstModelCard:focus { border: round $success; }
    """

    BINDINGS = [Binding("enter", "download", "Download")]

    class Download(Message):
        """The user asked for the recommended model."""

        def __init__(self, recommendation: Any) -> None:
            self.recommendation = recommendation
            super().__init__()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self.recommendation: Any = None

    def searching(self) -> None:
        """Say that a recommendation is on its way."""
        self.recommendation = None
        self.update(SEARCHING_TEXT)
        self.set_classes("-searching")

    def show(self, recommendation: Any) -> None:
        """Show ``recommendation`` (a fitchat.hub.recommend.Recommendation), or hide the card when None."""
        self.recommendation = recommendation
        if recommendation is None:
            self.set_classes("")
            self.update("")
            return
        self.update(recommendation_content(recommendation))
        self.set_classes("-ready")

    def action_download(self) -> None:
        if self.recommendation is not None:
            self.post_message(self.Download(self.recommendation))

    def on_click(self) -> None:
        self.action_download()
