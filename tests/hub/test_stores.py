"""Other runners' stores, read-only: Ollama's manifests and blobs, LM Studio's models folder, llama.cpp's cache.

Each test builds a real store layout around real GGUFs (hardlinks of the SmolLM2 test models, so the
store holds real files) in a private home.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pytest

from fitchat.cli.main import main
from fitchat.errors import FitchatError, ModelNotFound
from fitchat.hub import store, stores
from tests import models
from tests.gguf_factory import tiny_llama

FAST = ["--threads", "1", "--temp", "0", "--seed", "1"]


class Home:
    """A user's home with the three stores in their default places (Ollama and llama.cpp by env var)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ollama = root / ".ollama" / "models"
        self.lmstudio = root / ".lmstudio" / "models"
        self.llamacpp = root / ".cache" / "llama.cpp"

    def ollama_model(self, name: str, tag: str, gguf: Path, *, registry: str = "registry.ollama.ai",
                     namespace: str = "library", file_type: str | None = "Q4_1", extra_layers: bool = True,
                     manifest: object | None = None) -> Path:
        """A manifest naming ``gguf`` (hardlinked as its blob), with config, template, params and projector layers."""
        blobs = self.ollama / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        digest = _sha256(gguf)
        blob = blobs / f"sha256-{digest}"
        if not blob.exists():
            os.link(gguf, blob)
        layers = [{"mediaType": stores.MODEL_LAYER, "digest": f"sha256:{digest}", "size": gguf.stat().st_size}]
        config = None
        if file_type is not None:
            config = self._blob(json.dumps({"model_format": "gguf", "file_type": file_type}).encode())
        if extra_layers:
            for kind, data in (("template", b"{{ .Prompt }}"), ("params", b'{"stop": ["<|im_end|>"]}'),
                               ("projector", b"GGUF not really a projector")):
                layers.append({"mediaType": f"application/vnd.ollama.image.{kind}",
                               "digest": f"sha256:{self._blob(data)}", "size": len(data)})
        doc = manifest if manifest is not None else {
            "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": f"sha256:{config}" if config else "sha256:" + "0" * 64},
            "layers": layers,
        }
        path = self.ollama / "manifests" / registry / namespace / name / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
        return path

    def _blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (self.ollama / "blobs" / f"sha256-{digest}").write_bytes(data)
        return digest


def _sha256(path: Path) -> str:
    if path in _DIGESTS:
        return _DIGESTS[path]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    _DIGESTS[path] = h.hexdigest()
    return _DIGESTS[path]


_DIGESTS: dict[Path, str] = {}


@pytest.fixture
def home(tmp_path: Path, smollm2: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    """A private HOME (the test models stay where they are), every store on, Ollama and llama.cpp at their defaults."""
    monkeypatch.setenv("FITCHAT_TEST_MODELS", str(models.models_dir()))  # before HOME moves
    h = Home(tmp_path / "user")
    h.root.mkdir()
    monkeypatch.setenv("HOME", str(h.root))
    monkeypatch.delenv("FITCHAT_STORES", raising=False)
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("LLAMA_CACHE", str(h.llamacpp))
    store._warned.clear()
    return h


def _ls(capsys: pytest.CaptureFixture[str]) -> tuple[list[dict[str, object]], str]:
    """``fitchat ls --json``: the models, and what it said on stderr."""
    assert main(["ls", "--json"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err.strip()


def _ls_json(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return _ls(capsys)[0]


# -- finding them -----------------------------------------------------------------------------------

def test_ollama_model_is_listed_resolved_and_chatted_with(home: Home, smollm2: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    home.ollama_model("smollm2", "135m", smollm2)
    home.ollama_model("model", "latest", smollm2, namespace="someone", file_type=None, extra_layers=False)
    listed = _ls_json(capsys)
    digest = _sha256(smollm2)
    blob = home.ollama / "blobs" / f"sha256-{digest}"
    assert listed == [
        {"repo": "ollama/smollm2", "file": f"sha256-{digest}", "quant": "Q4_1", "size_bytes": smollm2.stat().st_size,
         "path": str(blob), "source": "ollama"},
        {"repo": "ollama/someone/model", "file": f"sha256-{digest}", "quant": "unknown",
         "size_bytes": smollm2.stat().st_size, "path": str(blob), "source": "ollama"},
    ]
    model = store.resolve_model("ollama/smollm2:135m")
    assert (model.ref, model.source, model.path, model.sha256) == ("ollama/smollm2:135m", "ollama", blob, digest)
    assert store.resolve_model("ollama/someone/model").ref == "ollama/someone/model:latest"  # Ollama's default tag
    assert main(["chat", "ollama/smollm2:135m", "-p", "Name a fruit.", "--json", "--max-tokens", "8", *FAST]) == 0
    assert json.loads(capsys.readouterr().out)["reply"].strip()
    assert main(["ls"]) == 0
    rows = [line.split()[:5] for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["ollama/smollm2:135m", "ollama/someone/model:latest"]
    assert rows[0][1] == "Q4_1" and rows[0][4] == "ollama"


def test_lmstudio_split_set_and_mmproj(home: Home, smollm2_variants: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    repo = home.lmstudio / "bartowski" / "SmolLM2-135M-Instruct-GGUF"
    repo.mkdir(parents=True)
    os.link(smollm2_variants["Q8_0"], repo / "SmolLM2-135M-Instruct-Q8_0.gguf")
    (repo / "mmproj-SmolLM2-f16.gguf").write_bytes(b"GGUF")  # a projector: recognised, not a chat model
    tiny = home.lmstudio / "test" / "tiny"
    tiny.mkdir(parents=True)
    parts = tiny_llama(tiny / "tiny-F16.gguf", split_max_tensors=6)
    assert len(parts) > 1 and parts[0].name == f"tiny-F16-00001-of-{len(parts):05d}.gguf"
    listed = _ls_json(capsys)
    assert [(m["repo"], m["quant"], m["file"], m["source"]) for m in listed] == [
        ("lmstudio/bartowski/SmolLM2-135M-Instruct-GGUF", "Q8_0", "SmolLM2-135M-Instruct-Q8_0.gguf", "lmstudio"),
        ("lmstudio/test/tiny", "F16", parts[0].name, "lmstudio"),
    ]
    assert listed[1]["size_bytes"] == sum(p.stat().st_size for p in parts)
    assert store.resolve_model("lmstudio/test/tiny:F16").path == parts[0]
    assert main(["fit", "lmstudio/bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0", "--json"]) == 0
    assert capsys.readouterr().out.strip()
    parts[-1].unlink()  # an incomplete split set is not a model
    assert [m.repo for m in store.list_local()] == ["lmstudio/bartowski/SmolLM2-135M-Instruct-GGUF"]


def test_lmstudio_downloads_folder_from_its_settings(home: Home, smollm2: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "big-disk" / "models"
    (elsewhere / "pub" / "repo").mkdir(parents=True)
    os.link(smollm2, elsewhere / "pub" / "repo" / "model-Q4_1.gguf")
    (home.root / ".lmstudio").mkdir()
    (home.root / ".lmstudio" / "settings.json").write_text(json.dumps({"downloadsFolder": str(elsewhere)}))
    assert [m["repo"] for m in _ls_json(capsys)] == ["lmstudio/pub/repo"]
    assert store.resolve_model("lmstudio/pub/repo").path == elsewhere / "pub" / "repo" / "model-Q4_1.gguf"


def test_llamacpp_cache(home: Home, smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home.llamacpp.mkdir(parents=True)
    os.link(smollm2, home.llamacpp / "bartowski_SmolLM2-135M-Instruct-GGUF_SmolLM2-135M-Instruct-Q4_1.gguf")
    (home.llamacpp / "bartowski_SmolLM2-135M-Instruct-GGUF_SmolLM2-135M-Instruct-Q4_1.gguf.json").write_text("{}")
    (home.llamacpp / "other.gguf.downloadInProgress").write_bytes(b"GG")
    listed = _ls_json(capsys)
    ref = "llamacpp/bartowski_SmolLM2-135M-Instruct-GGUF_SmolLM2-135M-Instruct-Q4_1"
    assert [(m["repo"], m["quant"], m["source"]) for m in listed] == [(ref, "Q4_1", "llamacpp")]
    assert store.resolve_model(ref).size_bytes == smollm2.stat().st_size
    assert main(["fit", ref, "--json"]) == 0


# -- read-only ------------------------------------------------------------------------------------

def test_rm_refuses_with_the_other_tools_command(home: Home, smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home.ollama_model("smollm2", "135m", smollm2)
    lm = home.lmstudio / "pub" / "repo"
    lm.mkdir(parents=True)
    os.link(smollm2, lm / "m-Q4_1.gguf")
    home.llamacpp.mkdir(parents=True)
    os.link(smollm2, home.llamacpp / "org_repo_m-Q4_1.gguf")
    before = sorted(str(p) for p in home.root.rglob("*"))
    for ref, says in (("ollama/smollm2:135m", "run 'ollama rm smollm2:135m'"),
                      ("lmstudio/pub/repo:Q4_1", "run 'lms rm' or delete it in LM Studio's My Models"),
                      ("llamacpp/org_repo_m-Q4_1", "delete "),
                      (str(home.ollama / "blobs" / f"sha256-{_sha256(smollm2)}"), "ollama rm")):
        assert main(["rm", ref]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err and "never changes another runner's models" in err, err
    assert sorted(str(p) for p in home.root.rglob("*")) == before
    with pytest.raises(FitchatError, match="never changes"):
        store.remove("ollama/smollm2")


def test_a_file_that_goes_or_changes_is_one_line(home: Home, smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home.llamacpp.mkdir(parents=True)
    path = home.llamacpp / "org_repo_m-Q4_1.gguf"
    path.write_bytes(smollm2.read_bytes()[: 1 << 20])  # changed under fitchat: truncated
    assert main(["fit", "llamacpp/org_repo_m-Q4_1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    path.unlink()
    assert main(["chat", "llamacpp/org_repo_m-Q4_1", "-p", "hi"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "llama.cpp has no model llamacpp/org_repo_m-Q4_1" in err, err


# -- damaged stores -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("manifest", "says"),
    [
        ("{not json", "is unreadable"),
        ({"schemaVersion": 2, "layers": [{"mediaType": "application/vnd.ollama.image.template",
                                          "digest": "sha256:" + "a" * 64}]}, "names 0 model layers"),
        ({"schemaVersion": 2, "layers": "nope"}, "has no layers"),
        ({"schemaVersion": 2, "layers": [{"mediaType": stores.MODEL_LAYER, "digest": "sha256:XYZ"}]}, "not sha256:"),
        ({"schemaVersion": 2, "layers": [{"mediaType": stores.MODEL_LAYER, "digest": "sha256:../../../etc/passwd"}]},
         "not sha256:"),
        ({"schemaVersion": 2, "layers": [{"mediaType": stores.MODEL_LAYER, "digest": "sha256:" + "b" * 64}]},
         "is missing"),  # a dangling blob
        ([1, 2], "has no layers"),
    ],
)
def test_damaged_ollama_manifests_are_one_line_each(home: Home, smollm2: Path, manifest: object, says: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    home.ollama_model("good", "1", smollm2)
    home.ollama_model("bad", "1", smollm2, manifest=manifest)
    listed, err = _ls(capsys)
    assert [m["repo"] for m in listed] == ["ollama/good"]
    assert len(err.splitlines()) == 1 and err.startswith("fitchat: warning: Ollama: ollama/bad:1") and says in err, err


def test_symlinks_out_of_a_store_are_refused(home: Home, smollm2: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    home.llamacpp.mkdir(parents=True)
    (home.llamacpp / "org_repo_out-Q4_1.gguf").symlink_to(smollm2)  # points outside the cache
    (home.llamacpp / "org_repo_gone-Q4_1.gguf").symlink_to(home.llamacpp / "nothing.gguf")  # dangling
    home.ollama_model("good", "1", smollm2)
    manifests = home.ollama / "manifests" / "registry.ollama.ai" / "library"
    outside = tmp_path / "outside-manifest"
    outside.write_text((manifests / "good" / "1").read_text())
    (manifests / "evil").mkdir()
    (manifests / "evil" / "1").symlink_to(outside)
    listed, err = _ls(capsys)
    assert [m["repo"] for m in listed] == ["ollama/good"]
    lines = err.splitlines()
    assert len(lines) == 3, lines
    assert any("Ollama" in x and "evil" in x and "points outside" in x and "refused" in x for x in lines)
    assert any("llama.cpp" in x and "org_repo_out-Q4_1.gguf points outside" in x for x in lines)
    assert any("llama.cpp" in x and "org_repo_gone-Q4_1.gguf" in x for x in lines)
    assert store.resolve_model(str(home.llamacpp / "org_repo_out-Q4_1.gguf")).source == "file"  # a path typed is used


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: permissions do not stop root reading a chmod 000 folder")
def test_unreadable_folders_are_one_line(home: Home, smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home.ollama_model("good", "1", smollm2)
    locked = home.lmstudio / "pub"
    (locked / "repo").mkdir(parents=True)
    locked.chmod(0)
    try:
        listed, err = _ls(capsys)
        assert [m["repo"] for m in listed] == ["ollama/good"]
        assert err.splitlines() == [err] and "LM Studio: cannot read" in err
    finally:
        locked.chmod(0o755)


# -- turning them off -----------------------------------------------------------------------------

def test_stores_turned_off_by_env_and_by_config(home: Home, smollm2: Path, private_home: Path,
                                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    home.ollama_model("smollm2", "135m", smollm2)
    home.llamacpp.mkdir(parents=True)
    os.link(smollm2, home.llamacpp / "org_repo_m-Q4_1.gguf")
    both = ["ollama", "llamacpp"]
    assert [m["source"] for m in _ls_json(capsys)] == both
    config = private_home / "config" / "fitchat" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[stores]\nollama = false\n")
    assert [m["source"] for m in _ls_json(capsys)] == ["llamacpp"]
    with pytest.raises(ModelNotFound, match="fitchat is not reading Ollama's models"):
        store.resolve_model("ollama/smollm2:135m")
    monkeypatch.setenv("FITCHAT_STORES", "ollama,lmstudio")  # the environment, when set, decides
    assert [m["source"] for m in _ls_json(capsys)] == ["ollama"]
    monkeypatch.setenv("FITCHAT_STORES", "none")
    assert _ls_json(capsys) == []
    monkeypatch.setenv("FITCHAT_STORES", "ollama,vllm")
    listed, err = _ls(capsys)
    assert [m["source"] for m in listed] == ["ollama"]
    assert err == "fitchat: warning: FITCHAT_STORES names unknown stores (vllm); known: ollama, lmstudio, llamacpp, or none"
    monkeypatch.delenv("FITCHAT_STORES")
    config.write_text("[stores\nollama = nope")  # damaged: one line, the defaults
    from fitchat import config as fitchat_config

    fitchat_config._warned.clear()
    listed, err = _ls(capsys)
    if sys.version_info >= (3, 11):
        assert [m["source"] for m in listed] == both
        assert err.splitlines() == [err] and "is not valid TOML" in err, err
    else:
        assert "is ignored on Python" in err


# -- quick ----------------------------------------------------------------------------------------

def test_listing_200_models_is_quick(home: Home, smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``fitchat ls`` with 200 models across the stores: under 300 ms (the median of a few runs)."""
    for i in range(80):
        home.ollama_model(f"model{i}", "q4", smollm2, extra_layers=i % 2 == 0)
    for i in range(60):
        folder = home.lmstudio / f"pub{i % 6}" / f"repo{i}"
        folder.mkdir(parents=True)
        os.link(smollm2, folder / f"repo{i}-Q4_1.gguf")
        (folder / f"mmproj-repo{i}-f16.gguf").write_bytes(b"GGUF")
    home.llamacpp.mkdir(parents=True)
    for i in range(60):
        os.link(smollm2, home.llamacpp / f"org_repo{i}_m-Q4_1.gguf")
    assert len(store.list_local()) == 200
    times = []
    for _ in range(5):
        start = time.perf_counter()
        found = store.list_local()
        times.append(time.perf_counter() - start)
        assert len(found) == 200
    assert statistics.median(times) < 0.3, times
    assert max(times) < 3.0, times


# -- the home screen ------------------------------------------------------------------------------

async def test_home_screen_lists_them_by_where_they_are_from(home: Home, smollm2: Path,
                                                             unreachable_endpoint: str) -> None:
    from fitchat.tui.services import Services
    from fitchat.tui.widgets.local_models import LocalModels
    from tests.tui_support import RecordingApp, cpu_machine, notifications, screen_text, wait_for

    home.ollama_model("smollm2", "135m", smollm2)
    home.llamacpp.mkdir(parents=True)
    os.link(smollm2, home.llamacpp / "org_repo_m-Q4_1.gguf")
    app = RecordingApp(Services(hardware=cpu_machine(), endpoint=unreachable_endpoint, n_threads=1))
    async with app.run_test(size=(120, 30)) as pilot:
        table = app.screen.query_one(LocalModels)
        await wait_for(pilot, lambda: len(table.models) == 2, what="the local models")
        await pilot.pause()
        text = screen_text(app)
        assert "ollama/smollm2:135m" in text and "llamacpp/org_repo_m-Q4_1" in text
        assert [m.source for m in table.models] == ["ollama", "llamacpp"]
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("delete")
        await wait_for(pilot, lambda: bool(notifications(app, "error")), what="the refusal")
        assert any("ollama rm smollm2:135m" in n for n in notifications(app, "error"))
        assert (home.ollama / "blobs" / f"sha256-{_sha256(smollm2)}").is_file()


# -- hostile files in a store ------------------------------------------------------------------------

def _in_time(capsys: pytest.CaptureFixture[str], seconds: float = 20) -> tuple[list[dict[str, object]], str]:
    """``fitchat ls --json`` run on a thread with a deadline: a FIFO opened for reading would block it for good."""
    import threading

    result: list[tuple[list[dict[str, object]], str]] = []
    worker = threading.Thread(target=lambda: result.append(_ls(capsys)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, "fitchat ls hung"
    return result[0]


def test_fifos_and_endless_files_in_a_store_are_skipped(home: Home, smollm2: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    home.ollama_model("good", "1", smollm2)
    fifo_tag = home.ollama_model("fifo", "1", smollm2)
    fifo_tag.unlink()
    os.mkfifo(fifo_tag)  # a manifest that is a FIFO
    config_tag = home.ollama_model("cfg", "1", smollm2, file_type="Q8_0")
    config_digest = json.loads(config_tag.read_text())["config"]["digest"].split(":")[1]
    config_blob = home.ollama / "blobs" / f"sha256-{config_digest}"
    config_blob.unlink()
    os.mkfifo(config_blob)  # its config layer a FIFO: the quant then comes from elsewhere
    big = home.ollama_model("big", "1", smollm2)
    with open(big, "r+b") as f:
        f.truncate(2 << 30)  # a 2 GB manifest (sparse)
    settings = home.root / ".lmstudio" / "settings.json"
    settings.parent.mkdir(parents=True)
    os.mkfifo(settings)
    listed, err = _in_time(capsys)
    assert sorted(m["repo"] for m in listed) == ["ollama/cfg", "ollama/good"]
    lines = err.splitlines()
    assert len(lines) == 2, lines
    assert any("ollama/fifo:1" in x and "not a regular file" in x for x in lines)
    assert any("ollama/big:1" in x and "larger than" in x for x in lines)


def test_lmstudio_settings_that_are_huge_or_endless_are_ignored(home: Home, smollm2: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (home.lmstudio / "pub" / "repo").mkdir(parents=True)
    os.link(smollm2, home.lmstudio / "pub" / "repo" / "m-Q4_1.gguf")
    settings = home.root / ".lmstudio" / "settings.json"
    settings.symlink_to("/dev/zero")
    assert [m["repo"] for m in _in_time(capsys)[0]] == ["lmstudio/pub/repo"]  # the default folder
    settings.unlink()
    settings.write_text(json.dumps({"downloadsFolder": "/nowhere", "pad": "x" * (2 << 20)}))
    assert [m["repo"] for m in _in_time(capsys)[0]] == ["lmstudio/pub/repo"]


def test_control_characters_in_store_names_never_reach_the_terminal(home: Home, smollm2: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    home.ollama_model("evil\x1b]0;TITLE\x07\x1b[2J", "1", smollm2, manifest="not json \x1b[31m")
    _, err = _ls(capsys)
    assert "\x1b" not in err and "\x07" not in err and "evil" in err
    assert main(["ls"]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\x07" not in out + err


def test_a_config_file_that_is_a_fifo_or_huge_is_one_warning(home: Home, smollm2: Path, private_home: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from fitchat import config as fitchat_config

    home.ollama_model("good", "1", smollm2)
    path = private_home / "config" / "fitchat" / "config.toml"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    fitchat_config._warned.clear()
    listed, err = _in_time(capsys)
    assert [m["repo"] for m in listed] == ["ollama/good"] and "not a regular file" in err
    path.unlink()
    path.write_bytes(b"# " + b"\xff" * (3 << 20))
    listed, err = _in_time(capsys)
    assert [m["repo"] for m in listed] == ["ollama/good"] and "larger than" in err and len(err) < 300
