"""The scrolling column of a conversation's messages."""

from __future__ import annotations

from textual.containers import VerticalScroll

from fitchat.tui.guard import Guarded
from fitchat.tui.sized import SizedByLayout


class MessageLog(Guarded, SizedByLayout, VerticalScroll):
    """The messages, laid out once per streamed update (see :class:`SizedByLayout`).

    Its scrollbar still follows: Textual updates it after every layout, and a scrollbar that
    appears or goes asks for a layout of its own.
    """
