"""GGUF headers on the Hub, read with HTTP Range requests (no download), and the plans made from them.

The header reader itself (how many bytes to ask for, one parse) is fitchat.model.gguf_spec's
``read_spec_by_ranges``; this module supplies the bytes: the Hub's metadata request, the CDN location,
the token kept on the Hub's own origin, and every request under the Hub deadline.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import urljoin, urlparse

from fitchat.errors import FitchatError, GatedRepo, HubError, InvalidModelFile, ModelNotFound, first_line
from fitchat.format import printable
from fitchat.hub.catalog import list_variants, pick_variant
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
    from huggingface_hub import hf_hub_url

    endpoint = hub_endpoint(endpoint)
    token = hub_token(token) if token is None or isinstance(token, str) else token
    require_online(endpoint)
    names = split_set_names(filename)

    def open_part(_index: int, name: str) -> tuple[int, RangeReader]:
        return _open_remote(hf_hub_url(repo_id, name, revision=revision, endpoint=endpoint), repo_id, name,
                            endpoint=endpoint, token=token)

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
) -> list[Plan]:
    """Plan every GGUF variant of a Hub repo from its headers alone (HTTP Range reads, no download).

    ``quant`` keeps only that variant. Up to ``max_workers`` headers are read at once: each is a
    few round trips and, for a large vocabulary, several MiB. Variants whose header is malformed
    are left out; if none remain, the first error (in the repo's order) is raised.
    """
    from concurrent.futures import ThreadPoolExecutor

    variants = list_variants(repo_id, endpoint=endpoint, token=token)
    if quant is not None:
        variants = [pick_variant(variants, quant)]

    def read(file: str) -> ModelSpec | InvalidModelFile:
        try:
            return read_remote_spec(repo_id, file, endpoint=endpoint, token=token)
        except InvalidModelFile as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(variants))),
                            thread_name_prefix="fitchat-header") as pool:
        results = list(pool.map(read, [v.file for v in variants]))
    specs: list[ModelSpec] = []
    first_error: FitchatError | None = None
    for v, spec in zip(variants, results):
        if isinstance(spec, InvalidModelFile):
            first_error = first_error or spec
            continue
        if v.quant and v.quant.lower() != "unknown" and v.quant != spec.quant:
            # The Hub's name for the variant (say UD-Q4_K_XL) is what 'fitchat pull repo:QUANT' takes.
            spec = dataclasses.replace(spec, quant=v.quant)
        specs.append(spec)
    if not specs:
        raise first_error or FitchatError(f"no readable GGUF variants in {repo_id}")
    return plan_variants(specs, hw, ctx, settings, margin_bytes)
