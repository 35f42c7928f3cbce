"""The first model to suggest: the largest curated model that fits, from remote headers on the local Hub.

The curated list is injected (``candidates``) with the test repos: SmolLM2-135M in four quants and
gemma-3-270m Q4_K_M (real files), a gated repo and one the Hub does not have. The machines are fixed
``HardwareInfo``\\ s sized between what the estimate gives for the two models at 4k context
(SmolLM2 Q8_0 about 330 MiB in all, gemma-3 about 840 MiB; measured in the tests, not assumed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fitchat.hub.catalog import CatalogEntry
from fitchat.hub.client import HubUnreachable
from fitchat.hub.recommend import recommend_first_model
from fitchat.model.gguf_spec import read_spec
from fitchat.model.hardware import RamInfo
from fitchat.model.plan import plan_hardware, plan_variants
from tests.hubserver import GATED_REPO, GEMMA3_REPO, SMOLLM2_REPO, LocalHub, smollm2_files
from tests.tui_support import cpu_machine

MiB = 1024**2
GiB = 1024**3
CTX = 4096
GEMMA_FILE = "gemma-3-270m-it-Q4_K_M.gguf"


def entry(repo: str, params_b: float, *, gated: bool = False) -> CatalogEntry:
    return CatalogEntry(repo=repo, name=repo.split("/")[1], family="test", params_b=params_b, context=8192,
                        license="apache-2.0", gated=gated, default_quant="Q4_K_M", variants=())


# Smallest first, as curated() lists them: the function must try them largest first.
CANDIDATES = [
    entry(SMOLLM2_REPO, 0.135),
    entry(GEMMA3_REPO, 0.27),
    entry(GATED_REPO, 1.0, gated=True),
    entry("fitchat-test/Not-Published-GGUF", 7.0),
]


@pytest.fixture
def test_hub(hub: LocalHub, smollm2_variants: dict[str, Path], gemma3: Path) -> LocalHub:
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    hub.add_repo(GEMMA3_REPO, {GEMMA_FILE: gemma3})
    hub.add_repo(GATED_REPO, {"Gated-Q4_K_M.gguf": smollm2_variants["Q4_K_M"]}, gated=True)
    return hub


@pytest.fixture(scope="module")
def needs(smollm2_variants: dict[str, Path], gemma3: Path) -> dict[str, int]:
    return model_needs(smollm2_variants, gemma3)


def model_needs(smollm2_variants: dict[str, Path], gemma3: Path) -> dict[str, int]:
    """Bytes each model's recommended variant needs at 4k context (all in RAM, and on a GPU)."""
    cpu = cpu_machine()
    gpu = plan_hardware(cpu, gpu_mem=64 * GiB)
    small = [read_spec(p) for p in smollm2_variants.values()]
    big = [read_spec(gemma3)]
    out = {
        "smollm2_ram": max(p.estimate.total_bytes for p in plan_variants(small, cpu, CTX)),
        "gemma_ram": min(p.estimate.total_bytes for p in plan_variants(big, cpu, CTX)),
        "smollm2_gpu": max(p.estimate.gpu_bytes for p in plan_variants(small, gpu, CTX)),
        "gemma_gpu": min(p.estimate.gpu_bytes for p in plan_variants(big, gpu, CTX)),
    }
    assert out["smollm2_ram"] < out["gemma_ram"] and out["smollm2_gpu"] < out["gemma_gpu"]
    return out


def cpu_with_ram(usable: int):
    """A CPU-only machine with ``usable`` bytes of RAM after fitchat's 512 MiB margin (4 GiB total)."""
    return dataclasses.replace(cpu_machine(), ram=RamInfo(total_bytes=4 * GiB, available_bytes=512 * MiB + usable))


def touched(hub: LocalHub, repo: str) -> bool:
    return any(repo in r.path for r in hub.requests)


def test_the_largest_model_that_fits_wins_and_smaller_ones_are_not_read(test_hub: LocalHub) -> None:
    rec = recommend_first_model(cpu_machine(), CTX, endpoint=test_hub.endpoint, candidates=CANDIDATES)
    assert rec is not None
    assert rec.entry.repo == GEMMA3_REPO
    assert rec.plan.recommended and rec.plan.verdict == "cpu" and rec.plan.spec.quant == "Q4_K_M"
    assert rec.plan.reason.startswith("Q4_K_M: runs on the CPU at 4k context")
    # The missing repo was asked about and skipped; the gated one (no token) never; SmolLM2 not at all.
    assert touched(test_hub, "Not-Published-GGUF")
    assert not touched(test_hub, GATED_REPO) and not touched(test_hub, SMOLLM2_REPO)


def test_a_smaller_model_when_the_larger_does_not_fit(test_hub: LocalHub, needs: dict[str, int]) -> None:
    hw = cpu_with_ram((needs["smollm2_ram"] + needs["gemma_ram"]) // 2)
    rec = recommend_first_model(hw, CTX, endpoint=test_hub.endpoint, candidates=CANDIDATES)
    assert rec is not None and rec.entry.repo == SMOLLM2_REPO
    assert rec.plan.verdict == "cpu" and rec.plan.spec.quant == "Q8_0"  # the best SmolLM2 quant that fits
    assert touched(test_hub, GEMMA3_REPO)


def test_full_gpu_beats_a_larger_partial_offload(test_hub: LocalHub, needs: dict[str, int]) -> None:
    # A GPU with room for all of SmolLM2 but only part of gemma-3 (512 MiB of margin on a small card).
    hw = plan_hardware(cpu_machine(), gpu_mem=512 * MiB + (needs["smollm2_gpu"] + needs["gemma_gpu"]) // 2)
    rec = recommend_first_model(hw, CTX, endpoint=test_hub.endpoint, candidates=CANDIDATES)
    assert rec is not None and rec.entry.repo == SMOLLM2_REPO
    assert rec.plan.verdict == "full_gpu" and rec.plan.spec.quant == "Q8_0"
    assert touched(test_hub, GEMMA3_REPO)
    # Without SmolLM2 in the list, gemma-3 on the CPU is the answer (this GPU is too small for its layers).
    rec = recommend_first_model(hw, CTX, endpoint=test_hub.endpoint, candidates=CANDIDATES[1:])
    assert rec is not None and rec.entry.repo == GEMMA3_REPO and rec.plan.verdict in ("partial_gpu", "cpu")


def test_nothing_fits(test_hub: LocalHub, needs: dict[str, int]) -> None:
    rec = recommend_first_model(cpu_with_ram(needs["smollm2_ram"] // 2), CTX, endpoint=test_hub.endpoint,
                                candidates=CANDIDATES)
    assert rec is None
    # RAM smaller than every file: decided from the file sizes alone, no header is read.
    test_hub.requests.clear()
    tiny = dataclasses.replace(cpu_machine(), ram=RamInfo(total_bytes=4 * GiB, available_bytes=64 * MiB))
    assert recommend_first_model(tiny, CTX, endpoint=test_hub.endpoint, candidates=CANDIDATES) is None
    assert test_hub.cdn_requests() == []


def test_offline_asks_nothing(test_hub: LocalHub, monkeypatch: pytest.MonkeyPatch, unreachable_endpoint: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachable, match="HF_HUB_OFFLINE"):
        recommend_first_model(cpu_machine(), CTX, endpoint=test_hub.endpoint, candidates=CANDIDATES)
    assert test_hub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(HubUnreachable):
        recommend_first_model(cpu_machine(), CTX, endpoint=unreachable_endpoint, candidates=CANDIDATES)


def test_a_moe_model_with_experts_in_ram_beats_a_larger_layer_split(hub: LocalHub, tmp_path: Path) -> None:
    """On an 8 GB GPU, Qwen3-30B-A3B with experts in RAM wins over a larger dense model split by layers
    (Qwen3-32B), though the dense one is tried first: a split does not stop the search for a MoE plan."""
    from fitchat.hub.recommend import recommend_first_model
    from tests import moe_factory
    from tests.hubserver import HubFile

    published = {
        "test/Qwen3-32B-GGUF": moe_factory.qwen3_32b(tmp_path / "Qwen3-32B-Q4_K_M.gguf"),
        "test/Qwen3-30B-A3B-GGUF": moe_factory.qwen3_30b_a3b(tmp_path / "Qwen3-30B-A3B-Q4_K_M.gguf"),
    }
    for repo, path in published.items():  # virtual files: the real header, zeros up to the full size
        hub.add_repo(repo, {path.name: b"placeholder"}).files[path.name] = HubFile.make(
            path.name, moe_factory.header_bytes(path), size=path.stat().st_size)
    hw = plan_hardware(cpu_machine(), gpu_mem=8 * GiB, ram=64 * GiB)
    candidates = [entry("test/Qwen3-30B-A3B-GGUF", 30.5), entry("test/Qwen3-32B-GGUF", 32.8)]
    rec = recommend_first_model(hw, CTX, endpoint=hub.endpoint, candidates=candidates)
    assert rec is not None and rec.entry.repo == "test/Qwen3-30B-A3B-GGUF"
    assert rec.plan.verdict == "partial_gpu" and rec.plan.gpu_layers == 49 and rec.plan.moe_cpu_layers > 0
    assert touched(hub, "Qwen3-32B")  # the dense model was planned first (a split) and lost
