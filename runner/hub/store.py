"""The models on this machine: Hub downloads in the shared Hugging Face cache, imported files, the starter,
and (read-only, :mod:`fitchat.hub.stores`) the GGUFs Ollama, LM Studio and llama.cpp downloaded.

- Hub downloads live in the standard HF cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, read at call time),
  so other tools share them. Only finished blobs are linked from a snapshot, so partial and failed
  downloads are never listed.
- ``fitchat import PATH`` registers a file where it is (a small JSON registry in the data dir);
  ``fitchat rm`` unregisters it and leaves the file alone.
- The starter model (SmolLM2-135M-Instruct Q4_1, from a PyPI wheel) sits in fitchat's cache dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitchat import paths
from fitchat.errors import ModelNotFound, RegistryError, UnsafePath
from fitchat.format import printable
from fitchat.hub.starter import STARTER
from fitchat.model.quants import is_model_gguf, quant_from_filename, split_names, split_part, split_sets

STARTER_REF = "starter"
LOCAL_PREFIX = "local/"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class LocalModel:
    """A model on disk. ``path`` is the file to load (the first part of a split set)."""

    repo: str
    file: str
    quant: str
    size_bytes: int
    path: Path
    sha256: str | None
    source: str = "hub"  # "hub" | "imported" | "starter" | "file" | "ollama" | "lmstudio" | "llamacpp"
    #: What to type, for models another runner names its own way (``ollama/llama3.2:1b``, ``llamacpp/STEM``).
    name: str | None = None

    @property
    def ref(self) -> str:
        """What to type to use it: ``starter``, ``local/NAME``, ``repo:QUANT`` or the name another runner gives it."""
        if self.name:
            return self.name
        if self.source == "starter":
            return STARTER_REF
        if self.source == "imported":
            return self.repo
        return f"{self.repo}:{self.quant}"

    def to_json(self) -> dict[str, Any]:
        return {"repo": self.repo, "file": self.file, "quant": self.quant, "size_bytes": self.size_bytes,
                "path": str(self.path), "source": self.source}


# -- locations ------------------------------------------------------------------------------------

def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it, read from the environment now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(var)
        if value:
            return Path(os.path.expandvars(value)).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def repo_cache_dir(repo: str, cache_dir: Path | None = None) -> Path:
    """``models--org--name`` inside the HF cache."""
    return (cache_dir or hf_cache_dir()) / ("models--" + repo.replace("/", "--"))


def starter_path() -> Path:
    """Where the starter model is kept."""
    return paths.cache_dir() / "starter" / STARTER.filename


def _registry_path() -> Path:
    return paths.data_dir() / "imported.json"


# -- listing --------------------------------------------------------------------------------------

def list_local() -> list[LocalModel]:
    """Every usable model on disk: the starter, Hub downloads (HF cache), imported files, then other runners'."""
    from fitchat.hub import stores

    found: list[LocalModel] = []
    starter = _starter_model()
    if starter is not None:
        found.append(starter)
    found.extend(sorted(_cached_models(), key=lambda m: (m.repo.lower(), m.size_bytes, m.file)))
    found.extend(_imported_models())
    others, warnings = stores.list_models()
    for line in warnings:
        _warn_once(line)
    found.extend(sorted(others, key=lambda m: (STORE_ORDER.get(m.source, 9), m.ref.lower())))
    return found


#: Other runners' stores, in listing order.
STORE_ORDER = {"ollama": 0, "lmstudio": 1, "llamacpp": 2}


def _starter_model() -> LocalModel | None:
    path = starter_path()
    if not path.is_file() or path.stat().st_size != STARTER.size_bytes:
        return None
    return LocalModel(repo=STARTER.repo, file=STARTER.filename, quant=STARTER.quant, size_bytes=STARTER.size_bytes,
                      path=path, sha256=STARTER.sha256, source="starter")


def _cached_models(cache_dir: Path | None = None) -> list[LocalModel]:
    """GGUF models in the HF cache, one per (repo, file); split sets only when complete."""
    from fitchat.hub.client import hub_endpoint

    hub_endpoint()  # importing huggingface_hub with some malformed HF_ENDPOINT values fails: say so first
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    root = cache_dir or hf_cache_dir()
    if not root.is_dir():
        return []
    try:
        info = scan_cache_dir(root)
    except CacheNotFound:
        return []
    models: list[LocalModel] = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        repo_root = Path(os.path.realpath(repo.repo_path))  # a snapshot link out of it is not a model here
        newest_first = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
        files: dict[str, Any] = {}
        for revision in newest_first:
            for f in revision.files:
                rel = f.file_path.relative_to(revision.snapshot_path).as_posix()
                if is_model_gguf(rel) and rel not in files and f.blob_path.exists() and \
                        Path(os.path.realpath(f.blob_path)).is_relative_to(repo_root):
                    files[rel] = f
        for names in split_sets(files):
            rel = names[0]
            first = files[rel]
            blob = first.blob_path.name
            models.append(
                LocalModel(
                    repo=repo.repo_id, file=rel, quant=quant_from_filename(rel) or Path(rel).stem,
                    size_bytes=sum(files[n].size_on_disk for n in names), path=Path(first.file_path),
                    sha256=blob if _SHA256.match(blob) else None, source="hub",
                )
            )
    return models


def _load_registry() -> tuple[list[dict[str, Any]], list[Any]]:
    """The registry's usable entries, and the raw entries it could not use (kept on rewrite, never lost).

    A file of the wrong shape (not ``{"models": [...]}``) is a one-line :class:`RegistryError`; an entry of
    the wrong shape (a non-string path, ``"size_bytes": "abc"`` …) is skipped with one warning line.
    """
    path = _registry_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], []
    except (OSError, ValueError, RecursionError) as exc:
        raise RegistryError(f"the imported-model list {path} is unreadable ({printable(str(exc), 80, one_line=True)}); "
                            "fix or delete it") from None
    models = data.get("models", []) if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise RegistryError(f"the imported-model list {path} is not in fitchat's format "
                            '(expected {"models": [...]}); fix or delete it')
    good: list[dict[str, Any]] = []
    bad: list[Any] = []
    for entry in models:
        (good if _valid_entry(entry) else bad).append(entry)
    if bad:
        _warn_once(f"fitchat: warning: skipped {len(bad)} unreadable entr{'y' if len(bad) == 1 else 'ies'} "
                   f"in {path}; fix or delete it")
    return good, bad


def _valid_entry(entry: Any) -> bool:
    """An imported-model entry fitchat can use: string fields and a whole, non-negative size."""
    if not isinstance(entry, dict):
        return False
    if not all(isinstance(entry.get(k), str) and entry.get(k) for k in ("repo", "file", "quant", "path")):
        return False
    size = entry.get("size_bytes")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return False
    return entry.get("sha256") is None or isinstance(entry.get("sha256"), str)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr)


def _read_registry() -> list[dict[str, Any]]:
    return _load_registry()[0]


def _write_registry(entries: list[dict[str, Any]]) -> None:
    """Write ``entries``, keeping any raw entries the registry holds that fitchat could not read."""
    _, unreadable = _load_registry()
    path = _registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"models": [*entries, *unreadable]}, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _imported_models() -> list[LocalModel]:
    models = []
    for e in _read_registry():
        path = Path(e["path"])
        if not path.is_file():
            continue
        models.append(LocalModel(repo=e["repo"], file=e["file"], quant=e["quant"], size_bytes=int(e["size_bytes"]),
                                 path=path, sha256=e.get("sha256"), source="imported"))
    return models


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")


def imported_name(stem: str) -> str:
    """The ``local/NAME`` an imported file is known by: only letters, digits and ``._+-``, so it round-trips.

    ``:`` (the quant separator of :func:`parse_ref`), ``/``, spaces and control characters become ``-``;
    what is typed back is exactly what is stored.
    """
    name = _UNSAFE_NAME_CHARS.sub("-", stem).strip("-.") or "model"
    return LOCAL_PREFIX + name[:100]


# -- import ---------------------------------------------------------------------------------------

def import_file(path: str | Path) -> LocalModel:
    """Register a local GGUF (validated with ``read_spec`` first) so ``ls``/``chat`` know it by name."""
    from fitchat.model.gguf_spec import read_spec

    p = Path(path).expanduser()
    if p.is_dir():
        raise ModelNotFound(f"{path} is a directory; give a .gguf file")
    if not p.is_file():
        raise ModelNotFound(f"no such file: {path}")
    p = p.absolute()  # keep the name the user gave (a symlink stays a symlink)
    spec = read_spec(p)  # raises InvalidModelFile with one line
    base = p.name
    split = split_part(base)
    stem = (split[0] if split else base).removesuffix(".gguf").removesuffix(".GGUF")
    quant = getattr(spec, "quant", None) or quant_from_filename(base) or "unknown"
    size = int(getattr(spec, "size_bytes", 0) or p.stat().st_size)
    entries = [e for e in _read_registry() if Path(e["path"]).resolve() != p.resolve()]
    taken = {e["repo"].lower() for e in entries}
    base_name = name = imported_name(stem)
    n = 2
    while name.lower() in taken:
        name, n = f"{base_name}-{n}", n + 1
    entry = {"repo": name, "file": base, "quant": quant, "size_bytes": size, "path": str(p), "sha256": None}
    entries.append(entry)
    _write_registry(entries)
    return LocalModel(repo=name, file=base, quant=quant, size_bytes=size, path=p, sha256=None, source="imported")


# -- resolving references -------------------------------------------------------------------------

def parse_ref(ref: str) -> tuple[str, str | None]:
    """``"org/name:Q4_K_M"`` -> ``("org/name", "Q4_K_M")``; also accepts ``hf.co/`` and Hub URLs."""
    text = ref.strip()
    for prefix in ("https://huggingface.co/", "http://huggingface.co/", "huggingface.co/", "hf.co/"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
            break
    text = text.rstrip("/")
    if "/tree/" in text or "/blob/" in text:  # a pasted page URL: keep org/name
        text = "/".join(text.split("/")[:2])
    repo, sep, quant = text.partition(":")
    return repo, (quant or None) if sep else None


def _matches(model: LocalModel, repo: str, quant: str | None) -> bool:
    if model.repo.lower() != repo.lower():
        return False
    if quant is None:
        return True
    q = quant.lower()
    return q in (model.quant.lower(), model.file.lower(), model.file.rsplit("/", 1)[-1].lower()) or \
        model.quant.lower().removeprefix("ud-") == q.removeprefix("ud-")


def find_local(repo: str, quant: str | None = None) -> list[LocalModel]:
    """Local models of ``repo`` (any source), optionally of one quant or file name."""
    return [m for m in list_local() if _matches(m, repo, quant)]


def resolve_model(ref: str) -> LocalModel:
    """A local model from a path, ``starter``, ``local/NAME``, a file name, or ``repo[:QUANT]`` already downloaded."""
    text = ref.strip()
    if not text:
        raise ModelNotFound("no model named: give a .gguf path, 'starter', or org/name[:QUANT]")
    if text.lower() == STARTER_REF:
        starter = _starter_model()
        if starter is None:
            raise ModelNotFound("the starter model is not downloaded yet: run 'fitchat pull starter'")
        return starter
    candidate = Path(text).expanduser()
    if candidate.is_file():
        return _model_for_path(candidate)
    if candidate.is_dir():
        raise ModelNotFound(f"{text} is a directory; give a .gguf file (or 'fitchat compare {text}' for a folder of variants)")
    if text.startswith(("/", ".", "~")):
        raise ModelNotFound(f"no such file: {text} ('fitchat ls' lists the models here)")
    models = list_local()
    by_ref = [m for m in models if (m.source == "imported" or m.name) and m.ref.lower() == text.lower()]
    if not by_ref and text.lower().startswith("ollama/") and ":" not in text:  # Ollama's own default tag
        by_ref = [m for m in models if m.source == "ollama" and m.ref.lower() == text.lower() + ":latest"]
    if len(by_ref) == 1:  # an imported name exactly as stored (older names may hold ':'), another runner's name
        return by_ref[0]
    by_file = [m for m in models if text.lower() in (m.file.lower(), m.file.rsplit("/", 1)[-1].lower())]
    if len(by_file) == 1:
        return by_file[0]
    repo, quant = parse_ref(text)
    hits = [m for m in models if _matches(m, repo, quant)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        choices = ", ".join(f"'{m.ref}'" for m in hits)
        raise ModelNotFound(f"{text} matches {len(hits)} local models; name one: {choices}")
    if text.lower().endswith(".gguf"):
        raise ModelNotFound(f"no such file: {text} ('fitchat ls' lists the models here)")
    store_name = other_store(text)
    if store_name is not None:
        raise ModelNotFound(_not_in_store(text, store_name))
    if repo.lower().startswith(LOCAL_PREFIX):
        raise ModelNotFound(f"no imported model named {repo}; 'fitchat ls' lists them, 'fitchat import PATH' adds one")
    if "/" in repo:
        have = [m.quant for m in models if m.repo.lower() == repo.lower()]
        if have and quant:
            raise ModelNotFound(f"{repo} has no local {quant} (local: {', '.join(have)}); run 'fitchat pull {repo}:{quant}'")
        return_ref = f"{repo}:{quant}" if quant else repo
        raise ModelNotFound(f"{return_ref} is not downloaded: run 'fitchat pull {return_ref}'")
    raise ModelNotFound(
        f"no local model called {text!r}: give a .gguf path, 'starter', or org/name[:QUANT] "
        "('fitchat ls' lists what is here; 'fitchat pull starter' gets a small model)"
    )


def other_store(text: str) -> str | None:
    """The other runner a reference names by its prefix (``ollama/…`` -> ``ollama``), if any."""
    from fitchat.hub import stores

    prefix = text.split("/", 1)[0].lower()
    return prefix if prefix in stores.STORES and "/" in text else None


def _not_in_store(text: str, store_name: str) -> str:
    from fitchat.hub import stores

    title = stores.TITLES[store_name]
    if store_name not in stores.enabled()[0]:
        return (f"{text}: fitchat is not reading {title}'s models (turned off by {stores.ENV} or "
                "[stores] in config.toml)")
    return f"{title} has no model {text} here ('fitchat ls' lists the models fitchat found)"


def _model_for_path(path: Path) -> LocalModel:
    resolved = path.resolve()
    for m in list_local():
        if m.path == path or m.path.resolve() == resolved:
            return m
    base = path.name
    split = split_part(base)
    size = path.stat().st_size
    if split and split[1] == 1:
        parts = [path.with_name(n) for n in split_names(base, split[2])]
        size = sum(p.stat().st_size for p in parts if p.is_file())
    stem = (split[0] if split else base).removesuffix(".gguf")
    return LocalModel(repo=LOCAL_PREFIX + stem, file=base, quant=quant_from_filename(base) or "unknown",
                      size_bytes=size, path=path, sha256=None, source="file")


# -- removal --------------------------------------------------------------------------------------

def remove(ref: str) -> list[LocalModel]:
    """Remove ``ref`` (``starter``, ``local/NAME``, a path, ``repo`` or ``repo:QUANT``); returns what went.

    Hub downloads are deleted from the HF cache (blobs no other snapshot uses, then empty folders);
    imported files are only unregistered.
    """
    text = ref.strip()
    if text.lower() == STARTER_REF:
        starter = _starter_model()
        if starter is None:
            raise ModelNotFound("the starter model is not downloaded; nothing to remove")
        starter.path.unlink()
        return [starter]
    candidate = Path(text).expanduser()
    targets: list[LocalModel]
    if candidate.is_file():
        targets = [m for m in list_local() if m.path == candidate or m.path.resolve() == candidate.resolve()]
        if not targets:
            raise ModelNotFound(f"{text} is not a model fitchat manages ('fitchat ls' lists them); nothing removed")
    else:
        models = list_local()
        # an imported name exactly as stored first (older names may hold ':'), then org/name[:QUANT]
        targets = [m for m in models if m.source == "imported" and m.ref.lower() == text.lower()]
        if not targets:
            repo, quant = parse_ref(text)
            targets = [m for m in models if _matches(m, repo, quant)]
        if not targets:
            targets = [m for m in models if m.name and m.ref.lower() == text.lower()]
        if not targets:
            store_name = other_store(text)
            if store_name is not None:
                raise ModelNotFound(_not_in_store(text, store_name) + "; nothing removed")
            raise ModelNotFound(f"no local model matches {text} ('fitchat ls' lists them); nothing removed")
    theirs = [m for m in targets if m.source in STORE_ORDER]
    if theirs:  # read-only: nothing is removed, not even the ones fitchat owns among the matches
        from fitchat.hub import stores

        raise stores.refuse_removal(theirs[0])
    for m in targets:
        if m.source == "starter":
            m.path.unlink(missing_ok=True)
        elif m.source == "imported":
            _write_registry([e for e in _read_registry() if e["repo"] != m.repo])
        else:
            _delete_cached(m)
    return targets


def _delete_cached(model: LocalModel) -> None:
    """Delete a Hub download's snapshot links, the blobs nothing else links, and emptied folders.

    Only what resolves inside the repo's folder of the cache is removed (:func:`fitchat.paths.inside`):
    a snapshot link is unlinked as a link (never followed), a blob only when it lies in ``blobs/``, and
    folders only when empty; a link that points outside the cache loses the link, never its target.
    """
    cache = hf_cache_dir()
    repo_dir = paths.inside(cache, repo_cache_dir(model.repo, cache))
    blobs_dir = repo_dir / "blobs"
    folder, _, base = model.file.rpartition("/")
    split = split_part(base)
    names = [f"{folder}/{n}" if folder else n for n in split_names(base, split[2])] if split else [model.file]
    snapshots = repo_dir / "snapshots"
    blobs: set[Path] = set()
    for snap in snapshots.iterdir() if snapshots.is_dir() and not snapshots.is_symlink() else []:
        for name in names:
            try:
                link = paths.inside(repo_dir, snap / name, follow_last=False)
            except UnsafePath:
                continue
            if link.is_symlink():
                blobs.add(Path(os.path.realpath(link)))
                link.unlink()
            elif link.is_file():
                link.unlink()
    still_linked = set()
    for snap_file in _walk(snapshots):
        if snap_file.is_symlink():
            still_linked.add(Path(os.path.realpath(snap_file)))
    for blob in blobs - still_linked:
        if blob.parent == Path(os.path.realpath(blobs_dir)) and not blob.is_symlink():
            blob.unlink(missing_ok=True)
    # prune empty folders below each snapshot (deepest first), then the repo folder if nothing is left
    for d in sorted((p for p in _walk(snapshots) if p.is_dir() and not p.is_symlink()),
                    key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    if snapshots.is_dir() and not snapshots.is_symlink() and not any(snapshots.iterdir()):
        shutil.rmtree(repo_dir, ignore_errors=True)  # never follows links: a link inside is removed as a link


def _walk(root: Path) -> list[Path]:
    """Everything below ``root`` without following symlinked folders (links are listed, not entered)."""
    if not root.is_dir() or root.is_symlink():
        return []
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        found.extend(Path(dirpath) / n for n in (*dirnames, *filenames))
    return found
