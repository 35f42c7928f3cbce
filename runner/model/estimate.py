"""How much memory llama.cpp will allocate for a model at a context length, and on which device.

The figures mirror the buffers llama.cpp itself logs when it loads a model (``model buffer``,
``KV buffer``, ``RS buffer``, ``compute buffer``, ``output buffer``), so an estimate can be checked against a
real load line by line (``fitchat.model.measure``, ``bench/estimate_accuracy.py``, and the architecture matrix
of ``tests/model/test_arch_matrix.py``: llama, qwen2/3, qwen2/3 MoE, gpt-oss, gemma2/3, llama4, phi3, deepseek2,
granite, olmo2, lfm2, mamba2, granitehybrid, and real-scale headers of seven public models).

Weights
    Exact: the tensor sizes from the GGUF header. On the CPU, llama.cpp also keeps a repacked
    copy of some quantized matrices for faster kernels while the mapped file stays mapped: the
    ``AMX`` buffer where the build has AMX (SmolLM2 Q4_K_M: 51.31 MiB), else ``CPU_REPACK`` for the
    types the CPU's kernels take (``_extra_copy``); none with ``use_extra_bufts`` off.

KV cache
    Exact: ``cells × Σ_layers (n_embd_k_gqa·bytes(type_k) + n_embd_v_gqa·bytes(type_v))`` with
    ``cells = pad(n_ctx, 256)`` and ``n_embd_k_gqa = n_head_kv(layer)·key_length`` (0 for a layer without KV
    heads: a hybrid's recurrent layer). Sliding-window layers keep ``min(cells, pad(window + n_ubatch, 256))``
    cells when ``swa_full`` is off; llama4 without a ``sliding_window`` key has 8192-token chunked attention on
    3 of every 4 layers, kept the same way. MLA (deepseek2 and kin): with ``key_length_mla``/``value_length_mla``
    in the file llama.cpp caches one row of ``key_length = kv_lora_rank + n_rot`` per cell and no V (V is a
    view into it); older files without those keys cache full K and V per head (the plain formula).

Recurrent state (``RS buffer``, ``recurrent_bytes``)
    Exact: per recurrent layer, one sequence of f32 ``n_embd_r + n_embd_s`` values: Mamba-2
    ``(d_conv−1)·(d_inner + 2·groups·d_state) + d_state·d_inner``, LFM2's short convolution
    ``n_embd·(L_cache−1)``. Placed with its layer, like the KV cache. RWKV's and the linear-attention
    hybrids' (qwen3next) states are not modelled (a note says so).

Compute buffer
    ggml's graph allocator reuses memory between graph stages, so the buffer is the peak of
    the largest stage, not a sum. With ``ub`` the micro-batch (n_ubatch, clamped by n_batch and
    the context), ``n_kv`` the padded context, ``q = n_head·(key_length + value_length)``, ``k``/``v`` the
    widest layer's n_embd_k_gqa/n_embd_v_gqa, all tensors f32 (4 bytes):

    - logits:    ``4·ub·(n_vocab + rows·n_embd)`` (the output projection for every token of a micro-batch, placed
      above the last layer's output row wherever the allocator left it, ``_below_logits``): ``rows`` = 2.5 for
      a dense block; for a MoE block whose expert outputs fit the hole of its gate/up projections
      (``n_embd <= 2·n_ff_exp``) ``4 + used`` with a shared expert and ``(7 + used)/2`` without, plus the
      router's ``2·n_expert``; else 2.5
    - attention without flash attention: ``4·ub·(n_head·n_kv + masks + 3·n_embd + q + k + v)`` (the KQ scores,
      softmaxed in place, plus the f32 masks); with flash attention
      ``4·ub·max(3·n_embd + q, n_embd + q/2 + 2·(k + v)) + 2·ub·masks`` (f16 masks). ``masks`` is ``n_kv``,
      plus the window's cells for models with sliding-window or chunked layers (llama.cpp builds both masks).
      MLA with the compressed cache: rows ``3·n_embd + q + k`` (+ ``n_head·kv_lora_rank`` with flash attention;
      without it an f16 copy of the masks, ``2·ub·masks``, is alive too).
    - feed-forward: ``4·ub·(3·n_ff + 2·n_embd)``; MoE ``4·ub·(used·(2.5·n_ff_exp + n_embd) + 2·n_embd)`` (gate,
      up, each expert's output, and half a block for their product, which lands in a hole below the mask or on
      top, by allocation history); plus the full mask (``n_kv`` at 2 or 4 bytes) when there is more than one
      layer, since every layer reads it.
    - SSM (Mamba-2 layers): ``4·ub·(d_in_proj + 2·conv + 2·d_inner + n_embd) + 4·d_state·d_inner`` with
      ``conv = d_inner + 2·groups·d_state``, plus the full mask as above.

    compute = max(stages).

    Calibrated against llama.cpp 0.3.36 (llama-cpp-python) CPU loads of SmolLM2-135M
    (4 quants, 49k vocabulary) and gemma-3-270m (262k vocabulary, SWA) at ctx 100 to 32768,
    n_ubatch 128 to 1024, flash attention on and off, f16/q8_0/q4_0 caches, then refitted on the architecture
    matrix (dry runs over head counts 4-64, head widths 64-256, GQA 1-8, MoE, MLA, SSM). The logits stage was
    then read from ggml-alloc's own trace (its ``AT_PRINTF`` switched on). Where ggml-alloc's placement depends on
    the allocation history (the logits' row offset, the MoE product) the estimate takes the middle, so a
    change of history moves llama.cpp's figure by up to half a block either way. For example SmolLM2 at
    ctx 16384 without flash attention: ``4·512·(9·16384 + 16384 + 3·576 + 1152 + 192 + 192)`` = 326.38 MiB,
    measured 326.38 MiB.

Output buffer and fixed overheads
    ``n_vocab × 4`` bytes of logits on the host (the ``output buffer`` line) plus the graph
    metadata llama.cpp keeps (a few hundred bytes per graph node).

Split between GPU and CPU
    As llama.cpp places tensors for ``n_gpu_layers = g`` of ``n_layers + 1``: the output layer
    (output.weight, output_norm) goes first, then the last ``g - 1`` blocks; token_embd always stays
    on the CPU (a tied-embedding model loads a second copy of it on the GPU for the output). A
    layer's KV cache and recurrent state live with the layer. The GPU compute buffer holds the logits stage whenever
    the output layer is offloaded; with a partial offload the CPU keeps a compute buffer for its
    layers and llama.cpp may copy a CPU weight to the GPU for large batches (op offload), so the
    largest such matrix is added to the GPU side. The CPU/GPU split of the compute buffer is
    modelled from llama.cpp's placement rules, not yet checked against llama.cpp's CUDA buffers.

MoE experts in RAM (``moe_cpu_layers = N``)
    llama.cpp's ``--n-cpu-moe N`` (``tensor_buft_overrides``, :func:`expert_override_pattern`): the expert
    tensors of blocks ``0..N-1`` (``blk.i.ffn_{up,down,gate,gate_up}_{,ch}exps``) stay in the CPU's
    buffer even when their block is offloaded; the rest of the block follows the block. An override to the
    CPU buffer type still goes through the CPU's extra buffer types (llama-model-loader.cpp), so those
    experts keep their CPU_REPACK/AMX copy as any CPU weight does. On a CPU-only load the override
    changes nothing.

    Compute buffers: ggml's scheduler runs an op on the backend of its weight, except that a GPU
    backend takes ops on host weights for batches of 32 tokens and more (op offload, ``1.off`` in
    ggml-backend.cpp; CUDA's ``get_op_batch_size`` counts the tokens of a MUL_MAT_ID). llama.cpp sizes
    its compute buffers at ``n_ubatch`` tokens, so every expert MUL_MAT_ID of such a block runs on the
    GPU with its weight *copied* into the GPU's compute buffer. Each such op starts its own split
    ("by starting a new split, the memory of the previously offloaded weights can be reused"), and the
    copy dies with its one consumer, so one expert tensor is alive at a time: the GPU buffer is the full
    graph's peak plus the largest expert tensor kept in RAM (the same rule as the largest CPU matrix of a
    layer split). The CPU's compute buffer holds the graph inputs and, for the one-token graph llama.cpp
    also reserves, the expert FFN of a single token (the copy threshold is not reached there): with
    every block offloaded it is ``max(inputs, 4·(3·n_ff_exp·n_used + 2·n_embd))``.

    Where the experts in RAM live on a GPU build: an override to the CPU buffer type picks from llama.cpp's
    CPU buffer list (``make_cpu_buft_list``), which on a build whose GPU has a host buffer type (CUDA's
    pinned ``CUDA_Host``) lists that first, ahead of the extra (repacked) types; with mmap on (fitchat
    always maps) the loader then swaps the host buffer for the plain CPU buffer ("avoid using a host buffer
    when using mmap"). So there, every CPU weight, experts or not, stays in the mapped file with no
    repacked copy: ``gpu_host_buffer=True``, which the planner sets for CUDA machines. Read from the
    source; not yet checked against a CUDA build's log.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from fitchat.errors import FitchatError
from fitchat.model.gguf_spec import MAX_LAYERS, ModelSpec, TensorInfo, block_of

MiB = 1024 * 1024

#: The context fitchat plans for when none is given.
DEFAULT_CTX = 4096

#: llama.cpp pads the context (and the SWA cache) to a multiple of this many cells.
KV_PAD = 256

#: KV cache types: (ggml type id, bytes per block, elements per block).
KV_TYPES: dict[str, tuple[int, int, int]] = {
    "f16": (1, 2, 1),
    "q8_0": (8, 34, 32),
    "q4_0": (2, 18, 32),
}

#: ggml's per-node metadata for the compute graph (ggml_tensor_overhead + graph bookkeeping).
_GRAPH_NODE_BYTES = 400
_GRAPH_MIN_NODES = 1024


class InvalidSettings(FitchatError):
    """Load settings llama.cpp would refuse (say, a quantized V cache without flash attention)."""


@dataclass(frozen=True)
class LoadSettings:
    """The llama.cpp context settings an estimate assumes, and ``fitchat chat`` loads with."""

    flash_attn: bool = True
    swa_full: bool = True
    n_batch: int = 512
    n_ubatch: int = 512
    type_k: str = "f16"
    type_v: str = "f16"
    #: llama_model_params.use_extra_bufts: the CPU's repacked (CPU_REPACK) and AMX weight copies. Off when
    #: the smoke decode found the build crashing in those kernels (fitchat.llama.smoke); not a ``Llama`` argument.
    use_extra_bufts: bool = True

    def __post_init__(self) -> None:
        for name in ("type_k", "type_v"):
            if getattr(self, name) not in KV_TYPES:
                raise InvalidSettings(f"unknown KV cache type {getattr(self, name)!r}; use one of {', '.join(KV_TYPES)}")
        if self.n_batch < 1 or self.n_ubatch < 1:
            raise InvalidSettings("n_batch and n_ubatch must be at least 1")
        if self.type_v != "f16" and not self.flash_attn:
            raise InvalidSettings(
                f"a {self.type_v} V cache needs flash attention; turn flash attention on or keep the V cache f16"
            )

    def llama_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``llama_cpp.Llama(...)`` that load with exactly these settings.

        ``use_extra_bufts`` is not among them: ``Llama`` has no such argument (it would ignore it); a load
        without extra buffer types goes through ``fitchat.llama.smoke.model_params_override``.
        """
        return {
            "flash_attn": self.flash_attn,
            "swa_full": self.swa_full,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_ubatch,
            "type_k": KV_TYPES[self.type_k][0],
            "type_v": KV_TYPES[self.type_v][0],
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: What ``fitchat chat`` loads with by default. Flash attention on (llama.cpp's own default,
#: "auto", enables it wherever the backend supports it; it shrinks the compute buffer at long
#: contexts); a full-size SWA cache, llama-cpp-python's default, which keeps prefix reuse between
#: chat turns working (a window-sized cache is offered as a memory lever instead).
DEFAULT_SETTINGS = LoadSettings()


@dataclass(frozen=True)
class Estimate:
    """Bytes llama.cpp will allocate for one model at one context, and where."""

    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    total_bytes: int
    gpu_bytes: int
    cpu_bytes: int
    # --- detail ---------------------------------------------------------------------
    context: int = 0  # the context asked for
    n_ctx: int = 0  # llama.cpp's padded context
    n_ubatch: int = 0  # the micro-batch llama.cpp will really use
    gpu_layers: int = 0  # llama.cpp n_gpu_layers (of n_layers + 1)
    repack_bytes: int = 0  # part of weights_bytes: the CPU's extra copies (CPU_REPACK or AMX buffer)
    output_bytes: int = 0  # part of overhead_bytes: the logits output buffer
    gpu_weights_bytes: int = 0
    gpu_kv_bytes: int = 0
    gpu_compute_bytes: int = 0
    moe_cpu_layers: int = 0  # blocks whose expert tensors stay in RAM (llama.cpp --n-cpu-moe)
    recurrent_bytes: int = 0  # llama.cpp's RS buffer (recurrent state of Mamba-style and hybrid layers)
    gpu_recurrent_bytes: int = 0
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- pieces


def pad(n: int, to: int = KV_PAD) -> int:
    return (n + to - 1) // to * to


def effective_batches(ctx: int, settings: LoadSettings) -> tuple[int, int]:
    """(n_batch, n_ubatch) as llama-cpp-python and llama.cpp clamp them for ``ctx``."""
    n_batch = min(ctx, settings.n_batch)  # llama-cpp-python: min(n_ctx, n_batch)
    return n_batch, min(n_batch, settings.n_ubatch)


def _kv_row_bytes(n_elements: int, type_name: str) -> int:
    _, block_bytes, block = KV_TYPES[type_name]
    return (n_elements + block - 1) // block * block_bytes


def _layer_kv_dims(spec: ModelSpec, il: int) -> tuple[int, int]:
    """(n_embd_k_gqa, n_embd_v_gqa) of layer ``il``: the K and V elements one KV cell holds for it."""
    kv_heads = spec.n_head_kv_layers[il] if il < len(spec.n_head_kv_layers) else spec.n_head_kv
    if spec.kv_lora_rank and spec.key_length_mla:
        # MLA in the current GGUF layout: one compressed row per cell (key_length = kv_lora_rank + n_rot),
        # and V is a view into it (llama-kv-cache.cpp: has_v = !is_mla).
        return kv_heads * spec.key_length, 0
    # Everything else, MLA files without the *_mla keys included: llama.cpp decompresses with attn_kv_b
    # and caches full K and V for every head.
    return kv_heads * spec.key_length, kv_heads * spec.value_length


def recurrent_layer_bytes(spec: ModelSpec) -> list[int]:
    """Recurrent-state (``RS buffer``) bytes of every layer: f32 rows of ``n_embd_r + n_embd_s`` for one
    sequence (llama_hparams::n_embd_r/n_embd_s): Mamba ``(d_conv-1)·(d_inner + 2·groups·d_state) +
    d_state·d_inner``, LFM2's short convolution ``n_embd·(L_cache-1)``."""
    if spec.shortconv_l_cache:
        row = spec.n_embd * (spec.shortconv_l_cache - 1)
    else:
        conv = max(spec.ssm_d_conv - 1, 0) * (spec.ssm_d_inner + 2 * spec.ssm_n_group * spec.ssm_d_state)
        row = conv + spec.ssm_d_state * spec.ssm_d_inner
    return [4 * row if il < len(spec.recurrent_layers) and spec.recurrent_layers[il] else 0 for il in range(spec.n_layers)]


def kv_cells(spec: ModelSpec, il: int, n_ctx: int, n_ubatch: int, settings: LoadSettings) -> int:
    """KV cells layer ``il`` keeps at padded context ``n_ctx``."""
    is_swa = il < len(spec.swa_layers) and spec.swa_layers[il]
    if is_swa and not settings.swa_full and spec.sliding_window:
        return min(n_ctx, pad(min(n_ctx, spec.sliding_window + n_ubatch)))
    return n_ctx


def kv_layer_bytes(spec: ModelSpec, ctx: int, settings: LoadSettings = DEFAULT_SETTINGS) -> list[int]:
    """KV cache bytes of every layer at context ``ctx``."""
    n_ctx = pad(max(ctx, 1))
    _, n_ubatch = effective_batches(ctx, settings)
    out = []
    for il in range(spec.n_layers):
        k, v = _layer_kv_dims(spec, il)
        cells = kv_cells(spec, il, n_ctx, n_ubatch, settings)
        out.append(cells * (_kv_row_bytes(k, settings.type_k) + _kv_row_bytes(v, settings.type_v)))
    return out


def _attention_kv_dims(spec: ModelSpec) -> tuple[int, int]:
    """The widest (n_embd_k_gqa, n_embd_v_gqa) of the attention layers (what one layer's attention holds)."""
    dims = [_layer_kv_dims(spec, il) for il in range(spec.n_layers)] or [(0, 0)]
    return max(d[0] for d in dims), max(d[1] for d in dims)


def _mask_rows(spec: ModelSpec, n_ctx: int, ub: int, settings: LoadSettings) -> int:
    """Mask elements per token of the micro-batch: one ``n_kv`` row for the full-attention layers, and a
    second one for the window (sliding-window or chunked layers), both alive during attention."""
    full = n_ctx
    if not any(spec.swa_layers[: spec.n_layers]):
        return full
    il = spec.swa_layers.index(True)
    return full + kv_cells(spec, il, n_ctx, ub, settings)


def compute_stages(spec: ModelSpec, ctx: int, settings: LoadSettings = DEFAULT_SETTINGS) -> dict[str, int]:
    """The graph stages whose peak is the compute buffer (see the module docstring)."""
    n_ctx = pad(max(ctx, 1))
    _, ub = effective_batches(ctx, settings)
    n_embd = spec.n_embd
    k_gqa, v_gqa = _attention_kv_dims(spec)
    q = spec.n_head * spec.key_length + spec.n_head * spec.value_length  # Q and the attention output, all heads
    n_kv = n_ctx
    # Q, K and V of the micro-batch with the residual stream and the attention output, whichever set is larger
    # at the peak (fitted on llama.cpp 0.3.36 dry runs over head counts 4-32, widths 64-256, GQA 1-8).
    masks = _mask_rows(spec, n_ctx, ub, settings)
    if spec.kv_lora_rank and spec.key_length_mla:
        # MLA with the compressed cache: Q absorbed into the latent space (n_head × (kv_lora_rank + n_rot)) and
        # the output in it (n_head × kv_lora_rank) before attn_v_b; without flash attention an f16 copy of the
        # mask is alive too (fitted on DeepSeek-V2 shapes, small and real-scale, 2k-32k).
        rows = 3 * n_embd + q + k_gqa
        if settings.flash_attn:
            attention = 4 * ub * (rows + spec.n_head * spec.kv_lora_rank) + 2 * ub * masks
        else:
            attention = 4 * ub * (spec.n_head * n_kv + rows + masks) + 2 * ub * masks
    elif settings.flash_attn:
        rows = max(3 * n_embd + q, n_embd + q // 2 + 2 * (k_gqa + v_gqa))
        attention = 4 * ub * rows + 2 * ub * masks  # f16 masks
    else:
        rows = 3 * n_embd + q + k_gqa + v_gqa
        attention = 4 * ub * (spec.n_head * n_kv + rows + masks)  # the f32 KQ scores, softmaxed in place
    has_attention = any(k for k, _ in (_layer_kv_dims(spec, il) for il in range(spec.n_layers)))
    if not has_attention:
        attention, masks = 0, 0
    # The masks are graph inputs every layer reads, so they stay alive through the feed-forward (and SSM)
    # stages of all but the last layer; the window's mask is not counted there (it fits the measured peaks).
    mask_bytes = (2 if settings.flash_attn else 4) * ub * n_kv if has_attention and spec.n_layers > 1 else 0
    if spec.n_expert and spec.n_expert_used and spec.n_ff_expert:
        # MoE: gate, up and their product for every chosen expert, and each expert's output row. The product lands
        # in a hole below the mask or on top of gate and up, by allocation history (ggml-alloc's trace of gpt-oss:
        # 2 or 3 expert blocks above the mask): counted as half a block.
        used = spec.n_expert_used
        ffn = 2 * ub * used * (5 * spec.n_ff_expert + 2 * n_embd) + 4 * ub * 2 * n_embd
    else:
        ffn = 4 * ub * (3 * spec.n_ff + 2 * n_embd)
    stages = {
        "logits": 4 * ub * spec.vocab_size + _below_logits(spec, ub),
        "attention": attention,
        "ffn": ffn + mask_bytes,
    }
    if spec.ssm_d_inner and spec.ssm_d_state:
        # Mamba-2 mixer: the in-projection (z, xBC, dt), the convolution's input and output, the scan's
        # output and gate, the residual stream, and one sequence's state.
        conv = spec.ssm_d_inner + 2 * spec.ssm_n_group * spec.ssm_d_state
        d_in_proj = spec.ssm_d_inner + conv + _ssm_heads(spec)
        rows_ssm = d_in_proj + 2 * conv + 2 * spec.ssm_d_inner + n_embd
        stages["ssm"] = 4 * ub * rows_ssm + 4 * spec.ssm_d_state * spec.ssm_d_inner + mask_bytes
    return stages


def _below_logits(spec: ModelSpec, ub: int) -> int:
    """What lies below the logits in the compute buffer: the last layer's output row stays where the graph
    allocator put it during that layer's feed-forward, and the logits (one block of ``n_vocab`` rows) go above
    it. Read from ggml-alloc's trace of llama.cpp 0.3.36 graphs (rows of ``n_embd``):

    - dense block: ``ffn_out`` lands in a freed row above the input embeddings and the residual, the 2nd or
      3rd row depending on the allocation history: 2.5 rows (within half a row);
    - MoE block whose expert outputs (``used`` rows) fit in the hole of its gate and up projections
      (``n_embd <= 2·n_ff_exp``): with a shared expert (which keeps the normed input alive) they sit above the
      embeddings, residual, normed input and router scores, and their sum (the layer's output) right above
      them: ``4 + used`` rows plus the router's logits and arg-sort. Without one, the output lands anywhere
      from the 3rd row to there (gpt-oss: 3 to 7.6 rows by setting): the midpoint, ``(7 + used)/2`` rows;
    - otherwise the expert outputs go on top and the sum drops into a low row, as in a dense block.
    """
    router = 4 * ub * 2 * spec.n_expert
    if spec.n_expert and spec.n_expert_used and spec.n_ff_expert and spec.n_embd <= 2 * spec.n_ff_expert:
        if any(t.name.endswith("ffn_down_shexp.weight") for t in spec.tensors):
            return 4 * ub * (4 + spec.n_expert_used) * spec.n_embd + router
        return 2 * ub * (7 + spec.n_expert_used) * spec.n_embd + router
    return 2 * ub * 5 * spec.n_embd


def _ssm_heads(spec: ModelSpec) -> int:
    """Mamba-2 heads (the dt width), from the ssm_dt bias of the first recurrent layer."""
    for t in spec.tensors:
        if t.name.endswith("ssm_dt.bias") and t.shape:
            return t.shape[0]
    return 0


#: Quantized types the CPU backend repacks, by instruction set (ggml-cpu/repack.cpp):
#: type -> rows (ne[1]) must be a multiple of this.
_REPACK_X86: dict[str, int] = {"Q4_0": 8, "Q4_K": 8, "IQ4_NL": 8, "MXFP4": 8}
_REPACK_X86_AVX512: dict[str, int] = {"Q2_K": 8}
_REPACK_ARM: dict[str, int] = {"Q4_0": 4, "Q4_K": 8, "Q5_K": 8, "Q6_K": 8, "IQ4_NL": 4, "MXFP4": 4, "Q8_0": 4, "Q1_0": 4}

#: The AMX buffer type (ggml-cpu/amx: ``qtype_has_amx_kernels`` and ``extra_buffer_type::supports_op``):
#: type -> (ne[0] must be a multiple of this, extra bytes per block its packed rows carry). It comes
#: before CPU_REPACK in llama.cpp's list, so a weight it takes is not repacked; the rows (ne[1]) must be a
#: multiple of 32 (2 × TILE_N). Its size per weight (``ggml_backend_amx_get_alloc_size``) is
#: ``ne[1] × blocks × (block bytes + extra)``: the tensor's bytes plus the extra per block (the int32
#: compensation of Q8_0, the scales of Q4_K/Q5_K, IQ4_XS's 2 bytes); F16 is not packed.
_AMX: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 0), "Q4_1": (32, 0), "Q8_0": (32, 4), "Q4_K": (256, 4), "Q5_K": (256, 4), "Q6_K": (256, 0),
    "IQ4_XS": (256, 2), "F16": (16, 0),
}
_AMX_BLOCK: dict[str, int] = {"Q4_0": 32, "Q4_1": 32, "Q8_0": 32, "F16": 1}  # the rest: QK_K = 256
_AMX_ROWS = 32

#: Per-tensor rule: (repack rules by type, whether the AMX buffer type is there).
Rules = tuple[tuple[tuple[str, int], ...], bool]


def _extra_buft_rules(isa: tuple[str, ...] | None, use_extra_bufts: bool = True) -> Rules:
    """Which extra buffer types a CPU load gets: none when they are off, AMX where the build has it, CPU_REPACK."""
    if not use_extra_bufts:
        return (), False
    if isa is None:
        isa = ("AVX2",)  # unknown CPU: assume the common x86-64 case
    flags = set(isa)
    rules: dict[str, int] = {}
    if "AVX2" in flags:
        rules.update(_REPACK_X86)
    if "AVX512" in flags:
        rules.update(_REPACK_X86_AVX512)
    if "NEON" in flags and flags & {"DOTPROD", "MATMUL_INT8", "SVE"}:
        rules.update(_REPACK_ARM)
    return tuple(sorted(rules.items())), "AMX_INT8" in flags


def _matmul_weight(t: TensorInfo, tied_output: bool) -> bool:
    """A weight llama.cpp multiplies with (MUL_MAT): 2-D/3-D ``.weight`` tensors, and token_embd only as the
    tied output projection (llama.cpp loads a duplicate of it for the output layer)."""
    if len(t.shape) not in (2, 3) or not t.name.endswith(".weight"):
        return False
    return tied_output or not t.name.startswith("token_embd")


def _amx_bytes(t: TensorInfo) -> int | None:
    """The AMX buffer's size for this weight, or None when the AMX buffer type does not take it."""
    rule = _AMX.get(t.type_name)
    if rule is None or len(t.shape) != 2:
        return None
    align, extra = rule
    k, n = t.shape[0], t.shape[1]
    if k % align or n % _AMX_ROWS:
        return None
    return t.n_bytes + n * (k // _AMX_BLOCK.get(t.type_name, 256)) * extra


def _extra_copy(t: TensorInfo, rules: Rules, tied: bool) -> int:
    """Bytes of the extra-buffer copy llama.cpp's CPU backend keeps of this weight (AMX or CPU_REPACK), else 0."""
    repack, amx = rules
    if not _matmul_weight(t, tied and t.name.startswith("token_embd")):
        return 0
    if amx:
        size = _amx_bytes(t)
        if size is not None:
            return size
    if t.name.startswith("token_embd"):
        return 0  # the CPU_REPACK figures were calibrated without the tied output's copy
    rows = dict(repack).get(t.type_name)
    return t.n_bytes if rows is not None and t.shape[1] % rows == 0 else 0


#: llama.cpp's expert tensors (common.h ``LLM_FFN_EXPS_REGEX``): what ``--cpu-moe`` keeps in RAM.
EXPERTS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
_EXPERT_TENSOR = re.compile(r"^blk\.([0-9]+)" + EXPERTS_REGEX)


def is_expert_tensor(name: str) -> bool:
    """Whether ``name`` is a block's expert tensor (``blk.3.ffn_up_exps.weight``, …)."""
    return _EXPERT_TENSOR.search(name) is not None


def _digits(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"[{lo}-{hi}]"


def _numbers_below(n: int) -> str:
    """A regex alternation of the decimal numbers ``0..n-1`` as llama.cpp writes block numbers (no leading
    zeros), in about ``digits²`` characters whatever ``n`` is: ``48 -> [0-9]|[1-3][0-9]|4[0-6]|47``."""
    top = str(n - 1)
    k = len(top)
    if k == 1:
        return _digits(0, n - 1)
    alts = ["[0-9]"] + ["[1-9]" + "[0-9]" * (j - 1) for j in range(2, k)]  # every shorter number
    for i in range(k):  # k digits: top's first i digits, then a smaller digit, then any
        lo, hi = (1 if i == 0 else 0), int(top[i]) - 1
        if lo <= hi:
            alts.append(top[:i] + _digits(lo, hi) + "[0-9]" * (k - i - 1))
    alts.append(top)
    return "|".join(alts)


def expert_override_pattern(moe_cpu_layers: int) -> str | None:
    r"""The ``tensor_buft_overrides`` pattern that keeps the experts of blocks ``0..moe_cpu_layers-1`` in RAM
    (-1: of every block).

    One pattern for all of them (llama.cpp's ``--n-cpu-moe`` adds one pattern per block, and compiles each
    pattern again for every tensor), with the blocks as a numeric range whose length grows with the digits of
    ``moe_cpu_layers``, not its value (at most five digits: a count of MAX_LAYERS or more is every block), so
    no count, from a flag or the engine's pipe, makes a pattern llama.cpp's regex engine chokes on;
    ``blk\.([0-2])\.`` cannot match ``blk.10.`` or ``blk.21.``.
    """
    if moe_cpu_layers < 0 or moe_cpu_layers >= MAX_LAYERS:
        return EXPERTS_REGEX  # every block (llama.cpp's --cpu-moe); no model has more than MAX_LAYERS
    if moe_cpu_layers == 0:
        return None
    return rf"blk\.({_numbers_below(moe_cpu_layers)})" + EXPERTS_REGEX


def expert_layers(spec: ModelSpec) -> int:
    """How many blocks have expert tensors (0 for a dense model): the top of ``moe_cpu_layers``."""
    return len({t.name.split(".")[1] for t in spec.tensors if is_expert_tensor(t.name)})


def _group_of(name: str) -> str:
    """The placement group of a tensor: ``blk.N``, ``blk.N.exps`` for its expert tensors, else its first part."""
    il = block_of(name)
    if il is not None:
        return f"blk.{il}.exps" if is_expert_tensor(name) else f"blk.{il}"
    return name.split(".")[0]


@functools.lru_cache(maxsize=256)
def _layout(spec: ModelSpec, rules: Rules) -> dict[str, tuple[int, int, int]]:
    """Per tensor group: (bytes, bytes of the CPU's extra copies, largest matrix), computed once per spec."""
    out: dict[str, list[int]] = {}
    for t in spec.tensors:
        g = out.setdefault(_group_of(t.name), [0, 0, 0])
        g[0] += t.n_bytes
        g[1] += _extra_copy(t, rules, spec.tied_embeddings)
        if len(t.shape) >= 2:
            g[2] = max(g[2], t.n_bytes)
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def _on_gpu(group: str, n_layers: int, gpu_layers: int, moe_cpu_layers: int = 0) -> bool:
    """llama.cpp's placement for ``n_gpu_layers = gpu_layers``: output first, then the last blocks; the
    experts of the first ``moe_cpu_layers`` blocks stay on the CPU."""
    if gpu_layers <= 0:
        return False
    first_gpu = max(n_layers + 1 - gpu_layers, 0)
    if group in ("output", "output_norm"):
        return True  # the output layer (index n_layers) is offloaded by any gpu_layers >= 1
    if group.startswith("blk."):
        parts = group.split(".")
        layer = int(parts[1])
        if len(parts) > 2 and layer < moe_cpu_layers:
            return False  # blk.N.exps, overridden to the CPU buffer type
        return layer >= first_gpu
    return False  # token_embd and other input tensors stay on the CPU


# --------------------------------------------------------------------------- the estimate


def estimate(
    spec: ModelSpec,
    ctx: int = DEFAULT_CTX,
    settings: LoadSettings = DEFAULT_SETTINGS,
    *,
    gpu_layers: int = 0,
    cpu_isa: tuple[str, ...] | None = None,
    moe_cpu_layers: int = 0,
    gpu_host_buffer: bool = False,
) -> Estimate:
    """What llama.cpp allocates for ``spec`` at ``ctx`` with ``gpu_layers`` offloaded (see module doc).

    ``gpu_layers`` counts like llama.cpp's ``n_gpu_layers`` (``n_layers + 1`` = everything, the output
    layer included); ``cpu_isa`` is ``HardwareInfo.cpu.isa`` (decides the CPU's repacked weights);
    ``moe_cpu_layers``: the expert tensors of the first that many blocks stay in RAM (``--n-cpu-moe``;
    -1: every block, ``--cpu-moe``). ``gpu_host_buffer``: the build's GPU has a host buffer type (CUDA): then
    the CPU's weights keep no repacked copies (module docstring).
    """
    if ctx < 1:
        raise InvalidSettings("the context must be at least 1 token")
    n_layers = spec.n_layers
    gpu_layers = max(0, min(gpu_layers, n_layers + 1))
    first_gpu = n_layers + 1 - gpu_layers
    experts_asked = moe_cpu_layers != 0
    moe_cpu_layers = (n_layers if moe_cpu_layers < 0 else min(moe_cpu_layers, n_layers)) if spec.n_expert else 0
    rules = _extra_buft_rules(cpu_isa, settings.use_extra_bufts and not gpu_host_buffer)

    gpu_w = cpu_w = repack = 0
    largest_cpu_matrix = 0
    experts_held = False  # some offloaded block's experts stay in RAM
    for group, (n_bytes, group_repack, largest) in _layout(spec, rules).items():
        if _on_gpu(group, n_layers, gpu_layers, moe_cpu_layers):
            gpu_w += n_bytes
        else:
            cpu_w += n_bytes
            repack += group_repack
            if group != "token_embd":
                largest_cpu_matrix = max(largest_cpu_matrix, largest)
            if group.endswith(".exps") and int(group.split(".")[1]) >= first_gpu:
                experts_held = True
    if gpu_layers >= 1 and spec.tied_embeddings:
        # The output projection reuses token_embd: llama.cpp loads a copy of it on the GPU.
        gpu_w += spec.tensor_bytes.get("token_embd", 0)
    cpu_w += repack

    kv_layers = kv_layer_bytes(spec, ctx, settings)
    gpu_kv = sum(b for il, b in enumerate(kv_layers) if il >= first_gpu)
    cpu_kv = sum(kv_layers) - gpu_kv
    rs_layers = recurrent_layer_bytes(spec)  # like the KV cache, a layer's state lives with the layer
    gpu_rs = sum(b for il, b in enumerate(rs_layers) if il >= first_gpu)
    cpu_rs = sum(rs_layers) - gpu_rs

    stages = compute_stages(spec, ctx, settings)
    _, ub = effective_batches(ctx, settings)
    full = max(stages.values())
    layers_only = max(v for k, v in stages.items() if k != "logits")
    inputs = 4 * ub * spec.n_embd  # the input embeddings, built on the CPU from token_embd
    if gpu_layers == 0:
        gpu_compute, cpu_compute = 0, full
    elif gpu_layers >= n_layers + 1 and not experts_held:
        gpu_compute, cpu_compute = full, inputs
    elif gpu_layers >= n_layers + 1:
        # Every block offloaded, some experts in RAM: the GPU copies one expert tensor at a time (op
        # offload); the CPU runs those experts only for one-token batches (module docstring).
        gpu_compute = full + largest_cpu_matrix
        cpu_compute = max(inputs, 4 * (3 * spec.n_ff_expert * spec.n_expert_used + 2 * spec.n_embd))
    else:
        gpu_compute = full + largest_cpu_matrix
        cpu_compute = layers_only

    output = spec.vocab_size * 4
    n_nodes = max(_GRAPH_MIN_NODES, 8 * len(spec.tensors))
    overhead = output + n_nodes * _GRAPH_NODE_BYTES

    notes = []
    if spec.architecture in _UNMODELLED_STATE:
        notes.append(
            f"{spec.architecture} keeps a recurrent state the estimate does not model; treat the figures as approximate"
        )
    if experts_asked and not spec.n_expert:
        notes.append("the model has no MoE experts, so keeping experts in RAM (--cpu-moe) changes nothing")
    if spec.n_ctx_train and ctx > spec.n_ctx_train:
        notes.append(f"context {ctx} exceeds the {spec.n_ctx_train} tokens the model was trained on")

    weights = gpu_w + cpu_w
    kv = gpu_kv + cpu_kv
    compute = gpu_compute + cpu_compute
    gpu_total = gpu_w + gpu_kv + gpu_rs + gpu_compute
    cpu_total = cpu_w + cpu_kv + cpu_rs + cpu_compute + overhead
    return Estimate(
        weights_bytes=weights,
        kv_bytes=kv,
        compute_bytes=compute,
        overhead_bytes=overhead,
        total_bytes=gpu_total + cpu_total,
        gpu_bytes=gpu_total,
        cpu_bytes=cpu_total,
        context=ctx,
        n_ctx=pad(ctx),
        n_ubatch=ub,
        gpu_layers=gpu_layers,
        repack_bytes=repack,
        output_bytes=output,
        gpu_weights_bytes=gpu_w,
        gpu_kv_bytes=gpu_kv,
        gpu_compute_bytes=gpu_compute,
        moe_cpu_layers=moe_cpu_layers if gpu_layers else 0,
        recurrent_bytes=gpu_rs + cpu_rs,
        gpu_recurrent_bytes=gpu_rs,
        notes=tuple(notes),
    )


#: Architectures whose recurrent state is not modelled: RWKV (token shift and WKV rows), and the linear-attention
#: hybrids (gated delta net, KDA) whose state rows differ from Mamba's.
_UNMODELLED_STATE = frozenset({"rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "qwen3next", "qwen35", "qwen35moe", "kimi-linear"})
