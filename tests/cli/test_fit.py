"""``fitchat fit``: local files, directories, Hub repos (headers only), planning for another machine,
--measure, --json, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fitchat.cli.main import main
from fitchat.cli.options import BadOption, parse_ctx, parse_size
from tests.hubserver import SMOLLM2_REPO, smollm2_files

MiB = 1024**2
GiB = 1024**3
CONTRACT = {"file", "quant", "size_bytes", "n_layers", "weights_bytes", "kv_bytes", "compute_bytes", "total_bytes",
            "gpu_layers", "verdict", "recommended", "reason"}


def run_fit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["fit", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def fit_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code, out, err = run_fit(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def model_dir(smollm2_variants: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four SmolLM2 variants side by side in one folder (hard links, no copies)."""
    d = tmp_path_factory.mktemp("models")
    for p in smollm2_variants.values():
        try:
            (d / p.name).hardlink_to(p)
        except OSError:
            shutil.copy(p, d / p.name)
    (d / "notes.txt").write_text("not a model")
    return d


def test_sizes_and_contexts() -> None:
    assert parse_size("8G") == parse_size("8GiB") == parse_size("8gb") == 8 * GiB
    assert parse_size("512M") == 512 * MiB and parse_size("1.5g") == int(1.5 * GiB) and parse_size("1000") == 1000
    assert parse_ctx("8k") == 8192 and parse_ctx("4096") == 4096
    for bad in ("lots", "-1G", ""):
        with pytest.raises(BadOption):
            parse_size(bad)
    with pytest.raises(BadOption):
        parse_ctx("0")


def test_one_local_file(capsys: pytest.CaptureFixture[str], smollm2: Path) -> None:
    code, out, err = run_fit(capsys, smollm2, "--ctx", "8k")
    assert code == 0 and err == ""
    assert "Settings: context 8192, flash attention on, KV cache f16" in out
    row = next(line for line in out.splitlines() if "Q4_1" in line and line.startswith("*"))
    assert "CPU" in row or "full GPU" in row or "layers" in row
    assert "Recommended: Q4_1:" in out
    assert "llama, 30 blocks, 49,152 tokens vocabulary" in out


def test_json_contract(capsys: pytest.CaptureFixture[str], smollm2: Path) -> None:
    data = fit_json(capsys, smollm2, "--ctx", "2048", "--kv-type", "q8_0", "--n-ubatch", "256")
    assert data["context"] == 2048
    assert data["settings"] == {"flash_attn": True, "swa_full": True, "n_batch": 512, "n_ubatch": 256,
                                "type_k": "q8_0", "type_v": "q8_0", "use_extra_bufts": True}
    assert {"backend", "gpus", "ram", "cpu"} <= set(data["hardware"])
    [v] = data["variants"]
    assert CONTRACT <= set(v)
    assert v["recommended"] is True and v["verdict"] in ("full_gpu", "partial_gpu", "cpu", "too_big")
    assert v["total_bytes"] >= v["weights_bytes"] + v["kv_bytes"] + v["compute_bytes"]
    assert v["kv_bytes"] == 30 * 2048 * 384 * 34 // 32  # q8_0 cache
    assert v["measured"] is None  # no --measure


def test_directory_and_another_machine(capsys: pytest.CaptureFixture[str], model_dir: Path) -> None:
    data = fit_json(capsys, model_dir, "--gpu-mem", "4G", "--ram", "8G")
    assert data["hardware"]["backend"] == "cuda"
    assert data["hardware"]["gpus"][0]["free_bytes"] == 4 * GiB
    assert data["hardware"]["ram"]["available_bytes"] == 8 * GiB
    variants = data["variants"]
    assert sorted(v["quant"] for v in variants) == ["Q4_1", "Q4_K_M", "Q5_K_M", "Q8_0"]
    assert {v["verdict"] for v in variants} == {"full_gpu"}
    assert [v["quant"] for v in variants if v["recommended"]] == ["Q8_0"]
    assert all(v["gpu_layers"] == v["n_layers"] == 31 for v in variants)

    cpu = fit_json(capsys, model_dir, "--gpu-mem", "0", "--ram", "8G")
    assert cpu["hardware"]["backend"] == "cpu" and {v["verdict"] for v in cpu["variants"]} == {"cpu"}

    tiny = fit_json(capsys, model_dir, "--gpu-mem", "0", "--ram", "1G", "--ctx", "32k")
    assert {v["verdict"] for v in tiny["variants"]} == {"too_big"}
    assert sum(v["recommended"] for v in tiny["variants"]) == 1
    assert any(v["levers"] for v in tiny["variants"])


def test_text_table_for_a_partial_offload(capsys: pytest.CaptureFixture[str], model_dir: Path) -> None:
    code, out, _ = run_fit(capsys, model_dir, "--gpu-mem", "900M", "--ctx", "8k")
    assert code == 0
    assert "Margin:   512.0 MiB kept free per GPU" in out
    assert "/31 layers" in out
    assert "--ctx" in out  # a lever: a shorter context would fit fully


def test_hub_repo_from_headers_only(capsys: pytest.CaptureFixture[str], hub, smollm2_variants: dict[str, Path]) -> None:
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    data = fit_json(capsys, SMOLLM2_REPO, "--ram", "8G", "--gpu-mem", "0")
    assert sorted(v["quant"] for v in data["variants"]) == ["Q4_1", "Q4_K_M", "Q5_K_M", "Q8_0"]
    assert all(v["path_or_url"].startswith(hub.endpoint) for v in data["variants"])
    assert hub.bytes_served() <= 4 * 4 * MiB  # at most 4 MiB per variant
    one = fit_json(capsys, f"{SMOLLM2_REPO}:Q5_K_M")
    assert [v["quant"] for v in one["variants"]] == ["Q5_K_M"]

    code, _, err = run_fit(capsys, SMOLLM2_REPO, "--measure", "load")
    assert code == 2 and "needs a downloaded file" in err


def test_measure_side_by_side(capsys: pytest.CaptureFixture[str], smollm2_variants: dict[str, Path]) -> None:
    code, out, err = run_fit(capsys, smollm2_variants["Q4_K_M"], "--ctx", "2048", "--measure")
    assert code == 0, err
    assert "measured by real CPU load at context 2048" in out
    assert "CPU_REPACK: model 7.6 MiB" in out
    assert "within tolerance" in out

    data = fit_json(capsys, smollm2_variants["Q4_K_M"], "--ctx", "2048", "--measure", "dry")
    [m] = data["measurements"]
    assert m["measured"]["mode"] == "dry_run" and m["measured"]["weights_bytes"] is None
    assert m["measured"]["kv_bytes"] == 45 * MiB == m["estimate"]["kv_bytes"]
    assert abs(m["measured"]["compute_bytes"] - m["estimate"]["compute_bytes"]) < 16 * MiB
    [v] = data["variants"]
    assert v["measured"]["kv_bytes"] == 45 * MiB and v["measured"]["compute_bytes"] == m["measured"]["compute_bytes"]
    assert v["measured"]["recurrent_bytes"] == 0 and v["measured"]["devices"][0]["name"] == "CPU"


BAD_INPUT = [
    (["/no/such/model.gguf"], 1, "no such file"),
    (["nonsense-not-a-repo"], 1, "not a .gguf file, a directory or a Hub repo id"),
    (["starter"], 1, "fitchat pull starter"),
    (["MODEL", "--kv-type", "q8_0", "--no-flash-attn"], 1, "needs flash attention"),
    (["MODEL", "--ctx", "lots"], 2, "argument --ctx"),
    (["MODEL", "--gpu-mem", "eight"], 2, "argument --gpu-mem"),
]


@pytest.mark.parametrize("argv,code,message", BAD_INPUT)
def test_bad_input_is_one_line(capsys: pytest.CaptureFixture[str], smollm2: Path, argv: list[str], code: int,
                               message: str) -> None:
    argv = [str(smollm2) if a == "MODEL" else a for a in argv]
    with pytest.raises(SystemExit) if code == 2 else _no_exit() as _:
        got = main(["fit", *argv])
        assert got == code
    out, err = capsys.readouterr()
    assert message in err
    assert "Traceback" not in err
    if code == 1:
        assert err.startswith("fitchat: error: ") and err.count("\n") == 1


def test_malformed_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF\x03\0\0\0" + b"\xff" * 16)
    code, out, err = run_fit(capsys, bad, "--measure")
    assert code == 1 and out == ""
    assert err.startswith("fitchat: error: model.gguf is not a valid GGUF file") and err.count("\n") == 1


class _no_exit:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False
