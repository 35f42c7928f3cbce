"""llama.cpp's process-wide state, with one owner: its log callback, quiet loads and the abort flag.

llama.cpp keeps one log callback for the whole process. Whoever sets it must also give it back,
and must not give it back while someone else still needs it: so the chat engine and ``compare``
both hold :meth:`LlamaLog.shared` (counted) instead of calling ``llama_log_set`` themselves.
``fitchat.model.measure`` sets its own callback only inside its child process, which nothing
else shares.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

#: llama.cpp's log levels (ggml_log_level): debug and info are chatter, CONT continues the last line.
_CHATTER_LEVELS = (1, 2)
_LEVEL_CONT = 5


class LlamaLog:
    """Routes llama.cpp's log into a ring buffer (for load failure reasons) instead of the terminal.

    One per process (:meth:`shared`): llama.cpp keeps the callback's address, so the callback must
    outlive every model. Holders (a chat engine, a model loaded for ``compare``) :meth:`install` it
    before a load and :meth:`restore` it when they close, so llama.cpp's chatter (such as the line
    it logs when a decode is aborted) never lands on a terminal UI; the last holder gives the log
    back to llama-cpp-python.
    """

    _shared: LlamaLog | None = None
    _lock = threading.Lock()

    @classmethod
    def shared(cls) -> LlamaLog:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def __init__(self, size: int = 200) -> None:
        self._holders = 0
        self.lines: deque[str] = deque(maxlen=size)
        self._partial = ""
        self._level = 0
        import llama_cpp

        self._llama_cpp = llama_cpp

        @llama_cpp.llama_log_callback
        def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            self._feed(level, text)

        self._callback = _callback

    @property
    def holders(self) -> int:
        """How many models hold the log now (0: llama-cpp-python's own handler has it)."""
        return self._holders

    def _feed(self, level: int, text: bytes) -> None:
        if level != _LEVEL_CONT:
            self._level = level
        if self._level in _CHATTER_LEVELS:  # debug and info lines are not reasons (3 warn, 4 error)
            self._partial = ""
            return
        chunk = self._partial + text.decode("utf-8", errors="replace")
        *complete, self._partial = chunk.split("\n")
        self.lines.extend(line for line in complete if line.strip())

    def install(self) -> LlamaLog:
        """Take over llama.cpp's log (counted: each install needs a :meth:`restore`)."""
        with self._lock:
            self._holders += 1
            self._llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        return self

    def restore(self) -> None:
        """Give the log back to llama-cpp-python's own handler once nothing holds it."""
        from llama_cpp import _logger

        with self._lock:
            self._holders = max(0, self._holders - 1)
            if self._holders == 0:
                self._llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))

    def take(self) -> list[str]:
        """The lines logged since the last call (warnings and errors only)."""
        lines = list(self.lines) + ([self._partial] if self._partial.strip() else [])
        self.lines.clear()
        self._partial = ""
        return lines


@contextlib.contextmanager
def quiet_load() -> Iterator[io.StringIO]:
    """While open, llama-cpp-python's own prints go to the buffer it yields, not to the terminal.

    Build ``llama_cpp.Llama(..., verbose=True)`` inside it, on purpose: with ``verbose=False``
    llama-cpp-python points file descriptors 1 and 2 at /dev/null for the whole load, which blanks
    a terminal UI drawing meanwhile. llama.cpp's log goes to :class:`LlamaLog` (install it first);
    the verbosity llama-cpp-python sets for its later calls is turned off again on the way out.
    """
    from llama_cpp._logger import set_verbose

    prints = io.StringIO()
    try:
        with contextlib.redirect_stderr(prints):
            yield prints
    finally:
        set_verbose(False)


def _libc_strlen() -> int | None:
    """Address of the C library's ``strlen`` (the abort poll), or None."""
    names = ["msvcrt"] if sys.platform == "win32" else [None, ctypes.util.find_library("c")]
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except (OSError, TypeError):
            continue
        fn = getattr(lib, "strlen", None)
        if fn is not None:
            return ctypes.cast(fn, ctypes.c_void_p).value
    return None


class AbortFlag:
    """The flag llama.cpp polls after every graph node to abort a decode (``llama_decode`` returns 2).

    Without ``poll``, polling costs no Python: the callback is libc's ``strlen`` on a two-byte buffer
    whose second byte stays 0, so it returns 0 or 1, which reads as the bool the callback returns:
    false until :meth:`set` writes the first byte (a Python callback there would cost a GIL round trip
    per node). With ``poll`` (for a caller whose stop is a ``threading.Event`` set elsewhere), that
    function is called instead. The flag must outlive the context it is attached to.
    """

    def __init__(self, poll: Callable[[], bool] | None = None) -> None:
        import llama_cpp

        self._lc = llama_cpp
        self._buffer = ctypes.create_string_buffer(2)
        strlen = _libc_strlen() if poll is None else None
        if strlen is not None:
            self._callback = llama_cpp.ggml_abort_callback(strlen)
            self._data: ctypes.c_void_p | None = ctypes.cast(self._buffer, ctypes.c_void_p)
        else:
            buffer = self._buffer
            check = poll if poll is not None else (lambda: buffer.raw[0] != 0)
            self._callback = llama_cpp.ggml_abort_callback(lambda _data: bool(check()))
            self._data = None

    def attach(self, ctx: Any) -> AbortFlag:
        """Have ``ctx`` (a ``llama_context``) poll this flag."""
        self._lc.llama_set_abort_callback(ctx, self._callback, self._data)
        return self

    def detach(self, ctx: Any) -> None:
        """Stop ``ctx`` polling (before the context is freed)."""
        self._lc.llama_set_abort_callback(ctx, self._lc.ggml_abort_callback(0), None)

    def set(self) -> None:
        """Abort the decode in progress, within one graph node (thread-safe)."""
        self._buffer[0] = b"\x01"

    def clear(self) -> None:
        self._buffer[0] = b"\x00"

    def is_set(self) -> bool:
        return self._buffer.raw[0] != 0

    @contextlib.contextmanager
    def time_limit(self, seconds: float) -> Iterator[None]:
        """Abort decodes (return code 2) once ``seconds`` have passed; cleared on the way out."""
        timer = threading.Timer(seconds, self.set)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            self.clear()
