"""A streamed reply: Textual's Markdown stream, fed in pieces, ends as a full render of the text would."""

from __future__ import annotations

import random
import re

from textual.app import App, ComposeResult

from fitchat.tui.widgets.chat_message import ChatMessage
from fitchat.tui.widgets.message_log import MessageLog

REPLY = """The printing press changed how ideas spread.

## Setup

Install it:

```bash
pip install thing
echo "# not a heading"

still code
```

| name | value |
|------|-------|
| a    | 1     |
| b    | 2     |

1. first
2. second
   - nested *item*
   - another

> quoted **text**
> more

Title
=====

A last paragraph with `code` and a [link](http://example.com).
~~~
a fence left open
"""


class OneMessage(App[None]):
    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with MessageLog():
            yield ChatMessage("assistant", self.text)


def screen_of(app: App[None]) -> str:
    return re.sub(r"terminal-\d+", "terminal", app.export_screenshot())


async def test_a_streamed_reply_ends_as_the_whole_text_renders_without_a_second_render() -> None:
    whole = OneMessage(REPLY)
    async with whole.run_test(size=(100, 80)) as pilot:
        await pilot.pause()
        expected = screen_of(whole)
    rnd = random.Random(7)
    for _ in range(4):
        cuts = sorted(rnd.sample(range(1, len(REPLY)), 30))
        pieces = [REPLY[a:b] for a, b in zip([0, *cuts], [*cuts, len(REPLY)])]
        app = OneMessage()
        async with app.run_test(size=(100, 80)) as pilot:
            message = app.query_one(ChatMessage)
            for piece in pieces:
                await message.append(piece)
                if rnd.random() < 0.5:
                    await pilot.pause()
            await pilot.pause()
            blocks = list(message.markdown.children)
            await message.finish()
            await pilot.pause()
            assert list(message.markdown.children) == blocks  # not rendered again
            assert message.text == message.markdown.source == REPLY
            assert screen_of(app) == expected


ENDS_WITH_A_PARAGRAPH = REPLY.removesuffix("~~~\na fence left open\n")


async def test_a_streamed_reply_that_ends_with_a_paragraph_ends_as_the_whole_text_renders() -> None:
    """The last paragraph loses its bottom margin when the reply ends, as it does in a full render."""
    whole = OneMessage(ENDS_WITH_A_PARAGRAPH)
    async with whole.run_test(size=(100, 80)) as pilot:
        await pilot.pause()
        expected = screen_of(whole)
        last = whole.query_one(ChatMessage).markdown.children[-1]
        assert last.has_class("-last-paragraph") and last.styles.margin.bottom == 0
    app = OneMessage()
    async with app.run_test(size=(100, 80)) as pilot:
        message = app.query_one(ChatMessage)
        for start in range(0, len(ENDS_WITH_A_PARAGRAPH), 40):
            await message.append(ENDS_WITH_A_PARAGRAPH[start:start + 40])
        await pilot.pause()
        await message.finish()
        await pilot.pause()
        assert [block for block in message.markdown.children if block.has_class("-last-paragraph")] == [
            message.markdown.children[-1]]
        assert screen_of(app) == expected


def regions(app: App[None]) -> dict[int, object]:
    return {id(widget): widget.region for widget in app.screen.query("*")}


async def test_each_streamed_update_is_laid_out_once_and_as_a_full_layout_would() -> None:
    """One layout per update (Textual on its own made two or three), with nothing left stale."""
    paragraphs = [f"Paragraph {n}: " + "words that wrap " * (n % 7 + 1) + "\n\n" for n in range(30)]
    paragraphs[20] = "## A heading\n\n"
    app = OneMessage()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        message = app.query_one(ChatMessage)
        layouts: list[object] = []
        app.screen.screen_layout_refresh_signal.subscribe(app.screen, layouts.append, immediate=True)
        counts = []
        for text in paragraphs:
            before = len(layouts)
            await message.append(text)
            await pilot.pause(0.05)
            counts.append(len(layouts) - before)
            laid_out = regions(app)
            for widget in app.screen.query("*"):
                widget.refresh(layout=True)
            await pilot.pause()
            assert regions(app) == laid_out
        # The update that brings the scrollbar in is laid out again, as it narrows the text.
        assert counts.count(1) >= len(counts) - 1 and max(counts) <= 3, counts
