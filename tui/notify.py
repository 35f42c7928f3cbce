"""Turning exceptions into the one line a notification shows."""

from __future__ import annotations

from fitchat.errors import FitchatError, first_line


def error_message(exc: BaseException) -> str:
    """``FitchatError`` text as is; anything else with its type, never a traceback (:func:`fitchat.errors.first_line`)."""
    return first_line(exc, typed=not isinstance(exc, FitchatError))
