"""What a GGUF file holds: architecture, shapes and per-layer tensor sizes, as a frozen ModelSpec.

Local files are parsed with ``gguf.GGUFReader`` through a thin subclass that adds what the
reader lacks for untrusted input:

- every read is bounds-checked, so a truncated file fails at once instead of yielding empty
  arrays (the stock reader can loop for a very long time on an array whose count is absurd);
- counts (KV pairs, tensors, array lengths, string lengths) are checked against the bytes that
  could possibly hold them before any loop starts;
- large scalar arrays (token scores and types) are read in one vectorised step and large string
  arrays (the vocabulary, BPE merges) are skipped with a tight length walk, which makes a
  262k-vocabulary header parse in well under a second instead of tens of seconds;
- tensor data is never mapped: only the tensor infos are read, then checked against the file
  the way llama.cpp's own loader checks them (types, dimensions, offsets, alignment, bounds).

Files on the Hub are read the same way from the first bytes only, fetched with HTTP Range
requests that grow until the header parses (``read_remote_spec``).
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import FitchatError, GatedRepo, HubError, InvalidModelFile, ModelNotFound
from runner.quants import is_model_gguf

#: ``name-00001-of-00003.gguf``: llama.cpp's split naming.
SPLIT_RE = re.compile(r"^(?P<base>.*)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)

#: Quant names that may appear in file names (fallback when general.file_type is absent).
_QUANT_IN_NAME_RE = re.compile(
    r"(?<![A-Za-z0-9])(IQ[1-4]_(?:XXS|XS|S|M|NL)|Q[2-8]_K(?:_[SML])?|Q[4-8]_[01]|TQ[12]_0|MXFP4(?:_MOE)?|BF16|F16|F32)(?![A-Za-z0-9])",
    re.IGNORECASE,
)

GGML_MAX_DIMS = 4

#: Architectures whose llama.cpp model sets a sliding-window layer pattern when the GGUF
#: declares ``{arch}.attention.sliding_window``: (every N-th layer is dense, dense_first).
#: From llama.cpp's ``load_swa_pattern`` calls (src/models/*.cpp). A per-layer
#: ``{arch}.attention.sliding_window_pattern`` array or integer in the file wins.
SWA_PATTERNS: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma3n": (5, False),
    "gemma-embedding": (6, False),
    "cohere2": (4, False),
    "cohere2moe": (4, True),
    "exaone4": (4, False),
    "exaone-moe": (4, False),
    "llama4": (4, False),
    "gpt-oss": (2, False),
    "olmo2": (4, False),
    "afmoe": (4, False),
    "plamo3": (8, False),
    "smallthinker": (4, True),
    "mellum": (4, False),
    "laguna": (4, True),
    "muse-glimmer": (4, False),
}

#: Architectures for which llama.cpp ignores the sliding window (it logs a warning and uses full attention).
SWA_DISABLED = frozenset({"phi3"})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it (``shape`` in ggml order: ne0 first)."""

    name: str
    ggml_type: int
    type_name: str
    shape: tuple[int, ...]
    n_bytes: int
    offset: int  # relative to the part's data section
    part: int = 0  # index into ModelSpec.parts

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class ModelSpec:
    """Everything fitchat needs from a GGUF header to estimate and plan a load."""

    path_or_url: str
    file: str
    architecture: str
    n_params: int
    n_layers: int  # block count
    n_embd: int
    n_head: int
    n_head_kv: int
    key_length: int
    value_length: int
    n_ctx_train: int
    sliding_window: int | None
    vocab_size: int
    file_type: int
    quant: str
    has_chat_template: bool
    chat_template: str | None
    size_bytes: int
    tensor_bytes: Mapping[str, int] = field(hash=False)  # token_embd, output, output_norm, blk.N, …
    parts: tuple[str, ...] = ()
    # --- beyond the cross-module contract: what the estimate needs -----------------------
    name: str | None = None
    n_ff: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_expert: int = 0
    n_head_kv_layers: tuple[int, ...] = ()  # per layer (GQA can vary by layer)
    n_head_layers: tuple[int, ...] = ()
    swa_layers: tuple[bool, ...] = ()  # True where the layer uses the sliding window
    kv_lora_rank: int = 0  # MLA (DeepSeek-style) compressed KV
    rope_dim: int = 0
    tensors: tuple[TensorInfo, ...] = field(default=(), hash=False, repr=False)
    header_bytes: int = 0  # bytes before the tensor data (all parts)
    bytes_read: int = 0  # for remote specs: bytes fetched over HTTP

    @property
    def tied_embeddings(self) -> bool:
        """True when there is no output.weight and llama.cpp reuses token_embd for the logits."""
        return "output" not in self.tensor_bytes

    def block_bytes(self, layer: int) -> int:
        """Tensor bytes of repeating block ``layer``."""
        return self.tensor_bytes.get(f"blk.{layer}", 0)

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly summary (no tensor list, no chat template text)."""
        return {
            "path_or_url": self.path_or_url,
            "file": self.file,
            "architecture": self.architecture,
            "name": self.name,
            "n_params": self.n_params,
            "n_layers": self.n_layers,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_head_kv": self.n_head_kv,
            "key_length": self.key_length,
            "value_length": self.value_length,
            "n_ctx_train": self.n_ctx_train,
            "sliding_window": self.sliding_window,
            "vocab_size": self.vocab_size,
            "file_type": self.file_type,
            "quant": self.quant,
            "has_chat_template": self.has_chat_template,
            "size_bytes": self.size_bytes,
            "parts": list(self.parts),
        }


# --------------------------------------------------------------------------- the reader


class _ShortRead(Exception):
    """A read past the end of the bytes at hand; ``end`` is the offset that would be needed."""

    def __init__(self, end: int) -> None:
        super().__init__(end)
        self.end = end


class _Malformed(Exception):
    """A structural problem the stock reader does not check."""


#: Vectorise scalar arrays and walk string arrays at or above this many elements.
_FAST_ARRAY_MIN = 256


def _reader_class() -> type:
    """Build the checked reader lazily (numpy and gguf are imported only when a file is read)."""
    global _READER
    if _READER is not None:
        return _READER
    import numpy as np
    from gguf import GGUFReader, GGUFValueType
    from gguf.constants import GGUFEndian

    scalar_np = GGUFReader.gguf_scalar_to_np
    scalar_size = {t: np.dtype(d).itemsize for t, d in scalar_np.items()}
    t_string, t_array = int(GGUFValueType.STRING), int(GGUFValueType.ARRAY)

    class CheckedReader(GGUFReader):  # type: ignore[misc, valid-type]
        """GGUFReader with bounds checks, count checks and fast big arrays; no tensor data views."""

        def __init__(self, path: str | os.PathLike[str], total_size: int | None = None) -> None:
            # ``total_size``: the whole file's size when ``path`` holds only its first bytes.
            self._total_size = total_size
            super().__init__(path, "r")

        # -- limits -------------------------------------------------------------------
        @property
        def _available(self) -> int:
            return int(self.data.shape[0])

        @property
        def _size(self) -> int:
            return self._total_size if self._total_size is not None else self._available

        def _check_count(self, what: str, count: int, min_item: int, offs: int) -> None:
            room = self._size - int(offs)
            if count < 0 or count * min_item > max(room, 0):
                if 0 <= count <= 10_000_000:
                    raise _Malformed(
                        f"it is truncated or damaged: its header lists {count:,} {what} but the file ends after {self._size:,} bytes"
                    )
                raise _Malformed(
                    f"its header claims {count:,} {what}, more than a {self._size:,}-byte file can hold"
                )

        # -- overrides ----------------------------------------------------------------
        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
            count = int(count)
            offset = int(offset)
            end = offset + np.dtype(dtype).itemsize * count
            if count < 0 or offset < 0 or end > self._available:
                raise _ShortRead(end)
            return super()._get(offset, dtype, count, override_order)

        def _build_fields(self, offs: int, count: int) -> int:
            # key length (8) + type (4) + the smallest value (1)
            self._check_count("metadata entries", int(count), 13, offs)
            return super()._build_fields(offs, count)

        def _build_tensor_info(self, offs: int, count: int) -> tuple[int, list[Any]]:
            # name length (8) + n_dims (4) + type (4) + offset (8)
            self._check_count("tensors", int(count), 24, offs)
            return super()._build_tensor_info(offs, count)

        def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list[Any], list[int], list[Any]]:
            if int(raw_type) != t_array:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype, n = int(raw_itype[0]), int(alen[0])
            start = orig_offs + 12
            if itype == t_string:
                min_item = 8
            elif itype == t_array:
                min_item = 12
            elif GGUFValueType._value2member_map_.get(itype) in scalar_size:
                min_item = scalar_size[GGUFValueType(itype)]
            else:
                raise _Malformed(f"a metadata array has unknown element type {itype}")
            self._check_count("array elements", n, min_item, start)
            if n < _FAST_ARRAY_MIN or itype == t_array:
                return super()._get_field_parts(orig_offs, raw_type)
            types = [GGUFValueType.ARRAY, GGUFValueType(itype)]
            if itype == t_string:
                end = self._skip_strings(start, n)
                blob = self._get(start, np.uint8, end - start)
                # One part for the whole block: ``contents()`` is not used on these (the vocabulary).
                return end - orig_offs, [raw_itype, alen, blob], [], types
            values = self._get(start, scalar_np[GGUFValueType(itype)], n)
            return 12 + int(values.nbytes), [raw_itype, alen, values], [2], types

        def _skip_strings(self, offs: int, n: int) -> int:
            fmt = "<Q" if self.endianess == GGUFEndian.LITTLE else ">Q"
            unpack = struct.Struct(fmt).unpack_from
            buf = memoryview(self.data)
            avail = self._available
            for _ in range(n):
                if offs + 8 > avail:
                    raise _ShortRead(offs + 8)
                (slen,) = unpack(buf, offs)
                offs += 8 + slen
                if offs > avail:
                    raise _ShortRead(offs)
            return offs

        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
            self.tensor_infos = []
            for f in fields:
                _nlen, name_data, _ndims, dims, raw_dtype, offset_tensor = f.parts
                self.tensor_infos.append(
                    (bytes(name_data), [int(d) for d in dims], int(raw_dtype[0]), int(offset_tensor[0]))
                )
            self.tensors = []

    _READER = CheckedReader
    return CheckedReader


_READER: type | None = None


@dataclass(frozen=True)
class _Part:
    """One parsed file (or the first bytes of one): metadata and tensor infos."""

    fields: dict[str, Any]
    array_lengths: dict[str, int]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    alignment: int


def _parse(path: str | os.PathLike[str], label: str, total_size: int | None = None) -> _Part:
    """Parse one GGUF header; raises InvalidModelFile, or _ShortRead when ``path`` holds too few bytes."""
    from gguf import GGMLQuantizationType, GGUFValueType
    from gguf.constants import GGML_QUANT_SIZES, GGUF_MAGIC

    size = total_size if total_size is not None else os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if size == 0:
        raise InvalidModelFile(f"{label} is empty, not a GGUF model")
    if len(head) < 4 or struct.unpack("<I", head[:4])[0] != GGUF_MAGIC:
        raise InvalidModelFile(f"{label} is not a GGUF file (it starts with {head[:4]!r}, not b'GGUF')")
    reader_cls = _reader_class()
    try:
        reader = reader_cls(path, total_size)
    except _ShortRead:
        raise
    except _Malformed as exc:
        raise InvalidModelFile(f"{label} is not a valid GGUF file: {exc}") from None
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError, MemoryError) as exc:
        raise InvalidModelFile(f"{label} is not a valid GGUF file: {_reader_error(exc)}") from None

    fields: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    try:
        for key, f in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            if key == "":
                raise InvalidModelFile(f"{label} is not a valid GGUF file: a metadata key is empty")
            main = f.types[0] if f.types else None
            if main == GGUFValueType.ARRAY:
                lengths[key] = int(f.parts[4][0])
                if lengths[key] < _FAST_ARRAY_MIN and f.types[-1] != GGUFValueType.ARRAY:
                    fields[key] = f.contents()
            else:
                fields[key] = f.contents()
    except InvalidModelFile:
        raise
    except (ValueError, UnicodeDecodeError, IndexError) as exc:
        raise InvalidModelFile(f"{label} is not a valid GGUF file: unreadable metadata ({_reader_error(exc)})") from None

    alignment = int(reader.alignment)
    data_offset = int(reader.data_offset)
    tensors = []
    seen: set[bytes] = set()
    expected = 0
    for i, (raw_name, dims, raw_type, offset) in enumerate(reader.tensor_infos):
        if raw_name in seen:
            raise InvalidModelFile(f"{label}: tensor {raw_name.decode('utf-8', 'replace')!r} appears twice")
        seen.add(raw_name)
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidModelFile(f"{label}: tensor {i} has a name that is not UTF-8") from None
        if not name:
            raise InvalidModelFile(f"{label}: tensor {i} has an empty name")
        if len(dims) > GGML_MAX_DIMS:
            raise InvalidModelFile(f"{label}: tensor {name!r} has {len(dims)} dimensions (at most {GGML_MAX_DIMS})")
        if any(d <= 0 for d in dims):
            raise InvalidModelFile(f"{label}: tensor {name!r} has a zero or negative dimension {dims}")
        try:
            qtype = GGMLQuantizationType(raw_type)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise InvalidModelFile(f"{label}: tensor {name!r} has unknown type {raw_type}") from None
        n_el = 1
        for d in dims:
            n_el *= d
        if n_el >= 1 << 62:
            raise InvalidModelFile(f"{label}: tensor {name!r} is impossibly large ({dims})")
        row = dims[0] if dims else 1  # no dimensions: a scalar
        if row % block:
            raise InvalidModelFile(f"{label}: tensor {name!r} row length {row} is not a multiple of {block} ({qtype.name})")
        n_bytes = n_el // block * type_size
        if offset != expected:
            raise InvalidModelFile(
                f"{label}: tensor {name!r} starts at data offset {offset:,}, expected {expected:,} (overlapping or misplaced tensor data)"
            )
        expected = offset + (n_bytes + alignment - 1) // alignment * alignment
        tensors.append(TensorInfo(name, int(qtype), qtype.name, tuple(dims), n_bytes, offset))
    if tensors:
        last = tensors[-1]
        end = data_offset + last.offset + last.n_bytes
        if end > size:
            raise InvalidModelFile(
                f"{label} is truncated: its tensor data ends at byte {end:,} but the file has {size:,} bytes; download it again"
            )
    return _Part(fields, lengths, tuple(tensors), data_offset, alignment)


def _reader_error(exc: BaseException) -> str:
    from runner.errors import first_line

    return first_line(exc, 200)


# --------------------------------------------------------------------------- building the spec


def _group(name: str) -> str:
    """``blk.12.attn_q.weight -> blk.12``; ``token_embd.weight -> token_embd``."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) > 1 and parts[1].isdigit():
        return f"blk.{parts[1]}"
    return parts[0]


def _as_layers(value: Any, n_layers: int, default: int) -> tuple[int, ...]:
    """A per-layer value that GGUF stores as one number or as an array (one per layer)."""
    if isinstance(value, list):
        vals = [int(v) for v in value]
        if len(vals) < n_layers:
            vals += [vals[-1] if vals else default] * (n_layers - len(vals))
        vals = vals[:n_layers]
    else:
        vals = [int(value) if value is not None else default] * n_layers
    if any(v < 0 or v > 1 << 20 for v in vals):
        raise ValueError(f"implausible head count {max(vals, key=abs)}")
    return tuple(vals)


def _int_field(fields: Mapping[str, Any], key: str, label: str, *, required: bool = False, default: int = 0) -> int:
    value = fields.get(key)
    if value is None:
        if required:
            raise InvalidModelFile(f"{label} lacks the metadata key {key}; it is not a model llama.cpp can load")
        return default
    if isinstance(value, list):
        value = max(value) if value else default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidModelFile(f"{label}: metadata key {key} is not a number ({str(value)[:40]!r})")
    try:
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidModelFile(f"{label}: metadata key {key} is not a number ({value!r})") from None
    if out < 0:
        raise InvalidModelFile(f"{label}: metadata key {key} is negative ({out})")
    return out


def quant_name(file_type: int | None, filename: str = "", tensors: Iterable[TensorInfo] = ()) -> str:
    """The quant label: from general.file_type, else the file name, else the dominant tensor type."""
    from gguf import LlamaFileType

    if file_type is not None and file_type >= 0:
        try:
            name = LlamaFileType(file_type).name
        except ValueError:
            name = ""
        if name and name != "GUESSED":
            return name.removeprefix("MOSTLY_").removeprefix("ALL_").upper()
    m = _QUANT_IN_NAME_RE.search(filename)
    if m:
        return m.group(1).upper()
    totals: dict[str, int] = {}
    for t in tensors:
        if len(t.shape) >= 2:
            totals[t.type_name] = totals.get(t.type_name, 0) + t.n_bytes
    return max(totals, key=totals.__getitem__) if totals else "unknown"


def _swa_layers(arch: str, fields: Mapping[str, Any], n_layers: int, window: int | None) -> tuple[bool, ...]:
    if not window or arch in SWA_DISABLED:
        return (False,) * n_layers
    pattern = fields.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):
        flags = [bool(v) for v in pattern][:n_layers]
        return tuple(flags + [False] * (n_layers - len(flags)))
    n_pattern, dense_first = SWA_PATTERNS.get(arch, (0, False))
    if isinstance(pattern, int | float):
        n_pattern = int(pattern)
    elif arch not in SWA_PATTERNS:
        # An unknown architecture that declares a window: assume every layer slides (llama.cpp's
        # set_swa_pattern(0)); the KV estimate then errs small only if swa_full is off.
        n_pattern = 0
    if dense_first:
        return tuple(n_pattern == 0 or il % n_pattern != 0 for il in range(n_layers))
    return tuple(n_pattern == 0 or il % n_pattern < n_pattern - 1 for il in range(n_layers))


def _build_spec_unchecked(
    path_or_url: str,
    file: str,
    parts: list[_Part],
    part_names: tuple[str, ...],
    size_bytes: int,
    label: str,
    bytes_read: int = 0,
) -> ModelSpec:
    first = parts[0]
    f = first.fields
    arch = f.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFile(f"{label} lacks general.architecture; it is not a model llama.cpp can load")
    tensors: list[TensorInfo] = []
    for i, p in enumerate(parts):
        tensors.extend(TensorInfo(t.name, t.ggml_type, t.type_name, t.shape, t.n_bytes, t.offset, i) for t in p.tensors)
    if not tensors:
        raise InvalidModelFile(f"{label} holds no tensors; it is not a model file")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InvalidModelFile(f"{label}: tensor {dup!r} appears more than once across the split parts")
    expected_tensors = f.get("split.tensors.count")
    if expected_tensors is not None and int(expected_tensors) != len(tensors):
        raise InvalidModelFile(
            f"{label}: the split set should hold {int(expected_tensors)} tensors but its parts hold {len(tensors)}; a part is missing or damaged"
        )

    n_layers = _int_field(f, f"{arch}.block_count", label, required=True)
    n_embd = _int_field(f, f"{arch}.embedding_length", label, required=True)
    if n_layers == 0 or n_layers > 100_000 or n_embd == 0 or n_embd > 1 << 24:
        raise InvalidModelFile(f"{label}: implausible shape (block_count={n_layers}, embedding_length={n_embd})")
    head_raw = f.get(f"{arch}.attention.head_count")
    n_head_layers = _as_layers(head_raw, n_layers, 0)
    n_head = max(n_head_layers) if n_head_layers else 0
    kv_raw = f.get(f"{arch}.attention.head_count_kv")
    n_head_kv_layers = _as_layers(kv_raw, n_layers, n_head) if kv_raw is not None else n_head_layers
    n_head_kv = max(n_head_kv_layers) if n_head_kv_layers else 0
    key_length = _int_field(f, f"{arch}.attention.key_length", label, default=(n_embd // n_head) if n_head else 0)
    value_length = _int_field(f, f"{arch}.attention.value_length", label, default=key_length)
    n_ctx_train = _int_field(f, f"{arch}.context_length", label, default=0)
    window = _int_field(f, f"{arch}.attention.sliding_window", label, default=0) or None

    token_embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    vocab = _int_field(f, f"{arch}.vocab_size", label, default=0)
    if not vocab:
        vocab = first.array_lengths.get("tokenizer.ggml.tokens", 0)
    if not vocab and token_embd is not None and len(token_embd.shape) >= 2:
        vocab = token_embd.shape[1]

    group_bytes: dict[str, int] = {}
    for t in tensors:
        g = _group(t.name)
        group_bytes[g] = group_bytes.get(g, 0) + t.n_bytes
    # llama.cpp's order: input first, then blocks, then output.
    def order(g: str) -> tuple[int, int, str]:
        if g.startswith("blk."):
            return (1, int(g[4:]), "")
        if g in ("output", "output_norm"):
            return (2, 0, g)
        return (0, 0, g)

    tensor_bytes = {g: group_bytes[g] for g in sorted(group_bytes, key=order)}
    template = f.get("tokenizer.chat_template")
    template = template if isinstance(template, str) and template.strip() else None
    file_type = f.get("general.file_type")
    file_type_int = int(file_type) if isinstance(file_type, int | float) else -1
    ff_raw = f.get(f"{arch}.feed_forward_length")
    n_ff = max(ff_raw) if isinstance(ff_raw, list) and ff_raw else int(ff_raw or 0)
    name = f.get("general.name")
    return ModelSpec(
        path_or_url=path_or_url,
        file=file,
        architecture=arch,
        n_params=sum(t.n_elements for t in tensors),
        n_layers=n_layers,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        key_length=key_length,
        value_length=value_length,
        n_ctx_train=n_ctx_train,
        sliding_window=window,
        vocab_size=int(vocab),
        file_type=file_type_int,
        quant=quant_name(file_type_int, file, tensors),
        has_chat_template=template is not None,
        chat_template=template,
        size_bytes=size_bytes,
        tensor_bytes=tensor_bytes,
        parts=part_names,
        name=name if isinstance(name, str) else None,
        n_ff=n_ff,
        n_expert=_int_field(f, f"{arch}.expert_count", label),
        n_expert_used=_int_field(f, f"{arch}.expert_used_count", label),
        n_ff_expert=_int_field(f, f"{arch}.expert_feed_forward_length", label),
        n_head_kv_layers=n_head_kv_layers,
        n_head_layers=n_head_layers,
        swa_layers=_swa_layers(arch, f, n_layers, window),
        kv_lora_rank=_int_field(f, f"{arch}.attention.kv_lora_rank", label),
        rope_dim=_int_field(f, f"{arch}.rope.dimension_count", label),
        tensors=tuple(tensors),
        header_bytes=sum(p.data_offset for p in parts),
        bytes_read=bytes_read,
    )


def _build_spec(
    path_or_url: str,
    file: str,
    parts: list[_Part],
    part_names: tuple[str, ...],
    size_bytes: int,
    label: str,
    bytes_read: int = 0,
) -> ModelSpec:
    """The ModelSpec of parsed parts; metadata of the wrong type or range becomes InvalidModelFile."""
    try:
        return _build_spec_unchecked(path_or_url, file, parts, part_names, size_bytes, label, bytes_read)
    except (TypeError, ValueError, OverflowError, KeyError, IndexError, AttributeError) as exc:
        raise InvalidModelFile(f"{label} has malformed metadata ({_reader_error(exc)})") from None


# --------------------------------------------------------------------------- local files


def split_parts(path: Path) -> list[Path]:
    """Every part of the split set ``path`` belongs to, in order (just ``[path]`` when not split)."""
    m = SPLIT_RE.match(path.name)
    if not m:
        return [path]
    total = int(m.group("total"))
    if total < 1 or total > 9999:
        raise InvalidModelFile(f"{path.name}: implausible split count {total}")
    parts = [path.with_name(f"{m.group('base')}-{i:05d}-of-{total:05d}.gguf") for i in range(1, total + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise InvalidModelFile(
            f"{path.name} is part of a {total}-part split model but {len(missing)} part(s) are missing "
            f"(first: {missing[0]}); download every part into the same folder"
        )
    return parts


def read_spec(path: str | Path) -> ModelSpec:
    """Read and validate a local GGUF (every part of a split set). Raises InvalidModelFile with one line."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InvalidModelFile(f"{p} is a directory; name a .gguf file inside it")
    if not p.exists():
        raise ModelNotFound(f"no such file: {p}")
    if not p.is_file():
        raise InvalidModelFile(f"{p} is not a regular file")
    part_paths = split_parts(p)
    parsed: list[_Part] = []
    for i, part in enumerate(part_paths):
        label = part.name
        try:
            parsed.append(_parse(part, label))
        except _ShortRead as exc:
            have = part.stat().st_size
            if exc.end > 2 * have + (1 << 20):
                raise InvalidModelFile(
                    f"{label} is not a valid GGUF file: a length field points far past the end of the file"
                ) from None
            raise InvalidModelFile(
                f"{label} is truncated: its header needs {exc.end:,} bytes but the file has {have:,}; download it again"
            ) from None
        except PermissionError:
            raise InvalidModelFile(f"cannot read {part}: permission denied") from None
        except OSError as exc:
            raise InvalidModelFile(f"cannot read {part}: {exc.strerror or exc}") from None
        if len(part_paths) > 1:
            _check_split_part(parsed[-1], i, len(part_paths), label)
    size = sum(pp.stat().st_size for pp in part_paths)
    return _build_spec(str(p), part_paths[0].name, parsed, tuple(str(pp) for pp in part_paths), size, part_paths[0].name)


def _check_split_part(part: _Part, index: int, total: int, label: str) -> None:
    count = part.fields.get("split.count")
    no = part.fields.get("split.no")
    if count is None or no is None:
        raise InvalidModelFile(f"{label} is named as a split part but carries no split metadata")
    if int(count) != total or int(no) != index:
        raise InvalidModelFile(f"{label} says it is part {int(no) + 1} of {int(count)}, not part {index + 1} of {total}")


def find_models(directory: str | Path) -> list[Path]:
    """The .gguf models in a directory (first part only for split sets; vision projectors left out)."""
    d = Path(directory).expanduser()
    found = []
    for p in sorted(d.glob("*.gguf")):
        if not p.is_file():
            continue
        m = SPLIT_RE.match(p.name)
        if m and int(m.group("part")) != 1:
            continue
        if not is_model_gguf(p.name):
            continue  # vision projectors and imatrix files are not chat models
        found.append(p)
    return found


# --------------------------------------------------------------------------- files on the Hub

#: First Range request; a 50k-vocabulary header (about 1.8 MiB) fits in one.
REMOTE_FIRST_BYTES = 2 * 1024 * 1024
#: Give up on headers larger than this (no real GGUF header comes close).
REMOTE_MAX_HEADER = 256 * 1024 * 1024


def read_remote_spec(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> ModelSpec:
    """Read a GGUF header on the Hub with HTTP Range requests that grow until it parses.

    Only the header is fetched (no tensor data); a split set's parts are all read.
    ``ModelSpec.bytes_read`` says how many bytes came over the network.
    """
    from huggingface_hub import hf_hub_url

    from runner.catalog import hub_endpoint, hub_token, require_online

    endpoint = hub_endpoint(endpoint)
    token = hub_token(token) if token is None or isinstance(token, str) else token
    require_online(endpoint)
    folder, _, base = filename.rpartition("/")
    m = SPLIT_RE.match(base)
    if m:
        total = int(m.group("total"))
        prefix = f"{folder}/" if folder else ""
        names = [f"{prefix}{m.group('base')}-{i:05d}-of-{total:05d}.gguf" for i in range(1, total + 1)]
    else:
        names = [filename]
    parsed: list[_Part] = []
    size = 0
    read = 0
    for i, name in enumerate(names):
        url = hf_hub_url(repo_id, name, revision=revision, endpoint=endpoint)
        part, part_size, n_read = _read_remote_part(url, repo_id, name, endpoint=endpoint, token=token)
        if len(names) > 1:
            _check_split_part(part, i, len(names), name)
        parsed.append(part)
        size += part_size
        read += n_read
    first_url = hf_hub_url(repo_id, names[0], revision=revision, endpoint=endpoint)
    return _build_spec(first_url, names[0].rsplit("/", 1)[-1], parsed, tuple(names), size, f"{repo_id}/{names[0]}", read)


def _read_remote_part(
    url: str, repo_id: str, filename: str, *, endpoint: str | None, token: str | bool | None
) -> tuple[_Part, int, int]:
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.utils import build_hf_headers

    from runner.catalog import hub_errors

    with hub_errors(repo_id, filename, endpoint):
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    label = f"{repo_id}/{filename}"
    if not meta.size:
        raise HubError(f"the Hub did not report a size for {label}; try again later")
    from urllib.parse import urljoin

    location = urljoin(url, meta.location) if meta.location else url  # mirrors may answer a relative Location
    headers = build_hf_headers(token=token)
    headers["Accept-Encoding"] = "identity"
    if not _same_origin(url, location):
        # A signed CDN URL: the token must not leave the Hub (huggingface_hub does the same).
        headers.pop("authorization", None)
        headers.pop("Authorization", None)
    size = int(meta.size)
    buf = bytearray()
    want = min(REMOTE_FIRST_BYTES, size)
    with tempfile.TemporaryDirectory(prefix="fitchat-header-") as tmp:
        head_path = os.path.join(tmp, "head.gguf")
        while True:
            if want > len(buf):
                buf += _range_get(location, headers, len(buf), want - 1, label)
            with open(head_path, "wb") as fh:
                fh.write(buf)
            try:
                part = _parse(head_path, label, total_size=size)
                return part, size, len(buf)
            except _ShortRead as exc:
                if len(buf) >= size or exc.end > size:
                    raise InvalidModelFile(f"{label} is truncated or malformed: its header runs past the end of the file") from None
                if len(buf) >= REMOTE_MAX_HEADER:
                    raise InvalidModelFile(f"{label}: header larger than {REMOTE_MAX_HEADER >> 20} MiB; not a model fitchat can inspect") from None
                want = min(size, max(exc.end + 64 * 1024, 2 * len(buf)))


def _same_origin(a: str, b: str) -> bool:
    from urllib.parse import urlparse

    pa, pb = urlparse(a), urlparse(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def _range_get(url: str, headers: dict[str, str], start: int, end: int, label: str) -> bytes:
    """Bytes ``start..end`` (inclusive). Stops reading at the requested length even if the server ignores Range.

    Runs under the Hub deadline (:func:`runner.catalog.hub_deadline`) in stall mode with the bytes capped
    near the range: a header of several MiB over a slow link goes on while bytes come, a server that
    trickles or goes silent is cut off one window later with a one-line error naming it, and the whole
    read stays bounded because the range is.
    """
    from huggingface_hub.utils import get_session

    from runner.catalog import hub_deadline

    want = end - start + 1
    h = dict(headers)
    h["Range"] = f"bytes={start}-{end}"
    session = get_session()
    chunks: list[bytes] = []
    got = 0
    try:
        with hub_deadline(url, f"the header of {label}", stall=True, max_bytes=want + start + (1 << 20)):
            if hasattr(session, "stream"):  # httpx (huggingface_hub >= 1.0)
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
            else:  # requests (older huggingface_hub)
                with session.get(url, headers=h, stream=True, timeout=30) as resp:
                    _check_status(resp.status_code, label)
                    skip = 0 if resp.status_code == 206 else start
                    for chunk in resp.iter_content(1 << 16):
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
        raise HubError(f"could not read the header of {label}: {_reader_error(exc)}; check your connection or HF_ENDPOINT") from None
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
