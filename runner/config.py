"""fitchat's config file, ``config.toml`` in :func:`fitchat.paths.config_dir`: read once per call, never written.

Read with :mod:`tomllib` (Python 3.11+). On 3.10 there is no TOML reader in the standard library, so the
file is ignored with one warning line. A missing file is an empty config; a damaged one is one warning
line and an empty config, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fitchat import paths
from fitchat.format import printable

_warned: set[str] = set()


def config_path() -> Path:
    """``$XDG_CONFIG_HOME/fitchat/config.toml``."""
    return paths.config_dir() / "config.toml"


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(printable(message), file=sys.stderr)


def load() -> dict[str, Any]:
    """The config file as a dict: ``{}`` when it is absent, damaged or cannot be read on this Python."""
    path = config_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        _warn_once(f"fitchat: warning: cannot read {path} ({exc.strerror or exc}); using the defaults")
        return {}
    try:
        import tomllib
    except ImportError:  # Python 3.10
        _warn_once(f"fitchat: warning: {path} is ignored on Python {sys.version_info[0]}.{sys.version_info[1]} "
                   "(reading TOML needs Python 3.11+)")
        return {}
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _warn_once(f"fitchat: warning: {path} is not valid TOML ({first[:80]}); using the defaults")
        return {}


def section(name: str) -> dict[str, Any]:
    """One ``[name]`` table of the config (``{}`` when absent or not a table)."""
    value = load().get(name)
    return value if isinstance(value, dict) else {}
