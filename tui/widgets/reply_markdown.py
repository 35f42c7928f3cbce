"""Markdown for a chat message: each streamed update laid out and styled once."""

from __future__ import annotations

from collections.abc import Awaitable
from functools import cache

from textual.await_complete import AwaitComplete
from textual.widget import Widget
from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownBlock, MarkdownFence

from fitchat.tui.guard import Guarded
from fitchat.tui.sized import SizedByLayout

#: The class of the message's last block when it is a paragraph (styled without a bottom margin).
LAST_PARAGRAPH = "-last-paragraph"
#: Textual's paragraph block (not exported under a public name).
PARAGRAPH = Markdown.BLOCKS["paragraph_open"]


@cache
def sized_block(block: type[MarkdownBlock]) -> type[MarkdownBlock]:
    """``block`` as :class:`SizedByLayout`, under the same name so that styles and queries still find it.

    A code fence scrolls sideways, so its size matters to its scrollbars: it is left as it is.
    """
    if issubclass(block, MarkdownFence):
        return block
    return type(block.__name__, (SizedByLayout, block), {"__module__": block.__module__})


def is_web_link(href: str) -> bool:
    """Whether a link from a reply may be opened: ``http(s)://`` with a host, nothing else."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(href.strip())
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


class ReplyMarkdown(Guarded, SizedByLayout, Markdown):
    """A :class:`Markdown` laid out once per streamed update, blocks included.

    After :meth:`update` or :meth:`mark_last_paragraph` (when a streamed reply ends), its last
    paragraph carries the class ``-last-paragraph``. A ``:last-child`` rule would follow every
    update, but Textual restyles every block that such a rule could match whenever a block is
    mounted: each update of a long reply restyled all of its paragraphs.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._last_paragraph: Widget | None = None

    def get_block_class(self, block_name: str) -> type[MarkdownBlock]:
        return sized_block(super().get_block_class(block_name))

    def on_markdown_link_clicked(self, event: Markdown.LinkClicked) -> None:
        """Open only web links: a model's reply is outside text, and may link to ``file:`` or a custom scheme."""
        event.prevent_default()  # Textual's own handler would open any scheme
        if is_web_link(event.href):
            self.app.open_url(event.href)
        else:
            self.notify(f"not opened: only http and https links open from a reply ({event.href})", severity="warning")

    def update(self, markdown: str) -> AwaitComplete:
        return AwaitComplete(self._then_mark_last(super().update(markdown)))

    async def _then_mark_last(self, change: Awaitable[object]) -> None:
        await change
        self.mark_last_paragraph()

    def mark_last_paragraph(self) -> None:
        """Give the class ``-last-paragraph`` to the last block if it is a paragraph, and to no other."""
        last = self.children[-1] if self.children else None
        if not isinstance(last, PARAGRAPH):
            last = None
        if last is self._last_paragraph:
            return
        if self._last_paragraph is not None:
            self._last_paragraph.remove_class(LAST_PARAGRAPH)
        if last is not None:
            last.add_class(LAST_PARAGRAPH)
        self._last_paragraph = last
