"""GGUF files built to the shapes of public model configs, for checking the memory estimate per architecture.

Two kinds, both written the same cheap way: gguf's GGUFWriter writes the header (metadata and tensor infos)
and the file is then truncated to its full size, so every tensor's data is a hole of zeros that costs no
disk (and no time to write):

- ``small_model(arch)``: the architecture's tensors and keys (as llama.cpp's ``src/models/<arch>.cpp``
  ``load_arch_hparams``/``load_arch_tensors`` require them, llama.cpp as vendored in llama-cpp-python 0.3.36),
  scaled down to one to six layers and small matrices but with real head counts/widths, so that the KV and
  compute buffers at 8k and 32k are tens to hundreds of MiB. llama.cpp really loads these (zero weights).
- ``real_scale(name)``: the real model's header (every tensor at its real shape and quant type) at the real
  file size, for llama.cpp's dry runs (``no_alloc``), which read no tensor data.

Weights are F16 in the small models and Q8_0 at real scale, with gpt-oss's experts in MXFP4 as OpenAI ships
them (GGUFWriter writes any type's tensor info; the data is never written). The type matters little: the
estimate takes the tensor bytes from the header; MXFP4 also exercises the CPU's repacked copy (CPU_REPACK).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

F32, F16, Q8_0, MXFP4 = "F32", "F16", "Q8_0", "MXFP4"


@dataclass
class Model:
    """An architecture's metadata (keys without the ``{arch}.`` prefix) and tensors (ggml order: ne0 first)."""

    arch: str
    n_vocab: int
    matrix: str = F16  # the type of 2-D/3-D weights (real-scale headers use Q8_0)
    kv: dict[str, Any] = field(default_factory=dict)
    tensors: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    file_type: int = 1  # general.file_type: MOSTLY_F16 (15: MOSTLY_Q4_K_M)
    #: A vocabulary with the 256 byte tokens SentencePiece's byte fallback looks up, so llama.cpp tokenizes
    #: any text (for models that really chat); else plain pieces only.
    byte_vocab: bool = False
    chat_template: str | None = None

    def t(self, name: str, *shape: int, dtype: str | None = None) -> None:
        if len(shape) == 1:
            dtype = F32  # norms, biases: llama.cpp keeps 1-D tensors in f32
        self.tensors.append((name, shape, dtype or self.matrix))


#: Where the tensor data of each file written here starts (its header's size).
HEADER_SIZES: dict[Path, int] = {}


def write(model: Model, path: Path) -> Path:
    """The header of ``model`` at ``path``, the file truncated to its full size (tensor data: zeros, sparse)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter

    w = GGUFWriter(path, model.arch)
    w.add_name(f"synthetic {model.arch}")
    w.add_file_type(model.file_type)
    for key, value in model.kv.items():
        full = key if "." in key and key.split(".")[0] in ("general", "tokenizer") else f"{model.arch}.{key}"
        if isinstance(value, bool):
            w.add_bool(full, value)
        elif isinstance(value, int):
            w.add_uint32(full, value)
        elif isinstance(value, float):
            w.add_float32(full, value)
        elif isinstance(value, str):
            w.add_string(full, value)
        elif isinstance(value, list):
            sub = GGUFValueType.INT32 if all(isinstance(v, int) for v in value) else GGUFValueType.FLOAT32
            w.add_array(full, value) if sub is GGUFValueType.INT32 else w.add_key_value(full, value, GGUFValueType.ARRAY, sub)
    w.add_tokenizer_model("llama")
    if model.byte_vocab:
        # Control tokens, the 256 byte tokens the byte fallback looks up, then plain pieces.
        n_plain = model.n_vocab - 3 - 256
        w.add_token_list(["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
                         + [f"\u2581t{i}" for i in range(n_plain)])
        w.add_token_scores([0.0] * model.n_vocab)
        w.add_token_types([2, 3, 3] + [6] * 256 + [1] * n_plain)
    else:
        # A SentencePiece-style vocabulary llama.cpp accepts: <unk>, <s>, </s>, then plain pieces
        # (<|endoftext|> too: llama.cpp looks it up by name for a model whose name says phi3).
        w.add_token_list(["<unk>", "<s>", "</s>", "<|endoftext|>"] + [f"t{i}" for i in range(model.n_vocab - 4)])
        w.add_token_scores([0.0] * model.n_vocab)
        w.add_token_types([2, 3, 3, 3] + [1] * (model.n_vocab - 4))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if model.chat_template:
        w.add_chat_template(model.chat_template)
    data = 0
    for name, shape, dtype in model.tensors:
        qtype = GGMLQuantizationType[dtype]
        block, type_size = GGML_QUANT_SIZES[qtype]
        n = 1
        for d in shape:
            n *= d
        assert shape[0] % block == 0, (name, shape, dtype)
        nbytes = n // block * type_size
        w.add_tensor_info(name, tuple(reversed(shape)), np.dtype(np.float32), nbytes, raw_dtype=qtype)
        data += w.ggml_pad(nbytes, w.data_alignment)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    fh = w.fout[0]
    header = w.ggml_pad(fh.tell(), w.data_alignment)
    HEADER_SIZES[Path(path)] = header
    w.close()
    with open(path, "r+b") as fh2:
        fh2.truncate(header + data)
    return path


# --------------------------------------------------------------------------- building blocks


def _base(m: Model, n_layers: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int | list[int], *,
          head_dim: int | None = None, ctx_train: int = 131072, tied: bool = False) -> None:
    m.kv.update({
        "block_count": n_layers, "context_length": ctx_train, "embedding_length": n_embd,
        "feed_forward_length": n_ff, "attention.head_count": n_head, "attention.head_count_kv": n_head_kv,
        "attention.layer_norm_rms_epsilon": 1e-5, "rope.freq_base": 10000.0,
    })
    if head_dim is not None:
        m.kv["attention.key_length"] = head_dim
        m.kv["attention.value_length"] = head_dim
    m.t("token_embd.weight", n_embd, m.n_vocab)
    m.t("output_norm.weight", n_embd)
    if not tied:
        m.t("output.weight", n_embd, m.n_vocab)


def _attn(m: Model, i: int, n_embd: int, n_head: int, n_head_kv: int, head_dim: int, *, bias: bool = False,
          qk_norm: bool = False) -> None:
    m.t(f"blk.{i}.attn_norm.weight", n_embd)
    m.t(f"blk.{i}.attn_q.weight", n_embd, n_head * head_dim)
    m.t(f"blk.{i}.attn_k.weight", n_embd, n_head_kv * head_dim)
    m.t(f"blk.{i}.attn_v.weight", n_embd, n_head_kv * head_dim)
    m.t(f"blk.{i}.attn_output.weight", n_head * head_dim, n_embd)
    if bias:
        m.t(f"blk.{i}.attn_q.bias", n_head * head_dim)
        m.t(f"blk.{i}.attn_k.bias", n_head_kv * head_dim)
        m.t(f"blk.{i}.attn_v.bias", n_head_kv * head_dim)
    if qk_norm:
        m.t(f"blk.{i}.attn_q_norm.weight", head_dim)
        m.t(f"blk.{i}.attn_k_norm.weight", head_dim)


def _ffn(m: Model, i: int, n_embd: int, n_ff: int, *, norm: bool = True) -> None:
    if norm:
        m.t(f"blk.{i}.ffn_norm.weight", n_embd)
    m.t(f"blk.{i}.ffn_gate.weight", n_embd, n_ff)
    m.t(f"blk.{i}.ffn_up.weight", n_embd, n_ff)
    m.t(f"blk.{i}.ffn_down.weight", n_ff, n_embd)


def _moe(m: Model, i: int, n_embd: int, n_ff_exp: int, n_expert: int, *, dtype: str = F16, norm: bool = True) -> None:
    if norm:
        m.t(f"blk.{i}.ffn_norm.weight", n_embd)
    m.t(f"blk.{i}.ffn_gate_inp.weight", n_embd, n_expert, dtype=F32)
    m.t(f"blk.{i}.ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert, dtype=dtype)
    m.t(f"blk.{i}.ffn_up_exps.weight", n_embd, n_ff_exp, n_expert, dtype=dtype)
    m.t(f"blk.{i}.ffn_down_exps.weight", n_ff_exp, n_embd, n_expert, dtype=dtype)


def _shexp(m: Model, i: int, n_embd: int, n_ff_shexp: int) -> None:
    m.t(f"blk.{i}.ffn_gate_shexp.weight", n_embd, n_ff_shexp)
    m.t(f"blk.{i}.ffn_up_shexp.weight", n_embd, n_ff_shexp)
    m.t(f"blk.{i}.ffn_down_shexp.weight", n_ff_shexp, n_embd)


def _ssm(m: Model, i: int, n_embd: int, d_inner: int, d_state: int, n_group: int, n_ssm_head: int, d_conv: int) -> None:
    """A Mamba-2 mixer (mamba2.cpp / granite-hybrid.cpp): d_in_proj = 2·d_inner + 2·groups·d_state + heads."""
    d_in_proj = 2 * d_inner + 2 * n_group * d_state + n_ssm_head
    conv = d_inner + 2 * n_group * d_state
    m.t(f"blk.{i}.ssm_in.weight", n_embd, d_in_proj)
    m.t(f"blk.{i}.ssm_conv1d.weight", d_conv, conv, dtype=F32)
    m.t(f"blk.{i}.ssm_conv1d.bias", conv)
    m.t(f"blk.{i}.ssm_dt.bias", n_ssm_head)
    m.t(f"blk.{i}.ssm_a", 1, n_ssm_head, dtype=F32)
    m.t(f"blk.{i}.ssm_d", 1, n_ssm_head, dtype=F32)
    m.t(f"blk.{i}.ssm_norm.weight", d_inner // n_group, n_group, dtype=F32)
    m.t(f"blk.{i}.ssm_out.weight", d_inner, n_embd)


# --------------------------------------------------------------------------- architectures (scaled down)
# Head counts and head widths are the public configs'; layers, n_embd, n_ff, experts and vocabularies are
# cut down so a load takes well under a second.


def llama(n_layers: int = 2, n_embd: int = 1024, n_ff: int = 2048, n_head: int = 32, n_head_kv: int = 8,
          n_vocab: int = 8192, arch: str = "llama") -> Model:
    """Llama-3.1-8B's attention (32 heads of 128, 8 KV heads: GQA)."""
    m = Model(arch, n_vocab)
    _base(m, n_layers, n_embd, n_ff, n_head, n_head_kv, head_dim=128)
    m.kv["rope.dimension_count"] = 128
    for i in range(n_layers):
        _attn(m, i, n_embd, n_head, n_head_kv, 128)
        _ffn(m, i, n_embd, n_ff)
    return m


def qwen2() -> Model:
    """Qwen2.5-7B: 28 heads of 128 (llama.cpp wants n_head·head_dim = n_embd here: 3584), 4 KV heads, QKV
    biases, a 152k vocabulary (here 32,768); one layer."""
    m = Model("qwen2", 32768)
    n_embd, n_ff = 3584, 1024
    _base(m, 1, n_embd, n_ff, 28, 4, head_dim=128)
    for i in range(1):
        _attn(m, i, n_embd, 28, 4, 128, bias=True)
        _ffn(m, i, n_embd, n_ff)
    return m


def qwen3() -> Model:
    """Qwen3-8B: 32 heads of 128, 8 KV heads, q/k norms."""
    m = Model("qwen3", 8192)
    _base(m, 2, 1024, 2048, 32, 8, head_dim=128)
    for i in range(2):
        _attn(m, i, 1024, 32, 8, 128, qk_norm=True)
        _ffn(m, i, 1024, 2048)
    return m


def qwen3moe(n_layers: int = 2, n_embd: int = 1024, n_expert: int = 16, n_vocab: int = 8192) -> Model:
    """Qwen3-30B-A3B: 32 heads of 128, 4 KV heads, 128 experts (here 16) of 768, 8 used."""
    m = Model("qwen3moe", n_vocab)
    _base(m, n_layers, n_embd, 6144, 32, 4, head_dim=128)
    m.kv.update({"expert_count": n_expert, "expert_used_count": 8, "expert_feed_forward_length": 768})
    for i in range(n_layers):
        _attn(m, i, n_embd, 32, 4, 128, qk_norm=True)
        _moe(m, i, n_embd, 768, n_expert)
    return m


def qwen2moe() -> Model:
    """Qwen1.5-MoE-A2.7B: 16 heads of 128 (MHA), 60 experts (here 8) of 1408, 4 used, a shared expert of 5632."""
    m = Model("qwen2moe", 8192)
    n_embd = 2048
    _base(m, 2, n_embd, 5632, 16, 16)
    m.kv.update({"expert_count": 8, "expert_used_count": 4, "expert_feed_forward_length": 1408,
                 "expert_shared_feed_forward_length": 5632})
    for i in range(2):
        _attn(m, i, n_embd, 16, 16, 128, bias=True)
        _moe(m, i, n_embd, 1408, 8)
        m.t(f"blk.{i}.ffn_gate_inp_shexp.weight", n_embd)
        _shexp(m, i, n_embd, 5632)
    return m


def gpt_oss(n_layers: int = 2, n_embd: int = 2880, n_expert: int = 4, n_vocab: int = 8192) -> Model:
    """gpt-oss-20b: 64 heads of 64, 8 KV heads, sinks, alternating 128-token SWA / full layers, MXFP4 experts
    (32 of 2880 in the real model, here 4), 4 used."""
    m = Model("gpt-oss", n_vocab)
    _base(m, n_layers, n_embd, 2880, 64, 8, head_dim=64)
    m.kv.update({"expert_count": n_expert, "expert_used_count": min(4, n_expert), "expert_feed_forward_length": 2880,
                 "attention.sliding_window": 128, "rope.dimension_count": 64})
    for i in range(n_layers):
        m.t(f"blk.{i}.attn_norm.weight", n_embd)
        m.t(f"blk.{i}.post_attention_norm.weight", n_embd)
        m.t(f"blk.{i}.attn_q.weight", n_embd, 64 * 64)
        m.t(f"blk.{i}.attn_k.weight", n_embd, 8 * 64)
        m.t(f"blk.{i}.attn_v.weight", n_embd, 8 * 64)
        m.t(f"blk.{i}.attn_q.bias", 64 * 64)
        m.t(f"blk.{i}.attn_k.bias", 8 * 64)
        m.t(f"blk.{i}.attn_v.bias", 8 * 64)
        m.t(f"blk.{i}.attn_output.weight", 64 * 64, n_embd)
        m.t(f"blk.{i}.attn_output.bias", n_embd)
        m.t(f"blk.{i}.attn_sinks.weight", 64)
        _moe(m, i, n_embd, 2880, n_expert, dtype=MXFP4, norm=False)
        m.t(f"blk.{i}.ffn_gate_inp.bias", n_expert)
        m.t(f"blk.{i}.ffn_gate_exps.bias", 2880, n_expert, dtype=F32)
        m.t(f"blk.{i}.ffn_up_exps.bias", 2880, n_expert, dtype=F32)
        m.t(f"blk.{i}.ffn_down_exps.bias", n_embd, n_expert, dtype=F32)
    return m


def _gemma(arch: str, n_layers: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int, head_dim: int,
           window: int, n_vocab: int) -> Model:
    m = Model(arch, n_vocab)
    _base(m, n_layers, n_embd, n_ff, n_head, n_head_kv, head_dim=head_dim, tied=True)
    m.kv["attention.sliding_window"] = window
    m.kv["final_logit_softcapping"] = 30.0
    if arch == "gemma2":
        m.kv["attn_logit_softcapping"] = 50.0
    for i in range(n_layers):
        _attn(m, i, n_embd, n_head, n_head_kv, head_dim, qk_norm=arch == "gemma3")
        m.t(f"blk.{i}.post_attention_norm.weight", n_embd)
        _ffn(m, i, n_embd, n_ff)
        m.t(f"blk.{i}.post_ffw_norm.weight", n_embd)
    return m


def gemma2() -> Model:
    """gemma-2-9b: 16 heads of 256, 8 KV heads, 4096-token window on every other layer, logit softcaps."""
    return _gemma("gemma2", 2, 1024, 2048, 16, 8, 256, 4096, 16384)


def gemma3(n_layers: int = 6, n_embd: int = 768, n_vocab: int = 16384, n_ff: int = 1536) -> Model:
    """gemma-3-12b: 16 heads of 256, 8 KV heads, 1024-token window on 5 of every 6 layers."""
    return _gemma("gemma3", n_layers, n_embd, n_ff, 16, 8, 256, 1024, n_vocab)


def llama4() -> Model:
    """Llama-4-Scout: 40 heads of 128, 8 KV heads, chunked attention (no sliding_window key: llama.cpp uses
    8192-token chunks on 3 of every 4 layers), MoE every layer (16 experts, here 4) with a shared expert."""
    m = Model("llama4", 8192)
    n_embd, n_ff = 1024, 2048
    _base(m, 4, n_embd, n_ff, 40, 8, head_dim=128)
    m.kv.update({"expert_count": 4, "expert_used_count": 1, "expert_feed_forward_length": 1024,
                 "interleave_moe_layer_step": 1, "rope.dimension_count": 128})
    for i in range(4):
        _attn(m, i, n_embd, 40, 8, 128)
        _moe(m, i, n_embd, 1024, 4)
        _shexp(m, i, n_embd, 1024)
    return m


def phi3() -> Model:
    """Phi-3-mini: 32 heads of 96 (MHA), fused gate/up; its 2047-token sliding window is ignored by llama.cpp."""
    m = Model("phi3", 8192)
    n_embd, n_ff = 3072, 2048
    _base(m, 1, n_embd, n_ff, 32, 32)
    m.kv.update({"rope.dimension_count": 96, "attention.sliding_window": 2047})
    m.t("blk.0.attn_norm.weight", n_embd)
    m.t("blk.0.attn_qkv.weight", n_embd, 3 * n_embd)
    m.t("blk.0.attn_output.weight", n_embd, n_embd)
    m.t("blk.0.ffn_norm.weight", n_embd)
    m.t("blk.0.ffn_up.weight", n_embd, 2 * n_ff)
    m.t("blk.0.ffn_down.weight", n_ff, n_embd)
    return m


def deepseek2(mla_keys: bool = True, n_layers: int = 2, n_embd: int = 1024, n_expert: int = 8,
              n_vocab: int = 8192, n_lead: int = 1, n_ff: int = 2048, n_ff_exp: int = 512) -> Model:
    """DeepSeek-V2's attention: 16 heads (V2-Lite's count), kv_lora_rank 512, qk_nope 128 + rope 64, v 128, and
    q LoRA rank 1536 (llama.cpp takes a model for V2-Lite, without q LoRA, only at 26/27 layers).

    ``mla_keys``: the current GGUF layout (``key_length_mla``/``value_length_mla``, split attn_k_b/attn_v_b,
    key_length = kv_lora_rank + rope) or the older one (attn_kv_b, key_length = 192, value_length = 128)."""
    m = Model("deepseek2", n_vocab)
    n_head, rank, rope, nope, v = 16, 512, 64, 128, 128
    _base(m, n_layers, n_embd, n_ff, n_head, n_head if not mla_keys else 1)
    m.kv.update({"attention.kv_lora_rank": rank, "rope.dimension_count": rope, "leading_dense_block_count": n_lead,
                 "expert_count": n_expert, "expert_used_count": min(6, n_expert), "expert_shared_count": 2,
                 "expert_feed_forward_length": n_ff_exp, "expert_weights_scale": 1.0})
    if n_layers not in (26, 27):
        m.kv["attention.q_lora_rank"] = 1536
    if mla_keys:
        m.kv.update({"attention.key_length": rank + rope, "attention.value_length": rank,
                     "attention.key_length_mla": nope + rope, "attention.value_length_mla": v})
    else:
        m.kv.update({"attention.key_length": nope + rope, "attention.value_length": v})
    for i in range(n_layers):
        m.t(f"blk.{i}.attn_norm.weight", n_embd)
        m.t(f"blk.{i}.attn_kv_a_norm.weight", rank)
        if n_layers in (26, 27):
            m.t(f"blk.{i}.attn_q.weight", n_embd, n_head * (nope + rope))
        else:
            m.t(f"blk.{i}.attn_q_a_norm.weight", 1536)
            m.t(f"blk.{i}.attn_q_a.weight", n_embd, 1536)
            m.t(f"blk.{i}.attn_q_b.weight", 1536, n_head * (nope + rope))
        m.t(f"blk.{i}.attn_kv_a_mqa.weight", n_embd, rank + rope)
        if mla_keys:
            m.t(f"blk.{i}.attn_k_b.weight", nope, rank, n_head)
            m.t(f"blk.{i}.attn_v_b.weight", rank, v, n_head)
        else:
            m.t(f"blk.{i}.attn_kv_b.weight", rank, n_head * (nope + v))
        m.t(f"blk.{i}.attn_output.weight", n_head * v, n_embd)
        if i < n_lead:
            _ffn(m, i, n_embd, n_ff)
        else:
            _moe(m, i, n_embd, n_ff_exp, n_expert)
            _shexp(m, i, n_embd, 2 * n_ff_exp)
    return m


def granite() -> Model:
    """granite-3.x-8b: 32 heads of 128, 8 KV heads, with its four scales."""
    m = llama(arch="granite")
    m.kv.update({"logit_scale": 16.0, "residual_scale": 0.22, "embedding_scale": 12.0, "attention.scale": 0.0078125})
    return m


def olmo2() -> Model:
    """OLMo-2-7B: 32 heads of 128 (MHA), post-norms, full-width q/k norms."""
    m = Model("olmo2", 8192)
    n_embd, n_ff = 4096, 2048
    _base(m, 1, n_embd, n_ff, 32, 32)
    m.t("blk.0.attn_q.weight", n_embd, n_embd)
    m.t("blk.0.attn_k.weight", n_embd, n_embd)
    m.t("blk.0.attn_v.weight", n_embd, n_embd)
    m.t("blk.0.attn_output.weight", n_embd, n_embd)
    m.t("blk.0.attn_q_norm.weight", n_embd)
    m.t("blk.0.attn_k_norm.weight", n_embd)
    m.t("blk.0.post_attention_norm.weight", n_embd)
    _ffn(m, 0, n_embd, n_ff, norm=False)
    m.t("blk.0.post_ffw_norm.weight", n_embd)
    return m


def lfm2() -> Model:
    """LFM2-1.2B: short-convolution layers (L_cache 3) and attention layers (32 heads of 64, 8 KV heads);
    a layer with 0 KV heads is a convolution layer."""
    m = Model("lfm2", 8192)
    n_embd, n_ff = 2048, 2048
    kv_heads = [0, 8, 0, 8]
    _base(m, 4, n_embd, n_ff, 32, kv_heads, tied=True)
    m.tensors = [t for t in m.tensors if t[0] != "output_norm.weight"]
    m.t("token_embd_norm.weight", n_embd)
    m.kv["shortconv.l_cache"] = 3
    for i, kvh in enumerate(kv_heads):
        m.t(f"blk.{i}.attn_norm.weight", n_embd)
        if kvh:
            m.t(f"blk.{i}.attn_q.weight", n_embd, n_embd)
            m.t(f"blk.{i}.attn_k.weight", n_embd, kvh * 64)
            m.t(f"blk.{i}.attn_v.weight", n_embd, kvh * 64)
            m.t(f"blk.{i}.attn_output.weight", n_embd, n_embd)
            m.t(f"blk.{i}.attn_q_norm.weight", 64)
            m.t(f"blk.{i}.attn_k_norm.weight", 64)
        else:
            m.t(f"blk.{i}.shortconv.conv.weight", 3, n_embd, dtype=F32)
            m.t(f"blk.{i}.shortconv.in_proj.weight", n_embd, 3 * n_embd)
            m.t(f"blk.{i}.shortconv.out_proj.weight", n_embd, n_embd)
        _ffn(m, i, n_embd, n_ff)
    return m


def mamba2() -> Model:
    """Mamba2-2.7B: d_model 2560, d_inner 5120, d_state 128, 80 heads, 1 group, d_conv 4 (here 2 layers)."""
    m = Model("mamba2", 8192)
    n_embd = 2560
    m.kv.update({"block_count": 2, "context_length": 1048576, "embedding_length": n_embd, "feed_forward_length": 0,
                 "attention.head_count": 0, "attention.layer_norm_rms_epsilon": 1e-5, "ssm.conv_kernel": 4,
                 "ssm.inner_size": 5120, "ssm.state_size": 128, "ssm.time_step_rank": 80, "ssm.group_count": 1})
    m.t("token_embd.weight", n_embd, m.n_vocab)
    m.t("output_norm.weight", n_embd)
    m.t("output.weight", n_embd, m.n_vocab)
    for i in range(2):
        m.t(f"blk.{i}.attn_norm.weight", n_embd)
        _ssm(m, i, n_embd, 5120, 128, 1, 80, 4)
    return m


def granitehybrid() -> Model:
    """granite-4.0-h-tiny-like hybrid: Mamba-2 layers (d_inner 3072, d_state 128, 48 heads, 1 group) and
    attention layers (12 heads of 128, 4 KV heads); a layer with 0 KV heads is a Mamba layer."""
    m = Model("granitehybrid", 8192)
    n_embd, n_ff = 1536, 1024
    kv_heads = [0, 4, 0, 4]
    _base(m, 4, n_embd, n_ff, 12, kv_heads, head_dim=128)
    m.kv.update({"ssm.conv_kernel": 4, "ssm.inner_size": 3072, "ssm.state_size": 128, "ssm.time_step_rank": 48,
                 "ssm.group_count": 1, "logit_scale": 6.0, "residual_scale": 0.22, "embedding_scale": 12.0,
                 "attention.scale": 0.0078125})
    for i, kvh in enumerate(kv_heads):
        m.t(f"blk.{i}.attn_norm.weight", n_embd)
        if kvh:
            m.t(f"blk.{i}.attn_q.weight", n_embd, 12 * 128)
            m.t(f"blk.{i}.attn_k.weight", n_embd, kvh * 128)
            m.t(f"blk.{i}.attn_v.weight", n_embd, kvh * 128)
            m.t(f"blk.{i}.attn_output.weight", 12 * 128, n_embd)
        else:
            _ssm(m, i, n_embd, 3072, 128, 1, 48, 4)
        _ffn(m, i, n_embd, n_ff)
    return m


SMALL: dict[str, Callable[[], Model]] = {
    "llama": llama, "qwen2": qwen2, "qwen3": qwen3, "qwen3moe": qwen3moe, "qwen2moe": qwen2moe,
    "gpt-oss": gpt_oss, "gemma2": gemma2, "gemma3": gemma3, "llama4": llama4, "phi3": phi3,
    "deepseek2-mla": deepseek2, "deepseek2-old": lambda: deepseek2(mla_keys=False),
    "granite": granite, "olmo2": olmo2, "lfm2": lfm2, "mamba2": mamba2, "granitehybrid": granitehybrid,
}


def _q8(m: Model) -> Model:
    m.matrix = Q8_0
    m.tensors = [(n, shape, Q8_0 if d == F16 else d) for n, shape, d in m.tensors]
    return m


# Real scale: the dims are those of each model's public config.json on the Hugging Face Hub (the numbers
# after each name: num_hidden_layers, hidden_size, intermediate_size [moe_intermediate_size], heads/KV heads,
# head_dim, experts/used, vocab_size); weights Q8_0 (MXFP4 experts for gpt-oss, as OpenAI ships them).
REAL: dict[str, Callable[[], Model]] = {
    # meta-llama/Llama-3.1-8B: 32 layers, 4096, 14336, 32/8 heads of 128, vocab 128256
    "Llama-3.1-8B": lambda: _q8(llama(32, 4096, 14336, 32, 8, 128256)),
    # meta-llama/Llama-3.1-70B: 80 layers, 8192, 28672, 64/8 heads of 128, vocab 128256
    "Llama-3.1-70B": lambda: _q8(llama(80, 8192, 28672, 64, 8, 128256)),
    # Qwen/Qwen3-30B-A3B: 48 layers, 2048, moe 768, 32/4 heads of 128, 128 experts / 8, vocab 151936
    "Qwen3-30B-A3B": lambda: _q8(qwen3moe(48, 2048, 128, 151936)),
    # openai/gpt-oss-20b: 24 layers, 2880, 2880, 64/8 heads of 64, 32 experts / 4, window 128, vocab 201088
    "gpt-oss-20b": lambda: _q8(gpt_oss(24, 2880, 32, 201088)),
    # openai/gpt-oss-120b: 36 layers, 128 experts / 4, otherwise as 20b
    "gpt-oss-120b": lambda: _q8(gpt_oss(36, 2880, 128, 201088)),
    # google/gemma-3-12b-it: 48 layers, 3840, 15360, 16/8 heads of 256, window 1024, vocab 262208
    "gemma-3-12b": lambda: _q8(gemma3(48, 3840, 262208, 15360)),
    # deepseek-ai/DeepSeek-V2-Lite: 27 layers, 2048, 10944 [1408], 16 heads, kv_lora_rank 512, qk 128+64, v 128,
    # 64 experts / 6, 2 shared, first_k_dense_replace 1, vocab 102400 (current GGUF layout, *_mla keys)
    "DeepSeek-V2-Lite": lambda: _q8(deepseek2(True, 27, 2048, 64, 102400, 1, 10944, 1408)),
}


def real_scale(name: str, directory: Path) -> Path:
    """The real-scale header of ``name`` (a key of REAL) as a sparse file of its full size in ``directory``."""
    return write(REAL[name](), directory / f"{name}.gguf")


def small_model(name: str, directory: Path) -> Path:
    """The scaled-down model ``name`` (a key of SMALL) as a GGUF in ``directory``."""
    return write(SMALL[name](), directory / f"{name}.gguf")


# --------------------------------------------------------------------------- the matrix


def settings_grid(contexts: tuple[int, ...] = (2048, 8192, 32768)) -> list[tuple[int, Any]]:
    """(ctx, LoadSettings) for every context × flash attention × swa_full × cache type (q8_0 V only with
    flash attention, as llama.cpp requires)."""
    from fitchat.model.estimate import LoadSettings

    out = []
    for ctx in contexts:
        for fa in (True, False):
            for swa_full in (True, False):
                for cache in ("f16", "q8_0"):
                    out.append((ctx, LoadSettings(flash_attn=fa, swa_full=swa_full, type_k=cache,
                                                  type_v=cache if fa else "f16")))
    return out


def parts(est: Any, meas: Any) -> dict[str, tuple[int, int]]:
    """(estimated, measured) bytes per buffer llama.cpp logs, and the total; the weights only for a real load."""
    out = {
        "kv": (est.kv_bytes, meas.kv_bytes - meas.recurrent_bytes),
        "recurrent": (getattr(est, "recurrent_bytes", 0), meas.recurrent_bytes),
        "compute": (est.compute_bytes, meas.compute_bytes),
        "output": (est.output_bytes, meas.output_bytes),
    }
    if meas.weights_bytes is not None:
        out["weights"] = (est.weights_bytes, meas.weights_bytes)
        e_total = est.weights_bytes + est.kv_bytes + getattr(est, "recurrent_bytes", 0) + est.compute_bytes + est.output_bytes
        out["total"] = (e_total, meas.total_bytes)
    return out


def loadable(spec: Any, settings: Any) -> bool:
    """Whether llama.cpp accepts these settings for this model: with MLA's compressed cache V is a view of K,
    so a quantized K cache needs flash attention as a quantized V does."""
    compressed = any(t.name.endswith("attn_k_b.weight") for t in spec.tensors)  # the current MLA layout
    return not (compressed and settings.type_k != "f16" and not settings.flash_attn)
