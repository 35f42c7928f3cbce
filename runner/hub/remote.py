"""GGUF headers on the Hub, read with HTTP Range requests (no download), and the plans made from them.

The header reader itself (how many bytes to ask for, one parse) is fitchat.model.gguf_spec's
``read_spec_by_ranges``; this module supplies the bytes: the Hub's metadata request, the CDN location,
the token kept on the Hub's own origin, and every request under the Hub deadline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from urllib.parse import urljoin, urlparse

from fitchat.errors import FitchatError, GatedRepo, HubError, InvalidModelFile, ModelNotFound, first_line
from fitchat.format import printable
from fitchat.hub.catalog import Variant, list_variants, pick_variant
from fitchat.hub.client import hub_deadline, hub_endpoint, hub_errors, hub_token, require_online
from fitchat.model.estimate import DEFAULT_CTX, DEFAULT_SETTINGS, LoadSettings
from fitchat.model.gguf_spec import ModelSpec, RangeReader, read_spec_by_ranges, split_set_names
from fitchat.model.hardware import HardwareInfo
from fitchat.model.plan import Plan, plan_variants

#: Remote headers read at once by :func:`fit_remote_repo`.
REMOTE_HEADER_WORKERS = 4


def read_remote_spec(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> ModelSpec:
    """Read a GGUF header on the Hub with HTTP Range requests sized by the header scan; parse it once.

    Only the header is fetched (no tensor data); a split set's parts are all read.
    ``ModelSpec.bytes_read`` says how many bytes came over the network.
    """
    endpoint = hub_endpoint(endpoint)
    token = hub_token(token) if token is None or isinstance(token, str) else token
    require_online(endpoint)
    return _read_remote(repo_id, filename, revision=revision, endpoint=endpoint, token=token, keep=None)


@dataclass(frozen=True)
class HeaderPart:
    """The first bytes of one file of a variant on the Hub, as read for its header, and the file's full size."""

    name: str
    size_bytes: int
    head: bytes


@dataclass(frozen=True)
class RemoteHeader:
    """A variant's spec with the header bytes it was read from (one part per file of a split set).

    Enough for llama.cpp's dry run on a sparse file of the full size (fitchat.model.measure.measure_header):
    nothing is read twice.
    """

    spec: ModelSpec
    parts: tuple[HeaderPart, ...]


def read_remote_header(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    listed_sizes: tuple[int, ...] = (),
) -> RemoteHeader:
    """:func:`read_remote_spec`, keeping the bytes fetched. ``listed_sizes`` (the listing's size per part)
    must match what the Hub announces for each file, or the read fails with one line."""
    endpoint = hub_endpoint(endpoint)
    token = hub_token(token) if token is None or isinstance(token, str) else token
    require_online(endpoint)
    keep: list[tuple[str, int, bytearray]] = []
    spec = _read_remote(repo_id, filename, revision=revision, endpoint=endpoint, token=token, keep=keep)
    parts = tuple(HeaderPart(name, size, bytes(head)) for name, size, head in keep)
    if listed_sizes and tuple(p.size_bytes for p in parts) != tuple(listed_sizes):
        label = printable(f"{repo_id}/{filename}", 200, one_line=True)
        raise HubError(f"the Hub announced sizes for {label} that differ from its file listing; try again later")
    return RemoteHeader(spec, parts)


def _read_remote(repo_id: str, filename: str, *, revision: str | None, endpoint: str | None,
                 token: str | bool | None, keep: list[tuple[str, int, bytearray]] | None) -> ModelSpec:
    """The Range reads of :func:`read_remote_spec`; with ``keep``, each part's bytes (read from 0 on, in order)
    are appended there as (name, size, bytes)."""
    from huggingface_hub import hf_hub_url

    names = split_set_names(filename)

    def open_part(_index: int, name: str) -> tuple[int, RangeReader]:
        size, reader = _open_remote(hf_hub_url(repo_id, name, revision=revision, endpoint=endpoint), repo_id, name,
                                    endpoint=endpoint, token=token)
        if keep is None:
            return size, reader
        head = bytearray()
        keep.append((name, size, head))

        def keeping(start: int, end: int) -> bytes:
            data = reader(start, end)
            if start == len(head):  # the header scan reads forward from 0; keep the contiguous prefix
                head.extend(data)
            return data

        return size, keeping

    first_url = hf_hub_url(repo_id, names[0], revision=revision, endpoint=endpoint)
    return read_spec_by_ranges(first_url, names, open_part, printable(f"{repo_id}/{names[0]}", 200, one_line=True))


def _open_remote(url: str, repo_id: str, filename: str, *, endpoint: str | None,
                 token: str | bool | None) -> tuple[int, RangeReader]:
    """One file on the Hub: its size, and a reader of its bytes at the location the Hub redirects to."""
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.utils import build_hf_headers

    with hub_errors(repo_id, filename, endpoint):
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    label = printable(f"{repo_id}/{filename}", 200, one_line=True)
    if not meta.size:
        raise HubError(f"the Hub did not report a size for {label}; try again later")
    location = urljoin(url, meta.location) if meta.location else url  # mirrors may answer a relative Location
    headers = build_hf_headers(token=token)
    headers["Accept-Encoding"] = "identity"
    if not _same_origin(url, location):
        # A signed CDN URL: the token must not leave the Hub (huggingface_hub does the same).
        headers.pop("authorization", None)
        headers.pop("Authorization", None)
    return int(meta.size), lambda start, end: _range_get(location, headers, start, end, label)


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlparse(a), urlparse(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def _range_get(url: str, headers: dict[str, str], start: int, end: int, label: str) -> bytes:
    """Bytes ``start..end`` (inclusive). Stops reading at the requested length even if the server ignores Range.

    Runs under the Hub deadline (:func:`fitchat.hub.client.hub_deadline`) in stall mode with the bytes capped
    near the range: a header of several MiB over a slow link goes on while bytes come, a server that
    trickles or goes silent is cut off one window later with a one-line error naming it, and the whole
    read stays bounded because the range is.
    """
    from huggingface_hub.utils import get_session

    want = end - start + 1
    h = dict(headers)
    h["Range"] = f"bytes={start}-{end}"
    session = get_session()
    chunks: list[bytes] = []
    got = 0
    try:
        with hub_deadline(url, f"the header of {label}", stall=True, max_bytes=want + start + (1 << 20)):
            with session.stream("GET", url, headers=h, follow_redirects=True, timeout=30) as resp:
                _check_status(resp.status_code, label)
                skip = 0 if resp.status_code == 206 else start
                for chunk in resp.iter_bytes():
                    if skip:
                        drop = min(skip, len(chunk))
                        chunk, skip = chunk[drop:], skip - drop
                    chunks.append(chunk)
                    got += len(chunk)
                    if got >= want:
                        break
    except FitchatError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise HubError(
            f"could not read the header of {label}: {first_line(exc, 120)}; check your connection or HF_ENDPOINT"
        ) from None
    data = b"".join(chunks)[:want]
    if len(data) < want:
        raise HubError(f"the server sent {len(data):,} of {want:,} header bytes of {label}; try again")
    return data


def _check_status(status: int, label: str) -> None:
    if status in (200, 206):
        return
    if status in (401, 403):
        raise GatedRepo(f"{label} needs access: accept its licence on the Hub and set HF_TOKEN (HTTP {status})")
    if status == 404:
        raise ModelNotFound(f"{label} was not found on the Hub (HTTP 404)")
    if status == 416:
        raise InvalidModelFile(f"{label}: the server refused the byte range (HTTP 416); the file may be empty")
    raise HubError(f"the Hub answered HTTP {status} for {label}; try again later")


def fit_remote_repo(
    repo_id: str,
    hw: HardwareInfo,
    ctx: int = DEFAULT_CTX,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    settings: LoadSettings = DEFAULT_SETTINGS,
    margin_bytes: int | None = None,
    quant: str | None = None,
    max_workers: int = REMOTE_HEADER_WORKERS,
    moe_cpu_layers: int | None = None,
) -> list[Plan]:
    """Plan every GGUF variant of a Hub repo from its headers alone (HTTP Range reads, no download).

    ``quant`` keeps only that variant. Variants whose header is malformed are left out; if none remain,
    the first error (in the repo's order) is raised.
    """
    headers = read_remote_variants(repo_id, endpoint=endpoint, token=token, quant=quant, max_workers=max_workers)
    return plan_variants([h.spec for h in headers], hw, ctx, settings, margin_bytes, moe_cpu_layers)


def read_remote_variants(
    repo_id: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    quant: str | None = None,
    max_workers: int = REMOTE_HEADER_WORKERS,
    keep_headers: bool = False,
) -> list[RemoteHeader]:
    """The header of every GGUF variant of a Hub repo (or only ``quant``), read by HTTP Range requests.

    Up to ``max_workers`` headers are read at once: each is a few round trips and, for a large
    vocabulary, several MiB. ``keep_headers`` keeps the bytes read (for a dry run on them), and then
    the sizes the Hub announces must match its listing. Variants whose header is malformed are left
    out; if none remain, the first error (in the repo's order) is raised.
    """
    from concurrent.futures import ThreadPoolExecutor

    variants = list_variants(repo_id, endpoint=endpoint, token=token)
    if quant is not None:
        variants = [pick_variant(variants, quant)]

    def read(v: Variant) -> RemoteHeader | InvalidModelFile:
        try:
            if keep_headers:
                return read_remote_header(repo_id, v.file, endpoint=endpoint, token=token, listed_sizes=v.sizes)
            return RemoteHeader(read_remote_spec(repo_id, v.file, endpoint=endpoint, token=token), ())
        except InvalidModelFile as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(variants))),
                            thread_name_prefix="fitchat-header") as pool:
        results = list(pool.map(read, variants))
    headers: list[RemoteHeader] = []
    first_error: FitchatError | None = None
    for v, got in zip(variants, results):
        if isinstance(got, InvalidModelFile):
            first_error = first_error or got
            continue
        if v.quant and v.quant.lower() != "unknown" and v.quant != got.spec.quant:
            # The Hub's name for the variant (say UD-Q4_K_XL) is what 'fitchat pull repo:QUANT' takes.
            got = dataclasses.replace(got, spec=dataclasses.replace(got.spec, quant=v.quant))
        headers.append(got)
    if not headers:
        raise first_error or FitchatError(f"no readable GGUF variants in {repo_id}")
    return headers
