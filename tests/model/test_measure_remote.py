"""llama.cpp's dry run on a Hub variant's header alone: a sparse file of the full size, nothing downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fitchat.cli.main import main
from fitchat.errors import FitchatError, HubError
from fitchat.hub.remote import read_remote_header
from fitchat.model.measure import MAX_SPARSE_BYTES, measure, measure_header
from fitchat.paths import cache_dir
from tests.hubserver import SMOLLM2_REPO, smollm2_files

MiB = 1024**2


def _fit_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code = main(["fit", *args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_fit_measures_a_hub_variant_from_its_header(capsys: pytest.CaptureFixture[str], hub,
                                                     smollm2_variants: dict[str, Path]) -> None:
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    local = smollm2_variants["Q4_K_M"]
    data = _fit_json(capsys, f"{SMOLLM2_REPO}:Q4_K_M", "--ctx", "2048", "--gpu-mem", "0", "--measure")
    [v] = data["variants"]
    m = v["measured"]
    assert {"kv_bytes", "compute_bytes", "output_bytes", "recurrent_bytes", "devices"} <= set(m)
    assert {"file", "quant", "kv_bytes", "compute_bytes", "total_bytes", "verdict", "recommended"} <= set(v)
    assert m["mode"] == "dry_run" and m["weights_bytes"] is None and m["recurrent_bytes"] == 0
    # llama.cpp's figures for the header alone are those of a dry run of the whole local file.
    whole = measure(local, 2048, mode="dry_run")
    assert m["kv_bytes"] == whole.kv_bytes == 45 * MiB
    assert m["compute_bytes"] == whole.compute_bytes > 0
    assert m["output_bytes"] == whole.output_bytes
    assert [d["name"] for d in m["devices"]] and all(d["bytes"] >= 0 for d in m["devices"])
    assert sum(d["bytes"] for d in m["devices"]) >= m["compute_bytes"]
    # Only the header came over the network, and the sparse file is gone.
    assert hub.bytes_served() <= 4 * MiB < local.stat().st_size
    assert not any((cache_dir() / "dry-run").iterdir())

    code = main(["fit", f"{SMOLLM2_REPO}:Q4_K_M", "--ctx", "2048", "--gpu-mem", "0", "--measure"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Q4_K_M measured by llama.cpp dry run (no_alloc) at context 2048" in out
    assert "within tolerance" in out


def test_unmeasured_variants_say_null(capsys: pytest.CaptureFixture[str], hub,
                                      smollm2_variants: dict[str, Path]) -> None:
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    data = _fit_json(capsys, SMOLLM2_REPO, "--gpu-mem", "0")
    assert len(data["variants"]) == 4 and all(v["measured"] is None for v in data["variants"])

    code = main(["fit", SMOLLM2_REPO, "--measure", "load"])
    _, err = capsys.readouterr()
    assert code == 2 and "--measure load needs a downloaded file" in err


def test_listing_and_announced_size_must_agree(hub, smollm2_variants: dict[str, Path]) -> None:
    hub.add_repo(SMOLLM2_REPO, smollm2_files(smollm2_variants))
    name = "SmolLM2-135M-Instruct-Q4_K_M.gguf"
    got = read_remote_header(SMOLLM2_REPO, name)
    [part] = got.parts
    assert part.size_bytes == smollm2_variants["Q4_K_M"].stat().st_size
    assert smollm2_variants["Q4_K_M"].read_bytes().startswith(part.head) and len(part.head) == got.spec.bytes_read
    with pytest.raises(HubError, match="differ from its file listing"):
        read_remote_header(SMOLLM2_REPO, name, listed_sizes=(part.size_bytes + 1,))


def test_sizes_from_outside_are_bounded(smollm2: Path) -> None:
    head = smollm2.read_bytes()[: 4 * MiB]
    with pytest.raises(FitchatError, match="more than fitchat measures") as exc:
        measure_header([(MAX_SPARSE_BYTES + 1, head)])
    assert "\n" not in str(exc.value)
    with pytest.raises(FitchatError, match="does not fit"):
        measure_header([(10, head)])
    assert not (cache_dir() / "dry-run").exists() or not any((cache_dir() / "dry-run").iterdir())


def _split(src: Path, dst: Path, max_tensors: int) -> list[Path]:
    """``src`` rewritten as a split set of loadable parts (gguf's writer, every key and tensor copied)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(src)
    w = GGUFWriter(dst, r.fields["general.architecture"].contents(), split_max_tensors=max_tensors)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vt = f.types[0]
        w.add_key_value(f.name, f.contents(), vt, sub_type=f.types[-1] if vt == GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sorted(dst.parent.glob(f"{dst.stem}-*-of-*.gguf"))


def test_a_split_set_is_measured_from_its_headers(hub, smollm2: Path, tmp_path: Path) -> None:
    parts = _split(smollm2, tmp_path / "m-Q4_1.gguf", 100)
    assert len(parts) == 3
    hub.add_repo("org/m-GGUF", {f"Q4_1/{p.name}": p for p in parts})
    got = read_remote_header("org/m-GGUF", f"Q4_1/{parts[0].name}",
                             listed_sizes=tuple(p.stat().st_size for p in parts))
    assert [p.size_bytes for p in got.parts] == [p.stat().st_size for p in parts]
    meas = measure_header([(p.size_bytes, p.head) for p in got.parts], 1024)
    whole = measure(parts[0], 1024, mode="dry_run")
    assert (meas.kv_bytes, meas.compute_bytes, meas.output_bytes) == (whole.kv_bytes, whole.compute_bytes,
                                                                        whole.output_bytes)
    assert meas.kv_bytes == 30 * 1024 * 3 * 64 * 2 * 2
    assert hub.bytes_served() < sum(p.stat().st_size for p in parts) // 4
    assert not any((cache_dir() / "dry-run").iterdir())
