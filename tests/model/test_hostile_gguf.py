"""Hostile GGUF headers, local and on a Hub: every claim beyond the reader's bounds is refused from the
field that makes it, in one short line, in well under a second and with little memory; a remote header is
never fetched past the header bound, and is parsed once."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from fitchat.errors import InvalidModelFile
from fitchat.hub.remote import read_remote_spec
from fitchat.model import gguf_spec
from fitchat.model.gguf_spec import (
    MAX_ARRAY_DEPTH,
    MAX_HEADER_BYTES,
    MAX_STRING_BYTES,
    MAX_TENSORS,
    MAX_VALUES_ONE_BY_ONE,
    REMOTE_FIRST_BYTES,
    read_spec,
)
from tests import REPO_ROOT
from tests import gguf_factory as gf

MiB = 1024 * 1024
REPO = "attacker/hostile-GGUF"


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(action: Callable[[], object], *, seconds: float = 1.0, peak_bytes: int = 8 * MiB) -> str:
    """Run ``action``, which must raise InvalidModelFile: the message is one short line, the time and the
    Python heap peak (tracemalloc, numpy included) stay bounded. The fastest of three runs is the cost."""
    messages, timings, peaks = [], [], []
    for _ in range(3):
        tracemalloc.start()
        start = time.perf_counter()
        try:
            with pytest.raises(InvalidModelFile) as info:
                action()
        finally:
            timings.append(time.perf_counter() - start)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        messages.append(str(info.value))
        if timings[-1] < seconds:
            break
    message = messages[-1]
    assert "\n" not in message and "\r" not in message and len(message) <= 200, message
    assert "Traceback" not in message and "internal error" not in message
    assert min(timings) < seconds, (timings, message)
    assert min(peaks) < peak_bytes, (peaks, message)
    return message


def write(path: Path, data: bytes, *, size: int | None = None) -> Path:
    """``data`` at the start of ``path``; with ``size``, a sparse file of that size (the rest is a hole)."""
    path.write_bytes(data)
    if size is not None:
        os.truncate(path, size)
    return path


def string_array(key: str, lengths: list[int]) -> tuple[bytes, list[tuple[int, int]]]:
    """The start of a string-array entry, and (offset within the entry, length) of each item's length field,
    for items whose bytes are left to a sparse file's hole."""
    head = gf.kv(key, gf.ARRAY, struct.pack("<IQ", gf.STRING, len(lengths)))
    fields, offset = [], len(head)
    for n in lengths:
        fields.append((offset, n))
        offset += 8 + n
    return head, fields


def sparse_string_array_file(path: Path, key: str, lengths: list[int], size: int) -> Path:
    """A sparse file whose header is one string array with items of ``lengths`` bytes (all zeros)."""
    head, fields = string_array(key, lengths)
    prefix = gf.raw_gguf([head], [], n_tensors=0, n_kv=1)
    prefix = prefix[: 24 + len(head)]  # no padding: the array's items follow directly
    with open(path, "wb") as fh:
        fh.write(prefix)
        for offset, n in fields:
            fh.seek(24 + offset)
            fh.write(struct.pack("<Q", n))
        fh.truncate(size)
    return path


# --------------------------------------------------------------------------- local files

NESTED_10000 = gf.raw_gguf(
    [gf.kv("x.nested", gf.ARRAY, struct.pack("<IQ", gf.ARRAY, 1) * 10_000 + struct.pack("<IQ", gf.U8, 0))], []
)


def test_huge_tensor_count_is_refused_from_the_count(tmp_path: Path) -> None:
    # 400,000 tensors in a file big enough to hold their infos: the count alone refuses it.
    path = write(tmp_path / "m.gguf", gf.raw_gguf(gf.llama_kvs(), [], n_tensors=400_000), size=64 * MiB)
    message = refused(lambda: read_spec(path), seconds=0.2)
    assert "claims 400,000 tensors" in message and f"{MAX_TENSORS:,}" in message


def test_huge_metadata_count_is_refused_from_the_count(tmp_path: Path) -> None:
    path = write(tmp_path / "m.gguf", gf.raw_gguf(gf.llama_kvs(), [], n_kv=400_000), size=64 * MiB)
    assert "claims 400,000 metadata entries" in refused(lambda: read_spec(path), seconds=0.2)


def test_four_billion_entries_still_fail_fast(tmp_path: Path) -> None:
    path = write(tmp_path / "m.gguf", gf.raw_gguf(gf.llama_kvs(), [], n_kv=2**32, n_tensors=2**32))
    refused(lambda: read_spec(path), seconds=0.5)


def test_250_mb_string_claim_costs_nothing(tmp_path: Path) -> None:
    # The string is there (a 300 MB sparse file): refused from its length field, nothing of it is read.
    data = gf.raw_gguf([gf.kv("general.name", gf.STRING, struct.pack("<Q", 250_000_000))], [])
    path = write(tmp_path / "m.gguf", data, size=300 * MiB)
    message = refused(lambda: read_spec(path), seconds=0.2, peak_bytes=1 * MiB)
    assert "250,000,000 bytes" in message and "'general.name'" in message


def test_real_20_mb_string_is_refused_without_reading_it(tmp_path: Path) -> None:
    length = 20 * 1000 * 1000
    assert length > MAX_STRING_BYTES
    head = gf.kv("general.description", gf.STRING, struct.pack("<Q", length))
    path = tmp_path / "m.gguf"
    with open(path, "wb") as fh:  # the 20 MB are really in the file: 'x' at both ends, a hole between
        fh.write(gf.raw_gguf([head], [])[: 24 + len(head)] + b"x" * 4096)
        fh.seek(24 + len(head) + length - 4096)
        fh.write(b"x" * 4096)
    message = refused(lambda: read_spec(path), seconds=0.2, peak_bytes=1 * MiB)
    assert "20,000,000 bytes" in message


def test_nested_arrays_10000_deep_give_one_line_not_recursion_error(tmp_path: Path) -> None:
    path = write(tmp_path / "m.gguf", NESTED_10000)
    message = refused(lambda: read_spec(path), seconds=0.2)
    assert f"more than {MAX_ARRAY_DEPTH} deep" in message


def test_array_length_2_to_the_40(tmp_path: Path) -> None:
    for item_type in (gf.U8, gf.STRING, gf.ARRAY):
        data = gf.raw_gguf([gf.kv("tokenizer.ggml.x", gf.ARRAY, struct.pack("<IQ", item_type, 2**40))], [])
        path = write(tmp_path / "m.gguf", data, size=2 * MiB)
        assert "claims 1,099,511,627,776 array elements" in refused(lambda p=path: read_spec(p), seconds=0.2)


def test_header_claiming_1_gib(tmp_path: Path) -> None:
    # A 1 GiB sparse file whose header really runs on: 64 strings of 16 MiB, each length field in place.
    path = sparse_string_array_file(tmp_path / "m.gguf", "x.blob", [MAX_STRING_BYTES] * 64, 1 << 30)
    message = refused(lambda: read_spec(path), seconds=0.2, peak_bytes=1 * MiB)
    assert f"runs past {MAX_HEADER_BYTES // MiB} MiB" in message


def test_many_short_string_arrays_are_bounded(tmp_path: Path) -> None:
    # gguf's reader builds each item of a short string array on its own (about 20 µs): their total is bounded.
    arrays = [gf.kv_str_array(f"x.list{i}", ["a"] * 255) for i in range(MAX_VALUES_ONE_BY_ONE // 255 + 1)]
    path = write(tmp_path / "m.gguf", gf.raw_gguf([*gf.llama_kvs(), *arrays], []))
    assert "short-array" in refused(lambda: read_spec(path), seconds=0.2)


def test_long_key_and_tensor_name_are_quoted_short(tmp_path: Path) -> None:
    long_key = gf.raw_gguf([gf.kv_str("k" * 5000, "v")], [])
    assert "keys are at most" in refused(lambda: read_spec(write(tmp_path / "a.gguf", long_key)), seconds=0.2)
    long_name = gf.raw_gguf(gf.llama_kvs(), [gf.tensor_info("t" * 5000, [32], 0, 0)], b"\0" * 128)
    assert "llama.cpp allows at most 63" in refused(lambda: read_spec(write(tmp_path / "b.gguf", long_name)), seconds=0.2)
    # A value from the file quoted in a message is cut to about 80 characters and loses its escapes.
    arch = "\x1b]0;TITLE\x07" + "a" * 5000
    data = gf.raw_gguf([gf.kv_str("general.architecture", arch)], [gf.tensor_info("a.weight", [32], 0, 0)], b"\0" * 128)
    message = refused(lambda: read_spec(write(tmp_path / "c.gguf", data)), seconds=0.2)
    assert "\x1b" not in message and "\x07" not in message and "aaa…" in message


def test_split_metadata_of_the_wrong_type_gives_one_line(tmp_path: Path) -> None:
    # split.no / split.count become loop bounds and message numbers: a string or a huge value is refused.
    for count, no in ((gf.kv_str("split.count", "2"), gf.kv("split.no", gf.U16, struct.pack("<H", 0))),
                      (gf.kv("split.count", gf.U64, struct.pack("<Q", 2**64 - 1)),
                       gf.kv("split.no", gf.U16, struct.pack("<H", 0)))):
        for i in (1, 2):
            data = gf.raw_gguf([*gf.llama_kvs(), count, no], [gf.tensor_info(f"t{i}.weight", [32], 0, 0)], b"\0" * 128)
            write(tmp_path / f"m-0000{i}-of-00002.gguf", data)
        message = refused(lambda: read_spec(tmp_path / "m-00001-of-00002.gguf"), seconds=0.5)
        assert "m-00001-of-00002.gguf" in message


def test_split_counts_beyond_the_bound_are_refused_by_name(hub, tmp_path: Path) -> None:
    path = write(tmp_path / "m-00001-of-05000.gguf", gf.minimal_model())
    assert "implausible split count 5000" in refused(lambda: read_spec(path), seconds=0.2)
    hub.add_repo(REPO, {"m-00001-of-99999.gguf": gf.minimal_model()})
    hub.requests.clear()
    assert "implausible split count 99999" in refused(lambda: read_remote_spec(REPO, "m-00001-of-99999.gguf"), seconds=1.0)
    assert not hub.requests  # refused before a single request


def test_many_real_tensors_read_in_well_under_a_second(tmp_path: Path) -> None:
    # At the bound, every tensor info really there: one tight walk, not six numpy views per tensor.
    n = MAX_TENSORS
    infos = [gf.tensor_info(f"t{i}", [32], 0, 128 * i) for i in range(n)]
    path = write(tmp_path / "m.gguf", gf.raw_gguf(gf.llama_kvs(), infos, b"\0" * 128 * n))
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        assert len(read_spec(path).tensors) == n
        timings.append(time.perf_counter() - start)
        if timings[-1] < 1.5:
            break
    assert min(timings) < 1.5, timings  # the stock reader, six numpy views a tensor, takes several times this
    one_more = gf.raw_gguf(gf.llama_kvs(), [*infos, gf.tensor_info("z", [32], 0, 128 * n)], b"\0" * 128 * (n + 1))
    assert "claims 65,537 tensors" in refused(lambda: read_spec(write(path, one_more)), seconds=0.2)


def test_cli_fit_on_a_hostile_file_prints_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "nested.gguf", NESTED_10000)
    before = _tree(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fitchat", "fit", str(path)], check=False, capture_output=True, text=True,
                          timeout=120, env=env)
    assert time.perf_counter() - start < 60
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fitchat: error:") and "nests arrays" in lines[0]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert _tree(tmp_path) == before  # nothing created beside the file (the private home is outside tmp_path's tree check)


# --------------------------------------------------------------------------- remote headers


@pytest.mark.parametrize(
    "case",
    ["tensors", "entries", "string", "nested", "array"],
)
def test_remote_claims_are_refused_after_the_first_request(hub, case: str) -> None:
    data = {
        "tensors": gf.raw_gguf(gf.llama_kvs(), [], n_tensors=400_000),
        "entries": gf.raw_gguf(gf.llama_kvs(), [], n_kv=400_000),
        "string": gf.raw_gguf([gf.kv("general.name", gf.STRING, struct.pack("<Q", 250_000_000))], []),
        "nested": NESTED_10000,
        "array": gf.raw_gguf([gf.kv("x.a", gf.ARRAY, struct.pack("<IQ", gf.STRING, 2**40))], []),
    }[case]
    data += b"\0" * (8 * MiB - len(data))  # the file is bigger than the first request
    hub.add_repo(REPO, {"m-Q4_0.gguf": data})
    # The heap peak counts the in-process server's side of the first request too.
    refused(lambda: read_remote_spec(REPO, "m-Q4_0.gguf"), seconds=3.0, peak_bytes=8 * REMOTE_FIRST_BYTES)
    assert hub.bytes_served() <= 3 * REMOTE_FIRST_BYTES  # three tries at most, one request each


def test_remote_header_never_fetched_past_the_bound(hub, tmp_path: Path) -> None:
    # A header that really runs on (strings of 16 MiB): fetched up to the bound at most, then refused.
    path = sparse_string_array_file(tmp_path / "m.gguf", "x.blob", [MAX_STRING_BYTES] * 8, 160 * MiB)
    hub.add_repo(REPO, {"m-Q4_0.gguf": path})
    hub.requests.clear()
    start = time.perf_counter()
    with pytest.raises(InvalidModelFile) as info:
        read_remote_spec(REPO, "m-Q4_0.gguf")
    assert time.perf_counter() - start < 15
    message = str(info.value)
    assert "\n" not in message and len(message) <= 200 and f"runs past {MAX_HEADER_BYTES // MiB} MiB" in message
    assert hub.bytes_served() <= MAX_HEADER_BYTES


def test_remote_header_is_parsed_once(hub, gemma3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 262k-vocabulary header takes several Range requests; gguf's reader runs once, on exactly the header.
    parses: list[int] = []
    real_parse = gguf_spec._parse

    def counting_parse(path, label, total_size=None, scan=None, budget=None):  # type: ignore[no-untyped-def]
        parses.append(os.path.getsize(path))
        return real_parse(path, label, total_size, scan, budget)

    monkeypatch.setattr(gguf_spec, "_parse", counting_parse)
    hub.add_repo("org/gemma-GGUF", {"gemma-Q4_K_M.gguf": gemma3})
    spec = read_remote_spec("org/gemma-GGUF", "gemma-Q4_K_M.gguf")
    assert len(hub.cdn_requests()) >= 2
    assert len(parses) == 1 and spec.header_bytes - 64 < parses[0] <= spec.header_bytes
    assert spec.vocab_size == 262144
