"""The memory estimate: exact weights and KV, the calibrated compute buffer, the GPU/CPU split, and its
accuracy against the buffers llama.cpp reports when it really loads the models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fitchat.model.estimate import (
    DEFAULT_CTX,
    DEFAULT_SETTINGS,
    InvalidSettings,
    LoadSettings,
    compute_stages,
    effective_batches,
    estimate,
    kv_layer_bytes,
)
from fitchat.model.gguf_spec import ModelSpec, read_spec
from fitchat.model.hardware import parse_isa, probe_llama_build
from fitchat.model.measure import (
    MeasureFailed,
    accuracy_failures,
    measure,
    measure_many,
    measurement_from_log,
    parse_buffer_log,
    within,
)

MiB = 1024 * 1024
AVX2 = ("AVX", "AVX2", "FMA", "F16C")


@pytest.fixture(scope="module")
def smol(smollm2_variants: dict[str, Path]) -> dict[str, ModelSpec]:
    return {q: read_spec(p) for q, p in smollm2_variants.items()}


@pytest.fixture(scope="module")
def gemma(gemma3: Path) -> ModelSpec:
    return read_spec(gemma3)


@pytest.fixture(scope="module")
def isa() -> tuple[str, ...]:
    """This machine's instruction sets, as the llama.cpp build reports them."""
    return parse_isa(probe_llama_build().system_info)


# --------------------------------------------------------------------------- settings


def test_default_settings_and_llama_kwargs() -> None:
    assert DEFAULT_CTX == 4096
    assert DEFAULT_SETTINGS.llama_kwargs() == {
        "flash_attn": True, "swa_full": True, "n_batch": 512, "n_ubatch": 512, "type_k": 1, "type_v": 1,
    }
    q8 = LoadSettings(type_k="q8_0", type_v="q8_0")
    assert (q8.llama_kwargs()["type_k"], q8.llama_kwargs()["type_v"]) == (8, 8)
    assert LoadSettings(type_k="q4_0").llama_kwargs()["type_k"] == 2


def test_settings_llama_cpp_would_refuse() -> None:
    with pytest.raises(InvalidSettings, match="needs flash attention"):
        LoadSettings(flash_attn=False, type_v="q8_0")
    with pytest.raises(InvalidSettings, match="unknown KV cache type"):
        LoadSettings(type_k="q5_1")
    with pytest.raises(InvalidSettings):
        LoadSettings(n_ubatch=0)


def test_batches_clamp_like_llama_cpp() -> None:
    assert effective_batches(4096, DEFAULT_SETTINGS) == (512, 512)
    assert effective_batches(100, DEFAULT_SETTINGS) == (100, 100)  # llama-cpp-python: n_batch = min(n_ctx, n_batch)
    assert effective_batches(2048, LoadSettings(n_batch=128, n_ubatch=512)) == (128, 128)


# --------------------------------------------------------------------------- KV cache


def test_kv_cache_exact(smol: dict[str, ModelSpec], gemma: ModelSpec) -> None:
    s = smol["Q8_0"]
    # 30 layers × 3 KV heads × 64 × (K + V) × 2 bytes per cell.
    assert sum(kv_layer_bytes(s, 2048)) == 45 * MiB
    assert sum(kv_layer_bytes(s, 8192)) == 180 * MiB
    assert sum(kv_layer_bytes(s, 100)) == sum(kv_layer_bytes(s, 256))  # llama.cpp pads the context to 256
    assert sum(kv_layer_bytes(s, 512, LoadSettings(type_k="q8_0", type_v="q8_0"))) == 30 * 512 * 384 * 34 // 32
    assert sum(kv_layer_bytes(s, 512, LoadSettings(type_k="q4_0", type_v="q4_0"))) == 30 * 512 * 384 * 18 // 32
    # gemma-3-270m at 8k: 3 global layers 24 MiB; 15 sliding layers 120 MiB full-size, 15 MiB window-sized.
    full = kv_layer_bytes(gemma, 8192)
    window = kv_layer_bytes(gemma, 8192, LoadSettings(swa_full=False))
    assert sum(b for b, swa in zip(full, gemma.swa_layers) if not swa) == 24 * MiB
    assert sum(b for b, swa in zip(full, gemma.swa_layers) if swa) == 120 * MiB
    assert sum(window) == 39 * MiB
    # The window cache is window + n_ubatch cells, padded to 256: 512 + 256 -> 768 cells.
    assert sum(kv_layer_bytes(gemma, 8192, LoadSettings(swa_full=False, n_ubatch=256))) == 24 * MiB + 15 * 768 * 1024
    # No saving when the context is shorter than the window.
    assert sum(kv_layer_bytes(gemma, 512, LoadSettings(swa_full=False))) == sum(kv_layer_bytes(gemma, 512))


# --------------------------------------------------------------------------- compute buffer


def test_compute_buffer_model(smol: dict[str, ModelSpec], gemma: ModelSpec) -> None:
    s = smol["Q4_1"]
    no_fa = LoadSettings(flash_attn=False)
    # Without flash attention at 16k the KQ scores dominate: 4·512·(9·16384 + 16384 + 5·576 + 192 + 192).
    assert compute_stages(s, 16384, no_fa)["attention"] == 4 * 512 * (9 * 16384 + 16384 + 5 * 576 + 384)
    assert estimate(s, 16384, no_fa).compute_bytes == pytest.approx(326.375 * MiB, abs=1)
    # With flash attention the logits stage (49152 × 512 × 4 = 96 MiB) is the peak at every context. It sits above
    # the last layer's output row, which ggml-alloc leaves in the 2nd or 3rd row of n_embd by allocation history
    # (SmolLM2 measures 98.25 MiB = 2 rows with f16 caches at 8k, 99.38 MiB = 3 rows with q8_0): 2.5 rows.
    for ctx in (512, 2048, 8192, 16384):
        assert estimate(s, ctx).compute_bytes == 4 * 512 * 49152 + 2 * 512 * 5 * 576
    # gemma's 262k vocabulary: logits n_vocab × n_ubatch × 4 = 512 MiB, half at n_ubatch 256.
    assert estimate(gemma, 8192).compute_bytes == 4 * 512 * 262144 + 2 * 512 * 5 * 640
    assert estimate(gemma, 8192, LoadSettings(n_ubatch=256)).compute_bytes == 4 * 256 * 262144 + 2 * 256 * 5 * 640


def test_estimate_adds_up(smol: dict[str, ModelSpec]) -> None:
    e = estimate(smol["Q8_0"], 4096, cpu_isa=AVX2)
    assert e.total_bytes == e.weights_bytes + e.kv_bytes + e.compute_bytes + e.overhead_bytes
    assert e.total_bytes == e.gpu_bytes + e.cpu_bytes and e.gpu_bytes == 0
    assert e.output_bytes == 49152 * 4 and e.overhead_bytes >= e.output_bytes
    assert (e.context, e.n_ctx, e.n_ubatch, e.gpu_layers) == (4096, 4096, 512, 0)


# --------------------------------------------------------------------------- CPU repack


def test_cpu_repack_depends_on_the_instruction_set(smol: dict[str, ModelSpec], gemma: ModelSpec) -> None:
    q4km = smol["Q4_K_M"]
    # AVX2 repacks Q4_K matrices whose rows are a multiple of 8: llama.cpp's CPU_REPACK buffer, 7.59 MiB.
    assert estimate(q4km, 512, cpu_isa=AVX2).repack_bytes == 7_962_624
    assert estimate(gemma, 512, cpu_isa=AVX2).repack_bytes == 13_271_040  # 12.66 MiB
    assert estimate(q4km, 512, cpu_isa=("SSE3",)).repack_bytes == 0
    assert estimate(smol["Q4_1"], 512, cpu_isa=AVX2).repack_bytes == 0
    # ARM with dot product repacks Q8_0 too (every Q8_0 matrix but token_embd).
    q8 = smol["Q8_0"]
    arm = estimate(q8, 512, cpu_isa=("NEON", "DOTPROD"))
    assert arm.repack_bytes == sum(t.n_bytes for t in q8.tensors if t.type_name == "Q8_0" and t.name != "token_embd.weight")
    # Offloaded layers are not repacked.
    assert estimate(q4km, 512, gpu_layers=31, cpu_isa=AVX2).repack_bytes == 0


def test_amx_buffer_on_cpus_that_report_amx(smol: dict[str, ModelSpec]) -> None:
    q4km = smol["Q4_K_M"]
    amx = AVX2 + ("AVX512", "AVX512_VNNI", "AMX_INT8")
    # llama.cpp's log on an AMX Xeon: "AMX model buffer size = 51.31 MiB" (the Q4_K/Q6_K/Q8_0 matrices with their
    # per-block extras, and the tied output's copy of token_embd); the AMX buffer takes them before CPU_REPACK.
    e = estimate(q4km, 512, cpu_isa=amx)
    assert round(e.repack_bytes / MiB, 2) == 51.31
    # Q4_1 (the starter's type) has AMX kernels but no x86 repack: all its matrices go to the AMX buffer.
    assert estimate(smol["Q4_1"], 512, cpu_isa=amx).repack_bytes > 0 == estimate(smol["Q4_1"], 512, cpu_isa=AVX2).repack_bytes


def test_no_extra_buffers_when_they_are_off(smol: dict[str, ModelSpec]) -> None:
    off = LoadSettings(use_extra_bufts=False)
    assert "use_extra_bufts" not in off.llama_kwargs()  # not a Llama(...) argument: loads go through the override
    for isa in (AVX2, AVX2 + ("AVX512", "AVX512_VNNI", "AMX_INT8"), ("NEON", "DOTPROD")):
        on, no = estimate(smol["Q4_K_M"], 2048, cpu_isa=isa), estimate(smol["Q4_K_M"], 2048, off, cpu_isa=isa)
        assert no.repack_bytes == 0 and on.repack_bytes > 0
        assert on.weights_bytes - no.weights_bytes == on.repack_bytes


def test_estimate_without_extra_buffers_matches_a_real_load(smollm2_variants: dict[str, Path], smol: dict[str, ModelSpec],
                                                             isa: tuple[str, ...]) -> None:
    """A real llama.cpp load with use_extra_bufts=False (through fitchat's model-params override): no
    CPU_REPACK or AMX buffer, and the estimate with the setting off matches it."""
    import json
    import subprocess
    import sys

    path = smollm2_variants["Q4_K_M"]
    off = LoadSettings(use_extra_bufts=False)
    request = {"path": str(path), "mode": "load", "gpu_layers": 0, "jobs": [{"ctx": 2048, "kwargs": off.llama_kwargs()}]}
    script = (
        "import json, sys\n"
        "from fitchat.llama.smoke import model_params_override\n"
        "from fitchat.model import measure\n"
        "with model_params_override(use_extra_bufts=False):\n"
        "    print(json.dumps(measure._child(json.loads(sys.argv[1]))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(request)], capture_output=True, text=True,
                          timeout=300, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])[0]
    m = measurement_from_log(result["log"], mode="load", context=2048, settings=off)
    assert {b.device for b in m.buffers if b.kind == "model"} == {"CPU_Mapped"}
    e = estimate(smol["Q4_K_M"], 2048, off, cpu_isa=isa)
    assert e.repack_bytes == 0
    assert accuracy_failures(e, m) == []
    assert abs(e.weights_bytes - m.weights_bytes) < 0.02 * MiB


# --------------------------------------------------------------------------- GPU / CPU split


def test_offload_places_tensors_like_llama_cpp(smol: dict[str, ModelSpec], gemma: ModelSpec) -> None:
    s = smol["Q8_0"]
    n = s.n_layers
    embd = s.tensor_bytes["token_embd"]
    full = estimate(s, 4096, gpu_layers=n + 1, cpu_isa=AVX2)
    # token_embd stays on the CPU; SmolLM2 ties its output to it, so the GPU holds a second copy.
    assert full.weights_bytes - full.gpu_weights_bytes == embd
    assert full.gpu_weights_bytes == sum(s.tensor_bytes.values())
    assert full.gpu_kv_bytes == full.kv_bytes
    # gpu_layers = 1 offloads the output layer first, no blocks.
    one = estimate(s, 4096, gpu_layers=1, cpu_isa=AVX2)
    assert one.gpu_weights_bytes == s.tensor_bytes["output_norm"] + embd
    assert one.gpu_kv_bytes == 0
    # gpu_layers = 3: the output layer and the last two blocks, with their KV cache.
    three = estimate(s, 4096, gpu_layers=3, cpu_isa=AVX2)
    assert three.gpu_weights_bytes == one.gpu_weights_bytes + s.block_bytes(28) + s.block_bytes(29)
    assert three.gpu_kv_bytes == sum(kv_layer_bytes(s, 4096)[28:])
    # More layers offloaded never needs less GPU memory.
    gpu = [estimate(gemma, 8192, gpu_layers=g, cpu_isa=AVX2).gpu_bytes for g in range(gemma.n_layers + 2)]
    assert gpu == sorted(gpu) and gpu[0] == 0
    # An untied model (own output.weight) has no duplicate on the GPU.
    for e in (full, one, three):
        assert e.total_bytes == e.gpu_bytes + e.cpu_bytes


# --------------------------------------------------------------------------- reading llama.cpp's log

LOG = """\
load_tensors:   CPU_Mapped model buffer size =    98.87 MiB
load_tensors:   CPU_REPACK model buffer size =     7.59 MiB
llama_context:        CPU  output buffer size =     0.19 MiB
llama_kv_cache:        CPU KV buffer size =    45.00 MiB
llama_kv_cache: size =   45.00 MiB (  2048 cells,  30 layers,  1/1 seqs), K (f16):   22.50 MiB, V (f16):   22.50 MiB
sched_reserve:        CPU compute buffer size =    99.38 MiB
"""


def test_parse_buffer_log() -> None:
    bufs = parse_buffer_log(LOG)
    assert [(b.device, b.kind) for b in bufs] == [
        ("CPU_Mapped", "model"), ("CPU_REPACK", "model"), ("CPU", "output"), ("CPU", "KV"), ("CPU", "compute"),
    ]
    m = measurement_from_log(LOG, mode="load", context=2048, settings=DEFAULT_SETTINGS)
    assert m.weights_bytes == round(98.87 * MiB) + round(7.59 * MiB)
    assert (m.kv_bytes, m.compute_bytes) == (45 * MiB, round(99.38 * MiB))
    assert m.total_bytes == m.weights_bytes + m.kv_bytes + m.compute_bytes + m.output_bytes
    dry = measurement_from_log(LOG.replace("45.00 MiB\nllama_kv_cache: size", "0.00 MiB\nllama_kv_cache: size"),
                               mode="dry_run", context=2048, settings=DEFAULT_SETTINGS)
    assert dry.weights_bytes is None and dry.kv_bytes == 45 * MiB
    with pytest.raises(MeasureFailed):
        measurement_from_log("llama_model_load: error loading model", mode="load", context=1, settings=DEFAULT_SETTINGS)


def test_tolerance_rule() -> None:
    assert within(100 * MiB + 16 * MiB, 100 * MiB, (0.02, 16 * MiB))
    assert not within(100 * MiB + 17 * MiB, 100 * MiB, (0.02, 16 * MiB))
    assert within(2000 * MiB + 40 * MiB, 2000 * MiB, (0.02, 16 * MiB))  # 2 % of 2000 MiB = 40 MiB


# --------------------------------------------------------------------------- accuracy on real loads

CONTEXTS = (512, 2048, 8192)


@pytest.fixture(scope="module")
def measured(smollm2_variants: dict[str, Path], gemma3: Path) -> dict[str, list]:
    """Real CPU loads (one child process per model), default settings, at 512/2048/8192."""
    paths = {"SmolLM2 Q4_K_M": smollm2_variants["Q4_K_M"], "gemma-3-270m Q4_K_M": gemma3}
    return {name: (p, measure_many(p, [(c, DEFAULT_SETTINGS) for c in CONTEXTS])) for name, p in paths.items()}


@pytest.mark.parametrize("name", ["SmolLM2 Q4_K_M", "gemma-3-270m Q4_K_M"])
def test_estimate_matches_llama_cpp_real_loads(measured: dict, name: str, isa: tuple[str, ...]) -> None:
    path, results = measured[name]
    spec = read_spec(path)
    for m in results:
        e = estimate(spec, m.context, m.settings, cpu_isa=isa)
        assert accuracy_failures(e, m) == [], f"{name} at {m.context}"
        # Much tighter than the promise in practice: weights and KV to the byte (within log rounding).
        assert abs(e.weights_bytes - m.weights_bytes) < 0.02 * MiB
        assert abs(e.kv_bytes - m.kv_bytes) < 0.02 * MiB
        assert abs(e.compute_bytes - m.compute_bytes) < 5 * MiB


def test_dry_run_compute_and_kv(gemma3: Path, gemma: ModelSpec) -> None:
    settings = LoadSettings(swa_full=False)
    m = measure(gemma3, 8192, settings, mode="dry_run")
    assert m.mode == "dry_run" and m.weights_bytes is None
    assert m.kv_bytes == 39 * MiB  # from llama.cpp's "llama_kv_cache: size" lines: nothing was allocated
    assert accuracy_failures(estimate(gemma, 8192, settings), m) == []


def test_invalid_file_is_never_handed_to_llama_cpp(tmp_path: Path) -> None:
    from fitchat.errors import InvalidModelFile

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 64)
    # The child would report MeasureFailed; read_spec stops it first.
    with pytest.raises(InvalidModelFile):
        measure(bad, 512)


@pytest.mark.slow
@pytest.mark.parametrize("flash_attn", [True, False])
def test_accuracy_all_models(smollm2_variants: dict[str, Path], gemma3: Path, isa: tuple[str, ...], flash_attn: bool) -> None:
    settings = dataclasses.replace(DEFAULT_SETTINGS, flash_attn=flash_attn)
    for path in [*smollm2_variants.values(), gemma3]:
        spec = read_spec(path)
        for m in measure_many(path, [(c, settings) for c in CONTEXTS]):
            assert accuracy_failures(estimate(spec, m.context, settings, cpu_isa=isa), m) == [], (path.name, m.context)


# --------------------------------------------------------------------------- other architectures (headers only)


def test_mla_kv_in_both_gguf_layouts(tmp_path: Path) -> None:
    from tests import arch_factory

    new = read_spec(arch_factory.small_model("deepseek2-mla", tmp_path))
    old = read_spec(arch_factory.small_model("deepseek2-old", tmp_path))
    assert (new.key_length_mla, new.value_length_mla, old.key_length_mla) == (192, 128, 0)
    # Current layout: one compressed row per cell (kv_lora_rank 512 + rope 64), no V.
    assert kv_layer_bytes(new, 2048) == [2048 * 576 * 2] * 2
    # Older layout: full K (192) and V (128) for all 16 heads.
    assert kv_layer_bytes(old, 2048) == [2048 * 16 * (192 + 128) * 2] * 2
    assert not any("MLA" in n for n in estimate(new, 2048).notes)


def test_llama4_chunked_attention_keeps_a_window(tmp_path: Path) -> None:
    from tests import arch_factory

    spec = read_spec(arch_factory.small_model("llama4", tmp_path))
    assert spec.sliding_window == 8192 and spec.swa_layers == (True, True, True, False)
    window = LoadSettings(swa_full=False)
    per_cell = 8 * 128 * 2 * 2
    assert kv_layer_bytes(spec, 32768, window) == [(8192 + 512) * per_cell] * 3 + [32768 * per_cell]
    assert kv_layer_bytes(spec, 32768) == [32768 * per_cell] * 4
    # The window's mask is a second one in the attention stage.
    fa = compute_stages(spec, 32768, window)["attention"]
    assert fa - compute_stages(spec, 32768, LoadSettings(swa_full=True))["attention"] == 2 * 512 * (8704 - 32768)


def test_recurrent_state_is_counted_by_layer(tmp_path: Path) -> None:
    from tests import arch_factory

    mamba = read_spec(arch_factory.small_model("mamba2", tmp_path))
    e = estimate(mamba, 4096)
    # Mamba-2: (d_conv-1)·(d_inner + 2·groups·d_state) + d_state·d_inner f32 values per layer, no KV cache.
    assert e.recurrent_bytes == 2 * 4 * (3 * (5120 + 256) + 128 * 5120) and e.kv_bytes == 0
    assert e.total_bytes == e.weights_bytes + e.recurrent_bytes + e.compute_bytes + e.overhead_bytes
    assert not e.notes
    hybrid = read_spec(arch_factory.small_model("granitehybrid", tmp_path))
    assert hybrid.recurrent_layers == (True, False, True, False)
    h = estimate(hybrid, 4096, gpu_layers=2)  # the output layer and block 3 (an attention block)
    assert h.gpu_recurrent_bytes == 0 and h.recurrent_bytes == 2 * 4 * (3 * (3072 + 256) + 128 * 3072)
    h = estimate(hybrid, 4096, gpu_layers=3)  # blocks 2 and 3
    assert h.gpu_recurrent_bytes == h.recurrent_bytes // 2
    lfm2 = read_spec(arch_factory.small_model("lfm2", tmp_path))
    assert estimate(lfm2, 4096).recurrent_bytes == 2 * 4 * 2048 * 2  # n_embd·(L_cache-1) per conv layer
