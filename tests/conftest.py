"""Shared fixtures: real models, and a private XDG home so tests never touch the user's files."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import models
from tests.cli.test_chat import open_terminal  # noqa: F401  (fitchat in a pseudo-terminal)
from tests.hubserver import hub, local_hub, unreachable_endpoint  # noqa: F401  (local Hub fixtures)
from tests.rpc_support import Worker, require_rpc_build, start_worker


@pytest.fixture(scope="session")
def smoke_verdict_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The llama.cpp build's smoke verdict on this machine, found once per test session.

    Every engine load checks it (fitchat.llama.smoke); each test's private cache starts with this file,
    so the real smoke decode (a few seconds in a child) runs once, not once per test that loads a model.
    """
    from fitchat.llama.smoke import CACHE_NAME, runtime_verdict

    path = tmp_path_factory.mktemp("smoke") / CACHE_NAME
    runtime_verdict(models.smollm2_q4_1(), cache=path)
    return path


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """Point XDG data/cache/config and the HF cache at a per-test directory."""
    home = tmp_path / "home"
    for var, sub in (("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config")):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    if "fresh_smoke_cache" not in request.keywords:  # tests of the smoke check itself start empty
        seed = request.getfixturevalue("smoke_verdict_file")
        if seed.is_file():
            (home / "cache" / "fitchat").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(seed, home / "cache" / "fitchat" / seed.name)
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf" / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("FITCHAT_STORES", "none")  # other runners' stores: only the ones a test builds
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


@pytest.fixture(scope="session")
def rpc_build() -> None:
    """The one rule for tests that need llama.cpp's RPC backend: skip without it, fail under FITCHAT_REQUIRE_RPC=1."""
    require_rpc_build()


@pytest.fixture(scope="session")
def two_workers(rpc_build: None) -> Iterator[tuple[Worker, Worker]]:
    """Two ``fitchat worker``\\s on 127.0.0.1 (CPU backend), shared by the tests that only use them."""
    a = start_worker()
    try:
        b = start_worker()
    except BaseException:
        a.kill()
        raise
    yield a, b
    a.stop()
    b.stop()
