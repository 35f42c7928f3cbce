"""Models on disk, with their fit on this machine at the default context."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from fitchat.format import human_bytes
from fitchat.tui.guard import Guarded
from fitchat.tui.render import muted_text, outside_cell, verdict_text


def model_name(model: Any) -> str:
    """What a user calls a local model: its repo, or the file name for imported files; another runner's model
    by the name that says where it is from (``ollama/llama3.2:1b``, ``lmstudio/PUB/REPO``, ``llamacpp/FILE``)."""
    name = getattr(model, "name", None)
    if isinstance(name, str) and name:
        return name
    repo = getattr(model, "repo", None)
    return repo or str(getattr(model, "file", "") or getattr(model, "path", "?"))


def model_ref(model: Any) -> str:
    """The reference fitchat.hub.store understands (``starter``, ``local/NAME``, ``repo:QUANT``)."""
    ref = getattr(model, "ref", None)
    if isinstance(ref, str) and ref:
        return ref
    repo = getattr(model, "repo", None)
    quant = getattr(model, "quant", None)
    if repo and quant:
        return f"{repo}:{quant}"
    return str(model.path)


class LocalModels(Guarded, DataTable[Any]):
    """One row per local model; Enter chats with it (posts :class:`LocalModels.Chosen`)."""

    BINDINGS = [
        Binding("enter", "select_cursor", "Chat"),
        ("f", "fit", "Fit"),
        ("delete", "remove", "Remove"),
    ]

    class Chosen(Message):
        """The user picked a model to chat with."""

        def __init__(self, model: Any) -> None:
            self.model = model
            super().__init__()

    class FitRequested(Message):
        """The user wants the fit details of a model."""

        def __init__(self, model: Any) -> None:
            self.model = model
            super().__init__()

    class RemoveRequested(Message):
        """The user wants a model deleted from disk."""

        def __init__(self, model: Any) -> None:
            self.model = model
            super().__init__()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.models: list[Any] = []
        self._fits: dict[int, tuple[Any | None, str | None]] = {}

    def on_mount(self) -> None:
        self.add_column("Model", key="model")
        self.add_column("Quant", key="quant")
        self.add_column("Size", key="size")
        self.add_column("Fit", key="fit")
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._refit())

    def _refit(self) -> None:
        for index, (plan, error) in self._fits.items():
            self.show_fit(index, plan, error)

    def show(self, models: Sequence[Any]) -> None:
        """Replace the rows (keeps the cursor on the same model when it is still there)."""
        keep = self.current()
        self.clear()
        self._fits.clear()
        self.models = list(models)
        for i, m in enumerate(self.models):
            self.add_row(
                outside_cell(model_name(m)), outside_cell(getattr(m, "quant", None) or "?"),
                Text(human_bytes(m.size_bytes)), Text("…"), key=str(i),
            )
        if keep is not None and keep in self.models:
            self.move_cursor(row=self.models.index(keep))

    def show_fit(self, index: int, plan: Any | None, error: str | None = None) -> None:
        """Fill one row's Fit cell with its verdict (or why it could not be read)."""
        if index >= len(self.models):
            return
        self._fits[index] = (plan, error)
        theme = self.app.current_theme
        cell = verdict_text(plan, theme) if plan is not None else muted_text(error or "unreadable", theme, "$error")
        self.update_cell(str(index), "fit", cell, update_width=True)

    def current(self) -> Any | None:
        """The model under the cursor."""
        if not self.models or self.cursor_row < 0 or self.cursor_row >= len(self.models):
            return None
        return self.models[self.cursor_row]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        model = self.current()
        if model is not None:
            self.post_message(self.Chosen(model))

    def action_fit(self) -> None:
        model = self.current()
        if model is not None:
            self.post_message(self.FitRequested(model))

    def action_remove(self) -> None:
        model = self.current()
        if model is not None:
            self.post_message(self.RemoveRequested(model))
