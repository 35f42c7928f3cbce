"""The smoke decode: a llama.cpp build that crashes here is found in a child process, worked around
(no extra buffer types), and the verdict is cached per library and CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fitchat.llama import smoke
from fitchat.llama.smoke import FAKE_SIGNAL_ENV, SmokeVerdict, runtime_verdict

pytestmark = pytest.mark.fresh_smoke_cache  # each test starts without a verdict


@pytest.fixture
def lib_copy(tmp_path: Path) -> Path:
    """A stand-in library folder: the cache key reads file names, sizes and mtimes only."""
    d = tmp_path / "lib"
    d.mkdir()
    (d / "libggml-cpu.so").write_bytes(b"x" * 10)
    return d


def test_real_smoke_decode_succeeds_with_extra_buffer_types(smollm2: Path) -> None:
    verdict = runtime_verdict(smollm2)
    assert (verdict.status, verdict.use_extra_bufts, verdict.signal, verdict.cached) == ("ok", True, None, False)
    assert smoke.notice_text(verdict) is None
    again = runtime_verdict(smollm2)
    assert again.cached and again.status == "ok"


def test_a_crash_with_extra_buffer_types_falls_back_without_them(smollm2: Path) -> None:
    """The child is told to die with SIGILL when extra buffer types are on (a CPU faulting in those kernels);
    the retry without them really decodes."""
    env = {**os.environ, FAKE_SIGNAL_ENV: "SIGILL"}
    verdict = runtime_verdict(smollm2, env=env)
    assert (verdict.status, verdict.signal, verdict.fallback, verdict.use_extra_bufts) == ("crashed", "SIGILL", "ok", False)
    assert verdict.usable and verdict.worked_around
    assert "SIGILL" in verdict.message and "instruction" in verdict.message
    text = smoke.take_notice(verdict)
    assert text is not None and "crashed here with SIGILL in its AMX/repacked CPU kernels" in text
    assert "slower prompt processing" in text and smoke.rebuild_command() in text
    assert smoke.take_notice(verdict) is None  # told once
    cached = runtime_verdict(smollm2)  # the cached verdict, no child: the fake signal is not even set here
    assert cached.cached and cached.use_extra_bufts is False and cached.signal == "SIGILL"


def test_guard_load_loads_without_extra_buffer_types_after_a_crash(smollm2: Path) -> None:
    import llama_cpp

    env = {**os.environ, FAKE_SIGNAL_ENV: "SIGABRT"}
    runtime_verdict(smollm2, env=env)
    notices: list[str] = []
    with smoke.guard_load(smollm2, on_notice=notices.append) as verdict:
        assert llama_cpp.llama_model_default_params().use_extra_bufts is False
    assert verdict.signal == "SIGABRT" and len(notices) == 1 and "SIGABRT" in notices[0]
    assert llama_cpp.llama_model_default_params().use_extra_bufts is True
    with smoke.guard_load(smollm2, on_notice=notices.append):
        pass
    assert len(notices) == 1


def test_crashing_both_ways_refuses_to_load(smollm2: Path) -> None:
    smoke._store(smoke.cache_key(), SmokeVerdict(False, "crashed", "SIGSEGV", "m", 0.0, fallback="crashed"), smoke.cache_path())
    v = runtime_verdict(smollm2)
    assert v.cached and not v.usable
    with pytest.raises(smoke.BuildUnusable, match="SIGSEGV"):
        with smoke.guard_load(smollm2):
            pass


def test_cache_hit_library_change_and_damaged_file(smollm2: Path, lib_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "smoke.json"
    first = runtime_verdict(smollm2, lib_dir=lib_copy, cache=cache)
    assert first.status == "ok" and not first.cached
    assert runtime_verdict(smollm2, lib_dir=lib_copy, cache=cache, run=False).cached  # hit: no child
    (lib_copy / "libggml-cpu.so").write_bytes(b"x" * 11)  # a rebuilt library
    assert runtime_verdict(smollm2, lib_dir=lib_copy, cache=cache, run=False).status == "skipped"  # not valid any more
    assert not runtime_verdict(smollm2, lib_dir=lib_copy, cache=cache).cached  # rechecked
    cache.write_text("{not json")
    assert smoke.cached_verdict(smoke.cache_key(lib_copy), cache) is None
    again = runtime_verdict(smollm2, lib_dir=lib_copy, cache=cache)  # ignored, rechecked and rewritten
    assert again.status == "ok" and json.loads(cache.read_text())["version"] == smoke.CACHE_VERSION
    cache.write_text(json.dumps({"version": 1, "entries": {smoke.cache_key(lib_copy): {"verdict": {"status": 5}}}}))
    assert smoke.cached_verdict(smoke.cache_key(lib_copy), cache) is None


def test_failures_are_not_cached(tmp_path: Path, lib_copy: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    cache = tmp_path / "smoke.json"
    v = runtime_verdict(bad, lib_dir=lib_copy, cache=cache)
    assert v.status == "failed" and v.use_extra_bufts and v.usable and "could not load" in v.message
    assert not cache.exists()


def test_no_model_skips() -> None:
    v = runtime_verdict(None)
    assert v.status == "skipped" and v.use_extra_bufts and "fitchat pull starter" in v.message


def test_override_is_per_thread_and_checks_field_names() -> None:
    import threading

    import llama_cpp

    seen: list[bool] = []
    with smoke.model_params_override(use_extra_bufts=False):
        t = threading.Thread(target=lambda: seen.append(llama_cpp.llama_model_default_params().use_extra_bufts))
        t.start()
        t.join()
        assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is False
    assert seen == [True]
    with pytest.raises(ValueError, match="no field"):
        with smoke.model_params_override(use_extra_buffers=False):
            pass


def test_rebuild_command_follows_the_cpu_flags() -> None:
    epyc = ("avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512vbmi", "amx_tile")
    assert smoke.rebuild_command(epyc) == (
        'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON '
        '-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" '
        "pip install --force-reinstall --no-cache-dir llama-cpp-python"
    )
    assert smoke.portable_cmake_args(("avx", "avx2", "fma", "f16c")) == (
        "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    )


def _has_amx() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _has_amx(), reason="this CPU does not report AMX (no amx_tile in /proc/cpuinfo)")
def test_real_native_build_on_an_amx_cpu(smollm2: Path) -> None:
    """Where the CPU reports AMX: whatever the native build does, the verdict leaves a load that decodes."""
    v = runtime_verdict(smollm2, refresh=True)
    assert v.status in ("ok", "crashed") and v.usable
    if v.status == "crashed":
        assert v.signal == "SIGILL" and v.fallback == "ok" and v.use_extra_bufts is False


def test_plans_leave_out_extra_buffers_the_build_cannot_use_here(smollm2_variants: dict[str, Path]) -> None:
    """After a crash with extra buffer types, fit and chat estimate what the load will make: no repacked copies."""
    from fitchat.cli.options import add_load_settings_arguments, settings_from_args
    from fitchat.model.estimate import DEFAULT_SETTINGS, estimate
    from fitchat.model.gguf_spec import read_spec

    assert smoke.settings_for_this_build(DEFAULT_SETTINGS).use_extra_bufts  # no verdict yet: the defaults
    smoke._store(smoke.cache_key(), SmokeVerdict(False, "crashed", "SIGILL", "m", 0.0, fallback="ok"),
                 smoke.cache_path())
    chosen = smoke.settings_for_this_build(DEFAULT_SETTINGS)
    assert not chosen.use_extra_bufts
    import argparse

    parser = argparse.ArgumentParser()
    add_load_settings_arguments(parser)
    assert not settings_from_args(parser.parse_args([])).use_extra_bufts  # what fit, chat and serve plan with
    spec = read_spec(smollm2_variants["Q4_K_M"])  # Q4_K weights are repacked (or go to AMX) by default
    assert estimate(spec, 2048, DEFAULT_SETTINGS).repack_bytes > 0
    assert estimate(spec, 2048, chosen).repack_bytes == 0
