"""Quant names, the curated catalog, variant listing and Hub search, against the local Hub."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fitchat.cli.main import main
from fitchat.hub import catalog, client
from fitchat.hub.client import HubUnreachable, NotOnHub
from fitchat.model.quants import quant_from_filename, split_names, split_part
from tests.hubserver import LocalHub


@pytest.mark.parametrize(
    ("name", "quant"),
    [
        ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("qwen2.5-7b-instruct-q5_k_m-00001-of-00002.gguf", "Q5_K_M"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("Qwen3-4B-Q6_K.gguf", "Q6_K"),
        ("Qwen3-4B-Q8_0.gguf", "Q8_0"),
        ("m-IQ2_XXS.gguf", "IQ2_XXS"),
        ("m-iq4_xs.gguf", "IQ4_XS"),
        ("m-IQ4_NL.gguf", "IQ4_NL"),
        ("m-Q3_K_L.gguf", "Q3_K_L"),
        ("gemma-3-4b-it-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("qwen2.5-0.5b-instruct-fp16.gguf", "F16"),
        ("Llama-3.2-1B-Instruct-f16.gguf", "F16"),
        ("m-BF16.gguf", "BF16"),
        ("m-f32.gguf", "F32"),
        ("gpt-oss-20b-MXFP4.gguf", "MXFP4"),
        ("m-Q4_0_4_8.gguf", "Q4_0_4_8"),
        ("m-TQ1_0.gguf", "TQ1_0"),
        ("Q8_0/Llama-3.3-70B-Instruct-Q8_0-00001-of-00002.gguf", "Q8_0"),
        ("Q4_K_M/model-00001-of-00002.gguf", "Q4_K_M"),
        ("model.gguf", None),
        ("phi-4-14b.gguf", None),
    ],
)
def test_quant_from_filename(name: str, quant: str | None) -> None:
    assert quant_from_filename(name) == quant


def test_split_part() -> None:
    assert split_part("m-Q8_0-00002-of-00003.gguf") == ("m-Q8_0.gguf", 2, 3)
    assert split_part("m-Q8_0.gguf") is None
    assert split_part("m-00004-of-00003.gguf") is None
    assert split_names("m-00001-of-00002.gguf", 2) == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]


def test_curated_catalog_spans_sizes_and_names_match_quants() -> None:
    entries = catalog.curated()
    assert 14 <= len(entries) <= 20
    assert entries[0].params_b <= 0.5 and entries[-1].params_b >= 70
    assert [e.params_b for e in entries] == sorted(e.params_b for e in entries)
    assert len({e.repo for e in entries}) == len(entries)
    families = {e.family.rstrip("0123456789.") for e in entries}
    assert {"qwen", "llama", "gemma", "phi", "mistral", "smollm"} <= families
    for e in entries:
        files = dict(e.variants)
        assert e.default_quant in files, e.repo
        for quant, file in files.items():
            assert file.endswith(".gguf")
            assert quant_from_filename(file) == quant, (e.repo, file)
    assert catalog.curated_entry(entries[0].repo.upper()) == entries[0]


@pytest.fixture
def variants_repo(hub: LocalHub, smollm2_variants: dict[str, Path]) -> str:
    files: dict[str, Path | bytes | str] = {f"SmolLM2-135M-Instruct-{q}.gguf": p for q, p in smollm2_variants.items()}
    files["mmproj-SmolLM2-f16.gguf"] = b"GGUF projector"
    files["SmolLM2-135M-Instruct-F16-00001-of-00002.gguf"] = b"GGUF" + b"a" * 1000
    files["SmolLM2-135M-Instruct-F16-00002-of-00002.gguf"] = b"b" * 500
    files["SmolLM2-135M-Instruct-BF16-00001-of-00003.gguf"] = b"GGUF incomplete set"
    files["config.json"] = b"{}"
    hub.add_repo("fitchat-test/SmolLM2-135M-Instruct-GGUF", files)
    return "fitchat-test/SmolLM2-135M-Instruct-GGUF"


def test_list_variants_exact_sizes_sha_and_split_sets(hub: LocalHub, variants_repo: str,
                                                      smollm2_variants: dict[str, Path]) -> None:
    variants = catalog.list_variants(variants_repo)
    by_quant = {v.quant: v for v in variants}
    assert set(by_quant) == {"Q4_1", "Q8_0", "Q5_K_M", "Q4_K_M", "F16"}  # no projector, no incomplete split set
    for quant, path in smollm2_variants.items():
        v = by_quant[quant]
        assert v.size_bytes == path.stat().st_size
        assert v.sha256 == (hashlib.sha256(path.read_bytes()).hexdigest(),)
        assert v.files == (v.file,)
    split = by_quant["F16"]
    assert split.files == ("SmolLM2-135M-Instruct-F16-00001-of-00002.gguf", "SmolLM2-135M-Instruct-F16-00002-of-00002.gguf")
    assert split.size_bytes == 1004 + 500
    assert len(split.sha256) == 2
    sizes = [v.size_bytes for v in variants]
    assert sizes == sorted(sizes)
    assert catalog.pick_variant(variants, "q4_k_m") is by_quant["Q4_K_M"]
    assert catalog.pick_variant(variants, "SmolLM2-135M-Instruct-Q8_0.gguf") is by_quant["Q8_0"]
    with pytest.raises(NotOnHub, match="no Q2_K variant; it has: "):
        catalog.pick_variant(variants, "Q2_K")


def test_list_variants_errors(hub: LocalHub, unreachable_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_repo("org/safetensors-only", {"model.safetensors": b"x"})
    with pytest.raises(NotOnHub, match="has no GGUF files"):
        catalog.list_variants("org/safetensors-only")
    with pytest.raises(NotOnHub, match="org/missing not found"):
        catalog.list_variants("org/missing")
    with pytest.raises(HubUnreachable, match="cannot reach the Hub"):
        catalog.list_variants("org/safetensors-only", endpoint=unreachable_endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachable, match="HF_HUB_OFFLINE"):
        catalog.list_variants("org/safetensors-only")


@pytest.fixture
def search_repos(hub: LocalHub) -> LocalHub:
    hub.add_repo("bartowski/SmolLM2-1.7B-Instruct-GGUF", {"SmolLM2-1.7B-Instruct-Q4_K_M.gguf": b"GGUF1"}, downloads=500, likes=7)
    hub.add_repo("someone/smollm2-135m-GGUF", {"smollm2-135m-q8_0.gguf": b"GGUF2"}, downloads=20, gated=True)
    hub.add_repo("HuggingFaceTB/SmolLM2-1.7B-Instruct", {"model.safetensors": b"x"}, downloads=9000, tags=["transformers"])
    hub.add_repo("Qwen/Qwen3-4B-GGUF", {"Qwen3-4B-Q4_K_M.gguf": b"GGUF3"}, downloads=10000)
    return hub


def test_search_finds_gguf_repos_most_downloaded_first(search_repos: LocalHub) -> None:
    hits = catalog.search("smollm2")
    assert [h.repo for h in hits] == ["bartowski/SmolLM2-1.7B-Instruct-GGUF", "someone/smollm2-135m-GGUF"]
    assert hits[0].curated and not hits[1].curated
    assert hits[1].gated and hits[0].downloads == 500
    assert catalog.search("smollm2", limit=1)[0].repo == "bartowski/SmolLM2-1.7B-Instruct-GGUF"
    assert catalog.search("no-such-model") == []


def test_search_cli(search_repos: LocalHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "smollm2"]) == 0
    out = capsys.readouterr().out
    assert "bartowski/SmolLM2-1.7B-Instruct-GGUF" in out and "curated" in out and "gated" in out
    assert not any(line.startswith("HuggingFaceTB/") for line in out.splitlines())  # not a GGUF repo
    assert main(["search", "qwen3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == [{"repo": "Qwen/Qwen3-4B-GGUF", "downloads": 10000, "likes": 0, "gated": False, "curated": True}]


def test_search_offline_and_unreachable_say_so(
    search_repos: LocalHub, unreachable_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", unreachable_endpoint)
    assert main(["search", "smollm2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fitchat: error: cannot reach the Hub at http://127.0.0.1:") and err.count("\n") == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["search", "smollm2"]) == 1
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    # the curated list needs no Hub
    assert main(["search", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(catalog.curated())


def test_hub_reachable(hub: LocalHub, unreachable_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.hub_reachable()
    assert not client.hub_reachable(endpoint=unreachable_endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not client.hub_reachable()
