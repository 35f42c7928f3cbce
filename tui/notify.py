"""Turning exceptions into the one line a notification shows."""

from __future__ import annotations

from fitchat.errors import FitchatError


def error_message(exc: BaseException) -> str:
    """``FitchatError`` text as is; anything else with its type, never a traceback."""
    if isinstance(exc, FitchatError):
        return str(exc) or type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
