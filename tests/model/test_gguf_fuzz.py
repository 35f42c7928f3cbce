"""Fuzzing the GGUF header reader: whatever the bytes, read_spec returns a ModelSpec or raises
InvalidModelFile, one line, quickly. A small sample runs by default; the full run is marked slow."""

from __future__ import annotations

import atexit
import shutil
import struct
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fitchat.errors import InvalidModelFile
from fitchat.model.gguf_spec import ModelSpec, read_spec
from tests import gguf_factory as gf

# u64 values that break naive readers: zero, one, the edges of 32 and 64 bits, "a bit more than the file".
INTERESTING_U64 = [0, 1, 2, 7, 255, 256, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**60, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


def _seeds() -> list[bytes]:
    """Valid files to mutate: a GGUFWriter model (with a 300-entry vocabulary, so the fast array paths
    run), a split part, and hand-built ones with nested and boolean arrays."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        [tiny] = gf.tiny_llama(d / "tiny.gguf", n_layers=1, n_embd=32, n_head=2, n_head_kv=1)
        parts = gf.tiny_llama(d / "sp.gguf", n_layers=1, n_embd=32, n_head=2, n_head_kv=1, split_max_tensors=4)
        seeds = [tiny.read_bytes(), parts[0].read_bytes()]
    nested = gf.kv("x.nested", gf.ARRAY, struct.pack("<IQ", gf.ARRAY, 2) + struct.pack("<IQ", gf.U32, 2) + b"\1\0\0\0\2\0\0\0"
                   + struct.pack("<IQ", gf.BOOL, 3) + b"\1\0\1")
    pattern = gf.kv("llama.attention.sliding_window_pattern", gf.ARRAY, struct.pack("<IQ", gf.BOOL, 1) + b"\1")
    seeds.append(gf.raw_gguf([*gf.llama_kvs(), nested, pattern, gf.kv_u32("general.alignment", 64)],
                             [gf.tensor_info("token_embd.weight", [32, 8], 0, 0)], b"\0" * 1024, alignment=64))
    seeds.append(gf.minimal_model())
    return seeds


SEEDS = _seeds()


@st.composite
def mutated_gguf(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    # Most mutations land in the header, where the parsing happens.
    header_end = min(len(data), 4096)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "u64", "u32", "truncate", "insert", "delete", "splice"]))
        pos = draw(st.integers(0, max(0, header_end - 1)))
        if op == "flip" and data:
            data[pos % len(data)] ^= draw(st.integers(1, 255))
        elif op == "u64":
            value = draw(st.sampled_from(INTERESTING_U64) | st.integers(0, 2**64 - 1))
            data[pos:pos + 8] = struct.pack("<Q", value)
        elif op == "u32":
            data[pos:pos + 4] = struct.pack("<I", draw(st.sampled_from([0, 1, 8, 9, 12, 13, 77, 2**31, 2**32 - 1])))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "splice":  # a field copied from elsewhere in the file
            src = draw(st.integers(0, max(0, len(data) - 1)))
            data[pos:pos + 8] = data[src:src + 8]
    return bytes(data)


def _check(data: bytes, path: Path) -> None:
    path.write_bytes(data)
    timings: list[float] = []
    for _ in range(3):  # the fastest of up to three reads: a loaded machine may stall one
        start = time.perf_counter()
        try:
            spec = read_spec(path)
        except InvalidModelFile as exc:
            message = str(exc)
            assert message and "\n" not in message
        else:
            assert isinstance(spec, ModelSpec)
            assert spec.n_layers > 0 and spec.tensors
        timings.append(time.perf_counter() - start)
        if timings[-1] < 2.0:
            break
    assert min(timings) < 2.0, timings


_FUZZ_DIR = Path(tempfile.mkdtemp(prefix="fitchat-fuzz-"))
atexit.register(shutil.rmtree, _FUZZ_DIR, True)  # hypothesis tests take no function-scoped tmp_path


@settings(max_examples=300, deadline=timedelta(seconds=3), suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(mutated_gguf())
def test_fuzz_header_reader_sample(data: bytes) -> None:
    _check(data, _FUZZ_DIR / "sample.gguf")


@pytest.mark.slow
@settings(max_examples=10_000, deadline=timedelta(seconds=3), suppress_health_check=[HealthCheck.too_slow])
@given(mutated_gguf())
def test_fuzz_header_reader_full(data: bytes) -> None:
    _check(data, _FUZZ_DIR / "full.gguf")


@settings(max_examples=200, deadline=timedelta(seconds=3), derandomize=True)
@given(st.binary(max_size=2048))
def test_random_bytes_are_refused(data: bytes) -> None:
    path = _FUZZ_DIR / "random.gguf"
    path.write_bytes(data)
    with pytest.raises(InvalidModelFile):
        read_spec(path)


def test_seeds_are_valid() -> None:
    for i, data in enumerate(SEEDS):
        path = _FUZZ_DIR / f"seed{i}.gguf"
        path.write_bytes(data)
        if i == 1:  # the first part of a split set, alone under a plain name: refused, with the reason
            with pytest.raises(InvalidModelFile, match="split set should hold"):
                read_spec(path)
        else:
            assert read_spec(path).n_layers >= 1
