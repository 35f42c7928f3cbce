"""Models other runners already downloaded: Ollama's store, LM Studio's models folder, llama.cpp's cache.

Read-only: nothing is copied, moved or written there, and ``fitchat rm`` refuses them, naming the other
tool's own command. Listing never parses a GGUF header (size from ``stat``, quant from the file name or
Ollama's small config layer), so ``fitchat ls`` stays quick with hundreds of models. Every file is
resolved and must lie inside its store (a link that points outside is refused); a damaged manifest, a
missing blob or an unreadable folder is one warning line, and the rest of the store is still listed.

Which stores are read is decided here, in one place (:func:`enabled`): ``FITCHAT_STORES`` (a
comma-separated list such as ``ollama,lmstudio``; ``none`` reads none) when it is set, else the
``[stores]`` table of fitchat's ``config.toml`` (``ollama = false``); every store is read by default.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitchat.config import read_small
from fitchat.errors import FitchatError, UnsafePath, first_line
from fitchat.format import printable
from fitchat.hub.store import LocalModel
from fitchat.model.quants import is_model_gguf, quant_from_filename, split_part, split_sets

#: The stores fitchat reads, by the name used in ``FITCHAT_STORES``, ``config.toml`` and ``LocalModel.source``.
STORES = ("ollama", "lmstudio", "llamacpp")
ENV = "FITCHAT_STORES"
TITLES = {"ollama": "Ollama", "lmstudio": "LM Studio", "llamacpp": "llama.cpp"}

MODEL_LAYER = "application/vnd.ollama.image.model"
PROJECTOR_LAYER = "application/vnd.ollama.image.projector"
#: Layers a manifest may carry besides the model: recognised, not needed to chat.
OTHER_LAYERS = frozenset({
    PROJECTOR_LAYER, "application/vnd.ollama.image.template", "application/vnd.ollama.image.params",
    "application/vnd.ollama.image.system", "application/vnd.ollama.image.license",
    "application/vnd.ollama.image.adapter", "application/vnd.ollama.image.messages",
})
DEFAULT_REGISTRY = "registry.ollama.ai"
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_MAX_MANIFEST = 1 << 20  # a real manifest is well under 2 KB
_MAX_CONFIG = 1 << 20
_MAX_SETTINGS = 1 << 20  # LM Studio's settings.json: a few KB


@dataclass(frozen=True)
class Problem:
    """Something in a store fitchat skipped, as one line for the user."""

    store: str
    message: str

    def line(self) -> str:
        return printable(f"fitchat: warning: {TITLES[self.store]}: {self.message}", 400, one_line=True)


# -- which stores, where ------------------------------------------------------------------------

def enabled() -> tuple[tuple[str, ...], list[str]]:
    """The stores to read and any warning lines about the setting (an unknown name, a non-boolean value)."""
    from fitchat import config

    warnings: list[str] = []
    raw = os.environ.get(ENV)
    if raw is not None:
        names = [n.strip().lower() for n in raw.split(",") if n.strip()]
        if names in ([], ["none"]):
            return (), warnings
        unknown = [n for n in names if n not in STORES]
        if unknown:
            warnings.append(f"fitchat: warning: {ENV} names unknown stores ({', '.join(unknown)}); "
                            f"known: {', '.join(STORES)}, or none")
        return tuple(s for s in STORES if s in names), warnings
    table = config.section("stores")
    chosen = []
    for store in STORES:
        value = table.get(store, True)
        if not isinstance(value, bool):
            warnings.append(f"fitchat: warning: [stores] {store} in {config.config_path()} should be true or false; "
                            "reading the store")
            value = True
        if value:
            chosen.append(store)
    return tuple(chosen), warnings


def _home() -> Path:
    return Path.home()


def ollama_root() -> Path:
    """``OLLAMA_MODELS``, else ``~/.ollama/models``."""
    value = os.environ.get("OLLAMA_MODELS")
    return Path(value).expanduser() if value else _home() / ".ollama" / "models"


def lmstudio_roots() -> list[Path]:
    """LM Studio's ``downloadsFolder`` from its settings when set, else ``~/.lmstudio/models`` and the older
    ``~/.cache/lm-studio/models``."""
    home = _home()
    try:
        settings = json.loads(read_small(home / ".lmstudio" / "settings.json", _MAX_SETTINGS))
    except (OSError, ValueError, RecursionError):
        settings = None
    folder = settings.get("downloadsFolder") if isinstance(settings, dict) else None
    if isinstance(folder, str) and folder.strip():
        return [Path(folder).expanduser()]
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def llamacpp_root() -> Path:
    """``LLAMA_CACHE``, else ``$XDG_CACHE_HOME/llama.cpp``, else ``~/.cache/llama.cpp`` (as llama.cpp decides)."""
    value = os.environ.get("LLAMA_CACHE")
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else _home() / ".cache"
    return base / "llama.cpp"


# -- listing ------------------------------------------------------------------------------------

def list_models() -> tuple[list[LocalModel], list[str]]:
    """Models in every enabled store, and one warning line per thing skipped."""
    stores, warnings = enabled()
    finders: dict[str, Callable[[], Iterator[LocalModel | Problem]]] = {
        "ollama": lambda: ollama_models(ollama_root()),
        "lmstudio": lambda: (x for root in _distinct(lmstudio_roots()) for x in lmstudio_models(root)),
        "llamacpp": lambda: llamacpp_models(llamacpp_root()),
    }
    models: list[LocalModel] = []
    for store in stores:
        for item in finders[store]():
            if isinstance(item, Problem):
                warnings.append(item.line())
            else:
                models.append(item)
    return models, warnings


def _distinct(roots: list[Path]) -> list[Path]:
    seen: set[str] = set()
    out = []
    for r in roots:
        key = os.path.realpath(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _scandir(store: str, folder: Path) -> tuple[list[os.DirEntry[str]], Problem | None]:
    """The entries of ``folder`` (none when it is absent); an unreadable folder is a :class:`Problem`."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name), None
    except (FileNotFoundError, NotADirectoryError):
        return [], None
    except OSError as exc:
        return [], Problem(store, f"cannot read {folder} ({exc.strerror or exc}); skipped")


def _inside(store: str, root: Path, path: Path) -> tuple[Path | None, Problem | None]:
    """``path`` resolved when it lies inside ``root`` (a link pointing outside is refused)."""
    try:
        from fitchat.paths import inside

        return inside(root, path), None
    except UnsafePath:
        return None, Problem(store, f"{path} points outside {root}; refused")


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def ollama_models(root: Path) -> Iterator[LocalModel | Problem]:
    """Models named by the manifests ``manifests/<registry>/<namespace>/<model>/<tag>`` of Ollama's store."""
    for reg in _subdirs("ollama", root / "manifests"):
        for ns in _subdirs("ollama", reg):
            for model in _subdirs("ollama", ns):
                if isinstance(model, Problem):
                    yield model
                    continue
                tags, problem = _scandir("ollama", model)
                if problem:
                    yield problem
                for tag in tags:
                    yield from _ollama_model(root, reg.name, ns.name, model, tag)


def _subdirs(store: str, folder: Path | Problem) -> Iterator[Any]:
    """The folders in ``folder``; a :class:`Problem` passes through (so nested loops yield it once)."""
    if isinstance(folder, Problem):
        yield folder
        return
    entries, problem = _scandir(store, folder)
    if problem:
        yield problem
    for e in entries:
        if _is_dir(e):
            yield Path(e.path)


def ollama_name(registry: str, namespace: str, model: str, tag: str) -> str:
    """``ollama/llama3.2:1b``; another namespace is kept (``ollama/user/model:tag``), another registry too."""
    parts = [model] if namespace == "library" else [namespace, model]
    if registry != DEFAULT_REGISTRY:
        parts.insert(0, registry)
    return "ollama/" + "/".join(parts) + ":" + tag


def _ollama_model(root: Path, registry: str, namespace: str, model_dir: Path,
                  tag: os.DirEntry[str]) -> Iterator[LocalModel | Problem]:
    name = ollama_name(registry, namespace, model_dir.name, tag.name)
    path, problem = _inside("ollama", root, Path(tag.path))
    if problem or path is None:
        yield problem or Problem("ollama", f"{name}: unreadable manifest; skipped")
        return
    try:
        manifest = json.loads(read_small(path, _MAX_MANIFEST))
    except IsADirectoryError:
        return
    except (OSError, ValueError, RecursionError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc, 60)
        yield Problem("ollama", f"{name}: the manifest {path} is unreadable ({why}); skipped")
        return
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list):
        yield Problem("ollama", f"{name}: the manifest {path} has no layers; skipped")
        return
    model_layers = [la for la in layers if isinstance(la, dict) and la.get("mediaType") == MODEL_LAYER]
    if len(model_layers) != 1:
        yield Problem("ollama", f"{name}: the manifest {path} names {len(model_layers)} model layers, not 1; skipped")
        return
    digest = model_layers[0].get("digest")
    match = _DIGEST.match(digest) if isinstance(digest, str) else None
    if match is None:
        yield Problem("ollama", f"{name}: the model layer's digest is not sha256:<64 hex digits>; skipped")
        return
    hexdigest = match[1]
    blob, problem = _inside("ollama", root, root / "blobs" / f"sha256-{hexdigest}")
    if problem or blob is None:
        yield problem or Problem("ollama", f"{name}: blob outside the store; skipped")
        return
    try:
        st = blob.stat()
    except OSError:
        yield Problem("ollama", f"{name}: its blob sha256-{hexdigest[:12]}… is missing ('ollama pull "
                      f"{name.removeprefix('ollama/')}' fetches it again); skipped")
        return
    if not blob.is_file():
        yield Problem("ollama", f"{name}: its blob is not a file; skipped")
        return
    config = manifest.get("config")
    quant = (_ollama_quant(root, config) or quant_from_filename(tag.name + ".gguf") or "unknown")
    yield LocalModel(repo=name.rpartition(":")[0], file=f"sha256-{hexdigest}", quant=quant, size_bytes=st.st_size,
                     path=blob, sha256=hexdigest, source="ollama", name=name)


def _ollama_quant(root: Path, config: Any) -> str | None:
    """``file_type`` from the manifest's small config layer (``"Q4_K_M"``), when it is there and sane."""
    digest = config.get("digest") if isinstance(config, dict) else None
    match = _DIGEST.match(digest) if isinstance(digest, str) else None
    if match is None:
        return None
    try:
        path = root / "blobs" / f"sha256-{match[1]}"
        if not os.path.realpath(path).startswith(os.path.realpath(root) + os.sep):
            return None
        data = json.loads(read_small(path, _MAX_CONFIG))
    except (OSError, ValueError, RecursionError):
        return None
    value = data.get("file_type") if isinstance(data, dict) else None
    if isinstance(value, str) and value and len(value) <= 20 and value.replace("_", "").isalnum():
        return value.upper()
    return None


def _gguf_sets(store: str, root: Path, folder: Path) -> Iterator[tuple[list[Path], int] | Problem]:
    """The models among ``folder``'s GGUF files: each split set once, parts resolved inside ``root``, with the
    total size. ``mmproj`` projectors and imatrix files are recognised by name and not listed."""
    entries, problem = _scandir(store, folder)
    if problem:
        yield problem
    names = [e.name for e in entries if is_model_gguf(e.name) and not _is_dir(e)]
    for group in split_sets(names):
        parts: list[Path] = []
        size = 0
        for n in group:
            path, problem = _inside(store, root, folder / n)
            if problem or path is None:
                yield problem or Problem(store, f"{folder / n} refused")
                break
            try:
                st = path.stat()
            except OSError:
                yield Problem(store, f"{folder / n} is a dangling link; skipped")
                break
            parts.append(path)
            size += st.st_size
        else:
            yield [folder / n for n in group], size


def lmstudio_models(root: Path) -> Iterator[LocalModel | Problem]:
    """``<root>/<publisher>/<repo>/*.gguf``, one model per file or split set, as ``lmstudio/PUB/REPO:QUANT``."""
    for publisher in _subdirs("lmstudio", root):
        if isinstance(publisher, Problem):
            yield publisher
            continue
        for repo in _subdirs("lmstudio", publisher):
            if isinstance(repo, Problem):
                yield repo
                continue
            for item in _gguf_sets("lmstudio", root, repo):
                if isinstance(item, Problem):
                    yield item
                    continue
                files, size = item
                first = files[0].name
                quant = quant_from_filename(first) or _stem(first)
                yield LocalModel(repo=f"lmstudio/{publisher.name}/{repo.name}", file=first, quant=quant,
                                 size_bytes=size, path=files[0], sha256=None, source="lmstudio")


def llamacpp_models(root: Path) -> Iterator[LocalModel | Problem]:
    """The GGUF files of llama.cpp's download cache (``org_repo_file.gguf``), as ``llamacpp/<file stem>``."""
    for item in _gguf_sets("llamacpp", root, root):
        if isinstance(item, Problem):
            yield item
            continue
        files, size = item
        first = files[0].name
        stem = _stem(first)
        yield LocalModel(repo=f"llamacpp/{stem}", file=first, quant=quant_from_filename(first) or "unknown",
                         size_bytes=size, path=files[0], sha256=None, source="llamacpp", name=f"llamacpp/{stem}")


def _stem(name: str) -> str:
    split = split_part(name)
    base = split[0] if split else name
    return re.sub(r"\.gguf$", "", base, flags=re.IGNORECASE)


# -- refusing to change them ----------------------------------------------------------------------

def refuse_removal(model: LocalModel) -> FitchatError:
    """The one-line error for ``fitchat rm`` of a model another runner owns: its own command does that."""
    if model.source == "ollama":
        how = f"run 'ollama rm {model.ref.removeprefix('ollama/')}'"
    elif model.source == "lmstudio":
        how = (f"run 'lms rm' or delete it in LM Studio's My Models (the file is {model.path})")
    else:
        how = f"delete {model.path} (llama.cpp's download cache)"
    return FitchatError(f"{model.ref} belongs to {TITLES[model.source]}; fitchat never changes another runner's "
                         f"models: {how}")
