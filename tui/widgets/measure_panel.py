"""llama.cpp's own figures for one variant beside the estimate: progress, the table, or the one-line error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.content import Content
from textual.widgets import Static

from fitchat.format import human_bytes
from fitchat.tui.guard import Guarded
from fitchat.tui.render import outside

#: Longest error shown.
ERROR_CHARS = 300
MiB = 1024 * 1024


class MeasurePanel(Guarded, Static):
    """Hidden until a measure starts; then says what it is doing, and finally shows the figures or the error."""

    DEFAULT_CSS = """
    MeasurePanel {
        display: none;
        height: auto;
        padding: 0 1;
        border: round $secondary 60%;
        border-title-color: $secondary;
    }
    MeasurePanel.-shown { display: block; }
    """

    def on_mount(self) -> None:
        self.border_title = "Measured by llama.cpp"

    def _show(self, content: Content) -> None:
        self.add_class("-shown")
        self.update(content)

    def progress(self, label: str, stage: str) -> None:
        """``label`` (the variant) is being measured; ``stage`` says which step runs now."""
        self._show(Content.assemble(outside(label), " ", outside(stage, "$text-muted", limit=ERROR_CHARS)))

    def failed(self, label: str, message: str) -> None:
        """The measure failed: one line naming the variant."""
        self._show(Content.assemble(("Could not measure ", "$error"), outside(label, "$error"), (": ", "$error"),
                                    outside(message, "$error", limit=ERROR_CHARS)))

    def result(self, label: str, how: str, checks: Sequence[Any]) -> None:
        """The estimate and llama.cpp's figures side by side (``checks``: fitchat.model.measure.PartCheck rows)."""
        lines: list[Content] = [Content.assemble(outside(label, "bold"), " ", outside(how, "$text-muted"))]
        lines.append(Content(f"  {'':9} {'estimate':>10} {'llama.cpp':>10} {'diff':>10}"))
        borrowed = False
        for c in checks:
            if c.measured is None:
                lines.append(Content.assemble(f"  {c.name:9} {human_bytes(c.estimated):>10} ",
                                              ("(not sized by a dry run)", "$text-muted")))
                continue
            diff = (c.estimated - c.measured) / MiB
            name = c.name + ("*" if c.weights_estimated else "")
            borrowed = borrowed or c.weights_estimated
            verdict = ("✓ within tolerance", "$success") if c.within else ("✗ outside tolerance", "$error")
            lines.append(Content.assemble(
                f"  {name:9} {human_bytes(c.estimated):>10} {human_bytes(c.measured):>10} {diff:>+7.1f} MiB ", verdict))
        if borrowed:
            lines.append(Content.styled("  * with the file's weights: a dry run does not size them", "$text-muted"))
        self._show(Content("\n").join(lines))
