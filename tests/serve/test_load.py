"""Load: 8 clients streaming at once for a while; nothing lost, every stream complete, memory flat."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.serve.support import ServeProcess

PROMPTS = ["Name a fruit.", "What is 2 + 2?", "Say hello in French.", "Name a colour.",
           "What is the capital of Italy?", "Give me a word that rhymes with cat.", "Name a planet.", "Count to three."]


def run_load(server: ServeProcess, seconds: float, clients: int = 8) -> None:
    proc = psutil.Process(server.proc.pid)
    server.sse("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})  # warm up
    sent = [0] * clients
    complete = [0] * clients
    problems: list[str] = []
    rss: list[int] = []
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            sent[i] += 1
            body = {"messages": [{"role": "user", "content": PROMPTS[(i + n) % len(PROMPTS)]}],
                    "max_tokens": 12, "temperature": 0.7, "seed": n, "stream_options": {"include_usage": True}}
            try:
                chunks, done = server.sse("/v1/chat/completions", {**body, "stream": True}, timeout=300)
            except Exception as exc:  # noqa: BLE001 - counted as lost
                problems.append(f"client {i}: {type(exc).__name__}: {exc}")
                continue
            finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
            usage = chunks[-1].get("usage") if chunks else None
            if not done or finishes not in (["stop"], ["length"]) or not usage or usage["completion_tokens"] < 1:
                problems.append(f"client {i}: incomplete stream (done={done}, finishes={finishes}, usage={usage})")
                continue
            complete[i] += 1

    def sample() -> None:
        while time.monotonic() < deadline:
            rss.append(proc.memory_info().rss)
            time.sleep(0.25)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    sampler = threading.Thread(target=sample)
    for t in [*threads, sampler]:
        t.start()
    for t in [*threads, sampler]:
        t.join(seconds + 300)
    assert not problems, problems[:5]
    assert sum(sent) == sum(complete) and sum(complete) >= clients  # nothing lost, every client served
    quarter = max(1, len(rss) // 4)
    first, last = statistics.median(rss[:quarter]), statistics.median(rss[-quarter:])
    assert last - first < 24 * 1024 * 1024, f"RSS grew from {first / 2**20:.1f} to {last / 2**20:.1f} MiB"
    status, _ = server.request("GET", "/health")
    assert status == 200


@pytest.fixture()
def server(smollm2: Path, tmp_path: Path) -> Iterator[ServeProcess]:
    proc = ServeProcess(smollm2, tmp_path / "home")
    yield proc
    proc.kill()


def test_eight_clients_for_ten_seconds(server: ServeProcess) -> None:
    run_load(server, 10)


@pytest.mark.slow
def test_eight_clients_for_a_minute(server: ServeProcess) -> None:
    run_load(server, 60)
