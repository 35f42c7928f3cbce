"""Hostile HTTP clients against a real server (in-process, real llama.cpp with SmolLM2-135M).

Every bad request is an OpenAI error object with a 4xx status, never a 500, a hang or a traceback,
and the server keeps serving afterwards.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fitchat.llama.planned import load_planned
from fitchat.serve import app
from fitchat.serve.app import ServeConfig
from fitchat.serve.server import Serving, bind

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def serving(smollm2: Path) -> Iterator[Serving]:
    ready = threading.Event()
    server = Serving(ServeConfig("smol"), lambda: load_planned(smollm2, "SmolLM2", n_threads=1),
                     sock=bind("127.0.0.1", 0), on_ready=lambda _url: ready.set())
    runner = threading.Thread(target=server.run)
    runner.start()
    assert ready.wait(120)
    yield server
    server.stop()
    runner.join(60)


def port(serving: Serving) -> int:
    return int(serving.sock.getsockname()[1])


def post(serving: Serving, body: bytes | dict[str, Any], headers: dict[str, str] | None = None,
         path: str = "/v1/chat/completions") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port(serving), timeout=60)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def refused(status: int, body: Any, code: int = 400) -> str:
    """The error's message, after checking it is OpenAI's error object with status ``code``."""
    assert status == code, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return str(body["error"]["message"])


def still_serving(serving: Serving) -> None:
    status, body = post(serving, {"messages": HI, "max_tokens": 2, "temperature": 0})
    assert status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length")
    idle(serving)


def idle(serving: Serving, seconds: float = 10) -> None:
    """No request holds or waits for the engine (a reply's engine is handed back just after it is sent)."""
    deadline = time.monotonic() + seconds
    while (serving.state.active or serving.state.pool.waiting) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert serving.state.active == 0 and serving.state.pool.waiting == 0


@pytest.mark.parametrize("body", [
    {"messages": HI, "temperature": 10**400},  # an integer too large for a float
    {"messages": HI, "top_p": -(10**400)},
    {"messages": [{"role": ["user"], "content": "hi"}]},  # an unhashable role
    {"messages": [{"role": {"x": 1}, "content": "hi"}]},
    {"messages": [{"role": "tool", "content": "hi"}]},
    {"messages": HI, "seed": 2**64},
    {"messages": HI, "max_tokens": -5},
    {"messages": HI, "max_tokens": 10**30, "stop": [["x"]]},
    {"messages": HI, "stop": ["x"] * 100_000},
])
def test_bad_fields_are_400s(serving: Serving, body: dict[str, Any]) -> None:
    refused(*post(serving, body))


@pytest.mark.parametrize("raw", [
    b"[" * 100_000,  # deeper than any parser recursion
    b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b"\xff\xfe\xfa not utf-8",
    b'{"messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate: not text
    b'{"model": "\\udfff", "messages": []}',
    b"",
    b"null",
])
def test_bad_json_is_a_400(serving: Serving, raw: bytes) -> None:
    refused(*post(serving, raw))
    refused(*post(serving, raw, path="/v1/completions"))


def test_model_names_in_errors_are_printable_and_cut(serving: Serving) -> None:
    name = "\x1b]0;TITLE\x07\x1b[2J[b]markup[/b]\x00" + "x" * 10_000
    message = refused(*post(serving, {"model": name, "messages": HI}), code=404)
    assert "\x1b" not in message and "\x07" not in message and "\x00" not in message
    assert len(message) < 300 and "[b]markup[/b]" in message


def test_huge_bodies_are_refused_while_reading(serving: Serving) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (50 << 20)}]}).encode()
    refused(*post(serving, big), code=413)
    # without a Content-Length: chunked, refused once 8 MiB have arrived
    conn = http.client.HTTPConnection("127.0.0.1", port(serving), timeout=60)
    try:
        chunks = (big[i:i + (1 << 20)] for i in range(0, len(big), 1 << 20))
        try:
            conn.request("POST", "/v1/chat/completions", body=chunks, encode_chunked=True,
                         headers={"Content-Type": "application/json"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest was sent
        resp = conn.getresponse()
        refused(resp.status, json.loads(resp.read()), code=413)
    finally:
        conn.close()
    still_serving(serving)


def test_too_many_messages_are_refused_before_the_engine(serving: Serving) -> None:
    started = time.monotonic()
    message = refused(*post(serving, {"messages": HI * 100_000, "max_tokens": 2}))
    assert "at most 2048" in message and time.monotonic() - started < 10
    still_serving(serving)


def test_a_huge_key_is_a_4xx(serving: Serving) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port(serving), timeout=60)
    try:
        conn.request("GET", "/v1/models", headers={"Authorization": "Bearer " + "k" * (1 << 20)})
        resp = conn.getresponse()
        resp.read()
        assert 400 <= resp.status < 500
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before the header was read to its end
    finally:
        conn.close()
    still_serving(serving)


def test_a_body_that_never_ends_is_a_408(serving: Serving, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "BODY_TIMEOUT_S", 1.0)
    with socket.create_connection(("127.0.0.1", port(serving)), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"messages\"")
        started = time.monotonic()
        reply = sock.recv(65536)
        assert time.monotonic() - started < 10
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    still_serving(serving)


def test_clients_that_leave_at_once_leave_no_waiters(serving: Serving, caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("uvicorn.error").addHandler(caplog.handler)  # uvicorn's loggers do not reach the root
    caplog.set_level(logging.ERROR, "uvicorn.error")
    body = json.dumps({"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 200}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    socks = [socket.create_connection(("127.0.0.1", port(serving)), timeout=30) for _ in range(40)]
    for s in socks:
        s.sendall(request)
    deadline = time.monotonic() + 10
    while serving.state.active < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert serving.state.active >= 2  # one generating, others queued
    for s in socks:
        s.close()
    idle(serving, 30)
    logging.getLogger("uvicorn.error").removeHandler(caplog.handler)
    assert not caplog.records, caplog.text[:2000]  # a client that leaves is no traceback on the server's terminal
    still_serving(serving)


def test_connections_that_never_finish_their_headers_are_bounded(serving: Serving) -> None:
    """Slowloris: each half-sent request holds a connection; past the bound new requests get a 503 at once."""
    from fitchat.serve.server import MAX_CONNECTIONS

    held = [socket.create_connection(("127.0.0.1", port(serving)), timeout=30) for _ in range(MAX_CONNECTIONS)]
    try:
        for s in held:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        time.sleep(0.5)
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port(serving), timeout=30)
        conn.request("POST", "/v1/chat/completions", body=json.dumps({"messages": HI, "max_tokens": 2}))
        status = conn.getresponse().status  # uvicorn's own 503: the app never sees the request
        conn.close()
        assert status == 503 and time.monotonic() - started < 10
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the held connections are gone once the server sees them close
        probe = http.client.HTTPConnection("127.0.0.1", port(serving), timeout=30)
        probe.request("GET", "/health")
        ok = probe.getresponse().status == 200
        probe.close()
        if ok:
            break
        time.sleep(0.2)
    still_serving(serving)
