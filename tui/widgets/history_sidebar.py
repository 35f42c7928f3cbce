"""Past conversations: Enter resumes, d deletes, e exports to Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from fitchat.tui.guard import Guarded
from fitchat.tui.render import outside


class HistorySidebar(Guarded, Vertical):
    """A list of conversation headers (newest first)."""

    DEFAULT_CSS = """
    HistorySidebar { width: 32; height: 1fr; border-right: vkey $primary 40%; }
    HistorySidebar > Label { padding: 0 1; text-style: bold; color: $accent; width: 1fr; }
    HistorySidebar OptionList { height: 1fr; border: none; padding: 0; }
    """

    BINDINGS = [
        Binding("d,delete", "delete", "Delete"),
        Binding("e", "export", "Export"),
    ]

    class Resume(Message):
        def __init__(self, conversation_id: int) -> None:
            self.conversation_id = conversation_id
            super().__init__()

    class Delete(Message):
        def __init__(self, conversation_id: int) -> None:
            self.conversation_id = conversation_id
            super().__init__()

    class Export(Message):
        def __init__(self, conversation_id: int) -> None:
            self.conversation_id = conversation_id
            super().__init__()

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.conversations: list[Any] = []
        self.current_id: int | None = None

    def compose(self) -> ComposeResult:
        yield Label("History")
        yield OptionList(id="history-list")

    def show(self, conversations: Sequence[Any], current_id: int | None = None) -> None:
        """Replace the list; the current conversation is marked."""
        self.conversations = list(conversations)
        self.current_id = current_id
        options = self.query_one(OptionList)
        highlighted = options.highlighted
        options.clear_options()
        for conv in self.conversations:
            mark = "● " if conv.id == current_id else ""
            title = conv.title or "(untitled)"
            prompt = Content.assemble((mark, "$accent"), outside(title, "bold" if conv.id == current_id else ""), "\n",
                                      outside(f"{conv.model.rsplit('/', 1)[-1]} · {conv.message_count} msgs", "$text-muted"))
            options.add_option(Option(prompt, id=str(conv.id)))
        if self.conversations:
            options.highlighted = min(highlighted or 0, len(self.conversations) - 1)

    def _selected(self) -> int | None:
        options = self.query_one(OptionList)
        if options.highlighted is None or not self.conversations:
            return None
        return self.conversations[options.highlighted].id

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Resume(int(event.option.id)))

    def action_delete(self) -> None:
        cid = self._selected()
        if cid is not None:
            self.post_message(self.Delete(cid))

    def action_export(self) -> None:
        cid = self._selected()
        if cid is not None:
            self.post_message(self.Export(cid))
