"""What a GGUF file holds: architecture, shapes and per-layer tensor sizes, as a frozen ModelSpec.

Every header, local or remote, goes through one bounded reader:

- ``_HeaderScan`` first walks the raw bytes (struct, no numpy) and enforces the bounds below: tensor
  count, metadata entry count, key, string and array lengths, array nesting depth and the header's
  total size, each checked from the field that claims it and against the bytes the file can hold,
  before any loop over it starts. A hostile header fails in microseconds with a few KiB of memory;
- ``gguf.GGUFReader`` then parses the metadata (types, duplicate keys, alignment, byte order) through
  a thin subclass that reads scalar arrays in one vectorised step, skips long string arrays (the
  vocabulary, BPE merges) to the end the scan found, and takes the tensor infos from the scan, which
  makes a 262k-vocabulary header parse in well under a second instead of tens of seconds;
- tensor data is never mapped: the tensor infos are checked against the file the way llama.cpp's
  own loader checks them (types, dimensions, offsets, alignment, bounds);
- metadata that becomes a size, a loop bound or an index (block count, head counts, split numbers …)
  is range-checked before use; values quoted in messages are cut to about 80 characters.

Files on the Hub are read from their first bytes only (``read_spec_by_ranges``, fed by fitchat.hub.remote): the scan runs on what
has arrived and, where it stops, says which bytes it needs next and where the header probably ends;
Range requests fetch that, never past the header bound, and gguf parses the header once.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
import struct
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fitchat.errors import (
    InvalidModelFile,
    ModelNotFound,
    first_line,
)
from fitchat.format import printable, quoted
from fitchat.model.quants import is_model_gguf

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

#: Architectures whose every layer keeps a recurrent state (llama.cpp's llm_arch_is_recurrent), those whose
#: layers with no KV heads are the recurrent ones (hybrids: llama.cpp's ``is_recr = n_head_kv(il) == 0``), and
#: falcon-h1, whose layers run attention and an SSM side by side.
RECURRENT_ALL = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "falcon-h1"})
RECURRENT_NO_KV = frozenset({"lfm2", "lfm2moe", "granitehybrid", "jamba", "nemotron_h", "nemotron_h_moe", "plamo2"})

#: llama4 without a ``sliding_window`` key: llama.cpp uses chunked attention of this many tokens (every 4th
#: layer full, SWA_PATTERNS), the window-sized KV cache rule of a sliding window included.
LLAMA4_CHUNK = 8192

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
    # MLA head widths (``{arch}.attention.key_length_mla``/``value_length_mla``): present in the current GGUF
    # layout, where llama.cpp caches only the compressed row (key_length = kv_lora_rank + rope) and no V.
    key_length_mla: int = 0
    value_length_mla: int = 0
    # Recurrent state (Mamba-style SSM and LFM2 short convolutions): which layers keep one, and its widths.
    recurrent_layers: tuple[bool, ...] = ()
    ssm_d_conv: int = 0
    ssm_d_inner: int = 0
    ssm_d_state: int = 0
    ssm_n_group: int = 0
    shortconv_l_cache: int = 0
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


# --------------------------------------------------------------------------- bounds

MiB = 1024 * 1024

# What a header may claim. Each bound sits far above every real model and far below what would cost
# noticeable time or memory; the scan below enforces all of them from the raw bytes before gguf's
# reader builds anything, so a hostile header fails in milliseconds with a few KiB of memory.

#: The whole header (metadata and tensor infos). The largest real headers, big-vocabulary models with
#: their BPE merge lists, run to about 10 MiB (gemma-3: 6.2 MiB); 64 MiB leaves six times that. It is
#: also the most a remote header read ever fetches.
MAX_HEADER_BYTES = 64 * MiB
#: Tensors in one file. Real models hold a few hundred to about 2,000 (DeepSeek-V3: about 1,100; older
#: MoE files with one tensor per expert: about 1,700); 65,536 is thirty times that, and reads in well
#: under a second because tensor infos are read with one tight walk, not one numpy view per field.
MAX_TENSORS = 65_536
#: Metadata entries in one file. Real files hold 30 to about 100; gguf's reader spends some 45 µs on
#: each, so 4,096 (forty times the most seen) costs at most about 0.2 s.
MAX_METADATA_ENTRIES = 4_096
#: Length of one metadata key. Keys are dotted names (``llama.attention.head_count_kv``); the longest
#: in gguf's constants is under 60 bytes.
MAX_KEY_BYTES = 1_024
#: One string value or array item. Chat templates, the longest real strings, stay under about 100 KiB;
#: 16 MiB bounds what one value can cost once decoded.
MAX_STRING_BYTES = 16 * MiB
#: Items in one array. Vocabularies reach 262,144 tokens and merge lists about 300,000; 2^21 is seven
#: times the larger.
MAX_ARRAY_ELEMENTS = 1 << 21
#: String items over all arrays together, each walked in Python (about 0.25 µs apiece): a big-vocabulary
#: model holds about 600,000 (tokens and merges); 2^21 walks in about half a second.
MAX_ARRAY_STRINGS = 1 << 21
#: Arrays inside arrays. llama.cpp refuses any nested array; gguf's reader recurses into them, so the
#: depth must stay far below Python's recursion limit. Four levels keep every file gguf can write.
MAX_ARRAY_DEPTH = 4
#: Values gguf's reader builds one numpy view at a time (about 20 µs each): items of short string arrays
#: and of nested arrays. Real files hold a few hundred (general.tags, general.languages …).
MAX_VALUES_ONE_BY_ONE = 16_384
#: A tensor name, as llama.cpp allows it (GGML_MAX_NAME is 64 with the terminating NUL).
MAX_TENSOR_NAME_BYTES = 63
#: Parts of a split set. gguf-split names allow 99,999; real sets hold a few dozen at most (the Hub takes
#: files of up to 50 GB; 1,024 parts of even 4 GB hold twice the largest model). Each part of a remote set
#: costs a round trip. The counts above apply to a whole split set, except metadata entries: only the
#: first part carries the model's metadata, every other part its three or four split.* keys, so a set may
#: hold twice MAX_METADATA_ENTRIES in all.
MAX_SPLIT_PARTS = 1_024
#: Repeating blocks (``{arch}.block_count``). The deepest real models have under 200 layers; estimates
#: loop over the layers for every candidate plan.
MAX_LAYERS = 16_384
#: ``general.architecture``: llama.cpp's names (``llama``, ``gemma3``, ``deepseek2`` …) are under 20 characters.
MAX_ARCH_CHARS = 64
#: Any other count or length in the metadata (context length, head size, vocabulary size, expert count
#: …): real values stay below 2^24 (context: 10M tokens at most); 2^32 keeps sizes computed from them sane.
MAX_METADATA_INT = 1 << 32


# --------------------------------------------------------------------------- the reader


class _ShortRead(Exception):
    """More bytes of the file are needed; ``end`` is the offset the scan must be able to read up to."""

    def __init__(self, end: int) -> None:
        super().__init__(end)
        self.end = end


class _Malformed(Exception):
    """A structural problem, or a claim beyond the bounds; the text follows "<file> is not a valid GGUF file: "."""


class _Truncated(Exception):
    """The header runs past the end of the file: ``end`` bytes needed, ``size`` there."""

    def __init__(self, end: int, size: int) -> None:
        super().__init__(end, size)
        self.end, self.size = end, size


#: Vectorise scalar arrays and walk string arrays at or above this many elements.
_FAST_ARRAY_MIN = 256

# GGUF value types (gguf.GGUFValueType), and the size of each scalar.
_T_UINT32, _T_STRING, _T_ARRAY = 4, 8, 9
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
               8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}


@dataclass
class _SetBudget:
    """What the parts of one split set have claimed so far: the bounds hold for the set, not per file."""

    entries: int = 0
    tensors: int = 0
    array_strings: int = 0
    one_by_one: int = 0


class _HeaderScan:
    """One walk over a GGUF header's raw bytes that enforces every bound above before anything is parsed.

    It reads only length and count fields (struct, no numpy), so claims are refused from the field that
    makes them: a 2^40-item array, a 250 MB string or 400,000 tensors cost a few microseconds. It is
    resumable: ``advance`` raises ``_ShortRead`` at the first unit of the header (a key and its value,
    an array item, a tensor info) that lies past the bytes at hand, and continues from there when given
    more, so a remote header is walked once however many requests it takes. When it finishes it knows
    where the header ends, and the tensor infos (which gguf's reader would turn into six numpy views each).
    """

    def __init__(self, total_size: int, budget: _SetBudget | None = None) -> None:
        self.total_size = total_size
        self.budget = budget if budget is not None else _SetBudget()
        self.pos = 0
        self.order = "<"
        self.n_tensors = 0
        self.kv_left = -1  # -1 until the fixed preamble has been read
        self.tensors_left = 0
        #: The arrays being walked, innermost last: [item type, items left, length, offset of the first item].
        self.stack: list[list[int]] = []
        self.key = ""
        self.alignment = 32
        self.string_array_ends: dict[int, int] = {}  # first item of a long string array -> its end
        self.kv_end = 0
        self.tensor_infos: list[tuple[bytes, list[int], int, int]] = []
        self.header_end: int | None = None

    # -- helpers ----------------------------------------------------------------------------------
    def _need(self, end: int, avail: int) -> None:
        if end > self.total_size:
            raise _Truncated(end, self.total_size)
        if end > MAX_HEADER_BYTES:
            raise _Malformed(
                f"its header runs past {MAX_HEADER_BYTES // MiB} MiB (real headers stay under about 10 MiB)"
            )
        if end > avail:
            raise _ShortRead(end)

    def _check_count(self, count: int, what: tuple[str, str], min_item: int, limit: int, pos: int) -> None:
        """A claimed count, against its bound, the bytes the file has left and the header budget.

        ``what``: who claims it and what is counted, for the message (``("its header", "tensors")``).
        """
        if count > limit:
            raise _Malformed(f"{what[0]} claims {count:,} {what[1]}; fitchat reads at most {limit:,}")
        need = pos + count * min_item
        if need > self.total_size:
            raise _Truncated(need, self.total_size) if count <= 10_000_000 else _Malformed(
                f"{what[0]} claims {count:,} {what[1]}, more than a {self.total_size:,}-byte file can hold"
            )
        if need > MAX_HEADER_BYTES:
            raise _Malformed(
                f"{what[0]} claims {count:,} {what[1]}, more than a {MAX_HEADER_BYTES // MiB} MiB header can hold"
            )

    def _string_length(self, length: int, what: str) -> None:
        if length > MAX_STRING_BYTES:
            raise _Malformed(
                f"the length field of {what} says {length:,} bytes; "
                f"fitchat reads strings of at most {MAX_STRING_BYTES // MiB} MiB"
            )

    def expected_end(self) -> int:
        """Where the header probably ends, from what the walk has seen: the arrays being walked at their
        average item size so far, and every tensor info still to come at its largest (119 bytes)."""
        end = self.pos
        for itype, left, count, first in self.stack:
            if itype in _SCALAR_SIZE:
                end += left * _SCALAR_SIZE[itype]
            elif itype == _T_STRING:
                walked = count - left
                end += left * ((self.pos - first) // walked if walked else 16)
            else:
                end += left * 12
        tensor_info_max = 8 + MAX_TENSOR_NAME_BYTES + 4 + 8 * GGML_MAX_DIMS + 12
        return end + max(self.kv_left, 0) * 13 + self.tensors_left * tensor_info_max

    # -- the walk ---------------------------------------------------------------------------------
    def advance(self, buf: Any, avail: int) -> int:
        """Walk on through ``buf[:avail]``; returns where the header ends (the tensor data's unaligned start)."""
        if self.header_end is not None:
            return self.header_end
        u32 = struct.Struct(self.order + "I").unpack_from
        u64 = struct.Struct(self.order + "Q").unpack_from
        if self.kv_left < 0:
            self._need(24, avail)
            (version,) = u32(buf, 4)
            if version & 0xFFFF == 0:  # written on a machine of the other byte order (gguf's own test)
                self.order = ">"
                u32 = struct.Struct(">I").unpack_from
                u64 = struct.Struct(">Q").unpack_from
                (version,) = u32(buf, 4)
            if version not in (2, 3):
                raise _Malformed(f"it is GGUF version {version}; fitchat reads versions 2 and 3")
            n_tensors, n_kv = u64(buf, 8)[0], u64(buf, 16)[0]
            # Smallest entry: key length (8) + type (4) + a one-byte value; smallest tensor info:
            # name length (8) + n_dims (4) + type (4) + offset (8).
            budget = self.budget
            self._check_count(n_tensors, ("its header", "tensors"), 24, MAX_TENSORS, 24)
            self._check_count(n_kv, ("its header", "metadata entries"), 13, MAX_METADATA_ENTRIES, 24)
            if budget.tensors + n_tensors > MAX_TENSORS:
                raise _Malformed(f"its split set holds more than {MAX_TENSORS:,} tensors")
            if budget.entries + n_kv > 2 * MAX_METADATA_ENTRIES:
                raise _Malformed(f"its split set holds more than {2 * MAX_METADATA_ENTRIES:,} metadata entries")
            least = 24 + 13 * n_kv + 24 * n_tensors
            if least > self.total_size:
                raise _Truncated(least, self.total_size)
            self.n_tensors, self.tensors_left, self.kv_left, self.pos = n_tensors, n_tensors, n_kv, 24
            budget.tensors += n_tensors
            budget.entries += n_kv
        while self.kv_left or self.stack:
            if self.stack:
                self._array_items(buf, avail, u32, u64)
            else:
                self._entry(buf, avail, u32, u64)
        self.kv_end = self.kv_end or self.pos
        while self.tensors_left:
            self._tensor_info(buf, avail, u32, u64)
        self._need(self.pos, avail)
        self.header_end = self.pos
        return self.pos

    def _entry(self, buf: Any, avail: int, u32: Any, u64: Any) -> None:
        """One metadata entry: its key, its type and a scalar or string value, or an array's header."""
        p = self.pos
        self._need(p + 8, avail)
        (klen,) = u64(buf, p)
        if klen > MAX_KEY_BYTES:
            raise _Malformed(f"the length field of a metadata key says {klen:,} bytes; keys are at most {MAX_KEY_BYTES:,}")
        self._need(p + 12 + klen, avail)
        raw_key = bytes(buf[p + 8 : p + 8 + klen])
        if not raw_key:
            raise _Malformed("a metadata key is empty")
        try:
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed(f"the metadata key {quoted(raw_key)} is not UTF-8") from None
        (vtype,) = u32(buf, p + 8 + klen)
        p += 12 + klen
        if vtype == _T_ARRAY:
            self._need(p + 12, avail)
            (itype,), (count,) = u32(buf, p), u64(buf, p + 4)
            self._array_header(key, itype, count, p + 12, depth=1)
            p += 12
        elif vtype == _T_STRING:
            self._need(p + 8, avail)
            (slen,) = u64(buf, p)
            self._string_length(slen, f"the value of {quoted(key)}")
            self._need(p + 8 + slen, avail)
            p += 8 + slen
        elif vtype in _SCALAR_SIZE:
            self._need(p + _SCALAR_SIZE[vtype], avail)
            if key == "general.alignment" and vtype == _T_UINT32:
                self.alignment = u32(buf, p)[0]
            p += _SCALAR_SIZE[vtype]
        else:
            raise _Malformed(f"the metadata entry {quoted(key)} has unknown type {vtype}")
        self.key, self.pos = key, p
        self.kv_left -= 1

    def _array_header(self, key: str, itype: int, count: int, start: int, depth: int) -> None:
        if depth > MAX_ARRAY_DEPTH:
            raise _Malformed(f"the array {quoted(key)} nests arrays more than {MAX_ARRAY_DEPTH} deep")
        if itype == _T_STRING:
            min_item = 8
        elif itype == _T_ARRAY:
            min_item = 12
        elif itype in _SCALAR_SIZE:
            min_item = _SCALAR_SIZE[itype]
        else:
            raise _Malformed(f"the array {quoted(key)} has unknown element type {itype}")
        self._check_count(count, (f"the array {quoted(key)}", "array elements"), min_item, MAX_ARRAY_ELEMENTS, start)
        budget = self.budget
        if itype == _T_ARRAY or (itype == _T_STRING and count < _FAST_ARRAY_MIN):
            budget.one_by_one += count  # gguf's reader builds these one at a time
            if budget.one_by_one > MAX_VALUES_ONE_BY_ONE:
                raise _Malformed(
                    f"its metadata holds more than {MAX_VALUES_ONE_BY_ONE:,} short-array and nested-array items"
                )
        if itype == _T_STRING:
            budget.array_strings += count
            if budget.array_strings > MAX_ARRAY_STRINGS:
                raise _Malformed(f"its metadata arrays hold more than {MAX_ARRAY_STRINGS:,} strings")
        self.key = key
        self.stack.append([itype, count, count, start])

    def _array_items(self, buf: Any, avail: int, u32: Any, u64: Any) -> None:
        """Items of the innermost array being walked, as far as the bytes at hand go."""
        top = self.stack[-1]
        itype, left, count, first = top
        if itype in _SCALAR_SIZE:
            self.pos += left * _SCALAR_SIZE[itype]  # checked against the file and the budget at the header
            self.stack.pop()
            return
        if itype == _T_ARRAY:
            if left:
                p = self.pos
                self._need(p + 12, avail)
                (sub_type,), (sub_count,) = u32(buf, p), u64(buf, p + 4)
                top[1] = left - 1
                self._array_header(self.key, sub_type, sub_count, p + 12, depth=len(self.stack) + 1)
                self.pos = p + 12
            else:
                self.stack.pop()
            return
        # Strings: a tight loop, the vocabulary's hundreds of thousands of items.
        p = self.pos
        bound = min(avail, MAX_HEADER_BYTES)  # past it, _need says which: more bytes, truncated or too big
        try:
            while left:
                if p + 8 > bound:
                    self._need(p + 8, avail)
                (slen,) = u64(buf, p)
                if slen > MAX_STRING_BYTES:
                    self._string_length(slen, f"item {count - left:,} of {quoted(self.key)}")
                end = p + 8 + slen
                if end > bound:
                    self._need(end, avail)
                p = end
                left -= 1
        finally:
            self.pos, top[1] = p, left  # an item is either walked whole or not at all
        if count >= _FAST_ARRAY_MIN:
            self.string_array_ends[first] = p
        self.stack.pop()

    def _tensor_info(self, buf: Any, avail: int, u32: Any, u64: Any) -> None:
        p = self.pos
        index = len(self.tensor_infos)
        self._need(p + 8, avail)
        (nlen,) = u64(buf, p)
        if nlen > MAX_TENSOR_NAME_BYTES:
            raise _Malformed(
                f"the name of tensor {index:,} is {nlen:,} bytes long; llama.cpp allows at most {MAX_TENSOR_NAME_BYTES}"
            )
        self._need(p + 12 + nlen, avail)
        name = bytes(buf[p + 8 : p + 8 + nlen])
        (n_dims,) = u32(buf, p + 8 + nlen)
        if n_dims > GGML_MAX_DIMS:
            raise _Malformed(
                f"tensor {quoted(name.decode('utf-8', 'replace'))} has {n_dims:,} dimensions (at most {GGML_MAX_DIMS})"
            )
        q = p + 12 + nlen
        self._need(q + 8 * n_dims + 12, avail)
        dims = [u64(buf, q + 8 * i)[0] for i in range(n_dims)]
        q += 8 * n_dims
        (ggml_type,), (offset,) = u32(buf, q), u64(buf, q + 4)
        self.tensor_infos.append((name, dims, ggml_type, offset))
        self.pos = q + 12
        self.tensors_left -= 1


def _reader_class() -> type:
    """Build the checked reader lazily (numpy and gguf are imported only when a file is read)."""
    global _READER
    if _READER is not None:
        return _READER
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    scalar_np = GGUFReader.gguf_scalar_to_np
    t_string, t_array = int(GGUFValueType.STRING), int(GGUFValueType.ARRAY)

    class CheckedReader(GGUFReader):
        """gguf's reader on a header that ``_HeaderScan`` has already walked and bounded.

        gguf parses the metadata (types, duplicate keys, alignment, byte order); the scan's results stand
        in where gguf would be slow or trusts the file: scalar arrays are read as one vectorised view,
        long string arrays (the vocabulary) are skipped to the end the scan found, and tensor infos come
        from the scan (gguf builds six numpy views per tensor, about 75 µs each, and maps tensor data).
        """

        def __init__(self, path: str | os.PathLike[str], scan: _HeaderScan) -> None:
            self._scan = scan
            super().__init__(path, "r")

        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
            # A last guard: nothing past the bytes at hand (the scan has already checked every field).
            count, offset = int(count), int(offset)
            end = offset + np.dtype(dtype).itemsize * count
            if count < 0 or offset < 0 or end > int(self.data.shape[0]):
                raise _Malformed(f"a field at byte {offset:,} runs past the header")
            return super()._get(offset, dtype, count, override_order)

        def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list[Any], list[int], list[Any]]:
            if int(raw_type) != t_array:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype, n = int(raw_itype[0]), int(alen[0])
            start = orig_offs + 12
            if itype == t_array or (itype == t_string and n < _FAST_ARRAY_MIN):
                return super()._get_field_parts(orig_offs, raw_type)
            types = [GGUFValueType.ARRAY, GGUFValueType(itype)]
            if itype == t_string:
                end = self._scan.string_array_ends.get(start)
                if end is None:
                    raise _Malformed(f"a string array at byte {start:,} was not where the header scan found one")
                blob = self._get(start, np.uint8, end - start)
                # One part for the whole block: ``contents()`` is not used on these (the vocabulary).
                return end - orig_offs, [raw_itype, alen, blob], [], types
            values = self._get(start, scalar_np[GGUFValueType(itype)], n)
            return 12 + int(values.nbytes), [raw_itype, alen, values], [2], types

        def _build_tensor_info(self, offs: int, count: int) -> tuple[int, list[Any]]:
            if int(offs) != self._scan.kv_end or int(count) != len(self._scan.tensor_infos):
                raise _Malformed("the metadata does not end where the header scan found it ending")
            end = self._scan.header_end
            assert end is not None  # the reader runs only on a finished scan
            return end, []

        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
            self.tensor_infos = self._scan.tensor_infos
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


def _scan_local(path: str | os.PathLike[str], size: int, budget: _SetBudget | None) -> _HeaderScan:
    """Walk a local file's header through a read-only map: only the pages holding fields are read."""
    scan = _HeaderScan(size, budget)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        scan.advance(mm, len(mm))
    return scan


def _check_magic(head: bytes, label: str) -> None:
    if len(head) < 4 or head[:4] != b"GGUF":
        raise InvalidModelFile(f"{label} is not a GGUF file (it starts with {printable(repr(head[:4]), 40)}, not b'GGUF')")


def _truncated_message(label: str, exc: _Truncated) -> str:
    if exc.end > 2 * exc.size + MiB:
        return f"{label} is not a valid GGUF file: a length field points far past the end of the file"
    return f"{label} is truncated: its header needs {exc.end:,} bytes but the file has {exc.size:,}; download it again"


def _parse(
    path: str | os.PathLike[str],
    label: str,
    total_size: int | None = None,
    scan: _HeaderScan | None = None,
    budget: _SetBudget | None = None,
) -> _Part:
    """Parse one GGUF header; raises InvalidModelFile.

    ``path`` holds the whole file, or (with ``total_size`` and a finished ``scan``) its header only.
    ``budget``: what the earlier parts of the same split set have claimed.
    """
    from gguf import GGMLQuantizationType, GGUFValueType
    from gguf.constants import GGML_QUANT_SIZES

    size = total_size if total_size is not None else os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if size == 0:
        raise InvalidModelFile(f"{label} is empty, not a GGUF model")
    _check_magic(head, label)
    try:
        if scan is None:
            scan = _scan_local(path, size, budget)
        reader = _reader_class()(path, scan)
    except _Truncated as exc:
        raise InvalidModelFile(_truncated_message(label, exc)) from None
    except _Malformed as exc:
        raise InvalidModelFile(f"{label} is not a valid GGUF file: {exc}") from None
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError, MemoryError,
            RecursionError) as exc:
        raise InvalidModelFile(f"{label} is not a valid GGUF file: {_reader_error(exc)}") from None

    fields: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    try:
        for key, f in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            main = f.types[0] if f.types else None
            if main == GGUFValueType.ARRAY:
                lengths[key] = int(f.parts[4][0])
                if lengths[key] < _FAST_ARRAY_MIN and f.types[-1] != GGUFValueType.ARRAY:
                    fields[key] = f.contents()
            else:
                fields[key] = f.contents()
    except (ValueError, UnicodeDecodeError, IndexError) as exc:
        raise InvalidModelFile(f"{label} is not a valid GGUF file: unreadable metadata ({_reader_error(exc)})") from None

    alignment = int(reader.alignment)
    data_offset = int(reader.data_offset)
    tensors = []
    seen: set[bytes] = set()
    expected = 0
    for i, (raw_name, dims, raw_type, offset) in enumerate(reader.tensor_infos):
        if raw_name in seen:
            raise InvalidModelFile(f"{label}: tensor {quoted(raw_name.decode('utf-8', 'replace'))} appears twice")
        seen.add(raw_name)
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidModelFile(f"{label}: tensor {i} has a name that is not UTF-8") from None
        if not name:
            raise InvalidModelFile(f"{label}: tensor {i} has an empty name")
        if len(dims) > GGML_MAX_DIMS:
            raise InvalidModelFile(f"{label}: tensor {quoted(name)} has {len(dims)} dimensions (at most {GGML_MAX_DIMS})")
        if any(d <= 0 for d in dims):
            raise InvalidModelFile(f"{label}: tensor {quoted(name)} has a zero or negative dimension {dims}")
        try:
            qtype = GGMLQuantizationType(raw_type)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise InvalidModelFile(f"{label}: tensor {quoted(name)} has unknown type {raw_type}") from None
        n_el = 1
        for d in dims:
            n_el *= d
        if n_el >= 1 << 62:
            raise InvalidModelFile(f"{label}: tensor {quoted(name)} is impossibly large ({dims})")
        row = dims[0] if dims else 1  # no dimensions: a scalar
        if row % block:
            raise InvalidModelFile(f"{label}: tensor {quoted(name)} row length {row} is not a multiple of {block} ({qtype.name})")
        n_bytes = n_el // block * type_size
        if offset != expected:
            raise InvalidModelFile(
                f"{label}: tensor {quoted(name)} starts at data offset {offset:,}, expected {expected:,} "
                "(overlapping or misplaced tensor data)"
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
    """The first line of an exception's text, made printable and short (it may quote bytes from the file)."""
    return first_line(exc, 120)


# --------------------------------------------------------------------------- building the spec


#: A block's tensor as llama.cpp names it (``blk.%d.…``): the block number in plain ASCII decimal.
_BLOCK_NAME_RE = re.compile(r"blk\.(0|[1-9][0-9]*)(?:\.|$)")


def block_of(name: str) -> int | None:
    """The block a tensor belongs to (``blk.12.attn_q.weight -> 12``), None for the model's other tensors.

    The one reading of a block number: a ModelSpec holds only tensors whose ``blk.`` names pass
    :func:`_check_block_names`, so every consumer (groups, placement, the experts' override) agrees.
    """
    m = _BLOCK_NAME_RE.match(name)
    return int(m.group(1)) if m else None


def _check_block_names(tensors: Iterable[TensorInfo], n_layers: int, label: str) -> None:
    """Every ``blk.`` tensor names one of the model's blocks, as llama.cpp creates them (a tensor it does
    not create fails its load: "wrong number of tensors"); a name like ``blk.x.`` or ``blk.99999.`` is refused
    here rather than reach the estimate's placement as a number it cannot read or a layer that is not there."""
    for t in tensors:
        if not t.name.startswith("blk."):
            continue
        il = block_of(t.name)
        if il is None or il >= n_layers:
            raise InvalidModelFile(
                f"{label}: tensor {quoted(t.name)} names no block of the model's {n_layers:,} "
                f"(llama.cpp names them blk.0 to blk.{n_layers - 1})"
            )


def _group(name: str) -> str:
    """``blk.12.attn_q.weight -> blk.12``; ``token_embd.weight -> token_embd``."""
    il = block_of(name)
    return f"blk.{il}" if il is not None else name.split(".")[0]


def _as_layers(value: Any, n_layers: int, default: int) -> tuple[int, ...]:
    """A per-layer value that GGUF stores as one number or as an array (one per layer).

    The array may be shorter or longer than ``n_layers`` (already bounded): it is padded or cut to it.
    """
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


def _int_field(
    fields: Mapping[str, Any], key: str, label: str, *, required: bool = False, default: int = 0,
    maximum: int = MAX_METADATA_INT,
) -> int:
    """A whole number from the metadata (the largest item of a per-layer array), between 0 and ``maximum``."""
    value = fields.get(key)
    if value is None:
        if required:
            raise InvalidModelFile(f"{label} lacks the metadata key {quoted(key)}; it is not a model llama.cpp can load")
        return default
    if isinstance(value, list):
        value = max(value) if value else default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidModelFile(f"{label}: metadata key {quoted(key)} is not a number ({quoted(value, 40)})")
    try:
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidModelFile(f"{label}: metadata key {quoted(key)} is not a number ({quoted(value, 40)})") from None
    if out < 0:
        raise InvalidModelFile(f"{label}: metadata key {quoted(key)} is negative ({out:,})")
    if out > maximum:
        raise InvalidModelFile(f"{label}: metadata key {quoted(key)} is implausibly large ({out:,}; at most {maximum:,})")
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


def _recurrent_layers(arch: str, n_layers: int, n_head_kv_layers: tuple[int, ...]) -> tuple[bool, ...]:
    if arch in RECURRENT_ALL:
        return (True,) * n_layers
    if arch in RECURRENT_NO_KV:
        return tuple(il < len(n_head_kv_layers) and n_head_kv_layers[il] == 0 for il in range(n_layers))
    return (False,) * n_layers


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
    if len(arch) > MAX_ARCH_CHARS:
        # It becomes part of every key looked up below, and of messages.
        raise InvalidModelFile(f"{label}: general.architecture is not an architecture name ({quoted(arch)})")
    tensors: list[TensorInfo] = []
    for i, p in enumerate(parts):
        tensors.extend(TensorInfo(t.name, t.ggml_type, t.type_name, t.shape, t.n_bytes, t.offset, i) for t in p.tensors)
    if not tensors:
        raise InvalidModelFile(f"{label} holds no tensors; it is not a model file")
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            raise InvalidModelFile(f"{label}: tensor {quoted(t.name)} appears more than once across the split parts")
        seen.add(t.name)
    if "split.tensors.count" in f:
        expected_tensors = _int_field(f, "split.tensors.count", label)
        if expected_tensors != len(tensors):
            raise InvalidModelFile(
                f"{label}: the split set should hold {expected_tensors:,} tensors but its parts hold {len(tensors):,}; "
                "a part is missing or damaged"
            )

    n_layers = _int_field(f, f"{arch}.block_count", label, required=True)
    n_embd = _int_field(f, f"{arch}.embedding_length", label, required=True)
    if n_layers == 0 or n_layers > MAX_LAYERS or n_embd == 0 or n_embd > 1 << 24:
        raise InvalidModelFile(f"{label}: implausible shape (block_count={n_layers:,}, embedding_length={n_embd:,})")
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
    if arch == "llama4" and f.get(f"{arch}.attention.sliding_window") is None:
        window = LLAMA4_CHUNK

    token_embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    vocab = _int_field(f, f"{arch}.vocab_size", label, default=0)
    if not vocab:
        vocab = first.array_lengths.get("tokenizer.ggml.tokens", 0)
    if not vocab and token_embd is not None and len(token_embd.shape) >= 2:
        vocab = token_embd.shape[1]

    _check_block_names(tensors, n_layers, label)
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
    file_type_int = int(file_type) if isinstance(file_type, int) and 0 <= file_type < 1 << 16 else -1
    n_ff = _int_field(f, f"{arch}.feed_forward_length", label)
    name = f.get("general.name")
    name = printable(name, 256, one_line=True) if isinstance(name, str) else None  # for display only
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
        name=name,
        n_ff=n_ff,
        n_expert=_int_field(f, f"{arch}.expert_count", label),
        n_expert_used=_int_field(f, f"{arch}.expert_used_count", label),
        n_ff_expert=_int_field(f, f"{arch}.expert_feed_forward_length", label),
        n_head_kv_layers=n_head_kv_layers,
        n_head_layers=n_head_layers,
        swa_layers=_swa_layers(arch, f, n_layers, window),
        kv_lora_rank=_int_field(f, f"{arch}.attention.kv_lora_rank", label),
        rope_dim=_int_field(f, f"{arch}.rope.dimension_count", label),
        key_length_mla=_int_field(f, f"{arch}.attention.key_length_mla", label),
        value_length_mla=_int_field(f, f"{arch}.attention.value_length_mla", label),
        recurrent_layers=_recurrent_layers(arch, n_layers, n_head_kv_layers),
        ssm_d_conv=_int_field(f, f"{arch}.ssm.conv_kernel", label),
        ssm_d_inner=_int_field(f, f"{arch}.ssm.inner_size", label),
        ssm_d_state=_int_field(f, f"{arch}.ssm.state_size", label),
        ssm_n_group=_int_field(f, f"{arch}.ssm.group_count", label),
        shortconv_l_cache=_int_field(f, f"{arch}.shortconv.l_cache", label),
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
    if total < 1 or total > MAX_SPLIT_PARTS:
        raise InvalidModelFile(f"{printable(path.name, 200, one_line=True)}: implausible split count {total}")
    parts = [path.with_name(f"{m.group('base')}-{i:05d}-of-{total:05d}.gguf") for i in range(1, total + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise InvalidModelFile(
            f"{path.name} is part of a {total}-part split model but {len(missing)} part(s) are missing "
            f"(first: {missing[0]}); download every part into the same folder"
        )
    return parts


#: Specs read lately, by each part's path, size, mtime and inode: the home screen, ``ls`` and ``fit`` read the
#: same headers again and again (tens of MiB each for a large vocabulary); a changed file is read anew.
_SPEC_CACHE: OrderedDict[tuple[tuple[str, int, int, int], ...], ModelSpec] = OrderedDict()
_SPEC_CACHE_SIZE = 64
_SPEC_CACHE_LOCK = threading.Lock()


def read_spec(path: str | Path) -> ModelSpec:
    """Read and validate a local GGUF (every part of a split set). Raises InvalidModelFile with one line.

    A file already read, unchanged since (path, size, mtime, inode), is not parsed again.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise InvalidModelFile(f"{p} is a directory; name a .gguf file inside it")
    if not p.exists():
        raise ModelNotFound(f"no such file: {p}")
    if not p.is_file():
        raise InvalidModelFile(f"{p} is not a regular file")
    part_paths = split_parts(p)
    try:
        key = tuple((str(pp), (st := pp.stat()).st_size, st.st_mtime_ns, st.st_ino) for pp in part_paths)
    except OSError:
        key = None  # a part went missing: the parse below says which, in one line
    if key is not None:
        with _SPEC_CACHE_LOCK:
            cached = _SPEC_CACHE.get(key)
            if cached is not None:
                _SPEC_CACHE.move_to_end(key)
                return cached if cached.path_or_url == str(p) else dataclasses.replace(cached, path_or_url=str(p))
    spec = _read_spec_parts(p, part_paths)
    if key is not None:
        with _SPEC_CACHE_LOCK:
            _SPEC_CACHE[key] = spec
            while len(_SPEC_CACHE) > _SPEC_CACHE_SIZE:
                _SPEC_CACHE.popitem(last=False)
    return spec


def _read_spec_parts(p: Path, part_paths: list[Path]) -> ModelSpec:
    parsed: list[_Part] = []
    budget = _SetBudget()
    for i, part in enumerate(part_paths):
        label = printable(part.name, 200, one_line=True)
        try:
            parsed.append(_parse(part, label, budget=budget))
        except PermissionError:
            raise InvalidModelFile(f"cannot read {part}: permission denied") from None
        except OSError as exc:
            raise InvalidModelFile(f"cannot read {part}: {exc.strerror or exc}") from None
        if len(part_paths) > 1:
            _check_split_part(parsed[-1], i, len(part_paths), label)
    size = sum(pp.stat().st_size for pp in part_paths)
    label = printable(part_paths[0].name, 200, one_line=True)
    return _build_spec(str(p), part_paths[0].name, parsed, tuple(str(pp) for pp in part_paths), size, label)


def _check_split_part(part: _Part, index: int, total: int, label: str) -> None:
    """The part's own split.no and split.count agree with its name (any type or size is refused here)."""
    count = part.fields.get("split.count")
    no = part.fields.get("split.no")
    if count is None or no is None:
        raise InvalidModelFile(f"{label} is named as a split part but carries no split metadata")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (count, no)):
        raise InvalidModelFile(f"{label}: its split.no and split.count are not whole numbers ({quoted(no)}, {quoted(count)})")
    if count != total or no != index:
        raise InvalidModelFile(f"{label} says it is part {no + 1:,} of {count:,}, not part {index + 1} of {total}")


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


# --------------------------------------------------------------------------- headers read by ranges
# The header reader for a file that is not on disk: its bytes come from a ``RangeReader`` (HTTP Range
# requests, in fitchat.hub.remote), and the header scan says how many to ask for. No I/O is chosen here.


#: First Range request; a 50k-vocabulary header (about 1.8 MiB) fits in one.
REMOTE_FIRST_BYTES = 2 * 1024 * 1024
#: First Range request for the later parts of a split set (they carry only split.* metadata).
REMOTE_FIRST_BYTES_LATER_PARTS = 64 * 1024
#: The most a remote header read fetches: the header bound itself.
REMOTE_MAX_HEADER = MAX_HEADER_BYTES
#: Fetched beyond the scan's estimate of the header's end, so that the metadata after the vocabulary
#: (scores, token types, merges' neighbours, tensor infos) usually arrives in the same request.
_REMOTE_SLACK = 64 * 1024


#: Bytes ``start..end`` (inclusive) of one file.
RangeReader = Callable[[int, int], bytes]
#: Opens part ``i`` (named ``name``) of a set: its size in bytes and a reader of its bytes.
PartOpener = Callable[[int, str], "tuple[int, RangeReader]"]


def split_set_names(filename: str) -> list[str]:
    """Every part's name of the split set ``filename`` belongs to (``[filename]`` when it is not split)."""
    folder, _, base = filename.rpartition("/")
    m = SPLIT_RE.match(base)
    if not m:
        return [filename]
    total = int(m.group("total"))
    if total < 1 or total > MAX_SPLIT_PARTS:
        raise InvalidModelFile(f"{printable(filename, 200, one_line=True)}: implausible split count {total}")
    prefix = f"{folder}/" if folder else ""
    return [f"{prefix}{m.group('base')}-{i:05d}-of-{total:05d}.gguf" for i in range(1, total + 1)]


def read_spec_by_ranges(location: str, names: list[str], open_part: PartOpener, label: str) -> ModelSpec:
    """A GGUF (or split set) read by byte ranges: requests sized by the header scan, one parse of the header.

    ``location`` is what the spec calls its ``path_or_url``; ``label`` names it in messages.
    ``ModelSpec.bytes_read`` says how many bytes were asked for.
    """
    parsed: list[_Part] = []
    size = 0
    read = 0
    budget = _SetBudget()
    for i, name in enumerate(names):
        part_label = printable(name, 200, one_line=True)
        part_size, reader = open_part(i, name)
        # Only the first part of a split set carries the model's metadata; the others start small.
        first_bytes = REMOTE_FIRST_BYTES if i == 0 else REMOTE_FIRST_BYTES_LATER_PARTS
        part, n_read = _read_part_by_ranges(reader, part_size, label if i == 0 else part_label, budget, first_bytes)
        if len(names) > 1:
            _check_split_part(part, i, len(names), part_label)
        parsed.append(part)
        size += part_size
        read += n_read
        if read > 2 * MAX_HEADER_BYTES:
            raise InvalidModelFile(
                f"{label}: the split set's headers run past {2 * MAX_HEADER_BYTES // MiB} MiB together; "
                "not a model fitchat can inspect"
            )
    return _build_spec(location, names[0].rsplit("/", 1)[-1], parsed, tuple(names), size, label, read)


def _read_part_by_ranges(reader: RangeReader, size: int, label: str, budget: _SetBudget,
                         first_bytes: int) -> tuple[_Part, int]:
    """One file's header: ranges sized by the header scan, then one parse of exactly those bytes."""
    if size <= 0:
        raise InvalidModelFile(f"{label} is empty")
    buf = bytearray(reader(0, min(first_bytes, size) - 1))
    _check_magic(bytes(buf[:8]), label)
    scan = _HeaderScan(size, budget)
    while True:
        try:
            header_end = scan.advance(buf, len(buf))
            break
        except _ShortRead as exc:
            # The scan stopped at a unit past the bytes at hand; ask for that unit and what the scan
            # expects to follow, never past the header bound (the scan refuses a header beyond it).
            want = min(size, MAX_HEADER_BYTES, max(exc.end, scan.expected_end(), 2 * len(buf)) + _REMOTE_SLACK)
            buf += reader(len(buf), want - 1)
        except _Truncated:
            raise InvalidModelFile(f"{label} is truncated or malformed: its header runs past the end of the file") from None
        except _Malformed as exc:
            raise InvalidModelFile(f"{label} is not a valid GGUF file: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="fitchat-header-") as tmp:
        head_path = os.path.join(tmp, "head.gguf")
        with open(head_path, "wb") as fh:
            fh.write(buf[:header_end])
        return _parse(head_path, label, total_size=size, scan=scan), len(buf)
