"""llama.cpp's RPC backend: workers on 127.0.0.1 (CPU backend) plus the local CPU, with real loads and chats."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fitchat.llama import rpc
from fitchat.model.measure import PART_TOLERANCE, parse_buffer_log, within
from fitchat.model.split import assign_units
from tests.rpc_support import Worker, data_in_use, free_port, start_worker

MiB = 1024**2


# --------------------------------------------------------------------------- no build needed


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "at least one worker"),
        ("host", "is not HOST:PORT"),
        (":50052", "is not HOST:PORT"),
        ("host:", "the port must be a number"),
        ("host:0", "the port must be a number"),
        ("host:70000", "the port must be a number"),
        ("host:12ab", "the port must be a number"),
        ("a:1,,b:2", "empty entry"),
        ("[::1]:50052", "not IPv6"),
        ("fe80::1:50052", "not IPv6"),
        ("bad_host!:1", "is not a host name"),
        ("a:1,a:1", "named twice"),
        (",".join(f"h{i}:1" for i in range(17)), "at most 16"),
    ],
)
def test_bad_rpc_input_is_one_line(text: str, words: str) -> None:
    with pytest.raises(rpc.BadEndpoint) as err:
        rpc.parse_endpoints(text)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_endpoints_are_read_and_normalised() -> None:
    assert rpc.parse_endpoints(" 10.0.0.2:50052 , worker.lan:00050053") == ("10.0.0.2:50052", "worker.lan:50053")


def test_assign_units_mirrors_llama_cpp_placement() -> None:
    # Whole-unit counts as tensor_split give exactly those counts (llama-model.cpp's upper_bound rule).
    assert assign_units(31, 31, [16, 15]) == (0, [16, 15])
    assert assign_units(31, 20, [10, 10]) == (11, [10, 10])
    assert assign_units(31, 31, [10, 0, 21]) == (0, [10, 0, 21])
    assert assign_units(31, 0, [1, 1]) == (31, [0, 0])


def test_bad_rpc_option_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "fitchat", "fit", "nothing.gguf", "--rpc", "host"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "is not HOST:PORT" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_with_workers_loads_one_engine() -> None:
    proc = subprocess.run([sys.executable, "-m", "fitchat", "serve", "starter", "--rpc", "127.0.0.1:50052",
                           "--parallel", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "fitchat: error: --rpc takes --parallel 1: a worker serves one engine at a time"


# --------------------------------------------------------------------------- with workers


def test_worker_that_is_not_running_is_named(rpc_build: None, smollm2: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(rpc.WorkerUnreachable) as err:
        rpc.query_workers([dead])
    assert time.monotonic() - t0 < 5
    assert dead in str(err.value) and "refused" in str(err.value)
    proc = subprocess.run(
        [sys.executable, "-m", "fitchat", "chat", str(smollm2), "-p", "hi", "--rpc", dead, "--threads", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"worker {dead}" in lines[0], proc.stderr


def test_worker_that_accepts_but_never_answers_is_named_within_the_deadline(rpc_build: None) -> None:
    """A worker busy with another client (or anything else that accepts and stays silent): no hang."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(rpc.WorkerUnreachable) as err:
            rpc.query_workers([endpoint], timeout_s=3)
        assert time.monotonic() - t0 < 10
    assert f"worker {endpoint} accepted the connection but did not answer within 3 s" in str(err.value)
    assert "another fitchat" in str(err.value)


def test_query_sees_each_worker_device(two_workers: tuple[Worker, Worker]) -> None:
    a, b = two_workers
    devices = rpc.query_workers([a.endpoint, b.endpoint])
    assert [d.name for d in devices] == [f"RPC0[{a.endpoint}]", f"RPC0[{b.endpoint}]"]
    assert all(d.total_bytes > 0 and 0 < d.free_bytes <= d.total_bytes for d in devices)


def test_fit_plans_a_split_across_workers(two_workers: tuple[Worker, Worker], smollm2: Path) -> None:
    a, b = two_workers
    proc = subprocess.run(
        [sys.executable, "-m", "fitchat", "fit", str(smollm2), "--json", "--ctx", "2048",
         "--rpc", f"{a.endpoint},{b.endpoint}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [d["endpoint"] for d in out["hardware"]["rpc"]] == [a.endpoint, b.endpoint]
    assert all(d["total_bytes"] > 0 for d in out["hardware"]["rpc"])
    (variant,) = out["variants"]
    devices = {d["name"]: d for d in variant["devices"]}
    assert list(devices) == ["CPU", f"RPC0[{a.endpoint}]", f"RPC0[{b.endpoint}]"]
    assert sum(d["layers"] for d in variant["devices"]) == variant["n_layers"]
    assert devices[f"RPC0[{a.endpoint}]"]["layers"] > 0 and devices[f"RPC0[{b.endpoint}]"]["layers"] > 0
    assert all(d["bytes"] > 0 for d in variant["devices"])
    text = subprocess.run(
        [sys.executable, "-m", "fitchat", "fit", str(smollm2), "--ctx", "2048", "--rpc", f"{a.endpoint},{b.endpoint}"],
        capture_output=True, text=True, timeout=120,
    ).stdout
    assert f"RPC0[{a.endpoint}]" in text and "split CPU" in text and "Workers:" in text


def test_chat_over_two_workers_shows_layers_on_both(two_workers: tuple[Worker, Worker], smollm2: Path) -> None:
    a, b = two_workers
    proc = subprocess.run(
        [sys.executable, "-m", "fitchat", "chat", str(smollm2), "-p", "Say hello.", "--json", "--max-tokens", "8",
         "--temp", "0", "--threads", "1", "--ctx", "1024", "--rpc", f"{a.endpoint},{b.endpoint}"],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["reply"].strip()
    devices = {d["name"]: d["layers"] for d in out["stats"]["devices"]}
    assert devices[f"RPC0[{a.endpoint}]"] > 0 and devices[f"RPC0[{b.endpoint}]"] > 0
    assert sum(devices.values()) == 31  # SmolLM2: 30 blocks and the output layer


_LOAD_SCRIPT = """
import json, sys
import llama_cpp
from fitchat.llama.rpc import load_devices, tensor_split
from fitchat.model.estimate import LoadSettings
targets, ngl, ctx, path, flash_attn = json.loads(sys.argv[1])
kwargs = LoadSettings(flash_attn=flash_attn).llama_kwargs()
with load_devices(targets):
    llm = llama_cpp.Llama(path, n_gpu_layers=ngl, n_ctx=ctx, n_threads=1, verbose=True,
                          tensor_split=tensor_split(targets), **kwargs)
llm.close()
"""


@pytest.mark.parametrize(("ctx", "flash_attn"), [(2048, True), (8192, True), (8192, False)])
def test_estimate_per_device_matches_llama_cpp_buffers(two_workers: tuple[Worker, Worker], smollm2: Path,
                                                       ctx: int, flash_attn: bool) -> None:
    """Each device's weights, KV and compute (the CPU's and each worker's) against the buffers llama.cpp logs
    for it, pipeline parallelism's copies of the inputs included."""
    import dataclasses

    from fitchat.model.estimate import LoadSettings
    from fitchat.model.gguf_spec import read_spec
    from fitchat.model.hardware import detect_hardware
    from fitchat.model.plan import plan_model

    a, b = two_workers
    spec = read_spec(smollm2)
    hw = dataclasses.replace(detect_hardware(), rpc=rpc.query_workers([a.endpoint, b.endpoint]))
    plan = plan_model(spec, hw, ctx, LoadSettings(flash_attn=flash_attn))
    targets = [{"name": d.name, "layers": d.layers, "endpoint": d.endpoint, "index": d.index}
               for d in plan.devices[1:]]
    request = json.dumps([targets, plan.gpu_layers, ctx, str(smollm2), flash_attn])
    done = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, request], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    buffers = parse_buffer_log(done.stderr)
    assert "pipeline parallelism enabled" in done.stderr
    for d in plan.devices:
        mine = [x for x in buffers if x.device == d.name or (d.name == "CPU" and x.device.startswith("CPU"))]
        measured = sum(x.bytes for x in mine)
        kinds = {x.kind for x in mine}
        assert {"model", "compute"} <= kinds and (d.name == "CPU" or "KV" in kinds), (d.name, kinds)
        assert within(d.bytes, measured, PART_TOLERANCE), (
            f"{d.name}: estimated {d.bytes / MiB:.2f} MiB, llama.cpp {measured / MiB:.2f} MiB")


def test_worker_killed_mid_reply_keeps_the_chat_and_offers_a_reload(rpc_build: None, smollm2: Path,
                                                                     open_terminal: Any) -> None:
    keep, doomed = start_worker(), start_worker()
    try:
        term = open_terminal(["chat", str(smollm2), "--threads", "1", "--temp", "0", "--ctx", "1024", "--max-tokens", "120",
                              "--rpc", f"{keep.endpoint},{doomed.endpoint}"])
        mark = term.read_until(">>> ", timeout=120)
        term.type("Write a very long story about a dragon who learns to bake bread.\r")
        mark = term.read_until("bread.", start=mark)
        mark = term.read_chars(20, start=mark)  # the reply is streaming
        doomed.kill()
        mark = term.read_until(f"worker {doomed.endpoint} stopped answering", timeout=30, start=mark)
        mark = term.read_until("[Y/n]", timeout=30, start=mark)
        assert keep.endpoint in term.buffer[mark - 200:]
        term.type("\r")
        mark = term.read_until("Reloaded", timeout=120, start=mark)
        mark = term.read_until(">>> ", start=mark)
        term.type("/stats\r")
        mark = term.read_until(">>> ", timeout=10, start=mark)
        term.type("Say yes.\r")
        mark = term.read_until(">>> ", timeout=120, start=mark)
        term.type("\x04")
        assert term.wait(30) == 0
        assert "Traceback" not in term.buffer
    finally:
        keep.stop()
        doomed.kill()


def test_without_rpc_in_the_build_worker_and_rpc_say_how_to_get_it(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     smollm2: Path) -> None:
    from fitchat.cli.main import main
    from fitchat.doctor import check_rpc
    from fitchat.model.hardware import detect_hardware

    monkeypatch.setattr(rpc, "rpc_available", lambda: False)  # the build boundary: a wheel without -DGGML_RPC=ON
    for argv in (["worker"], ["fit", str(smollm2), "--rpc", "127.0.0.1:50052"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "built without RPC" in err[0] and "packaging/install.sh --rpc" in err[0], err
        assert "-DGGML_RPC=ON" in err[0]
    hw = detect_hardware()
    check = check_rpc(hw, available=False)
    assert check.status == "info" and check.fix and "-DGGML_RPC=ON" in check.fix
    assert check_rpc(hw, available=True).status == "ok"


def test_worker_with_less_memory_than_it_offers_walks_the_fallback_ladder(rpc_build: None, smollm2: Path) -> None:
    from fitchat.llama.engine import SamplingSettings
    from fitchat.llama.planned import load_planned

    probe = start_worker()
    baseline = data_in_use(probe)
    probe.stop()
    short = start_worker(data_limit=baseline + 20 * MiB)  # offers all the RAM, can allocate 20 MiB more
    notices: list[str] = []
    try:
        engine = load_planned(smollm2, "SmolLM2", ctx=1024, n_threads=1, rpc=(short.endpoint,),
                              on_notice=notices.append)
        try:
            planned = 31
            placed = dict(engine.devices)
            assert placed[f"RPC0[{short.endpoint}]"] < planned and sum(placed.values()) == planned
            assert engine.load_report.failures
            assert any(f"unable to allocate RPC0[{short.endpoint}] buffer" in n for n in notices), notices
            assert any(n.startswith("retrying with") for n in notices)
            assert "".join(engine.stream([{"role": "user", "content": "Hi"}], SamplingSettings(temperature=0, max_tokens=4)))
        finally:
            engine.close()
    finally:
        short.stop()
