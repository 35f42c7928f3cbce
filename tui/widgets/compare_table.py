"""One row per compared variant: size, fit, speed, perplexity, KLD, top-1 agreement and probe scores."""

from __future__ import annotations

from typing import Any

from textual.widgets import DataTable

from fitchat.compare.run import variant_cells
from fitchat.tui.guard import Guarded
from fitchat.tui.render import outside_cell

COLUMNS = (
    ("Variant", "variant"),
    ("Size", "size"),
    ("Verdict", "verdict"),
    ("tok/s", "tok_s"),
    ("Perplexity", "ppl"),
    ("Mean KLD", "kld"),
    ("Top-1", "top1"),
    ("Arithmetic", "arithmetic"),
    ("Needle", "needle"),
)


class CompareTable(Guarded, DataTable[Any]):
    """A fitchat.compare.run.CompareReport as a table, the reference first."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.report: Any = None

    def on_mount(self) -> None:
        for label, key in COLUMNS:
            self.add_column(label, key=key)

    def show(self, report: Any) -> None:
        """Replace the rows with ``report``'s variants."""
        self.report = report
        self.clear()
        for v in report.variants:
            self.add_row(*(outside_cell(c) for c in variant_cells(v)), key=v.path)
