"""One turn of the conversation: a role label over streamed Markdown, focusable to copy."""

from __future__ import annotations

from markdown_it import MarkdownIt
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Label, Markdown
from textual.widgets.markdown import MarkdownStream

from fitchat.format import printable
from fitchat.tui.guard import Guarded
from fitchat.tui.render import outside
from fitchat.tui.sized import SizedByLayout
from fitchat.tui.widgets.reply_markdown import ReplyMarkdown

ROLE_LABELS = {"user": "You", "assistant": "Assistant", "system": "System"}


def code_blocks(markdown: str) -> list[str]:
    """The fenced and indented code blocks of a Markdown text, in order."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    return [t.content for t in tokens if t.type in ("fence", "code_block")]


class ChatMessage(Guarded, SizedByLayout, Vertical, can_focus=True):
    """A message. ``y`` copies it, ``b`` copies a code block (posts :class:`CopyCode` when there are several)."""

    DEFAULT_CSS = """
    ChatMessage { height: auto; margin: 0 0 1 0; padding: 0 0 0 1; border-left: outer $primary 40%; }
    ChatMessage.-user { border-left: outer $accent; background: $boost; }
    ChatMessage:focus { border-left: outer $secondary; background: $primary 10%; }
    ChatMessage .role { color: $text-muted; text-style: bold; }
    ChatMessage.-user .role { color: $accent; }
    ChatMessage .meta { color: $text-muted; }
    ChatMessage Markdown { margin: 0; padding: 0 1 0 0; }
    ChatMessage Markdown > MarkdownParagraph.-last-paragraph { margin-bottom: 0; }
    """

    BINDINGS = [
        Binding("y", "copy", "Copy"),
        Binding("b", "copy_code", "Copy code"),
    ]

    class CopyCode(Message):
        """Several code blocks: the screen asks which one."""

        def __init__(self, message: ChatMessage, blocks: list[str]) -> None:
            self.message = message
            self.blocks = blocks
            super().__init__()

    def __init__(self, role: str, text: str = "", **kwargs: object) -> None:
        # A role read from a damaged history is no CSS class name: it is only shown (as text).
        super().__init__(classes=f"-{role}" if role in ROLE_LABELS else "", **kwargs)  # type: ignore[arg-type]
        self.role = role
        self.text = text
        self._stream: MarkdownStream | None = None
        self._parser: MarkdownIt | None = None

    def _markdown_parser(self) -> MarkdownIt:
        """One parser for all of this message's updates (Markdown would build one per streamed piece)."""
        if self._parser is None:
            self._parser = MarkdownIt("gfm-like")
        return self._parser

    def compose(self) -> ComposeResult:
        yield Label(outside(ROLE_LABELS.get(self.role, self.role)), classes="role")
        yield ReplyMarkdown(printable(self.text), parser_factory=self._markdown_parser)
        yield Label("", classes="meta")

    def on_mount(self) -> None:
        self.query_one(".meta", Label).display = False

    @property
    def markdown(self) -> ReplyMarkdown:
        return self.query_one(ReplyMarkdown)

    async def append(self, fragment: str) -> None:
        """Stream a fragment in (batched by ``Markdown.get_stream``).

        ``text`` keeps what the model wrote; the screen gets it printable (Markdown is not markup, but
        an escape sequence in a reply would reach the terminal).
        """
        self.text += fragment
        if self._stream is None:
            self._stream = Markdown.get_stream(self.markdown)
        await self._stream.write(printable(fragment))

    async def finish(self, meta: str = "") -> None:
        """Stop streaming (what is still queued goes in) and show ``meta`` under the message.

        Textual's streamed Markdown ends as a full render of the same text would (a test streams
        tables, fences and lists in random pieces to check it), so a long reply is not laid out
        again: that took a few hundred milliseconds, during which keys waited.
        """
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        shown = printable(self.text)
        if self.markdown.source != shown:
            await self.markdown.update(shown)
        else:
            self.markdown.mark_last_paragraph()
        self.set_meta(meta)

    def set_meta(self, meta: str) -> None:
        """The small line under a reply (tokens, speed, stopped)."""
        label = self.query_one(".meta", Label)
        label.update(outside(meta))
        label.display = bool(meta)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.text)
        self.notify("Copied the message")

    def action_copy_code(self) -> None:
        blocks = code_blocks(self.text)
        if not blocks:
            self.notify("This message has no code block", severity="warning")
        elif len(blocks) == 1:
            self.app.copy_to_clipboard(blocks[0])
            self.notify("Copied the code block")
        else:
            self.post_message(self.CopyCode(self, blocks))
