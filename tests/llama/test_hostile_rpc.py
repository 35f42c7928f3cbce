"""Anything listening on a worker's port is outside input: each lie ends in one line naming the worker, soon,
and never aborts fitchat (ggml-rpc aborts on a bad reply; that only ever happens in a child)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fitchat.llama import rpc
from tests.hostile_worker import hostile_worker


@pytest.mark.parametrize(
    "text",
    ["host:²", "host:" + "9" * 5000, "host:٥٠٠٥٢", "a..b:1", "x" * 64 + ".lan:1", "host.:1", "a\x1b[31m:1"],
)
def test_endpoints_the_resolver_or_int_would_refuse_are_one_line(text: str) -> None:
    with pytest.raises(rpc.BadEndpoint) as err:
        rpc.parse_endpoints(text)
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)


def test_probe_of_a_name_the_resolver_refuses_is_words() -> None:
    assert "resolver" in (rpc.probe("x" * 70 + ":1", 1) or "")


@pytest.mark.parametrize(
    ("mode", "kwargs", "words"),
    [
        ("close", {}, "is not a llama.cpp RPC worker of this version: "),
        ("garbage", {}, "is not a llama.cpp RPC worker of this version"),
        ("short-hello", {}, "answered 3 bytes where llama.cpp's RPC answers 28"),
        ("version", {}, "speaks RPC protocol 8.0.0, not 7.x"),
        ("lie", {"count": 2**32 - 1}, "claims 4294967295 devices"),
        ("lie", {"count": 0}, "lends no devices"),
    ],
)
def test_hostile_worker_is_one_line_naming_it(rpc_build: None, mode: str, kwargs: dict[str, int], words: str) -> None:
    with hostile_worker(mode, **kwargs) as endpoint:
        t0 = time.monotonic()
        with pytest.raises(rpc.WorkerUnreachable) as err:
            rpc.query_workers([endpoint], timeout_s=10)
        assert time.monotonic() - t0 < 10
    message = str(err.value)
    assert message.startswith(f"worker {endpoint} ") and message.count(endpoint) == 1, message
    assert words in message and "\n" not in message


def test_worker_that_drips_its_handshake_is_cut_at_the_deadline(rpc_build: None) -> None:
    with hostile_worker("drip") as endpoint:
        t0 = time.monotonic()
        with pytest.raises(rpc.WorkerUnreachable) as err:
            rpc.query_workers([endpoint], timeout_s=3)
        assert time.monotonic() - t0 < 8
    assert f"worker {endpoint} accepted the connection but did not answer within 3 s" in str(err.value)


def test_worker_claiming_more_free_than_total_memory_counts_total(rpc_build: None) -> None:
    with hostile_worker("lie", free=2**40, total=2**20) as endpoint:
        (device,) = rpc.query_workers([endpoint], timeout_s=10)
    assert device.free_bytes == device.total_bytes == 2**20


def test_fit_with_a_hostile_worker_is_one_line(rpc_build: None, smollm2: Path) -> None:
    with hostile_worker("garbage") as endpoint:
        proc = subprocess.run([sys.executable, "-m", "fitchat", "fit", str(smollm2), "--rpc", endpoint],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"fitchat: error: worker {endpoint} "), proc.stderr
    assert "Traceback" not in proc.stderr and "csu" not in proc.stderr


def test_worker_that_answers_the_query_then_breaks_off_at_load_is_named(rpc_build: None, smollm2: Path) -> None:
    """ggml-rpc aborts the engine process on a bad reply mid-load: fitchat stays, and its line names the worker."""
    with hostile_worker("lie") as endpoint:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "fitchat", "chat", str(smollm2), "-p", "hi", "--threads", "1",
                               "--rpc", endpoint], capture_output=True, text=True, timeout=90)
        assert time.monotonic() - t0 < 60
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"fitchat: error: worker {endpoint} broke off the connection"), proc.stderr


def test_load_stalled_by_a_silent_worker_ends_at_ctrl_c(rpc_build: None, smollm2: Path) -> None:
    """A worker that answers the query, then goes silent mid-load (a machine whose network dropped): ggml-rpc
    waits without a deadline, so ctrl+c is the way out, at once, leaving no engine process behind."""
    import signal

    with hostile_worker("stall") as endpoint:
        proc = subprocess.Popen([sys.executable, "-m", "fitchat", "chat", str(smollm2), "-p", "hi", "--threads", "1",
                                 "--rpc", endpoint], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        assert proc.poll() is None  # still loading: the stall holds it
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the engine runs in a child process"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert time.monotonic() - t0 < 10
    assert "Traceback" not in err
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children), "the engine outlived fitchat"


def test_one_worker_named_two_ways_is_a_usage_error(rpc_build: None, smollm2: Path) -> None:
    """``localhost:P,127.0.0.1:P`` is one worker twice: its memory would count twice, and the load's second
    connection would wait for the first without end (a worker serves one client at a time)."""
    with hostile_worker("lie") as endpoint:
        port = endpoint.rpartition(":")[2]
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "fitchat", "fit", str(smollm2), "--rpc",
                               f"localhost:{port},127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
        assert time.monotonic() - t0 < 30
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"fitchat: error: workers localhost:{port} and 127.0.0.1:{port} are the same "
                                   f"worker (127.0.0.1 port {port}); name it once")


def test_engine_held_by_a_silent_worker_does_not_outlive_a_killed_fitchat(rpc_build: None, smollm2: Path) -> None:
    """fitchat killed (SIGKILL, no clean-up) while a stalled worker holds the engine's load: the engine, blocked
    inside llama.cpp, ends on its own once its input has been gone for ORPHAN_GRACE_S."""
    import signal

    from fitchat.llama.process import ORPHAN_GRACE_S

    with hostile_worker("stall") as endpoint:
        proc = subprocess.Popen([sys.executable, "-m", "fitchat", "chat", str(smollm2), "-p", "hi", "--threads", "1",
                                 "--rpc", endpoint], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(4)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the engine runs in a child process"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + ORPHAN_GRACE_S + 10
        while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(Path(f"/proc/{pid}").exists() for pid in children), "the engine outlived fitchat"


def test_more_devices_than_llama_cpp_loads_onto_is_one_line_at_plan_time(rpc_build: None, smollm2: Path) -> None:
    """Six workers lending three devices each: 18 offload devices, past llama.cpp's 16. Said when planning
    (fit), not as llama-cpp-python's refusal at load."""
    with contextlib.ExitStack() as stack:
        endpoints = [stack.enter_context(hostile_worker("lie", count=3)) for _ in range(6)]
        proc = subprocess.run([sys.executable, "-m", "fitchat", "fit", str(smollm2), "--rpc", ",".join(endpoints)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert re.fullmatch(r"fitchat: error: the workers lend 18 devices and this machine offloads to \d+: "
                        r"llama.cpp loads onto at most 16; name fewer workers", proc.stderr.strip()), proc.stderr
