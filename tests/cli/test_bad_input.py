"""Bad input gets one clear line (``fitchat: error: ...`` or a usage error), never an internal error."""

from __future__ import annotations

from pathlib import Path

import pytest

from fitchat.cli.main import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        rc = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err, err
    return rc, err


@pytest.mark.parametrize("limit", ["-1", "0", "many"])
def test_search_limit_must_be_positive(capsys: pytest.CaptureFixture[str], limit: str) -> None:
    rc, err = _run(capsys, "search", "llama", "--limit", limit)
    assert rc == 2
    assert "--limit" in err


def test_compare_empty_quants(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(capsys, "compare", "some/model", "--quants", ",")
    assert rc != 0
    assert "fitchat: error: --quants names no variant; give e.g. Q4_K_M,Q8_0" in err


def test_select_quants_empty_names() -> None:
    from fitchat.compare.run import CompareError, select_quants

    with pytest.raises(CompareError, match="--quants names no variant"):
        select_quants([], ["", " "])


@pytest.mark.parametrize("endpoint", ["not-a-url", "ftp://x", "http://[::1", "https://", "http://x:99999"])
@pytest.mark.parametrize("argv", [["fit", "org/name"], ["pull", "org/name"], ["search", "llama"]])
def test_malformed_hf_endpoint(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                               endpoint: str, argv: list[str]) -> None:
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    rc, err = _run(capsys, *argv)
    assert rc == 1
    assert f"fitchat: error: HF_ENDPOINT={endpoint!r} is not an http(s) URL; unset it" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("endpoint", ["https://hf-mirror.example", "http://127.0.0.1:8080/", "https://huggingface.co"])
def test_good_hf_endpoint_accepted(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    from fitchat.hub.client import hub_endpoint

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert hub_endpoint() == endpoint.rstrip("/")


def test_chat_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, err = _run(capsys, "chat", str(tmp_path), "-p", "hi")
    assert rc == 1
    assert f"fitchat: error: {tmp_path} is a directory; give a .gguf file (or 'fitchat compare {tmp_path}'" in err
    assert "fitchat pull" not in err


def test_chat_relative_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "adir").mkdir()
    monkeypatch.chdir(tmp_path)
    rc, err = _run(capsys, "chat", "adir", "-p", "hi")
    assert rc == 1
    assert "fitchat: error: adir is a directory; give a .gguf file" in err


@pytest.mark.parametrize("ref", ["/no/such/dir", "./missing/thing", "~/missing-fitchat/x"])
def test_chat_missing_path(capsys: pytest.CaptureFixture[str], ref: str) -> None:
    rc, err = _run(capsys, "chat", ref, "-p", "hi")
    assert rc == 1
    assert f"fitchat: error: no such file: {ref}" in err
    assert "fitchat pull" not in err


def test_import_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, err = _run(capsys, "import", str(tmp_path))
    assert rc == 1
    assert f"fitchat: error: {tmp_path} is a directory; give a .gguf file" in err


def test_import_missing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, err = _run(capsys, "import", str(tmp_path / "nope.gguf"))
    assert rc == 1
    assert f"fitchat: error: no such file: {tmp_path / 'nope.gguf'}" in err


def test_chat_resume_with_no_save(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(capsys, "chat", "--resume", "1", "--no-save", "-p", "hi")
    assert rc == 2
    assert "fitchat: error: --resume and --no-save cannot be combined" in err


@pytest.mark.parametrize("ctx", ["0", "-5", "lots"])
def test_pull_ctx_rejected_before_hub(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                      ctx: str) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # never contacted: the usage error comes first
    rc, err = _run(capsys, "pull", "org/name", "--ctx", ctx)
    assert rc == 2
    assert "--ctx" in err and "context" in err


def test_pull_ctx_accepts_k() -> None:
    from fitchat.cli.main import build_parser

    args = build_parser().parse_args(["pull", "org/name", "--ctx", "8k"])
    assert args.ctx == 8192


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--top-p", "7", "--top-p must be more than 0 and at most 1"),
    ("--top-p", "0", "--top-p must be more than 0 and at most 1"),
    ("--top-k", "-1", "--top-k must be 0 or more"),
    ("--repeat-penalty", "-1", "--repeat-penalty must be more than 0"),
    ("--repeat-penalty", "0", "--repeat-penalty must be more than 0"),
    ("--gpu-layers", "-5", "--gpu-layers must be -1 (all layers) or 0 or more"),
])
def test_chat_sampling_ranges(capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str) -> None:
    rc, err = _run(capsys, "chat", "/no/such/model.gguf", "-p", "hi", flag, value)
    assert rc == 2
    assert f"fitchat: error: {message}" in err


NINES = "9" * 400  # more digits than a float holds: float() gives infinity


@pytest.mark.parametrize(("argv", "message"), [
    (["--gpu-mem", NINES], "cannot read '999"),
    (["--ram", NINES + "T"], "cannot read '999"),
    (["--ctx", NINES + "k"], "cannot read '999"),
    (["--ctx", "infk"], "cannot read 'infk' as a context length"),
    (["--cpu-moe", "-1"], "cannot read '-1' as --cpu-moe"),
    (["--cpu-moe", "1e9"], "cannot read '1e9' as --cpu-moe"),
    (["--cpu-moe", ""], "cannot read '' as --cpu-moe"),
    (["--cpu-moe", "\u0663"], "as --cpu-moe"),  # an Arabic-Indic 3
    (["--cpu-moe", "\u00b2"], "as --cpu-moe"),  # isdigit() says yes, int() says no
    (["--cpu-moe", "16385"], "more layers than any model has; write at most 16,384 or all"),
    (["--cpu-moe", "9" * 5000], "more layers than any model has"),
])
def test_fit_option_values_are_one_short_usage_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    argv: list[str], message: str) -> None:
    rc, err = _run(capsys, "fit", str(tmp_path / "m.gguf"), *argv)
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert message in line and len(line) < 250, line


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_chat_and_serve_refuse_a_cpu_moe_beyond_any_model(capsys: pytest.CaptureFixture[str], command: str) -> None:
    rc, err = _run(capsys, command, "some/model", "--cpu-moe", "99999999999")
    assert rc == 2 and "more layers than any model has" in err


def test_fit_measure_with_workers_is_one_usage_line(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(capsys, "fit", "some/model", "--rpc", "127.0.0.1:50052", "--measure")
    assert rc == 2 and "--measure runs llama.cpp on this machine alone, not over --rpc workers" in err
    assert len(err.strip().splitlines()) == 1, err
