"""What there is to download: the curated list, Hub search, and the GGUF variants of any repo."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fitchat.errors import HubError, UnsafePath
from fitchat.format import quoted
from fitchat.hub.client import (
    PROBE_TIMEOUT_S,
    NotOnHub,
    deadline_seconds,
    display_endpoint,
    hub_api,
    hub_endpoint,
    hub_errors,
    probe_hub,
    require_online,
)
from fitchat.model.quants import is_model_gguf, quant_bits, quant_from_filename, split_part, split_sets
from fitchat.paths import check_repo_filename, package_data


@dataclass(frozen=True)
class Variant:
    """One downloadable GGUF variant of a repo (a single file or a whole split set)."""

    repo: str
    file: str
    files: tuple[str, ...]
    quant: str
    size_bytes: int
    sha256: tuple[str | None, ...]
    sizes: tuple[int, ...] = ()  # per part, as listed (empty when unknown)

    def to_json(self) -> dict[str, Any]:
        return {"repo": self.repo, "file": self.file, "files": list(self.files), "quant": self.quant,
                "size_bytes": self.size_bytes, "sha256": list(self.sha256)}


@dataclass(frozen=True)
class CatalogEntry:
    """A curated model: a Hub repo with its published variant files."""

    repo: str
    name: str
    family: str
    params_b: float
    context: int
    license: str
    gated: bool
    default_quant: str
    variants: tuple[tuple[str, str], ...]  # (quant, first file)

    def to_json(self) -> dict[str, Any]:
        return {"repo": self.repo, "name": self.name, "family": self.family, "params_b": self.params_b,
                "context": self.context, "license": self.license, "gated": self.gated,
                "default_quant": self.default_quant, "variants": dict(self.variants)}


@dataclass(frozen=True)
class SearchHit:
    """One Hub search result."""

    repo: str
    downloads: int
    likes: int
    gated: bool
    curated: bool

    def to_json(self) -> dict[str, Any]:
        return {"repo": self.repo, "downloads": self.downloads, "likes": self.likes, "gated": self.gated,
                "curated": self.curated}



# -- curated list -----------------------------------------------------------------------------------

def curated() -> list[CatalogEntry]:
    """The curated instruct models shipped with fitchat, smallest first."""
    raw = json.loads(package_data("catalog.json").read_text(encoding="utf-8"))
    entries = [
        CatalogEntry(
            repo=m["repo"], name=m["name"], family=m["family"], params_b=float(m["params_b"]),
            context=int(m["context"]), license=m["license"], gated=bool(m.get("gated", False)),
            default_quant=m.get("default_quant", "Q4_K_M"), variants=tuple(m["variants"].items()),
        )
        for m in raw["models"]
    ]
    return sorted(entries, key=lambda e: e.params_b)


def curated_entry(repo: str) -> CatalogEntry | None:
    """The curated entry for ``repo`` (case-insensitive), if any."""
    for entry in curated():
        if entry.repo.lower() == repo.lower():
            return entry
    return None



# -- Hub search -------------------------------------------------------------------------------------

def search(text: str, limit: int = 20, *, endpoint: str | None = None, token: str | None = None) -> list[SearchHit]:
    """GGUF repos on the Hub matching ``text``, most downloaded first."""
    require_online(endpoint)
    curated_repos = {e.repo.lower() for e in curated()}
    api = hub_api(endpoint, token)
    with hub_errors(f"search {text!r}", endpoint=endpoint):
        # list_models retries a refused connection for ~20 s; one quick call first fails fast when offline.
        answer = probe_hub(endpoint, timeout=min(PROBE_TIMEOUT_S, deadline_seconds()))
        if answer.failure is not None:
            raise answer.failure  # told as any other request's failure is, by hub_errors
        models = list(api.list_models(search=text or None, filter="gguf", sort="downloads", limit=limit))
        return [
            SearchHit(repo=str(m.id), downloads=int(m.downloads or 0), likes=int(m.likes or 0), gated=bool(m.gated),
                      curated=str(m.id).lower() in curated_repos)
            for m in models
        ]


# -- variants of a repo -----------------------------------------------------------------------------

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def safe_sibling(sibling: Any) -> tuple[str, int, str | None]:
    """``(name, size, lfs sha256)`` of a listed file, checked; raises :class:`UnsafePath` or :class:`HubError`.

    The one place a listing's file becomes something fitchat may download: the name must be a plain
    relative path (:func:`fitchat.paths.check_repo_filename`), the size a whole number of bytes, the LFS
    sha256 64 hex digits (it names a blob in the cache).
    """
    name = check_repo_filename(getattr(sibling, "rfilename", None))
    size = getattr(sibling, "size", None)
    if size is None:
        size = 0
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise HubError(f"the listing gives {quoted(name)} the size {quoted(str(size))}, not a number of bytes")
    lfs = getattr(sibling, "lfs", None)
    sha = getattr(lfs, "sha256", None) if lfs is not None else None
    if sha is not None and not (isinstance(sha, str) and _SHA256_RE.match(sha)):
        raise HubError(f"the listing gives {quoted(name)} the sha256 {quoted(str(sha))}, not 64 hex digits")
    return name, size, sha


def variants_from_siblings(repo: str, siblings: list[Any], refused: list[str] | None = None) -> list[Variant]:
    """Group a repo's files (``RepoSibling``\\ s with size and lfs) into variants, smallest first.

    Split sets become one variant (listed only when every part is there); vision projectors and imatrix
    files are left out. Files that fail :func:`safe_sibling` (``../x``, absolute, NUL, 5,000 characters,
    a size that is not a number …) are left out before anything is downloaded; their one-line reasons
    go to ``refused`` when given.
    """
    checked: dict[str, tuple[int, str | None]] = {}
    for s in siblings:
        try:
            name, size, sha = safe_sibling(s)
        except (UnsafePath, HubError) as exc:
            if refused is not None:
                refused.append(str(exc))
            continue
        if is_model_gguf(name):
            checked[name] = (size, sha)
    variants: list[Variant] = []
    for names in split_sets(checked):
        name = names[0]
        base = name.rpartition("/")[2]
        split = split_part(base)
        parts = [checked[n] for n in names]
        quant = quant_from_filename(name) or (split[0] if split else base).removesuffix(".gguf")
        variants.append(
            Variant(
                repo=repo, file=name, files=names, quant=quant,
                size_bytes=sum(size for size, _ in parts),
                sha256=tuple(sha for _, sha in parts),
                sizes=tuple(size for size, _ in parts),
            )
        )
    variants.sort(key=lambda v: (v.size_bytes, quant_bits(v.quant) or 99.0, v.file))
    return variants


def list_variants(repo_id: str, *, endpoint: str | None = None, token: str | None = None,
                  revision: str | None = None) -> list[Variant]:
    """The GGUF variants of ``repo_id`` with exact sizes and LFS sha256, from ``model_info(files_metadata=True)``."""
    require_online(endpoint)
    api = hub_api(endpoint, token)
    with hub_errors(repo_id, endpoint=endpoint):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        refused: list[str] = []
        variants = variants_from_siblings(repo_id, list(info.siblings or []), refused)
    if not variants:
        if refused:
            raise UnsafePath(f"{repo_id} on {display_endpoint(hub_endpoint(endpoint))} lists no usable GGUF file: "
                             f"{refused[0]}" + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""))
        raise NotOnHub(f"{repo_id} has no GGUF files on {display_endpoint(hub_endpoint(endpoint))}; "
                       "try 'fitchat search NAME' for a GGUF repo")
    return variants


def pick_variant(variants: list[Variant], quant: str) -> Variant:
    """The variant named by ``quant`` (a quant like ``q4_k_m`` or a file name), case-insensitive."""
    wanted = quant.strip().lower()
    for v in variants:
        if v.quant.lower() == wanted or v.file.lower() == wanted or v.file.rsplit("/", 1)[-1].lower() == wanted:
            return v
    for v in variants:  # "Q4_K_XL" also finds "UD-Q4_K_XL"
        if v.quant.lower().removeprefix("ud-") == wanted.removeprefix("ud-"):
            return v
    repo = variants[0].repo if variants else "the repo"
    have = ", ".join(v.quant for v in variants) or "none"
    raise NotOnHub(f"{repo} has no {quant} variant; it has: {have}")
