"""Joining streamed pieces into fewer screen updates, without holding any back for long."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

#: The UI thread's share of a CPU while a reply streams, when llama.cpp leaves a core free for it
#: (its work then takes nothing from generation) ...
SPARE_CORE_BUDGET = 0.5
#: ... and when llama.cpp's decode threads occupy every core: any CPU the UI uses is then taken
#: from a decode thread, and the other threads wait for it at llama.cpp's barrier.
SHARED_CORE_BUDGET = 0.04


def usable_cores() -> int:
    """The logical CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def ui_cpu_budget(decode_threads: int | None, cores: int, all_layers_on_gpu: bool = False) -> float:
    """How much of a CPU the UI may use while ``decode_threads`` of ``cores`` generate.

    A model wholly on the GPU leaves the CPU threads waiting on it, so they too leave room.
    """
    if all_layers_on_gpu or (decode_threads is not None and decode_threads < cores):
        return SPARE_CORE_BUDGET
    return SHARED_CORE_BUDGET


class Coalescer:
    """Passes pieces to ``post(text, count)``: at once, unless the last post was under ``interval`` ago.

    Held pieces go out with the next piece after ``interval`` or on :meth:`flush`. A slow stream
    (a piece every ``interval`` or more) is posted piece by piece; a fast one in about
    ``1 / interval`` posts a second. ``interval`` may be changed while pieces flow (see :class:`BusyPacer`).
    """

    def __init__(self, post: Callable[[str, int], None], interval: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._post = post
        self.interval = interval
        self._clock = clock
        self._pending: list[str] = []
        self._last = float("-inf")

    def add(self, piece: str) -> None:
        if not piece:
            return
        self._pending.append(piece)
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self.flush()

    def flush(self) -> None:
        if self._pending:
            text, count = "".join(self._pending), len(self._pending)
            self._pending.clear()
            self._post(text, count)


class BusyPacer:
    """Keeps the UI thread's share of a CPU near ``budget`` by spacing a :class:`Coalescer`'s posts.

    Every screen update costs a layout and a frame; on a small machine that CPU time is taken from
    llama.cpp. :meth:`sample`, called on the UI thread a few times a second, reads the thread's CPU
    time: over ``budget`` the interval grows in proportion (up to ``ceiling``), under half of it the
    interval shrinks back towards ``floor``. A fast machine stays at ``floor``.
    """

    def __init__(self, coalescer: Coalescer, *, budget: float, floor: float, ceiling: float, window: float = 0.5,
                 clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] = time.thread_time) -> None:
        self._coalescer = coalescer
        self._budget = budget
        self._floor = floor
        self._ceiling = ceiling
        self._window = window
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._start: tuple[float, float] | None = None
        #: The UI thread's CPU share over the last window (None before the first one ends).
        self.busy: float | None = None

    def sample(self) -> None:
        now, cpu = self._clock(), self._cpu_clock()
        if self._start is None:
            self._start = (now, cpu)
            return
        wall = now - self._start[0]
        if wall < self._window:
            return
        busy = (cpu - self._start[1]) / wall
        self._start = (now, cpu)
        self.busy = busy
        interval = self._coalescer.interval
        if busy > self._budget:
            interval = min(self._ceiling, interval * busy / self._budget)
        elif busy < self._budget / 2:
            interval = max(self._floor, interval * 0.75)
        self._coalescer.interval = interval

    @property
    def interval(self) -> float:
        """The spacing of updates now."""
        return self._coalescer.interval
