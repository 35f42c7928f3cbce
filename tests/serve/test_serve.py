"""``fitchat serve`` on real llama.cpp with SmolLM2-135M, driven by the official ``openai`` client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.serve.support import ServeProcess

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to bake bread."}]


@pytest.fixture(scope="module")
def server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(smollm2, tmp_path_factory.mktemp("serve-home"))
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def stream_text(client: openai.OpenAI, messages: list[dict[str, str]], **kw: Any) -> tuple[str, list[Any]]:
    chunks = list(client.chat.completions.create(messages=messages, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_health_and_models(server: ServeProcess, client: openai.OpenAI) -> None:
    assert server.request("GET", "/health") == (200, {"status": "ok", "model": server.model_id})
    assert [m.id for m in client.models.list()] == [server.model_id]
    assert server.model_id == "SmolLM2-135M-Instruct.Q4_1"


def test_plain_and_streamed_replies_agree(server: ServeProcess, client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"model": server.model_id, "temperature": 0, "seed": 7, "max_tokens": 40}
    plain = client.chat.completions.create(messages=QUESTION, **kw)
    text = plain.choices[0].message.content or ""
    assert "Paris" in text
    assert plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage is not None and plain.usage.prompt_tokens > 10 and plain.usage.completion_tokens > 3
    assert plain.model == server.model_id

    streamed, chunks = stream_text(client, QUESTION, stream_options={"include_usage": True}, **kw)
    assert streamed == text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert not chunks[-1].choices and chunks[-1].usage is not None  # the usage-only final chunk
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens

    raw, done = server.sse("/v1/chat/completions", {"messages": QUESTION, **kw, "stream": True})
    assert done and "".join(c["choices"][0]["delta"].get("content", "") for c in raw) == text


def test_sampling_parameters_are_used(client: openai.OpenAI, server: ServeProcess) -> None:
    kw: dict[str, Any] = {"model": server.model_id, "max_tokens": 30, "temperature": 0.9, "top_p": 0.9}
    first = client.chat.completions.create(messages=STORY, seed=11, **kw).choices[0].message.content
    again = client.chat.completions.create(messages=STORY, seed=11, **kw).choices[0].message.content
    assert first == again  # a seed makes a warm reply reproducible
    short = client.chat.completions.create(messages=STORY, model=server.model_id, temperature=0, max_tokens=5)
    assert short.choices[0].finish_reason == "length" and short.usage and short.usage.completion_tokens == 5
    greedy = client.chat.completions.create(messages=QUESTION, model=server.model_id, temperature=0, max_tokens=40)
    text = greedy.choices[0].message.content or ""
    cut = client.chat.completions.create(messages=QUESTION, model=server.model_id, temperature=0, max_tokens=40,
                                         stop=["Paris", "zzz"])
    assert cut.choices[0].message.content == text[: text.index("Paris")]
    assert cut.choices[0].finish_reason == "stop"
    penalised = client.chat.completions.create(messages=STORY, model=server.model_id, temperature=0, max_tokens=40,
                                               frequency_penalty=2.0, presence_penalty=1.0)
    plain = client.chat.completions.create(messages=STORY, model=server.model_id, temperature=0, max_tokens=40)
    assert penalised.choices[0].message.content != plain.choices[0].message.content


def test_completions_plain_and_streamed(client: openai.OpenAI, server: ServeProcess) -> None:
    kw: dict[str, Any] = {"model": server.model_id, "prompt": "The capital of France is", "temperature": 0, "max_tokens": 12}
    plain = client.completions.create(**kw)
    assert "Paris" in plain.choices[0].text
    assert plain.usage is not None and plain.usage.prompt_tokens == 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
    assert streamed == plain.choices[0].text
    default = client.completions.create(model=server.model_id, prompt="Once upon a time", temperature=0)
    assert default.usage is not None and default.usage.completion_tokens <= 16  # OpenAI's default length


def test_four_concurrent_streams_all_complete(client: openai.OpenAI, server: ServeProcess) -> None:
    prompts = [QUESTION, STORY]
    kw: dict[str, Any] = {"model": server.model_id, "temperature": 0, "max_tokens": 24}
    expected = [client.chat.completions.create(messages=p, **kw).choices[0].message.content for p in prompts]
    results: dict[int, tuple[str, list[Any]]] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = stream_text(client, prompts[i % 2], **kw)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors
    for i in range(4):
        text, chunks = results[i]
        assert text == expected[i % 2]  # nobody's stream was cut short or mixed with another's
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_dropped_stream_cancels_only_itself(client: openai.OpenAI, server: ServeProcess) -> None:
    stream = client.chat.completions.create(model=server.model_id, messages=STORY, temperature=0, max_tokens=3000,
                                            stream=True)
    got = 0
    for chunk in stream:
        got += bool(chunk.choices and chunk.choices[0].delta.content)
        if got >= 3:
            break
    stream.close()
    t0 = time.monotonic()
    after = client.chat.completions.create(model=server.model_id, messages=QUESTION, temperature=0, max_tokens=8)
    assert after.choices[0].message.content and after.usage and after.usage.completion_tokens == 8
    assert time.monotonic() - t0 < 15  # the dropped reply (up to 3000 tokens) did not run on


def test_bad_requests_get_openai_errors(client: openai.OpenAI, server: ServeProcess) -> None:
    status, body = server.request("POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "invalid_json"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=server.model_id, messages=QUESTION, temperature=3)
    assert bad.value.status_code == 400 and bad.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert missing.value.code == "model_not_found"
    cases: list[tuple[Any, str | None]] = [
        ([1, 2], None),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content"),
        ({"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
        ({"messages": QUESTION, "top_p": "high"}, "top_p"),
        ({"messages": QUESTION, "stop": [1]}, "stop"),
        ({"messages": QUESTION, "seed": 1.5}, "seed"),
        ({"messages": QUESTION, "presence_penalty": 9}, "presence_penalty"),
        ({"messages": QUESTION, "stream": "yes"}, "stream"),
        ({"messages": QUESTION, "n": 3}, "n"),
        ({"messages": QUESTION, "temperature": float("nan")}, "temperature"),  # Python reads NaN; still refused
    ]
    for payload, param in cases:
        raw = json.dumps(payload).encode()
        status, body = server.request("POST", "/v1/chat/completions", raw)
        assert status == 400, (payload, body)
        assert body["error"]["param"] == param, (payload, body)
    status, body = server.request("POST", "/v1/chat/completions", b"x" * (9 * 1024 * 1024))
    assert status == 413 and "larger" in body["error"]["message"]
    status, body = server.request("GET", "/v1/chat/completions")
    assert status == 405 and "error" in body
    # A text-parts content array is read as its text.
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                          {"type": "text", "text": "of France?"}]}]
    status, body = server.request("POST", "/v1/chat/completions",
                                  {"messages": parts, "temperature": 0, "max_tokens": 30})
    assert status == 200 and "Paris" in body["choices"][0]["message"]["content"]


def test_api_key_and_ctrl_c_drains_the_stream_in_progress(smollm2: Path, tmp_path: Path) -> None:
    proc = ServeProcess(smollm2, tmp_path / "home", env={"FITCHAT_API_KEY": "s3cret"})
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=proc.url, api_key="wrong", max_retries=0).models.list()
        status, body = proc.request("POST", "/v1/chat/completions", {"messages": QUESTION})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert proc.request("GET", "/health")[0] == 200  # health checks need no key
        client = openai.OpenAI(base_url=proc.url, api_key="s3cret", max_retries=0, timeout=60)
        stream = client.chat.completions.create(model=proc.model_id, messages=STORY, temperature=0, max_tokens=40,
                                                stream=True)
        chunks = [next(iter(stream))]
        rc: list[int] = []
        stopper = threading.Thread(target=lambda: rc.append(proc.interrupt(timeout=30)))
        stopper.start()
        chunks.extend(stream)  # the reply in progress runs to its end
        stopper.join(40)
        assert rc == [0]
        assert chunks[-1].choices[0].finish_reason == "length"
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 30
        assert any("stopping" in line for line in proc.stderr)
    finally:
        proc.kill()


def test_ctrl_c_when_idle_exits_0_at_once(smollm2: Path, tmp_path: Path) -> None:
    proc = ServeProcess(smollm2, tmp_path / "home")
    try:
        t0 = time.monotonic()
        assert proc.interrupt(timeout=15) == 0
        assert time.monotonic() - t0 < 5
        assert not any("Traceback" in line for line in proc.stderr)
    finally:
        proc.kill()


def test_parallel_engines_serve_two_streams_at_once(smollm2: Path, tmp_path: Path) -> None:
    proc = ServeProcess(smollm2, tmp_path / "home", "--parallel", "2")
    try:
        client = openai.OpenAI(base_url=proc.url, api_key="unused", max_retries=0, timeout=120)
        kw: dict[str, Any] = {"model": proc.model_id, "temperature": 0, "max_tokens": 20}
        expected = client.chat.completions.create(messages=QUESTION, **kw).choices[0].message.content
        results: list[str] = []
        threads = [threading.Thread(target=lambda: results.append(stream_text(client, QUESTION, **kw)[0]))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == [expected] * 3  # each engine keeps its own cache: the same answer from either
    finally:
        proc.kill()
