"""The server in-process: /health and the API answer 503 while the model loads, then serve; stop() drains."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from fitchat.errors import FitchatError
from fitchat.llama.planned import load_planned
from fitchat.serve.app import ServeConfig
from fitchat.serve.server import Serving, bind, is_loopback


def get(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body else None)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_503_while_loading_then_ready(smollm2: Path) -> None:
    gate = threading.Event()
    ready: list[str] = []

    def load() -> Any:  # the real planned load, held back until the test has seen the loading state
        gate.wait(60)
        return load_planned(smollm2, "SmolLM2", n_threads=1)

    serving = Serving(ServeConfig("smol"), load, sock=bind("127.0.0.1", 0), on_ready=ready.append)
    port = serving.sock.getsockname()[1]
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(serving.run()))
    runner.start()
    try:
        for _ in range(100):  # the socket answers at once, before the model is there
            try:
                status, body = get(port, "GET", "/health")
                break
            except ConnectionRefusedError:
                threading.Event().wait(0.05)
        assert (status, body) == (503, {"status": "loading"})
        status, body = get(port, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        assert status == 503 and body["error"]["code"] == "loading"
        gate.set()
        for _ in range(600):
            if ready:
                break
            threading.Event().wait(0.05)
        assert ready == [f"http://127.0.0.1:{port}/v1"]
        assert get(port, "GET", "/health")[0] == 200
        status, body = get(port, "POST", "/v1/chat/completions",
                           {"model": "smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert status == 200 and body["usage"]["completion_tokens"] == 4
    finally:
        gate.set()
        serving.stop()
        runner.join(30)
    assert result == [0]
    assert not serving.state.slots  # engines closed


def test_a_failed_load_stops_the_server_and_is_raised(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    serving = Serving(ServeConfig("broken"), lambda: load_planned(bad, "broken"), sock=bind("127.0.0.1", 0),
                      on_ready=lambda url: None)
    with pytest.raises(FitchatError) as failed:
        serving.run()
    assert "broken.gguf" in str(failed.value)
    assert not serving.state.ready and not serving.state.slots


def test_busy_port_is_one_line() -> None:
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(Exception, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
