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
