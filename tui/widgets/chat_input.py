"""The prompt box: multi-line text, Enter sends, Ctrl+J (or Shift+Enter where the terminal tells) adds a line."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea

from fitchat.tui.guard import Guarded

NEWLINE_KEYS = ("ctrl+j", "shift+enter", "alt+enter")


class ChatInput(Guarded, TextArea):
    """Posts :class:`ChatInput.Submitted` on Enter; pasted text keeps its newlines."""

    class Submitted(Message):
        """The user sent the text."""

        def __init__(self, text: str) -> None:
            self.text = text
            super().__init__()

    def __init__(self, **kwargs: object) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)  # type: ignore[arg-type]
        self.placeholder = "Ask anything (Enter sends, Ctrl+J new line)"

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self.text))
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            start, end = self.selection
            self._replace_via_keyboard("\n", start, end)
            return
        await super()._on_key(event)
