"""fitchat's config file, ``config.toml`` in :func:`fitchat.paths.config_dir`: read once per call, never written.

Read with :mod:`tomllib` (Python 3.11+). On 3.10 there is no TOML reader in the standard library, so the
file is ignored with one warning line. A missing file is an empty config; a damaged one is one warning
line and an empty config, never a traceback.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path
from typing import Any

from fitchat import paths
from fitchat.errors import first_line
from fitchat.format import printable

_warned: set[str] = set()

#: Largest config file read; a real one is a few hundred bytes.
MAX_CONFIG_BYTES = 1 << 20


def read_small(path: Path | str, limit: int) -> bytes:
    """A small settings file of ours or another program's, read without trusting what is at ``path``.

    Only a regular file is read (a FIFO would block the open and the read for good, ``/dev/zero`` never ends),
    and at most ``limit`` bytes: anything else is an ``OSError`` with a short reason, which every caller
    already turns into one warning line. A directory is ``IsADirectoryError``, as ``open()`` gives.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder")
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


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
        data = read_small(path, MAX_CONFIG_BYTES)
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
        _warn_once(f"fitchat: warning: {path} is not valid TOML ({first_line(exc, 80)}); using the defaults")
        return {}


def section(name: str) -> dict[str, Any]:
    """One ``[name]`` table of the config (``{}`` when absent or not a table)."""
    value = load().get(name)
    return value if isinstance(value, dict) else {}
