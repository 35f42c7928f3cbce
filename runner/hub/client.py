"""The Hub client: endpoint, token, offline mode, deadlines, errors and reachability, read in one place.

Everything that talks to the Hub goes through huggingface_hub, with the endpoint, token and offline flag
read from the environment at call time (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``), so a mirror or
offline mode set after start-up is honoured. Hub failures become one-line :class:`~fitchat.errors.HubError`\\ s,
and every request runs under a deadline.
"""

from __future__ import annotations

import contextvars
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitchat.errors import FitchatError, GatedRepo, HubError, HubTimeout, ModelNotFound, OversizedResponse, first_line
from fitchat.format import printable, quoted

DEFAULT_ENDPOINT = "https://huggingface.co"


class NotOnHub(HubError, ModelNotFound):
    """The repo, revision or file does not exist on the Hub (or is private)."""


class HubUnreachable(HubError):
    """The Hub cannot be reached: no network, HF_HUB_OFFLINE, or a dead mirror."""


class HubDeadline(HubTimeout, HubUnreachable):
    """A Hub request ran past its deadline (a slow or stalled server); treated like an unreachable Hub."""



# -- environment ------------------------------------------------------------------------------------

def hub_endpoint(endpoint: str | None = None) -> str:
    """The Hub endpoint: ``endpoint``, else ``HF_ENDPOINT``, else huggingface.co.

    Raises :class:`HubError` when the value is not an http(s) URL with a host, before huggingface_hub
    (which reads ``HF_ENDPOINT`` when imported, and chokes on some bad values) is touched.
    """
    from urllib.parse import urlsplit

    given = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    text = given.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.netloc) and bool(parts.hostname)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        name = "HF_ENDPOINT" if not endpoint else "the endpoint"
        raise HubError(f"{name}={quoted(display_endpoint(given))} is not an http(s) URL; unset it or set it to your mirror, "
                       "e.g. https://hf-mirror.example")
    return text


@dataclass(frozen=True)
class HubToken:
    """The token fitchat sends to the Hub, and where it came from (the source may be shown; the value never is)."""

    value: str
    source: str  # "the token given", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN" or the token file's path

    def __repr__(self) -> str:
        return f"HubToken(source={self.source!r})"


def token_file(env: Mapping[str, str] | None = None) -> Path:
    """The file ``hf auth login`` writes the token to: ``HF_TOKEN_PATH``, else ``$HF_HOME/token``.

    Resolved as huggingface_hub resolves it (``HF_HOME`` defaults to ``$XDG_CACHE_HOME/huggingface``, then
    ``~/.cache/huggingface``), but from ``env`` at call time: the library fixes the path when imported.
    """
    env = os.environ if env is None else env

    def expand(value: str) -> Path:
        return Path(os.path.expanduser(os.path.expandvars(value)))

    if env.get("HF_TOKEN_PATH"):
        return expand(env["HF_TOKEN_PATH"])
    if env.get("HF_HOME"):
        return expand(env["HF_HOME"]) / "token"
    xdg = env.get("XDG_CACHE_HOME")
    return (expand(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "token"


def find_token(token: str | None = None, env: Mapping[str, str] | None = None) -> HubToken | None:
    """The Hub token, by huggingface_hub's ``get_token`` rule: ``token`` if given, else ``HF_TOKEN`` (or the older
    ``HUGGING_FACE_HUB_TOKEN``), else the token file of ``hf auth login`` (:func:`token_file`); None without one.

    The one place fitchat finds the token, so what ``doctor`` reports is what searches, recommendations, header
    reads and downloads send, and a user logged in with ``hf auth login`` (what the README says to run) is
    offered gated models. ``env`` defaults to the process environment, read at call time.
    """
    if token and token.strip():
        return HubToken(token.strip(), "the token given")
    env = os.environ if env is None else env
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = (env.get(var) or "").strip()
        if value:
            return HubToken(value, var)
    path = token_file(env)
    try:
        if not path.is_file():  # a folder or a FIFO there is no login (and opening a FIFO would wait)
            return None
        with open(path, "rb") as fh:
            raw = fh.read(64 << 10).decode("utf-8", errors="replace")  # a token is ~40 bytes
    except OSError:
        return None
    value = raw.replace("\r", "").replace("\n", "").strip()  # as huggingface_hub cleans it
    return HubToken(value, str(path)) if value else None


#: What a token can hold: visible ASCII (anything else cannot be sent in an HTTP header).
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")


def hub_token(token: str | None = None) -> str | None:
    """The token to send (:func:`find_token`): ``token``, else ``HF_TOKEN``, else the ``hf auth login`` file.

    Raises :class:`HubError` for a value no token has (a damaged token file), which the HTTP client would
    otherwise refuse with an encoding error that reads like a broken server.
    """
    found = find_token(token)
    if found is None:
        return None
    if not _TOKEN_RE.fullmatch(found.value):
        from_file = found.source not in ("the token given", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
        where = quoted(found.source, 200) if from_file else found.source
        raise HubError(f"the Hub token from {where} has characters no token has; run 'hf auth login' again, or set "
                       "HF_TOKEN to a read token from https://huggingface.co/settings/tokens")
    return found.value


def offline_var(env: Mapping[str, str] | None = None) -> str | None:
    """The variable that turns offline mode on (``HF_HUB_OFFLINE`` first, then ``TRANSFORMERS_OFFLINE``), or None.

    ``env`` defaults to the process environment.
    """
    env = os.environ if env is None else env
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if (env.get(var) or "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def is_offline(env: Mapping[str, str] | None = None) -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    return offline_var(env) is not None


def require_online(endpoint: str | None = None) -> None:
    """Raise :class:`HubUnreachable` when offline mode is on."""
    if is_offline():
        raise HubUnreachable(
            f"the Hub ({hub_endpoint(endpoint)}) is not contacted because HF_HUB_OFFLINE is set; "
            "unset it to search or download ('fitchat ls' shows what is already here)"
        )


def display_endpoint(url: str) -> str:
    """``url`` as fitchat shows it: without user-info (``http://user:password@host`` -> ``http://host``).

    The one way an endpoint or a Hub URL reaches a message, ``doctor`` or JSON; query strings (signed CDN
    URLs) are dropped too, and control characters removed.
    """
    from urllib.parse import urlsplit, urlunsplit

    from fitchat.format import printable

    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = parts.port
    except ValueError:
        return printable(url.rpartition("@")[2], 200, one_line=True)
    netloc = host + (f":{port}" if port is not None else "")
    return printable(urlunsplit((parts.scheme, netloc, parts.path, "", "")), 200, one_line=True)


def display_host(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, without user-info (for messages that name a server)."""
    from urllib.parse import urlsplit

    shown = display_endpoint(url)
    try:
        parts = urlsplit(shown)
        return f"{parts.scheme}://{parts.netloc}" if parts.netloc else shown
    except ValueError:
        return shown


@contextmanager
def hub_errors(repo: str, filename: str | None = None, endpoint: str | None = None, *,
               stall: bool = False, url: str | None = None) -> Iterator[None]:
    """Translate huggingface_hub / network exceptions into one-line fitchat errors, under a deadline.

    Every Hub call runs inside this block, so every one gets :func:`hub_deadline`: an overall deadline
    (API calls, metadata), or with ``stall=True`` a stall deadline (streamed downloads). ``url`` names the
    server the deadline message blames (default: the endpoint).
    """
    where = hub_endpoint(endpoint)  # a bad HF_ENDPOINT is reported before huggingface_hub is imported
    shown = display_endpoint(where)
    from huggingface_hub import errors as hf

    http = _http_module()
    what = f"{filename} in {repo}" if filename else repo
    try:
        with hub_deadline(url or where, what, stall=stall):
            yield
    except hf.GatedRepoError as exc:
        raise GatedRepo(
            f"{repo} is gated: accept its licence at {shown}/{repo} (logged in), then set HF_TOKEN to a token "
            "of that account or run 'hf auth login'"
            + (" (the token in use has not been granted access)" if _status(exc) == 403 else "")
        ) from None
    except hf.RevisionNotFoundError:
        raise NotOnHub(f"revision not found for {repo} on {shown}") from None
    except (hf.RemoteEntryNotFoundError, hf.EntryNotFoundError):
        raise NotOnHub(f"{what} not found on {shown} ('fitchat pull {repo}' lists its variants)") from None
    except hf.RepositoryNotFoundError:
        raise NotOnHub(
            f"{repo} not found on {shown}: check the name (org/name); if it is private, set HF_TOKEN"
        ) from None
    except (hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError) as exc:
        raise HubUnreachable(f"cannot reach the Hub at {shown} for {what} ({first_line(exc, 200)}); "
                             "check your network or HF_ENDPOINT, or run 'fitchat pull starter' for the offline model") from None
    except (http.ConnectError, http.TimeoutException, http.NetworkError, http.RemoteProtocolError,
            http.ProxyError) as exc:
        raise HubUnreachable(
            f"cannot reach the Hub at {shown} ({first_line(exc, 200, typed=True)}); check your network "
            "or HF_ENDPOINT, or run 'fitchat pull starter' for the offline model"
        ) from None
    except hf.HfHubHTTPError as exc:
        status = _status(exc)
        if status in (401, 403):
            raise GatedRepo(f"the Hub refused access to {what} ({status}); set HF_TOKEN or run 'hf auth login'") from None
        raise HubError(f"the Hub at {shown} answered {status or 'an error'} for {what}; try again later") from None
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, FitchatError):
            raise
        # huggingface_hub parsing an answer that is not the Hub's (a listing of the wrong shape …)
        raise HubError(f"{shown} sent an answer for {what} that is not the Hub's ({type(exc).__name__}); "
                       "is HF_ENDPOINT a Hub mirror?") from None


# -- deadlines ---------------------------------------------------------------------------------------
# One mechanism for every Hub request: the deadline lives in a context variable set by
# :func:`hub_deadline` (entered by :func:`hub_errors` and by the GGUF Range reads), and is enforced where
# every byte passes: huggingface_hub's shared HTTP client gets a network backend whose connect, read and
# write calls never wait past it. A per-read timeout alone does not bound a server that sends one byte
# every 2 s; this does, including while response headers trickle in.

#: Seconds a Hub request may take overall, and the stall window of a streamed download (overridable
#: with ``FITCHAT_HUB_DEADLINE``, read by :func:`deadline_seconds` only).
DEFAULT_DEADLINE_S = 60.0
#: A streamed body must bring at least this much per stall window to count as progress.
STALL_PROGRESS_BYTES = 64 << 10
#: Most bytes one API answer (a listing, metadata) may bring; the largest real listings are a few MiB.
MAX_API_RESPONSE_BYTES = 64 << 20

_DEADLINE: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar("fitchat_hub_deadline", default=None)


def deadline_seconds() -> float:
    """The deadline of one Hub request (and a download's stall window): ``FITCHAT_HUB_DEADLINE`` or 60 s."""
    try:
        value = float(os.environ.get("FITCHAT_HUB_DEADLINE", "") or DEFAULT_DEADLINE_S)
    except ValueError:
        value = DEFAULT_DEADLINE_S
    return value if 0 < value < 1e6 else DEFAULT_DEADLINE_S


class _Deadline:
    """When the current Hub request must be done by, which server it waits on, and what it is for.

    Overall mode (API calls, metadata, Range reads): ``at`` never moves, and the bytes received are capped
    at ``max_bytes``. Stall mode (a multi-GB download, where an overall cap would be wrong): ``at`` moves
    forward each time :data:`STALL_PROGRESS_BYTES` more arrive, so a steady slow link goes on while a server
    that trickles bytes or goes silent is stopped one window later.
    """

    def __init__(self, host: str, what: str, seconds: float, *, stall: bool, max_bytes: int | None) -> None:
        self.host = host
        self.what = what
        self.seconds = seconds
        self.stall = stall
        self.max_bytes = max_bytes
        self.at = time.monotonic() + seconds
        self.received = 0
        self._since_progress = 0

    def left(self) -> float:
        """Seconds left; raises :class:`HubDeadline` when none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def clamp(self, timeout: float | None) -> float:
        left = self.left()
        return left if timeout is None else min(timeout, left)

    def got(self, n: int) -> None:
        self.received += n
        if self.max_bytes is not None and self.received > self.max_bytes:
            raise OversizedResponse(f"{self.host} sent more than {self.max_bytes >> 20} MiB for {self.what}; "
                                    "no real Hub answer is that large: is HF_ENDPOINT a Hub mirror?")
        if self.stall:
            self._since_progress += n
            if self._since_progress >= STALL_PROGRESS_BYTES:
                self._since_progress = 0
                self.at = time.monotonic() + self.seconds

    def expired(self) -> HubDeadline:
        if self.stall:
            return HubDeadline(f"{self.host} stalled: less than {STALL_PROGRESS_BYTES >> 10} KiB of {self.what} "
                               f"came in {self.seconds:g} s; check your network or HF_ENDPOINT, then run it again")
        return HubDeadline(f"{self.host} did not answer in time ({self.seconds:g} s) for {self.what}; "
                           "check your network or HF_ENDPOINT, or try again later")


@contextmanager
def hub_deadline(url: str, what: str, *, stall: bool = False, seconds: float | None = None,
                 max_bytes: int | None = None) -> Iterator[None]:
    """Run the Hub requests of this block under one deadline (see :class:`_Deadline`); nested blocks never extend it.

    ``url`` names the server in the message (shown without user-info). An overall block caps the bytes
    received at :data:`MAX_API_RESPONSE_BYTES` unless ``max_bytes`` says otherwise; a stall block is capped
    only by ``max_bytes`` (a download's writer bounds its body by the announced size). A stall block with a
    cap is bounded overall too: at worst one window per :data:`STALL_PROGRESS_BYTES` of the cap.
    """
    _watch_hub_client()
    outer = _DEADLINE.get()
    budget = deadline_seconds() if seconds is None else seconds
    cap = max_bytes if stall or max_bytes is not None else MAX_API_RESPONSE_BYTES
    deadline = _Deadline(display_host(url), printable(what, 120, one_line=True), budget, stall=stall, max_bytes=cap)
    if outer is not None and not outer.stall and outer.at < deadline.at:
        deadline.at = outer.at  # an inner block never outlives the outer one
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _watch_hub_client() -> None:
    """Put the deadline backend under every connection pool of huggingface_hub's shared client (idempotent).

    Wrapping the client the library built (rather than building another) keeps its hooks, proxies and
    any ``set_client_factory`` of the user's; a client recreated later (``close_session``, fork) is
    wrapped on the next call.
    """
    from huggingface_hub.utils import get_session

    client = get_session()
    transports = [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is not None and not isinstance(backend, _DeadlineBackend):
            pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]


class _DeadlineBackend:
    """An httpcore network backend that bounds connects, reads and writes by the current deadline."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kwargs: Any) -> Any:
        deadline = _DEADLINE.get()
        if deadline is not None:
            timeout = deadline.clamp(timeout)
        return _DeadlineStream(_timed(lambda: self._inner.connect_tcp(host, port, timeout, **kwargs)))

    def connect_unix_socket(self, path: str, timeout: float | None = None, **kwargs: Any) -> Any:
        deadline = _DEADLINE.get()
        if deadline is not None:
            timeout = deadline.clamp(timeout)
        return _DeadlineStream(_timed(lambda: self._inner.connect_unix_socket(path, timeout, **kwargs)))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _timed(call: Any) -> Any:
    """Run one socket operation; a timeout that the deadline caused becomes :class:`HubDeadline`."""
    try:
        return call()
    except Exception as exc:
        deadline = _DEADLINE.get()
        if deadline is not None and "Timeout" in type(exc).__name__ and time.monotonic() >= deadline.at - 0.01:
            raise deadline.expired() from None
        raise


class _DeadlineStream:
    """An httpcore network stream whose every read and write waits at most until the current deadline."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        deadline = _DEADLINE.get()
        if deadline is None:
            return self._inner.read(max_bytes, timeout)
        data = _timed(lambda: self._inner.read(max_bytes, deadline.clamp(timeout)))
        deadline.got(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        deadline = _DEADLINE.get()
        if deadline is None:
            return self._inner.write(buffer, timeout)
        return _timed(lambda: self._inner.write(buffer, deadline.clamp(timeout)))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        deadline = _DEADLINE.get()
        if deadline is not None:
            timeout = deadline.clamp(timeout)
        return _DeadlineStream(_timed(lambda: self._inner.start_tls(ssl_context, server_hostname, timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _http_module() -> Any:
    """The HTTP client huggingface_hub uses (httpx2 in 2.x; httpx in earlier releases)."""
    try:
        import httpx2

        return httpx2
    except ImportError:
        import httpx

        return httpx


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def quiet_hub() -> None:
    """Stop huggingface_hub's own background request (its agent registry, fetched for the User-Agent).

    fitchat only contacts the Hub for what the user asked; an explicit ``HF_HUB_DISABLE_TELEMETRY`` wins.
    """
    from huggingface_hub import constants

    if not os.environ.get("HF_HUB_DISABLE_TELEMETRY", "").strip():
        constants.HF_HUB_DISABLE_TELEMETRY = True


def hub_api(endpoint: str | None, token: str | None) -> Any:
    where = hub_endpoint(endpoint)
    from huggingface_hub import HfApi

    quiet_hub()
    return HfApi(endpoint=where, token=hub_token(token))


#: Seconds the reachability check waits for the Hub's answer.
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HubAnswer:
    """What one reachability check found: the HTTP status, or the failure, and how long it took."""

    status: int | None  # None: no answer (refused, DNS, TLS, timeout …)
    failure: BaseException | None
    seconds: float

    @property
    def reachable(self) -> bool:
        """The Hub answered the model API without an error status (a 404 is a server, but not a Hub)."""
        return self.status is not None and self.status < 400

    @property
    def error(self) -> str | None:
        """The failure in one line (``ConnectError: …``), or None."""
        return None if self.failure is None else first_line(self.failure, 200, typed=True)


def probe_hub(endpoint: str | None = None, *, timeout: float = PROBE_TIMEOUT_S) -> HubAnswer:
    """Ask the Hub (or ``HF_ENDPOINT``) for one model, once, without retries: the one reachability check.

    ``doctor``, the TUI's online/offline state (:func:`hub_reachable`) and the fast check before a search all
    use it. Network failures are returned, not raised; a bad ``HF_ENDPOINT`` raises :class:`HubError`. Offline
    mode is the caller's to check first.
    """
    where = hub_endpoint(endpoint)
    from huggingface_hub.utils import get_session

    start = time.monotonic()
    try:
        # A second past the request's own timeout, so a silent server shows as that timeout; a trickling one is cut too.
        with hub_deadline(where, "a reachability check", seconds=timeout + 1):
            response = get_session().get(f"{where}/api/models?limit=1", timeout=timeout)
            status = response.status_code
            response.close()
    except Exception as exc:  # connection refused, DNS, timeout, TLS, the deadline …
        return HubAnswer(None, exc, time.monotonic() - start)
    return HubAnswer(status, None, time.monotonic() - start)


def hub_reachable(*, endpoint: str | None = None, token: str | None = None, timeout: float = 3.0) -> bool:
    """Whether the Hub (or ``HF_ENDPOINT``) answers :func:`probe_hub` within ``timeout``; False when offline.

    ``token`` is accepted for symmetry with the other Hub calls; the check itself needs none.
    """
    if is_offline():
        return False
    try:
        return probe_hub(endpoint, timeout=timeout).reachable
    except HubError:
        return False
