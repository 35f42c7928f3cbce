"""An exception in one of the UI's handlers becomes a notification, not a traceback that ends the app.

Textual ends the app on an exception raised in a message handler, an action or a watcher, and
offers no public hook to do otherwise. So fitchat's own handlers are wrapped where they are
defined: classes that derive from :class:`Guarded` have their ``on_*``, ``_on_*``, ``action_*``
and ``watch_*`` methods wrapped, and :func:`on` replaces ``textual.on`` for decorated handlers.
The error is shown in one line (``fitchat.tui.notify.error_message``) and its traceback appended to
``$XDG_CACHE_HOME/fitchat/tui-errors.log``, so nothing is lost.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from textual import on as textual_on

from fitchat import paths
from fitchat.tui.notify import error_message

F = TypeVar("F", bound=Callable[..., Any])

HANDLER_PREFIXES = ("on_", "_on_", "action_", "watch_")
LOG_NAME = "tui-errors.log"


def report(node: Any, exc: BaseException) -> None:
    """Notify the user of ``exc`` and keep its traceback in the log (never raises)."""
    try:
        log = paths.cache_dir() / LOG_NAME
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as out:
            out.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')}\n")
            out.write("".join(traceback.format_exception(exc)))
    except OSError:
        pass
    try:
        node.app.notify(error_message(exc), title="Error", severity="error", timeout=8)
    except Exception:  # noqa: BLE001 - no app to tell (shutting down): the log has it
        pass


def guarded(method: F) -> F:
    """``method`` (sync or async, taking ``self`` first) with its exceptions reported, not raised."""
    if getattr(method, "__fitchat_guarded__", False):
        return method
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def async_wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await method(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the point of the guard
                report(self, exc)
                return None

        wrapper: Any = async_wrapper
    else:

        @functools.wraps(method)
        def sync_wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the point of the guard
                report(self, exc)
                return None

        wrapper = sync_wrapper
    wrapper.__fitchat_guarded__ = True
    return wrapper  # type: ignore[no-any-return]


def on(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """``textual.on`` for a handler whose exceptions are reported, not raised."""
    decorate = textual_on(*args, **kwargs)

    def decorator(method: F) -> F:
        return decorate(guarded(method))

    return decorator


class Guarded:
    """Mixin: wraps the handlers, actions and watchers each subclass defines (see the module docstring)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if name.startswith(HANDLER_PREFIXES) and inspect.isfunction(value):
                setattr(cls, name, guarded(value))
