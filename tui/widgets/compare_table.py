"""One row per compared variant: size, fit, speed, perplexity, KLD, top-1 agreement and probe scores."""

from __future__ import annotations

import math
from typing import Any

from textual.widgets import DataTable

from runner.format import human_bytes

from tui.guard import Guarded

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
DASH = "—"


def _num(x: float | None, fmt: str) -> str:
    return DASH if x is None or not math.isfinite(x) else format(x, fmt)


def variant_cells(v: Any) -> tuple[str, ...]:
    """The table's cells for one runner.compare.VariantResult."""
    name = v.quant + (" (ref)" if v.is_reference else "")
    if v.skipped:
        return (name, human_bytes(v.size_bytes), v.fit_label, DASH, DASH, DASH, DASH, DASH, DASH)
    top1 = DASH if v.top1_agreement is None or not math.isfinite(v.top1_agreement) else f"{100 * v.top1_agreement:.1f}%"
    return (
        name,
        human_bytes(v.size_bytes),
        v.fit_label,
        _num(v.decode_tokens_per_s, ".1f"),
        _num(v.ppl, ".3f"),
        _num(v.mean_kld, ".5f"),
        top1,
        f"{v.arithmetic_correct}/{v.arithmetic_total}" if v.arithmetic_total else DASH,
        f"{v.needle_found}/{v.needle_total}" if v.needle_total else DASH,
    )


class CompareTable(Guarded, DataTable[str]):
    """A runner.compare.CompareReport as a table, the reference first."""

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
            self.add_row(*variant_cells(v), key=v.path)
