"""Shared fixtures: real models, and a private XDG home so tests never touch the user's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import models
from tests.hubserver import hub, local_hub, unreachable_endpoint  # noqa: F401  (local Hub fixtures)


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point XDG data/cache/config and the HF cache at a per-test directory."""
    home = tmp_path / "home"
    for var, sub in (("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config")):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf" / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return home


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct Q4_1, the starter model."""
    return models.smollm2_q4_1()


@pytest.fixture(scope="session")
def smollm2_variants(smollm2: Path) -> dict[str, Path]:
    """SmolLM2 as Q4_1 plus Q8_0, Q5_K_M and Q4_K_M made from it."""
    return {q: models.smollm2_variant(q) for q in ("Q4_1", "Q8_0", "Q5_K_M", "Q4_K_M")}


@pytest.fixture(scope="session")
def gemma3() -> Path:
    """gemma-3-270m Q4_K_M: a second architecture (262k vocabulary, sliding-window attention)."""
    return models.gemma3_270m()
