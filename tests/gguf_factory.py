"""Small GGUF files for the header-reader tests: valid ones from gguf's own GGUFWriter, and raw bytes
for the malformed ones the writer refuses to produce (zero dimensions, absurd counts, bad offsets)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)


def tiny_llama(
    path: Path,
    *,
    n_layers: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_vocab: int = 300,
    tied: bool = False,
    chat_template: str | None = "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    split_max_tensors: int = 0,
    sliding_window: int | None = None,
    arch: str = "llama",
) -> list[Path]:
    """A structurally valid (random-weight) model written by gguf.GGUFWriter; returns the file(s) written."""
    from gguf import GGUFWriter, LlamaFileType

    w = GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    w.add_name("tiny test model")
    w.add_block_count(n_layers)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_embd * 2)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(LlamaFileType.MOSTLY_F16)
    if sliding_window:
        w.add_sliding_window(sliding_window)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}" for i in range(n_vocab)])
    w.add_token_types([1] * n_vocab)
    w.add_token_scores([0.0] * n_vocab)
    if chat_template:
        w.add_chat_template(chat_template)
    rng = np.random.default_rng(0)

    def t(name: str, *shape: int, dtype: type = np.float16) -> None:
        w.add_tensor(name, rng.standard_normal(shape).astype(dtype))

    t("token_embd.weight", n_vocab, n_embd)
    head_dim = n_embd // n_head
    for il in range(n_layers):
        t(f"blk.{il}.attn_norm.weight", n_embd, dtype=np.float32)
        t(f"blk.{il}.attn_q.weight", n_embd, n_embd)
        t(f"blk.{il}.attn_k.weight", n_head_kv * head_dim, n_embd)
        t(f"blk.{il}.attn_v.weight", n_head_kv * head_dim, n_embd)
        t(f"blk.{il}.attn_output.weight", n_embd, n_embd)
        t(f"blk.{il}.ffn_norm.weight", n_embd, dtype=np.float32)
        t(f"blk.{il}.ffn_gate.weight", 2 * n_embd, n_embd)
        t(f"blk.{il}.ffn_up.weight", 2 * n_embd, n_embd)
        t(f"blk.{il}.ffn_down.weight", n_embd, 2 * n_embd)
    t("output_norm.weight", n_embd, dtype=np.float32)
    if not tied:
        t("output.weight", n_vocab, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if split_max_tensors:
        return sorted(path.parent.glob(f"{path.stem}-*-of-*.gguf"))
    return [path]


# --------------------------------------------------------------------------- raw bytes


def gguf_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv(key: str | bytes, vtype: int, value: bytes) -> bytes:
    """One metadata entry; ``value`` is the already-encoded payload."""
    return gguf_string(key) + struct.pack("<I", vtype) + value


def kv_u32(key: str, v: int) -> bytes:
    return kv(key, U32, struct.pack("<I", v))


def kv_str(key: str, v: str | bytes) -> bytes:
    return kv(key, STRING, gguf_string(v))


def kv_str_array(key: str, items: list[str]) -> bytes:
    return kv(key, ARRAY, struct.pack("<IQ", STRING, len(items)) + b"".join(gguf_string(i) for i in items))


def tensor_info(name: str | bytes, dims: list[int], ggml_type: int, offset: int) -> bytes:
    return gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack(
        "<IQ", ggml_type, offset
    )


def raw_gguf(
    kvs: list[bytes],
    tensors: list[bytes],
    data: bytes = b"",
    *,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    magic: bytes = b"GGUF",
    version: int = 3,
    alignment: int = 32,
) -> bytes:
    """GGUF bytes assembled by hand (counts may lie on purpose)."""
    count_tensors = len(tensors) if n_tensors is None else n_tensors
    head = magic + struct.pack("<IQQ", version, count_tensors, len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    pad = (-len(body)) % alignment
    return body + b"\0" * pad + data


def llama_kvs(n_vocab: int = 8) -> list[bytes]:
    """The metadata a minimal llama model needs."""
    return [
        kv_str("general.architecture", "llama"),
        kv_u32("llama.block_count", 1),
        kv_u32("llama.embedding_length", 32),
        kv_u32("llama.attention.head_count", 2),
        kv_u32("llama.context_length", 512),
        kv_str_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(n_vocab)]),
    ]


def minimal_model(dims: list[int] | None = None, ggml_type: int = 0, offset: int = 0, data_len: int | None = None) -> bytes:
    """One f32 tensor model; arguments let a test break one thing."""
    dims = [32, 8] if dims is None else dims
    n = 1
    for d in dims:
        n *= d
    size = 4 * n if data_len is None else data_len
    return raw_gguf(llama_kvs(), [tensor_info("token_embd.weight", dims, ggml_type, offset)], b"\0" * size)
