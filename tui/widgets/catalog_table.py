"""A table of Hub repos: the curated catalog or search results. Enter opens the repo's variants."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from fitchat.tui.guard import Guarded
from fitchat.tui.render import outside_cell


def repo_id(entry: Any) -> str:
    """The repo id of a catalog entry or search hit."""
    return str(getattr(entry, "repo", entry))


def count(n: int) -> str:
    """``1234567 -> '1.2M'``."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def entry_cells(entry: Any) -> tuple[Text, Text, Text]:
    """(model, size, notes) for a ``CatalogEntry`` or a ``SearchHit``; repo ids from a mirror are shown as plain text."""
    notes: list[str] = []
    if hasattr(entry, "params_b"):  # CatalogEntry
        size = f"{entry.params_b:g}B"
        notes.append(f"{entry.context // 1024}k ctx")
        notes.append(entry.license)
        name = Text.assemble(outside_cell(entry.name), "  ", outside_cell(entry.repo, "dim"), no_wrap=True, end="")
    else:  # SearchHit
        size = ""
        name = outside_cell(entry.repo)
        notes.append(f"↓{count(entry.downloads)} ♥{count(entry.likes)}")
        if getattr(entry, "curated", False):
            notes.append("curated")
    if getattr(entry, "gated", False):
        notes.append("gated: needs HF_TOKEN")
    return name, outside_cell(size), outside_cell(" · ".join(n for n in notes if n))


class CatalogTable(Guarded, DataTable[Any]):
    """Rows of repos; Enter posts :class:`CatalogTable.Opened`."""

    BINDINGS = [Binding("enter", "select_cursor", "Open")]

    class Opened(Message):
        """The user opened a repo."""

        def __init__(self, repo: str) -> None:
            self.repo = repo
            super().__init__()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.entries: list[Any] = []

    def on_mount(self) -> None:
        self.add_column("Model", key="name")
        self.add_column("Size", key="size")
        self.add_column("", key="notes")

    def show(self, entries: Sequence[Any]) -> None:
        """Replace the rows."""
        self.clear()
        self.entries = list(entries)
        for i, entry in enumerate(self.entries):
            self.add_row(*entry_cells(entry), key=str(i))

    def current(self) -> Any | None:
        """The entry under the cursor."""
        if not self.entries or not 0 <= self.cursor_row < len(self.entries):
            return None
        return self.entries[self.cursor_row]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        entry = self.current()
        if entry is not None:
            self.post_message(self.Opened(repo_id(entry)))
