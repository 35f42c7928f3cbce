"""ServeController: an engine loaded by its owner, served from a background thread, shared turn by turn."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from fitchat.errors import FitchatError
from fitchat.llama.engine import SamplingSettings
from fitchat.llama.planned import load_planned
from fitchat.llama.process import ProcessEngine
from fitchat.serve.controller import ServeController, ServingStatus
from fitchat.serve.server import bind

GREEDY = SamplingSettings(temperature=0.0, seed=1, max_tokens=8)
HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def engine(smollm2: Path) -> Iterator[ProcessEngine]:
    eng = load_planned(smollm2, "SmolLM2", n_threads=1)
    yield eng
    eng.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def ask(url: str, max_tokens: int = 8) -> str:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model="smol", messages=HI, max_tokens=max_tokens, temperature=0)  # type: ignore[arg-type]
    return reply.choices[0].message.content or ""


def wait(condition, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_serve_an_owned_engine_then_stop(engine: ProcessEngine) -> None:
    controller = ServeController()
    assert controller.status() == ServingStatus(False)
    status = controller.start(engine, "smol", port=0)
    try:
        assert status.serving and status.model_id == "smol"
        assert status.url == f"http://127.0.0.1:{port_of(status.url or '')}/v1"
        assert controller.serves(engine)
        with pytest.raises(FitchatError, match="already serving"):
            controller.start(engine, "smol", port=0)
        assert ask(status.url or "").strip()
        # The client has its reply a moment before the server's request ends (and leaves the in-flight count).
        wait(lambda: controller.status().in_flight == 0, timeout=10)
        assert controller.status().served == 1 and controller.status().in_flight == 0
    finally:
        final = controller.stop()
    assert final == ServingStatus(False, served=1)
    assert refused(port_of(status.url or ""))
    assert not controller.serves(engine)
    # The server's close left the owner's engine loaded.
    assert "".join(engine.stream(HI, GREEDY)).strip()
    assert controller.stop() == ServingStatus(False, served=1)  # stopping twice is harmless


def test_a_taken_port_moves_to_the_next_free_one(engine: ProcessEngine) -> None:
    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    controller = ServeController()
    try:
        url = controller.start(engine, "smol", port=port).url or ""
        assert port_of(url) != port and port < port_of(url) <= port + 20
        with pytest.raises(FitchatError, match=f"cannot listen on 127.0.0.1:{port}"):
            ServeController().start(engine, "smol", port=port, next_free=False)
    finally:
        controller.stop()
        taken.close()


def test_owner_and_api_take_turns(engine: ProcessEngine) -> None:
    controller = ServeController()
    url = controller.start(engine, "smol", port=0).url or ""
    try:
        # The owner holds the engine: an API request waits in line, and is answered once the turn ends.
        answers: list[str] = []
        with controller.turn() as mine:
            assert mine
            api = threading.Thread(target=lambda: answers.append(ask(url)))
            api.start()
            wait(lambda: controller.status().in_flight == 1)
            time.sleep(0.3)
            assert not answers  # still waiting: the owner's turn is not cut short
            assert "".join(engine.stream(HI, GREEDY)).strip()  # the owner's own reply runs undisturbed
            # A second turn queues behind the request and may give up waiting.
            with controller.turn(cancelled=lambda: True) as second:
                assert not second
        # The request had its place in line first: this turn waits for its reply, then has the engine.
        with controller.turn() as mine:
            assert mine and controller.status().served == 1  # its reply was over before the turn came
        api.join(60)
        assert len(answers) == 1 and answers[0].strip()
        # The client has its reply a moment before the server's request ends (and leaves the in-flight count).
        wait(lambda: controller.status().in_flight == 0, timeout=10)
        assert controller.status().served == 1 and controller.status().in_flight == 0
        assert ask(url).strip()  # the withdrawn turn left nothing holding the engine
    finally:
        controller.stop()
    with controller.turn() as mine:  # nothing served: the owner's at once
        assert mine
