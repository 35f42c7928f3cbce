"""Named exceptions. Each message tells the user what to do next."""

from __future__ import annotations


class FitchatError(Exception):
    """Base class: anything fitchat reports to the user as one line, without a traceback."""

    exit_code: int = 1


class InvalidModelFile(FitchatError):
    """A file is not a usable GGUF model (wrong magic, truncated, absurd counts …)."""


class ModelNotFound(FitchatError):
    """A model reference (path, ``repo:QUANT``, ``starter``) names nothing fitchat can find."""


class HubError(FitchatError):
    """The Hub (or the mirror in HF_ENDPOINT) refused or could not be reached."""


class GatedRepo(HubError):
    """The repo needs an accepted licence and a token."""


class NotEnoughDisk(FitchatError):
    """Not enough free space for a download."""


class ChecksumMismatch(FitchatError):
    """A downloaded file's sha256 differs from the Hub's."""


class Cancelled(FitchatError):
    """The user cancelled a long operation."""

    exit_code = 130


class LoadFailed(FitchatError):
    """llama.cpp could not load a model, even after the fallback ladder."""


class UnsafePath(FitchatError):
    """A path built from outside input (a Hub file name, an etag, a link) would land outside fitchat's folders."""


class HubTimeout(HubError):
    """The Hub (or a mirror, or its CDN) took longer than the deadline fitchat gives each request."""


class OversizedResponse(HubError):
    """A server sent more bytes than it announced (a download) or than any real answer needs (a listing)."""


class RegistryError(FitchatError):
    """The imported-model registry file is not in fitchat's format."""


class HistoryError(FitchatError):
    """The chat history database cannot be read or written (full disk, read-only, locked, damaged, newer
    schema, unknown conversation); the message says which and what to do."""


#: Longest first line of an error fitchat shows: enough for any message of its own, not enough to flood.
FIRST_LINE_CHARS = 500


def first_line(exc: BaseException, limit: int = FIRST_LINE_CHARS, *, typed: bool = False) -> str:
    """The first line of ``exc``'s message, printable and at most ``limit`` characters; its type's name if it has none.

    The one way an exception becomes part of a one-line message (a Hub error, a doctor check, a notification, an
    unreadable GGUF): a message from a library or a server may run over many lines or carry escape sequences.
    ``typed`` puts the type's name first (``ConnectError: …``), for exceptions whose message alone says little.
    """
    from fitchat.format import printable

    name = type(exc).__name__
    try:
        text = str(exc).strip()[: limit * 4 + 64]  # a huge message is cut before it is split
    except Exception:  # noqa: BLE001 - a message that cannot be made is no message
        text = ""
    lines = text.splitlines()
    line = printable(lines[0], limit, one_line=True).strip() if lines else ""
    if not line:
        return name
    return printable(f"{name}: {line}", limit, one_line=True) if typed else line
