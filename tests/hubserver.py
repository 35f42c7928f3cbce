"""A local Hugging Face Hub for the tests: stdlib only, strict where the real Hub is strict.

One ``ThreadingHTTPServer`` on 127.0.0.1 answers under two host names, like the real Hub and its CDN:

- ``http://127.0.0.1:PORT`` is the Hub: ``/api/models`` (search), ``/api/models/{repo}``,
  ``/api/models/{repo}/revision/{rev}`` (``?blobs=true`` adds sizes and LFS sha256),
  ``/api/models/{repo}/tree/{rev}[/{path}]`` and ``HEAD|GET /{repo}/resolve/{rev}/{file}``.
  ``/resolve`` of an LFS file (``*.gguf``, ``*.bin``, ``*.safetensors``) answers ``302`` to the CDN with
  ``X-Repo-Commit``, ``X-Linked-Size``, ``X-Linked-Etag`` and ``ETag``; small git files are served directly.
- ``http://localhost:PORT`` is the CDN: ``/repos/../{sha256}`` serves the bytes and honours ``Range``.

Each host refuses the other's paths, and the client does not follow a HEAD redirect to another host,
so the real ``huggingface_hub`` client runs unmodified and exactly as it does against the Hub.

Errors carry the Hub's ``X-Error-Code`` headers (``RepoNotFound``, ``GatedRepo``, ``EntryNotFound``,
``RevisionNotFound``). A gated repo answers 401 without a token and 403 with a token that was not granted.

Faults are injected per route (``api``, ``resolve``, ``cdn``) and optionally per path substring:
:meth:`LocalHub.drop_connection`, :meth:`LocalHub.corrupt`, :meth:`LocalHub.fail`,
:meth:`LocalHub.slow`, :meth:`LocalHub.delay`, :meth:`LocalHub.ignore_range`. Every request is recorded in
:attr:`LocalHub.requests`.

Hostile mode (a mirror nobody vetted), the same way: :meth:`LocalHub.override_headers` (e.g. a traversal
``X-Linked-Etag``; :meth:`LocalHub.traversal_etag` does it with a listing that has no LFS sha256),
:meth:`LocalHub.endless` (a CDN body that never ends), :meth:`LocalHub.lie_size` (a listing and HEAD that
announce another size than the CDN serves), :meth:`LocalHub.drip` (one byte every N seconds, status line and
headers included), :meth:`LocalHub.rewrite_listing` (hostile ``rfilename`` values, wrong types, huge JSON), and
:meth:`LocalHub.add_header_file` (a file of any announced size whose first bytes are given: hostile GGUF headers).

Fixtures (registered from ``tests/conftest.py``): ``local_hub`` (session-wide server) and ``hub``
(per test: emptied, faults cleared, ``HF_ENDPOINT`` pointed at it), ``unreachable_endpoint``.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

HUB_HOST = "127.0.0.1"
CDN_HOST = "localhost"
LFS_SUFFIXES = (".gguf", ".bin", ".safetensors", ".pt", ".pth", ".onnx")
CHUNK = 1 << 20
#: Most bytes an endless body sends before the test server gives up on it (the client should stop long before).
ENDLESS_CAP = 8 << 30

_sha256_cache: dict[tuple[str, int, int], str] = {}
_sha256_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) for the whole test session."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _sha256_lock:
        if key in _sha256_cache:
            return _sha256_cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    with _sha256_lock:
        _sha256_cache[key] = h.hexdigest()
    return h.hexdigest()


@dataclass
class HubFile:
    """One file of a repo: bytes on disk (``source``) or in memory (``data``)."""

    path: str
    size: int
    sha256: str
    git_oid: str
    lfs: bool
    source: Path | None = None
    data: bytes | None = None

    @classmethod
    def make(cls, path: str, content: Path | bytes | str, *, size: int | None = None) -> HubFile:
        """A file from disk or bytes; ``size`` larger than the bytes makes a virtual file padded with zeros.

        A virtual file's sha256 is a stand-in (the hash of its head and size): it is for header reads,
        not for downloads that check the hash.
        """
        lfs = path.lower().endswith(LFS_SUFFIXES)
        if size is not None and isinstance(content, bytes) and size > len(content):
            sha = hashlib.sha256(content + str(size).encode()).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()
            git_oid = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
            return cls(path=path, size=size, sha256=sha, git_oid=git_oid, lfs=True, data=bytes(content))
        if isinstance(content, (str, Path)):
            source = Path(content)
            size = source.stat().st_size
            sha = file_sha256(source)
            data = None
        else:
            source, data, size = None, bytes(content), len(content)
            sha = hashlib.sha256(data).hexdigest()
        if lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()
            git_oid = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
        else:
            blob = data if data is not None else source.read_bytes()  # type: ignore[union-attr]
            git_oid = hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()
        return cls(path=path, size=size, sha256=sha, git_oid=git_oid, lfs=lfs, source=source, data=data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid

    def open_range(self, start: int, end: int) -> Iterator[bytes]:
        """Yield the bytes ``[start, end]`` (inclusive) in chunks."""
        if self.data is not None:
            for off in range(start, end + 1, CHUNK):
                block = self.data[off : min(off + CHUNK, end + 1)]
                want = min(CHUNK, end + 1 - off)
                yield block + bytes(want - len(block))  # a virtual file reads as zeros past its head
            return
        assert self.source is not None
        with open(self.source, "rb") as fh:
            fh.seek(start)
            left = end + 1 - start
            while left > 0:
                block = fh.read(min(CHUNK, left))
                if not block:
                    return
                left -= len(block)
                yield block


@dataclass
class HubRepo:
    """A model repo: files at one commit, ``main`` pointing at it."""

    repo_id: str
    files: dict[str, HubFile]
    commit: str
    gated: bool = False
    private: bool = False
    downloads: int = 0
    likes: int = 0
    tags: list[str] = field(default_factory=lambda: ["gguf", "text-generation", "conversational"])
    created_at: str = "2025-01-01T00:00:00.000Z"

    def info(self, *, blobs: bool) -> dict[str, Any]:
        siblings = []
        for f in self.files.values():
            entry: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                entry["size"] = f.size
                entry["blobId"] = f.git_oid
                if f.lfs:
                    entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            siblings.append(entry)
        return {
            "_id": hashlib.md5(self.repo_id.encode()).hexdigest()[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": self.repo_id.split("/")[0],
            "sha": self.commit,
            "lastModified": self.created_at,
            "createdAt": self.created_at,
            "private": self.private,
            "gated": "manual" if self.gated else False,
            "disabled": False,
            "downloads": self.downloads,
            "likes": self.likes,
            "tags": list(self.tags),
            "pipeline_tag": "text-generation",
            "library_name": "gguf" if "gguf" in self.tags else None,
            "siblings": siblings,
            "usedStorage": sum(f.size for f in self.files.values()),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "_id": hashlib.md5(self.repo_id.encode()).hexdigest()[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "likes": self.likes,
            "downloads": self.downloads,
            "trendingScore": 0,
            "private": self.private,
            "gated": "manual" if self.gated else False,
            "tags": list(self.tags),
            "pipeline_tag": "text-generation",
            "library_name": "gguf" if "gguf" in self.tags else None,
            "createdAt": self.created_at,
        }

    def tree_entry(self, f: HubFile) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        return entry


@dataclass
class Fault:
    """One injected fault. ``times=None`` means every matching request."""

    kind: str  # "drop" | "corrupt" | "status" | "slow" | "delay" | "ignore_range" | hostile: "headers" |
    #            "listing" | "endless" | "lie_size" | "drip"
    route: str  # "api" | "resolve" | "cdn" | "any"
    match: str | None = None
    times: int | None = 1
    after_bytes: int = 0
    status: int = 500
    rate: float = 0.0
    seconds: float = 0.0
    hits: int = 0
    headers: dict[str, str | None] | None = None
    transform: Callable[[dict[str, Any]], Any] | None = None
    size: int | None = None


@dataclass
class RequestRecord:
    method: str
    host: str
    path: str
    route: str
    status: int
    range: str | None
    authorization: str | None
    bytes_sent: int = 0


class LocalHub:
    """The server and its state: repos, tokens, faults and a log of requests."""

    def __init__(self, port: int = 0) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.grants: dict[str, set[str]] = {}
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.hub = self
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """What to put in ``HF_ENDPOINT`` / ``endpoint=``."""
        return f"http://{HUB_HOST}:{self.port}"

    @property
    def cdn(self) -> str:
        return f"http://{CDN_HOST}:{self.port}"

    def start(self) -> LocalHub:
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget repos, grants, faults and the request log."""
        with self._lock:
            self.repos.clear()
            self.grants.clear()
            self.faults.clear()
            self.requests.clear()

    # -- content -------------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        files: dict[str, Path | bytes | str],
        *,
        gated: bool = False,
        private: bool = False,
        downloads: int = 0,
        likes: int = 0,
        tags: list[str] | None = None,
        readme: bool = True,
    ) -> HubRepo:
        """Publish a repo. ``files`` maps repo paths to a file on disk or to bytes."""
        entries = {path: HubFile.make(path, content) for path, content in files.items()}
        if readme and "README.md" not in entries:
            entries["README.md"] = HubFile.make("README.md", f"---\nlicense: apache-2.0\n---\n# {repo_id}\n".encode())
        if ".gitattributes" not in entries:
            entries[".gitattributes"] = HubFile.make(".gitattributes", b"*.gguf filter=lfs diff=lfs merge=lfs -text\n")
        digest = hashlib.sha1(repo_id.encode())
        for f in sorted(entries.values(), key=lambda f: f.path):
            digest.update(f.path.encode() + f.git_oid.encode())
        repo = HubRepo(
            repo_id=repo_id, files=entries, commit=digest.hexdigest(), gated=gated, private=private,
            downloads=downloads, likes=likes,
        )
        if tags is not None:
            repo.tags = list(tags)
        with self._lock:
            self.repos[repo_id] = repo
        return repo

    def grant(self, token: str, repo_id: str) -> None:
        """Let ``token`` read the gated or private ``repo_id`` (as if the licence had been accepted)."""
        with self._lock:
            self.grants.setdefault(token, set()).add(repo_id)

    def resolve_url(self, repo_id: str, filename: str, revision: str = "main") -> str:
        return f"{self.endpoint}/{repo_id}/resolve/{revision}/{quote(filename)}"

    # -- faults --------------------------------------------------------------------------------
    def _add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def drop_connection(self, after_bytes: int, *, match: str | None = None, times: int | None = 1) -> Fault:
        """The CDN closes the connection after sending ``after_bytes`` of a body (Content-Length says more)."""
        return self._add_fault(Fault("drop", "cdn", match=match, times=times, after_bytes=after_bytes))

    def corrupt(self, *, match: str | None = None, times: int | None = None, at_byte: int | None = None) -> Fault:
        """The CDN flips one byte of the file (at ``at_byte``, default the middle) in what it serves."""
        return self._add_fault(Fault("corrupt", "cdn", match=match, times=times, after_bytes=-1 if at_byte is None else at_byte))

    def fail(self, status: int = 500, *, route: str = "any", match: str | None = None, times: int | None = 1) -> Fault:
        """Answer ``status`` (500, 503 …) instead of the real response."""
        return self._add_fault(Fault("status", route, match=match, times=times, status=status))

    def slow(self, bytes_per_s: float, *, match: str | None = None, times: int | None = None) -> Fault:
        """Throttle CDN bodies to ``bytes_per_s``."""
        return self._add_fault(Fault("slow", "cdn", match=match, times=times, rate=float(bytes_per_s)))

    def delay(self, seconds: float, *, route: str = "any", match: str | None = None, times: int | None = None) -> Fault:
        """Wait ``seconds`` before answering."""
        return self._add_fault(Fault("delay", route, match=match, times=times, seconds=seconds))

    def ignore_range(self, *, match: str | None = None, times: int | None = None) -> Fault:
        """The CDN answers ``200`` with the whole file even when asked for a ``Range`` (as some proxies do)."""
        return self._add_fault(Fault("ignore_range", "cdn", match=match, times=times))

    # -- hostile mode ---------------------------------------------------------------------------
    def override_headers(self, headers: dict[str, str | None], *, route: str = "resolve", match: str | None = None,
                         times: int | None = None) -> Fault:
        """Answer with these headers replaced (``None`` removes one), e.g. ``{"X-Linked-Etag": '"../../x"'}``."""
        return self._add_fault(Fault("headers", route, match=match, times=times, headers=dict(headers)))

    def rewrite_listing(self, transform: Callable[[dict[str, Any]], Any], *, match: str | None = None,
                        times: int | None = None) -> Fault:
        """``/api/models/{repo}[/revision/…]`` answers ``transform(info)`` (the info dict, already built) instead."""
        return self._add_fault(Fault("listing", "api", match=match, times=times, transform=transform))

    def traversal_etag(self, etag: str = "../../../../x", *, match: str | None = None) -> None:
        """The critical lie: HEAD's ``X-Linked-Etag`` is a path, and the listing has no LFS sha256 to contradict it."""
        self.override_headers({"X-Linked-Etag": f'"{etag}"', "ETag": f'"{etag}"'}, match=match)

        def no_lfs(info: dict[str, Any]) -> dict[str, Any]:
            for sibling in info.get("siblings", []):
                sibling.pop("lfs", None)
            return info

        self.rewrite_listing(no_lfs)

    def endless(self, *, match: str | None = None, times: int | None = None) -> Fault:
        """The CDN sends the file, then zeros forever: no Content-Length, the body ends only when the client hangs up."""
        return self._add_fault(Fault("endless", "cdn", match=match, times=times))

    def lie_size(self, size: int, *, match: str | None = None, times: int | None = None) -> Fault:
        """The listing and HEAD (``X-Linked-Size``) announce ``size``; the CDN serves the real bytes with their real length."""
        return self._add_fault(Fault("lie_size", "any", match=match, times=times, size=size))

    def drip(self, seconds_per_byte: float, *, route: str = "any", match: str | None = None,
             times: int | None = None) -> Fault:
        """Send every response one byte every ``seconds_per_byte`` (status line and headers too), as a stalling server does."""
        return self._add_fault(Fault("drip", route, match=match, times=times, seconds=seconds_per_byte))

    def add_header_file(self, repo_id: str, path: str, head: bytes, size: int) -> HubFile:
        """Publish ``path`` in ``repo_id`` (created if needed) as a file of ``size`` bytes that starts with ``head``.

        For hostile GGUF headers: the Range reads see ``head`` then zeros; nothing of ``size`` is held in memory.
        """
        f = HubFile.make(path, head, size=max(size, len(head)))
        with self._lock:
            repo = self.repos.get(repo_id)
        if repo is None:
            repo = self.add_repo(repo_id, {})
        with self._lock:
            repo.files[path] = f
        return f

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def _take_faults(self, route: str, path: str) -> list[Fault]:
        """The faults that apply to this request, counting them as used."""
        taken = []
        with self._lock:
            for f in self.faults:
                if f.route not in ("any", route):
                    continue
                if f.match is not None and f.match not in unquote(path):
                    continue
                if f.times is not None and f.hits >= f.times:
                    continue
                f.hits += 1
                taken.append(f)
        return taken

    # -- helpers for assertions ----------------------------------------------------------------
    def cdn_requests(self, match: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.route == "cdn" and r.method == "GET" and (match is None or match in r.path)]

    def bytes_served(self, match: str | None = None) -> int:
        return sum(r.bytes_sent for r in self.cdn_requests(match))

    def _blob(self, sha256: str) -> HubFile | None:
        with self._lock:
            for repo in self.repos.values():
                for f in repo.files.values():
                    if f.lfs and f.sha256 == sha256:
                        return f
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    hub: LocalHub


_API_RE = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?:/(?P<sub>.*))?)?$")
_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CDN_RE = re.compile(r"^/repos/[0-9a-f]{2}/[0-9a-f]{2}/(?P<sha>[0-9a-f]{64})$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def hub(self) -> LocalHub:
        return self.server.hub

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        self._method = method
        self._record: RequestRecord | None = None
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        url = urlsplit(self.path)
        path = url.path
        query = parse_qs(url.query)
        if host == CDN_HOST:
            route = "cdn"
        elif path.startswith("/api/"):
            route = "api"
        else:
            route = "resolve"
        self._record = RequestRecord(
            method=method, host=host, path=self.path, route=route, status=0,
            range=self.headers.get("Range"), authorization=self.headers.get("Authorization"),
        )
        with self.hub._lock:
            self.hub.requests.append(self._record)
        faults = self.hub._take_faults(route, self.path)
        drip = next((f for f in faults if f.kind == "drip"), None)
        if drip is not None:
            self.wfile = _DripWriter(self.wfile, drip.seconds)  # type: ignore[assignment]
        for f in faults:
            if f.kind == "delay":
                time.sleep(f.seconds)
        for f in faults:
            if f.kind == "status":
                return self._error(f.status, "ServerError",
                                   "Internal Error - We're working hard to fix this as soon as possible!")
        try:
            if host == CDN_HOST:
                m = _CDN_RE.match(path)
                if not m:
                    return self._error(404, None, "Not found on the CDN")
                return self._serve_cdn(m["sha"], faults)
            if host != HUB_HOST:
                return self._error(421, None, f"unknown host {host!r}")
            if path == "/api/models":
                return self._list_models(query)
            m = _API_RE.match(path)
            if m:
                return self._api_model(unquote(m["repo"]), m["kind"], unquote(m["rev"] or "main"), unquote(m["sub"] or ""), query,
                                       faults)
            m = _RESOLVE_RE.match(path)
            if m:
                return self._resolve(unquote(m["repo"]), unquote(m["rev"]), unquote(m["file"]), faults)
            return self._error(404, None, "Sorry, we can't find the page you are looking for.")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        if self._record is not None:
            self._record.status = status
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self._method != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self._send(status, {"Content-Type": "application/json; charset=utf-8", **(extra or {})}, body)

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._json({"error": message}, status, headers)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _repo_or_error(self, repo_id: str, *, for_files: bool) -> HubRepo | None:
        """The repo if this request may see it; otherwise send the Hub's error and return None."""
        repo = self.hub.repos.get(repo_id)
        token = self._token()
        allowed = token is not None and repo_id in self.hub.grants.get(token, set())
        if repo is None or (repo.private and not allowed):
            status = 404 if token else 401
            self._error(status, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and for_files and not allowed:
            if token is None:
                self._error(401, "GatedRepo",
                            f"Access to model {repo_id} is restricted. You must have access to it and be "
                            "authenticated to access it. Please log in.")
            else:
                self._error(403, "GatedRepo",
                            f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                            f"Visit https://huggingface.co/{repo_id} to ask for access.")
            return None
        return repo

    def _revision_ok(self, repo: HubRepo, rev: str) -> bool:
        if rev in ("main", repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return False

    # -- Hub API -------------------------------------------------------------------------------
    def _list_models(self, query: dict[str, list[str]]) -> None:
        search = (query.get("search") or [""])[0].lower()
        filters = query.get("filter") or []
        author = (query.get("author") or [None])[0]
        limit = int((query.get("limit") or ["1000"])[0])
        offset = int((query.get("cursor") or ["0"])[0])
        sort = (query.get("sort") or ["downloads"])[0]
        with self.hub._lock:
            repos = list(self.hub.repos.values())
        hits = [
            r for r in repos
            if not r.private
            and search in r.repo_id.lower()
            and all(f in r.tags for f in filters)
            and (author is None or r.repo_id.split("/")[0] == author)
        ]
        key = {"likes": lambda r: r.likes}.get(sort, lambda r: r.downloads)
        hits.sort(key=lambda r: (-key(r), r.repo_id))
        page_size = max(1, min(limit, 1000))
        page = hits[offset : offset + page_size]
        extra = {}
        if offset + page_size < len(hits):
            q = "&".join(
                f"{k}={quote(v)}" for k, vs in query.items() if k != "cursor" for v in vs
            )
            extra["Link"] = f'<{self.hub.endpoint}/api/models?{q}&cursor={offset + page_size}>; rel="next"'
        self._json([r.summary() for r in page], extra=extra)

    def _api_model(self, repo_id: str, kind: str | None, rev: str, sub: str, query: dict[str, list[str]],
                   faults: list[Fault] = ()) -> None:  # type: ignore[assignment]
        repo = self._repo_or_error(repo_id, for_files=False)
        if repo is None:
            return
        if not self._revision_ok(repo, rev):
            return
        if kind in (None, "revision"):
            blobs = (query.get("blobs") or ["false"])[0].lower() == "true"
            info: Any = repo.info(blobs=blobs)
            lie = next((f for f in faults if f.kind == "lie_size"), None)
            if lie is not None:
                for sibling in info["siblings"]:
                    if sibling.get("rfilename", "").endswith(LFS_SUFFIXES) and "size" in sibling:
                        sibling["size"] = lie.size
                        sibling.get("lfs", {})["size"] = lie.size
            for f in faults:
                if f.kind == "listing" and f.transform is not None:
                    info = f.transform(info)
            if isinstance(info, (bytes, str)):  # a transform may answer raw (malformed) JSON
                body = info.encode() if isinstance(info, str) else info
                return self._send(200, {"Content-Type": "application/json; charset=utf-8"}, body)
            return self._json(info)
        # tree
        recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
        prefix = sub.strip("/")
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for f in sorted(repo.files.values(), key=lambda f: f.path):
            if prefix and not f.path.startswith(prefix + "/"):
                continue
            rest = f.path[len(prefix) + 1 :] if prefix else f.path
            if "/" in rest and not recursive:
                folder = (prefix + "/" if prefix else "") + rest.split("/")[0]
                if folder not in folders:
                    folders.add(folder)
                    oid = hashlib.sha1(folder.encode()).hexdigest()
                    entries.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
                continue
            entries.append(repo.tree_entry(f))
        if prefix and not entries:
            return self._error(404, "EntryNotFound", f"{prefix} does not exist on \"{rev}\"", {"X-Repo-Commit": repo.commit})
        self._json(entries)

    def _resolve(self, repo_id: str, rev: str, filename: str, faults: list[Fault] = ()) -> None:  # type: ignore[assignment]
        repo = self._repo_or_error(repo_id, for_files=True)
        if repo is None:
            return
        if not self._revision_ok(repo, rev):
            return
        f = repo.files.get(filename)
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": repo.commit})
        common = {"X-Repo-Commit": repo.commit, "ETag": f'"{f.etag}"', "Accept-Ranges": "bytes"}
        if f.lfs:
            location = (
                f"{self.hub.cdn}/repos/{f.sha256[:2]}/{f.sha256[2:4]}/{f.sha256}"
                f"?response-content-disposition={quote(f'inline; filename={chr(34)}{Path(f.path).name}{chr(34)};')}"
                f"&Expires=4102444800&Signature=local"
            )
            headers = {
                **common, "Location": location, "X-Linked-Size": str(f.size), "X-Linked-Etag": f'"{f.sha256}"',
                "Content-Type": "text/plain; charset=utf-8",
            }
            lie = next((x for x in faults if x.kind == "lie_size"), None)
            if lie is not None:
                headers["X-Linked-Size"] = str(lie.size)
            for x in faults:
                if x.kind == "headers" and x.headers:
                    for k, v in x.headers.items():
                        headers.pop(k, None)
                        if v is not None:
                            headers[k] = v
            return self._send(302, headers, b"Found. Redirecting to " + location.encode())
        body = f.data if f.data is not None else f.source.read_bytes()  # type: ignore[union-attr]
        self._send(200, {**common, "Content-Type": "application/octet-stream"}, body)

    # -- CDN -----------------------------------------------------------------------------------
    def _serve_cdn(self, sha256: str, faults: list[Fault]) -> None:
        f = self.hub._blob(sha256)
        if f is None:
            return self._error(404, None, "NoSuchKey")
        start, end, status = 0, f.size - 1, 200
        rng = self.headers.get("Range")
        if any(x.kind == "ignore_range" for x in faults):
            rng = None
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m[1] and not m[2]):
                return self._send(416, {"Content-Range": f"bytes */{f.size}"})
            if m[1]:
                start = int(m[1])
                end = min(int(m[2]), f.size - 1) if m[2] else f.size - 1
            else:
                start = max(f.size - int(m[2]), 0)
            if start >= f.size or start > end:
                return self._send(416, {"Content-Range": f"bytes */{f.size}"})
            status = 206
        length = end - start + 1
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
            "Accept-Ranges": "bytes",
            "ETag": f'"{f.sha256}"',
            "Content-Disposition": f'inline; filename="{Path(f.path).name}";',
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        endless = any(x.kind == "endless" for x in faults)
        if endless:  # a body delimited by closing the connection, which never comes
            del headers["Content-Length"]
            headers["Connection"] = "close"
            self.close_connection = True
        if self._record is not None:
            self._record.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self._method == "HEAD":
            return
        drop = next((x for x in faults if x.kind == "drop"), None)
        corrupt = next((x for x in faults if x.kind == "corrupt"), None)
        slow = next((x for x in faults if x.kind == "slow"), None)
        flip_at = None
        if corrupt is not None:
            flip_at = corrupt.after_bytes if corrupt.after_bytes >= 0 else f.size // 2
        sent, pos = 0, start
        began = time.monotonic()
        for block in f.open_range(start, end):
            # Small writes when throttled, so the rate is smooth and a kill lands mid-body.
            step = len(block) if slow is None else max(1024, int(slow.rate / 20))
            for off in range(0, len(block), step):
                piece = block[off : off + step]
                if flip_at is not None and pos <= flip_at < pos + len(piece):
                    b = bytearray(piece)
                    b[flip_at - pos] ^= 0xFF
                    piece = bytes(b)
                if drop is not None and sent + len(piece) >= drop.after_bytes:
                    piece = piece[: max(0, drop.after_bytes - sent)]
                    self.wfile.write(piece)
                    sent += len(piece)
                    self._abort(sent)
                    return
                self.wfile.write(piece)
                sent += len(piece)
                pos += len(piece)
                if self._record is not None:
                    self._record.bytes_sent = sent
                if slow is not None:
                    ahead = sent / slow.rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)

        if endless:
            zeros = bytes(64 << 10)
            while sent < ENDLESS_CAP:  # a cap only so that a broken client cannot keep a test server busy forever
                self.wfile.write(zeros)
                sent += len(zeros)
                if self._record is not None:
                    self._record.bytes_sent = sent

    def _abort(self, sent: int) -> None:
        if self._record is not None:
            self._record.bytes_sent = sent
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _DripWriter:
    """A response stream that sends one byte every ``interval`` seconds (a server that stalls, but never quite)."""

    def __init__(self, inner: Any, interval: float) -> None:
        self._inner = inner
        self._interval = interval

    def write(self, data: bytes) -> int:
        for i in range(len(data)):
            self._inner.write(data[i : i + 1])
            self._inner.flush()
            time.sleep(self._interval)
        return len(data)

    def flush(self) -> None:
        self._inner.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# -- pytest fixtures ------------------------------------------------------------------------------

SMOLLM2_REPO = "fitchat-test/SmolLM2-135M-Instruct-GGUF"
GEMMA3_REPO = "fitchat-test/gemma-3-270m-it-GGUF"
GATED_REPO = "fitchat-test/Gated-Model-GGUF"


def smollm2_files(variants: dict[str, Path]) -> dict[str, Path | bytes | str]:
    """Repo files for the SmolLM2 variants, named like the Hub's GGUF repos do."""
    return {f"SmolLM2-135M-Instruct-{q}.gguf": p for q, p in variants.items()}


@pytest.fixture(scope="session")
def local_hub() -> Iterator[LocalHub]:
    """One local Hub for the whole session (empty; use the ``hub`` fixture in tests)."""
    with LocalHub() as server:
        yield server


@pytest.fixture
def hub(local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """The local Hub, emptied for this test, with ``HF_ENDPOINT`` pointing at it."""
    local_hub.reset()
    monkeypatch.setenv("HF_ENDPOINT", local_hub.endpoint)
    yield local_hub
    local_hub.reset()


@pytest.fixture
def unreachable_endpoint() -> Iterator[str]:
    """An http endpoint on a local port nothing listens on (connection refused at once).

    The port stays bound, but not listening, for the whole test, so nothing else can take it meanwhile.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        yield f"http://127.0.0.1:{port}"



def _serve_main(argv: list[str] | None = None) -> int:
    """``python -m tests.hubserver --repo org/name FILE...``: serve files until interrupted (for manual runs and benches)."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve GGUF files as a local Hub (127.0.0.1) with its CDN (localhost).")
    parser.add_argument("--repo", required=True, help="repo id to publish the files under")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    hub = LocalHub(port=args.port)
    hub.add_repo(args.repo, {f.name: f for f in args.files})
    hub.start()
    print(hub.endpoint, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(_serve_main())
