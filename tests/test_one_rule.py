"""One rule per concept: the Hub token, verdict words, split sets, which ``.gguf`` files are models, the first
line of an error and whether the Hub is reachable are each decided in one place, and every caller agrees.

Each test compares what two callers say (or checks a case one copy of the rule used to get wrong); the Hub
is the local test server, the models are real GGUFs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from fitchat import doctor
from fitchat.cli.main import main
from fitchat.compare import run as C
from fitchat.errors import first_line
from fitchat.hub import catalog, client
from fitchat.hub.catalog import CatalogEntry
from fitchat.hub.recommend import recommend_first_model
from fitchat.model.quants import is_model_gguf, split_sets
from fitchat.tui.notify import error_message
from tests.hubserver import GATED_REPO, SMOLLM2_REPO, LocalHub
from tests.tui_support import cpu_machine

FILE_TOKEN = "hf_loggedInWithTheTokenFile0123456789"


def link(src: Path, dst: Path) -> Path:
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copy(src, dst)
    return dst


# --------------------------------------------------------------------------- the Hub token


def test_a_token_file_login_is_sent_and_offered_gated_models(hub: LocalHub, smollm2_variants: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``hf auth login`` writes $HF_HOME/token and sets no variable: that user is offered a gated model, its
    requests carry the token, and ``doctor`` names the same token."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    token_file = Path(os.environ["HF_HOME"]) / "token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(FILE_TOKEN + "\n")
    hub.add_repo(GATED_REPO, {"Gated-Q4_K_M.gguf": smollm2_variants["Q4_K_M"]}, gated=True)
    hub.grant(FILE_TOKEN, GATED_REPO)
    gated = CatalogEntry(repo=GATED_REPO, name="Gated", family="test", params_b=1.0, context=8192,
                         license="other", gated=True, default_quant="Q4_K_M", variants=())

    rec = recommend_first_model(cpu_machine(), 4096, endpoint=hub.endpoint, candidates=[gated])

    assert rec is not None and rec.entry.repo == GATED_REPO and rec.plan.spec.quant == "Q4_K_M"
    to_gated = [r for r in hub.requests if GATED_REPO in r.path]
    assert to_gated and all(r.authorization == f"Bearer {FILE_TOKEN}" for r in to_gated)
    assert {r.route for r in to_gated} >= {"api", "resolve"}  # the listing and the header reads
    found = client.find_token()
    assert found is not None and found.source == str(token_file) and FILE_TOKEN not in repr(found)
    check = doctor.check_token(dict(os.environ))
    assert check.details["source"] == found.source


def test_the_token_rule_order(tmp_path: Path) -> None:
    """An explicit token, then HF_TOKEN, then the token file; a folder or an empty file is no login."""
    token_file = tmp_path / "token"
    env = {"HF_HOME": str(tmp_path)}
    assert client.find_token(env=env) is None
    token_file.mkdir()
    assert client.find_token(env=env) is None
    token_file.rmdir()
    token_file.write_text("  \n")
    assert client.find_token(env=env) is None
    token_file.write_text("hf_file\r\n")
    assert client.find_token(env=env) == client.HubToken("hf_file", str(token_file))
    assert client.find_token(env={**env, "HF_TOKEN": "hf_env"}).source == "HF_TOKEN"
    assert client.find_token("hf_given", env={**env, "HF_TOKEN": "hf_env"}).value == "hf_given"
    assert client.find_token(env={"HF_TOKEN_PATH": str(token_file)}).value == "hf_file"


def test_a_damaged_token_file_is_one_clear_line(hub: LocalHub, capsys: pytest.CaptureFixture[str]) -> None:
    token_file = Path(os.environ["HF_HOME"]) / "token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_bytes(b"hf_bad\x1b[2J\xe9token\n")
    assert main(["search", "smol"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "Traceback" not in err
    assert err.startswith(f"fitchat: error: the Hub token from '{token_file}' has characters no token has")
    assert doctor.check_token(dict(os.environ)).details["source"] == str(token_file)  # doctor still says where


# --------------------------------------------------------------------------- verdict words


def test_one_verdict_word_in_the_cli_table_compare_and_the_tui(tmp_path: Path, smollm2_variants: dict[str, Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import fitchat.model.plan
    import fitchat.tui.render

    link(smollm2_variants["Q8_0"], tmp_path / smollm2_variants["Q8_0"].name)
    args = ["fit", str(tmp_path), "--gpu-mem", "800M", "--ctx", "8k"]
    assert main([*args, "--json"]) == 0
    variant = json.loads(capsys.readouterr().out)["variants"][0]
    assert variant["verdict"] == "partial_gpu"  # the case the three wordings differed most on
    assert main(args) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.lstrip("* ").startswith("Q8_0"))

    plan = SimpleNamespace(**{k: variant[k] for k in ("verdict", "gpu_layers", "n_layers")})
    tui_word = fitchat.tui.render.verdict_label(plan)
    assert tui_word == f"GPU {variant['gpu_layers']}/{variant['n_layers']} layers"
    assert row.endswith(tui_word)  # the CLI table's FITS column
    assert C.verdict_label is fitchat.model.plan.verdict_label is fitchat.tui.render.verdict_label  # compare's Fit column
    assert [fitchat.model.plan.verdict_label(SimpleNamespace(verdict=v)) for v in ("full_gpu", "cpu", "too_big")] == \
        ["full GPU", "CPU", "too big"]
    assert fitchat.model.plan.verdict_label(None) == "?"


# --------------------------------------------------------------------------- split sets and model files


def test_split_sets_are_grouped_once() -> None:
    names = ["a/m-Q8_0-00002-of-00002.gguf", "a/m-Q8_0-00001-of-00002.gguf", "m-Q4_K_M.gguf",
             "x-00001-of-00003.gguf", "x-00003-of-00003.gguf"]  # x lacks its second part
    assert split_sets(names) == [("a/m-Q8_0-00001-of-00002.gguf", "a/m-Q8_0-00002-of-00002.gguf"), ("m-Q4_K_M.gguf",)]


@pytest.mark.parametrize("name, model", [
    ("m-Q4_K_M.gguf", True), ("sub/m-Q4_K_M.GGUF", True), ("mmproj-m-f16.gguf", False),
    ("MMPROJ-m-f16.gguf", False), ("m.imatrix.gguf", False), ("imatrix.dat", False), ("m.gguf.txt", False),
])
def test_is_model_gguf(name: str, model: bool) -> None:
    assert is_model_gguf(name) is model


def test_imatrix_and_projector_files_are_not_models_anywhere(tmp_path: Path, hub: LocalHub,
                                                             smollm2_variants: dict[str, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A folder (``fit``, ``compare``) and a Hub repo holding a model, an imatrix and a vision projector: one model.

    The imatrix and projector here are real GGUFs (copies of the model), so only their names can tell them apart.
    """
    model = smollm2_variants["Q4_K_M"]
    folder = tmp_path / "models"
    folder.mkdir()
    for name in (model.name, "SmolLM2-135M-Instruct.imatrix.gguf", "mmproj-SmolLM2-f16.gguf"):
        link(model, folder / name)

    assert main(["fit", str(folder), "--json"]) == 0
    assert [v["file"].rsplit("/", 1)[-1] for v in json.loads(capsys.readouterr().out)["variants"]] == [model.name]
    assert [c.path.name for c in C.resolve_sources([str(folder)])] == [model.name]

    hub.add_repo(SMOLLM2_REPO, {p.name: p for p in folder.iterdir()})
    assert [v.file for v in catalog.list_variants(SMOLLM2_REPO)] == [model.name]


# --------------------------------------------------------------------------- the first line of an error


def test_every_error_becomes_the_same_printable_first_line() -> None:
    hostile = RuntimeError("\x1b]0;owned\x07refused\x1b[2J here\nTraceback (most recent call last):")
    assert first_line(hostile) == "refused here"
    assert first_line(hostile, typed=True) == error_message(hostile) == "RuntimeError: refused here"
    assert first_line(RuntimeError("  \n ")) == "RuntimeError"
    assert len(first_line(ValueError("x" * 10_000), 200)) == 200

    http = client._http_module()
    with pytest.raises(client.HubUnreachable) as caught:
        with client.hub_errors("org/model"):
            raise http.ConnectError("\x1b[31mrefused\x1b[0m\nsecond line")
    message = str(caught.value)
    assert "(ConnectError: refused)" in message and "\x1b" not in message and "second" not in message


# --------------------------------------------------------------------------- is the Hub reachable


def test_a_server_that_is_not_a_hub_is_unreachable_for_everyone(hub: LocalHub) -> None:
    """A 404 for the model API (a web server, not a Hub): doctor, the TUI and search all say unreachable."""
    from fitchat.tui.services import Services

    assert client.hub_reachable() and Services(endpoint=hub.endpoint).hub_reachable()
    assert doctor.check_hub(dict(os.environ)).details["reachable"] is True

    hub.fail(404, route="api", match="/api/models", times=None)
    assert not client.hub_reachable()
    assert not Services(endpoint=hub.endpoint).hub_reachable()
    check = doctor.check_hub(dict(os.environ))
    assert check.details["reachable"] is False and check.details["http_status"] == 404
    assert client.probe_hub().status == 404


def test_an_unreachable_hub_is_the_same_failure_for_doctor_and_search(unreachable_endpoint: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", unreachable_endpoint)
    answer = client.probe_hub(timeout=2)
    assert answer.status is None and not answer.reachable and answer.error.startswith("ConnectError")
    check = doctor.check_hub(dict(os.environ), timeout_s=2)
    assert check.details["reachable"] is False and check.details["error"] == answer.error
    with pytest.raises(client.HubUnreachable, match="ConnectError"):
        catalog.search("smollm")
