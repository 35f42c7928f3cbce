"""The GGUF variants of a model with their fit: quant, size, verdict and the memory breakdown."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from fitchat.tui.guard import Guarded
from fitchat.tui.render import outside_cell, short_bytes, theme_color, verdict_text

COLUMNS = (("", "mark"), ("Quant", "quant"), ("Size", "size"), ("Fit", "fit"), ("Weights", "weights"),
           ("KV", "kv"), ("Compute", "compute"), ("Total", "total"))


class VariantsTable(Guarded, DataTable[Any]):
    """One row per Plan. ★ marks the recommended row, ✓ the ones already on disk."""

    BINDINGS = [Binding("enter", "select_cursor", "Chat/Download", show=False)]

    class Highlighted(Message):
        """The cursor moved to another variant."""

        def __init__(self, plan: Any) -> None:
            self.plan = plan
            super().__init__()

    class Chosen(Message):
        """Enter on a variant."""

        def __init__(self, plan: Any) -> None:
            self.plan = plan
            super().__init__()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.plans: list[Any] = []
        self.on_disk: set[str] = set()

    def on_mount(self) -> None:
        for label, key in COLUMNS:
            self.add_column(label, key=key)
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self.show(self.plans, self.on_disk))

    def show(self, plans: Sequence[Any], on_disk: Collection[str] = ()) -> None:
        """Replace the rows, keeping the cursor on the same quant (or on the recommended one)."""
        previous = self.current()
        keep = previous.spec.quant if previous is not None else None
        self.plans = list(plans)
        self.on_disk = set(on_disk)
        self.clear()
        theme = self.app.current_theme
        for i, plan in enumerate(self.plans):
            est = plan.estimate
            bold = "bold " if plan.recommended else ""
            accent = theme_color(theme, "$accent")
            mark = ("★" if plan.recommended else " ") + ("✓" if plan.spec.quant in self.on_disk else " ")
            cells = [
                Text(mark, style=f"bold {accent}"),
                outside_cell(plan.spec.quant or "?", style=bold),
                Text(short_bytes(plan.spec.size_bytes), style=bold),
                verdict_text(plan, theme),
                Text(short_bytes(est.weights_bytes)),
                Text(short_bytes(est.kv_bytes)),
                Text(short_bytes(est.compute_bytes)),
                Text(short_bytes(est.total_bytes), style=bold),
            ]
            self.add_row(*cells, key=str(i))
        target = next((i for i, p in enumerate(self.plans) if p.spec.quant == keep), None)
        if target is None:
            target = next((i for i, p in enumerate(self.plans) if p.recommended), 0)
        if self.plans:
            self.move_cursor(row=target)
            self.post_message(self.Highlighted(self.plans[target]))

    def current(self) -> Any | None:
        """The plan under the cursor."""
        if not self.plans or not 0 <= self.cursor_row < len(self.plans):
            return None
        return self.plans[self.cursor_row]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        plan = self.current()
        if plan is not None:
            self.post_message(self.Highlighted(plan))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        plan = self.current()
        if plan is not None:
            self.post_message(self.Chosen(plan))
