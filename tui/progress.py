"""A tqdm-shaped class that forwards download progress to the UI instead of drawing it.

huggingface_hub (through ``fitchat.hub.download.pull``'s ``progress_class``) creates one bar per
file and calls ``update(n)``; each call becomes a :class:`ProgressEvent` passed to a sink that
must be thread-safe (``Widget.post_message`` is).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    """One bar's state: ``n`` of ``total`` bytes (total None when unknown)."""

    bar: int
    n: int
    total: int | None
    desc: str
    closed: bool = False


def relay_class(sink: Callable[[ProgressEvent], None]) -> type:
    """A tqdm-compatible class whose bars report to ``sink``."""
    ids = itertools.count(1)

    class Relay:
        _lock = threading.RLock()

        def __init__(self, iterable: Any = None, *args: Any, **kwargs: Any) -> None:
            self.iterable = iterable
            self.total = kwargs.get("total")
            self.n = int(kwargs.get("initial") or 0)
            self.desc = str(kwargs.get("desc") or "")
            self.disable = False
            self._id = next(ids)
            self._closed = False
            self._emit()

        def _emit(self, closed: bool = False) -> None:
            total = int(self.total) if isinstance(self.total, (int, float)) else None
            sink(ProgressEvent(self._id, int(self.n), total, self.desc, closed))

        def __iter__(self) -> Any:
            for item in self.iterable or ():
                yield item
                self.update(1)

        def __enter__(self) -> Relay:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

        def update(self, n: float | None = 1) -> bool:
            self.n += int(n or 0)
            self._emit()
            return True

        def close(self) -> None:
            if not self._closed:
                self._closed = True
                self._emit(closed=True)

        def reset(self, total: float | None = None) -> None:
            self.n = 0
            if total is not None:
                self.total = total
            self._emit()

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            self._emit()

        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            self.desc = desc or ""

        def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
            self.desc = desc or ""

        def set_postfix(self, *args: Any, **kwargs: Any) -> None:
            pass

        def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            pass

        def clear(self, *args: Any, **kwargs: Any) -> None:
            pass

        def display(self, *args: Any, **kwargs: Any) -> None:
            pass

        def unpause(self) -> None:
            pass

        @classmethod
        def write(cls, s: str, *args: Any, **kwargs: Any) -> None:
            pass

        @classmethod
        def get_lock(cls) -> threading.RLock:
            return cls._lock

        @classmethod
        def set_lock(cls, lock: Any) -> None:
            cls._lock = lock

    return Relay
