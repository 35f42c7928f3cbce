"""A streamed reply: Textual's Markdown stream, fed in pieces, ends as a full render of the text would."""

from __future__ import annotations

import random
import re

from textual.app import App, ComposeResult
from textual.containers import VerticalScroll

from tui.widgets.chat_message import ChatMessage

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
        with VerticalScroll():
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
