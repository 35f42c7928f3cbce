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


def package_data(name: str) -> Path:
    """A file shipped inside the package (``data/``): the catalog, the bundled text."""
    return Path(__file__).resolve().parent / "data" / name


# -- the path guard ---------------------------------------------------------------------------------
# Names from outside (a Hub file name, an etag or commit from a mirror's headers, a snapshot link) become
# paths in the Hugging Face cache. Every path fitchat creates, locks, links or unlinks there is checked
# here first, before the first byte is written: one guard, so no caller can forget a case.

#: Longest repo file name accepted (the Hub's own limit is far below; a 5,000-character name is hostile).
MAX_REPO_FILENAME = 1024
#: Longest single path component (most file systems stop at 255 bytes).
MAX_NAME_COMPONENT = 255


def inside(root: Path, path: Path, *, follow_last: bool = True) -> Path:
    """``path`` made absolute and resolved; raise :class:`UnsafePath` unless it lies strictly inside ``root``.

    ``follow_last=False`` resolves only the parent and keeps the last component as it is: the check for
    a link that is about to be created or unlinked (the link itself must be inside ``root``; where an
    existing link points is irrelevant, because unlinking it never touches its target).
    """
    from fitchat.errors import UnsafePath
    from fitchat.format import quoted

    base = Path(os.path.realpath(root))
    full = Path(os.path.abspath(path))
    if follow_last:
        resolved = Path(os.path.realpath(full))
    else:
        resolved = Path(os.path.realpath(full.parent)) / full.name
    if full.name in ("", ".", "..") or resolved == base or not resolved.is_relative_to(base):
        raise UnsafePath(f"refused the path {quoted(str(path))}: it would lie outside {quoted(str(base))}")
    return resolved


def check_repo_filename(name: object) -> str:
    """``name`` if it is a safe relative path inside a repo (``folder/file.gguf``); raise :class:`UnsafePath` otherwise.

    Refused: empty, absolute, ``.``/``..``/empty components, a backslash, a drive letter, NUL or any other
    control character, a component over 255 or a name over 1,024 characters.
    """
    from fitchat.errors import UnsafePath
    from fitchat.format import quoted

    def refuse(why: str) -> UnsafePath:
        return UnsafePath(f"refused the Hub file name {quoted(str(name))}: {why}")

    if not isinstance(name, str) or not name:
        raise refuse("it is empty or not text")
    if len(name) > MAX_REPO_FILENAME:
        raise refuse(f"it is {len(name):,} characters long")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise refuse("it holds control characters")
    if "\\" in name:
        raise refuse("it holds a backslash")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise refuse("it is an absolute path")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise refuse("it is not a plain path inside the repo")
        if len(part) > MAX_NAME_COMPONENT:
            raise refuse(f"a part of it is {len(part):,} characters long")
    return name
