"""Joining streamed pieces into fewer screen updates, without holding any back for long."""

from __future__ import annotations

import time
from collections.abc import Callable


class Coalescer:
    """Passes pieces to ``post(text, count)``: at once, unless the last post was under ``interval`` ago.

    Held pieces go out with the next piece after ``interval`` or on :meth:`flush`. A slow stream
    (a piece every ``interval`` or more) is posted piece by piece; a fast one in about
    ``1 / interval`` posts a second.
    """

    def __init__(self, post: Callable[[str, int], None], interval: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._post = post
        self._interval = interval
        self._clock = clock
        self._pending: list[str] = []
        self._last = float("-inf")

    def add(self, piece: str) -> None:
        if not piece:
            return
        self._pending.append(piece)
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self.flush()

    def flush(self) -> None:
        if self._pending:
            text, count = "".join(self._pending), len(self._pending)
            self._pending.clear()
            self._post(text, count)
