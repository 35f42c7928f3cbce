"""Where fitchat keeps its files: XDG data, cache and config directories."""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    base = Path(value) if value and os.path.isabs(value) else Path.home() / default
    return base / "fitchat"


def data_dir() -> Path:
    """``$XDG_DATA_HOME/fitchat`` (history, imported-model registry)."""
    return _xdg("XDG_DATA_HOME", ".local/share")


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fitchat`` (calibrations, compare results, starter download)."""
    return _xdg("XDG_CACHE_HOME", ".cache")


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/fitchat``."""
    return _xdg("XDG_CONFIG_HOME", ".config")
