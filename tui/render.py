"""Pure text helpers shared by the widgets: outside text, memory bars, verdict labels, short figures.

Everything here returns Textual ``Content`` (or plain strings) styled with theme variables
(``$primary``, ``$success`` …), so the same screen reads well in light and dark themes.

Text that did not come from fitchat's own source (a model or file name, a repo id from a mirror, a
search typed by the user, an error message) is shown through :func:`outside` (or :func:`outside_cell`
in a table): plain text, never parsed as markup, with escape sequences and control characters removed.
Notifications are made plain in ``FitchatApp.notify``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.content import Content

from fitchat.format import human_bytes, printable
from fitchat.model.plan import verdict_label  # the CLI's words, re-exported for the widgets

#: Longest outside value shown in one line of a widget (a table cell, a title): enough to recognise it.
NAME_CHARS = 120


def outside(text: object, style: str = "", limit: int | None = NAME_CHARS, *, one_line: bool = True) -> Content:
    """Outside text as ``Content``: literal (``[/b]`` shows as ``[/b]``), printable, at most ``limit`` chars.

    ``one_line=False`` keeps newlines (a verdict, a reason); ``style`` styles the whole of it.
    """
    return Content.styled(printable(text, limit, one_line=one_line), style)


def outside_cell(text: object, style: str = "", limit: int | None = NAME_CHARS) -> Text:
    """Outside text as a one-line Rich ``Text`` for a DataTable cell (a ``str`` cell would be read as markup)."""
    return Text(printable(text, limit, one_line=True), style=style, end="", no_wrap=True)


FULL = "█"
FREE = "░"
MARGIN = "╱"

#: Verdict -> theme variable (the words are fitchat.model.plan's :func:`~fitchat.model.plan.verdict_label`).
VERDICT_STYLES: dict[str, str] = {
    "full_gpu": "$success",
    "partial_gpu": "$warning",
    "cpu": "$secondary",
    "too_big": "$error",
}


def verdict_content(plan: Any) -> Content:
    """The verdict label in its colour."""
    return Content.styled(verdict_label(plan), f"bold {VERDICT_STYLES.get(plan.verdict, '$foreground')}")


def theme_color(theme: Any, variable: str, fallback: str = "default") -> str:
    """A theme colour (``$success`` -> ``#4EBF71``) for Rich text, where CSS variables don't reach."""
    value = getattr(theme, variable.lstrip("$").replace("-", "_"), None)
    return str(value) if value else fallback


def verdict_text(plan: Any, theme: Any) -> Text:
    """The verdict label in its theme colour, as Rich ``Text`` (for DataTable cells)."""
    variable = VERDICT_STYLES.get(getattr(plan, "verdict", ""), "$foreground")
    return Text(verdict_label(plan), style=f"bold {theme_color(theme, variable)}")


def muted_text(text: str, theme: Any, variable: str = "$secondary") -> Text:
    """Rich ``Text`` in a theme colour."""
    return Text(text, style=theme_color(theme, variable))


def short_bytes(n: float) -> str:
    """``human_bytes`` without the space, for narrow table cells (``1.2GiB``)."""
    return human_bytes(n).replace(" ", "")


def usage_bar(used: int, total: int, width: int, style: str = "$primary") -> Content:
    """A one-line bar: ``used`` of ``total`` filled, the rest shown as free."""
    width = max(width, 4)
    filled = 0 if total <= 0 else round(width * min(max(used, 0), total) / total)
    if used > 0 and filled == 0:
        filled = 1
    return Content.assemble((FULL * filled, style), (FREE * (width - filled), "$foreground 30%"))


@dataclass(frozen=True)
class Segment:
    """One coloured part of a stacked bar."""

    label: str
    nbytes: int
    style: str


def stacked_bar(segments: Sequence[Segment], budget: int, width: int, margin: int = 0) -> Content:
    """Segments laid end to end against ``budget``; ``margin`` is drawn reserved at its end.

    When the segments overrun the budget, the bar is scaled to what is needed, the part past
    the budget is drawn in ``$error`` and a ``│`` marks where the budget ends.
    """
    width = max(width, 8)
    needed = sum(max(s.nbytes, 0) for s in segments)
    scale_total = max(budget, needed + margin, 1)
    per_cell = scale_total / width
    cells: list[tuple[str, str]] = []
    for seg in segments:
        if seg.nbytes <= 0:
            continue
        n = max(1, round(seg.nbytes / per_cell))
        cells.extend([(FULL, seg.style)] * n)
    budget_cells = min(width, round(budget / per_cell)) if budget > 0 else 0
    margin_cells = round(min(margin, budget) / per_cell) if margin > 0 else 0
    if margin > 0 and margin_cells == 0 and budget > 0:
        margin_cells = 1
    margin_start = max(budget_cells - margin_cells, 0)
    out: list[tuple[str, str]] = []
    for i in range(width):
        if i < len(cells):
            char, style = cells[i]
            if i >= budget_cells:
                style = "$error"
            elif i >= margin_start:
                style = f"{style} on $warning 40%"
            out.append((char, style))
        elif i < margin_start:
            out.append((FREE, "$foreground 30%"))
        elif i < budget_cells:
            out.append((MARGIN, "$warning"))
        else:
            out.append((" ", ""))
    if needed + margin > budget > 0 and budget_cells < width:
        out[budget_cells] = ("│", "bold $error")
    return Content.assemble(*_merge(out))


def _merge(cells: list[tuple[str, str]]) -> list[tuple[str, str]]:
    merged: list[tuple[str, str]] = []
    for char, style in cells:
        if merged and merged[-1][1] == style:
            merged[-1] = (merged[-1][0] + char, style)
        else:
            merged.append((char, style))
    return merged


def legend(segments: Sequence[Segment], margin: int = 0) -> Content:
    """``█ weights 92 MiB  █ KV cache 45 MiB …`` in the bar's colours (``margin``: add its key)."""
    parts: list[tuple[str, str] | str] = []
    for seg in segments:
        parts.extend([(FULL, seg.style), f" {seg.label} {human_bytes(seg.nbytes)} "])
    if margin:
        parts.extend([(MARGIN, "$warning"), " margin"])
    return Content.assemble(*parts)


def rate(tokens: int, seconds: float) -> float:
    """Tokens per second, 0 when no time has passed."""
    return tokens / seconds if seconds > 0 else 0.0
