"""Human-readable sizes and rates shared by the CLI and the TUI."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``; binary units, one decimal."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """``75 -> '1m15s'``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


# -- text from outside fitchat --------------------------------------------------------------------------

#: Longest piece of an outside value quoted inside a message: enough to recognise it, not enough to flood.
QUOTE_CHARS = 80

# Whole escape sequences first (CSI ``ESC [ … final``, OSC/DCS/APC ``ESC ] … BEL or ESC \\``, two-byte
# ``ESC x``), then single characters: C0 controls except tab and newline, DEL, the C1 block (which includes
# the 8-bit CSI) and the Unicode line/paragraph separators. An unterminated sequence loses its ESC, so what
# is left of it is plain, harmless text.
_ESCAPE_SEQUENCE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL = {c: None for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}
_CONTROL_ONE_LINE = {**_CONTROL, 0x09: " ", 0x0A: " ", 0x0D: None}


def printable(text: object, limit: int | None = None, *, one_line: bool = False) -> str:
    """``text`` made safe for a terminal: control characters removed, cut to ``limit`` characters with '…'.

    Everything that did not come from fitchat's own source (a model's name or template error, a Hub id, a
    server's message) goes through this before it is printed, so it can neither move the cursor, retitle or
    clear the terminal, nor flood it.
    """
    raw = str(text)
    if limit is not None:
        raw = raw[: limit * 4 + 64]  # a 250 MB value is cut before it is scanned
    out = _ESCAPE_SEQUENCE.sub("", raw).translate(_CONTROL_ONE_LINE if one_line else _CONTROL)
    if limit is not None and len(out) > limit:
        out = out[: max(limit - 1, 0)] + "…"
    return out


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """An outside value as it appears inside a one-line message: ``'…'``, printable, at most ``limit`` chars."""
    return repr(printable(value, limit, one_line=True))


#: Widest table cell: a longer outside value (a repo id, a path) is cut with '…' rather than stretch every row.
CELL_CHARS = 200


def table_lines(rows: Sequence[Sequence[object]], right: Collection[int] = (), limit: int = CELL_CHARS) -> list[str]:
    """``rows`` (the header first) as aligned columns; ``right`` holds the indexes of right-aligned columns.

    Every cell is made printable on one line first, so a name from outside can neither reach the terminal
    as an escape sequence nor break the columns; widths are measured on what is printed.
    """
    cells = [[printable(c, limit, one_line=True) for c in row] for row in rows]
    if not cells:
        return []
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in cells
    ]
