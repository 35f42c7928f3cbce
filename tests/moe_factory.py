"""MoE GGUF files for the experts-in-RAM tests, written as headers only: gguf's GGUFWriter writes the
metadata and tensor infos, and the file is truncated to its full size, so the tensor data is a sparse
hole of zeros (no disk, no time to write).

- :func:`qwen3_30b_a3b`: Qwen3-30B-A3B at real scale with Q4_K_M's tensor types (public config: 48 layers,
  128 experts of 768, 8 used, n_embd 2048, 32 heads of 128, 4 KV heads, vocabulary 151936), an 17 GiB
  file for the planner and llama.cpp's dry runs (which read no tensor data).
- :func:`small_qwen3moe`: the same architecture scaled down (zero weights), which llama.cpp really
  loads and decodes.
- :func:`qwen3_32b`: a dense model of about the same file size, for comparing with a layer split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.arch_factory import HEADER_SIZES, Model, write

F32, F16, Q4_K, Q6_K = "F32", "F16", "Q4_K", "Q6_K"

#: A chat template that renders the conversation plainly, so the engine chats (not plain completion).
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


def _write(path: Path, arch: str, kv: dict[str, int | float], n_vocab: int,
           tensors: list[tuple[str, tuple[int, ...], str]], chat_template: str | None) -> Path:
    """The header at ``path`` (Q4_K_M's file type, a vocabulary with byte tokens), truncated to the full size
    (shapes in ggml order, ne0 first)."""
    model = Model(arch, n_vocab, kv=dict(kv), tensors=list(tensors), file_type=15, byte_vocab=True,
                  chat_template=chat_template)
    return write(model, path)


def _more_bits(i: int, n_layers: int) -> bool:
    """Whether Q4_K_M gives layer ``i`` Q6_K for attn_v and ffn_down (llama-quant.cpp use_more_bits)."""
    return i < n_layers // 8 or i >= 7 * n_layers // 8 or (i - n_layers // 8) % 3 == 2


def _qwen3_kv(n_layers: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int,
              head_dim: int) -> dict[str, int | float]:
    return {
        "block_count": n_layers, "context_length": 40960, "embedding_length": n_embd, "feed_forward_length": n_ff,
        "attention.head_count": n_head, "attention.head_count_kv": n_head_kv, "attention.key_length": head_dim,
        "attention.value_length": head_dim, "attention.layer_norm_rms_epsilon": 1e-6, "rope.freq_base": 1000000.0,
    }


def _qwen3_attn(i: int, n_embd: int, n_head: int, n_head_kv: int, head_dim: int,
                mat: Callable[[int, str], str]) -> list[tuple[str, tuple[int, ...], str]]:
    """Layer ``i``'s attention with q/k norms, then its FFN norm; ``mat(i, kind)`` types each matrix."""
    return [
        (f"blk.{i}.attn_norm.weight", (n_embd,), F32),
        (f"blk.{i}.attn_q.weight", (n_embd, n_head * head_dim), mat(i, "attn_q")),
        (f"blk.{i}.attn_k.weight", (n_embd, n_head_kv * head_dim), mat(i, "attn_k")),
        (f"blk.{i}.attn_v.weight", (n_embd, n_head_kv * head_dim), mat(i, "attn_v")),
        (f"blk.{i}.attn_output.weight", (n_head * head_dim, n_embd), mat(i, "attn_output")),
        (f"blk.{i}.attn_q_norm.weight", (head_dim,), F32),
        (f"blk.{i}.attn_k_norm.weight", (head_dim,), F32),
        (f"blk.{i}.ffn_norm.weight", (n_embd,), F32),
    ]


def qwen3moe(path: Path, *, n_layers: int, n_embd: int, n_head: int, n_head_kv: int, head_dim: int,
             n_expert: int, n_expert_used: int, n_ff_exp: int, n_vocab: int, quant: str = F16,
             chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A qwen3moe header. ``quant="Q4_K_M"`` gives llama.cpp's Q4_K_M choice of types (Q6_K for the output,
    and for attn_v and ffn_down_exps on the "more bits" layers), else every matrix is ``quant``."""

    def mat(i: int | None, kind: str) -> str:
        if quant != "Q4_K_M":
            return quant
        if kind == "output":
            return Q6_K
        if kind in ("attn_v", "ffn_down_exps") and i is not None and _more_bits(i, n_layers):
            return Q6_K
        return Q4_K

    kv = _qwen3_kv(n_layers, n_embd, 6144, n_head, n_head_kv, head_dim)
    kv.update({"expert_count": n_expert, "expert_used_count": n_expert_used, "expert_feed_forward_length": n_ff_exp})
    t: list[tuple[str, tuple[int, ...], str]] = [("token_embd.weight", (n_embd, n_vocab), mat(None, "token_embd"))]
    for i in range(n_layers):
        t += _qwen3_attn(i, n_embd, n_head, n_head_kv, head_dim, mat)
        t += [
            (f"blk.{i}.ffn_gate_inp.weight", (n_embd, n_expert), F32),
            (f"blk.{i}.ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert), mat(i, "ffn_gate_exps")),
            (f"blk.{i}.ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert), mat(i, "ffn_up_exps")),
            (f"blk.{i}.ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert), mat(i, "ffn_down_exps")),
        ]
    t += [("output_norm.weight", (n_embd,), F32), ("output.weight", (n_embd, n_vocab), mat(None, "output"))]
    return _write(path, "qwen3moe", kv, n_vocab, t, chat_template)


def qwen3_32b(path: Path) -> Path:
    """Qwen3-32B Q4_K_M at real scale (dense, about 18 GiB, sparse): a model of the same size class with no
    experts to keep in RAM, so that a GPU too small for it gets a layer split."""
    n_layers, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab = 64, 5120, 64, 8, 128, 25600, 151936

    def q(i: int, kind: str) -> str:
        return Q6_K if kind in ("attn_v", "ffn_down") and _more_bits(i, n_layers) else Q4_K

    kv = _qwen3_kv(n_layers, n_embd, n_ff, n_head, n_head_kv, head_dim)
    t: list[tuple[str, tuple[int, ...], str]] = [("token_embd.weight", (n_embd, n_vocab), Q4_K)]
    for i in range(n_layers):
        t += _qwen3_attn(i, n_embd, n_head, n_head_kv, head_dim, q)
        t += [
            (f"blk.{i}.ffn_gate.weight", (n_embd, n_ff), q(i, "ffn_gate")),
            (f"blk.{i}.ffn_up.weight", (n_embd, n_ff), q(i, "ffn_up")),
            (f"blk.{i}.ffn_down.weight", (n_ff, n_embd), q(i, "ffn_down")),
        ]
    t += [("output_norm.weight", (n_embd,), F32), ("output.weight", (n_embd, n_vocab), Q6_K)]
    return _write(path, "qwen3", kv, n_vocab, t, CHAT_TEMPLATE)


def header_bytes(path: Path) -> bytes:
    """The first bytes of a header-only file, up to its tensor data (what a Hub Range read fetches)."""
    with open(path, "rb") as fh:
        return fh.read(HEADER_SIZES[Path(path)])


def qwen3_30b_a3b(path: Path) -> Path:
    """Qwen3-30B-A3B Q4_K_M at real scale (about 17 GiB, sparse): for planning and dry runs only."""
    return qwen3moe(path, n_layers=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_expert=128,
                    n_expert_used=8, n_ff_exp=768, n_vocab=151936, quant="Q4_K_M")


def small_qwen3moe(path: Path, *, n_layers: int = 4) -> Path:
    """A small qwen3moe (zero F16 weights, 8 experts of 256, 2 used) that llama.cpp loads and decodes."""
    return qwen3moe(path, n_layers=n_layers, n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_expert=8,
                    n_expert_used=2, n_ff_exp=256, n_vocab=512)
