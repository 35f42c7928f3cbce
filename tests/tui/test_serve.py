"""Serving the chat's model from the TUI (F5), against the real SmolLM2 model and the official ``openai`` client."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import openai

from fitchat.tui.screens.chat import WAITING_FOR_API, ChatScreen
from fitchat.tui.services import Services
from fitchat.tui.widgets.chat_input import ChatInput
from tests.serve.test_controller import port_of, refused
from tests.tui.test_chat import GREEDY, ask, open_chat, replies
from tests.tui_support import RecordingApp, cpu_machine, link_starter, notifications, screen_text, wait_for


def api_reply(url: str, text: str = "Say hi.", max_tokens: int = 8) -> str:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model="starter", messages=[{"role": "user", "content": text}],
                                           max_tokens=max_tokens, temperature=0)
    return reply.choices[0].message.content or ""


async def test_serve_the_loaded_model_from_the_chat(smollm2: Path, tmp_path: Path, unreachable_endpoint: str) -> None:
    link_starter(smollm2)
    app = RecordingApp(Services(hardware=cpu_machine(), endpoint=unreachable_endpoint, n_threads=1, export_dir=tmp_path))
    app.sampling = GREEDY
    async with app.run_test(size=(120, 30)) as pilot:
        screen: ChatScreen = await open_chat(pilot, app)
        await pilot.press("f5")
        await wait_for(pilot, lambda: screen.status.serving_url is not None, timeout=30, what="serving")
        url = screen.status.serving_url or ""
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert f"serving on {url}" in screen_text(app)
        assert any(url in n for n in notifications(app))
        status = app.services.serving_status()
        assert status.serving and status.url == url and status.model_id == "starter"

        # The official client gets a reply from the model the chat holds.
        assert (await asyncio.to_thread(api_reply, url)).strip()

        # The chat and the API take turns: a message sent while the API answers waits for it, then replies.
        answers: list[str] = []
        api = threading.Thread(target=lambda: answers.append(api_reply(url, "Count from 1 to 200.", 200)))
        api.start()
        await wait_for(pilot, lambda: app.services.serving_status().in_flight == 1, what="the API request")
        box = screen.query_one("#chat-input", ChatInput)
        box.load_text("What is the capital of France?")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.generating, what="the chat's reply to start")
        held = screen._engine_held.is_set()
        assert app.services.serving_status().in_flight == 1 and not held  # the reply waits its turn
        # ... and the status line says what it waits for instead of "generating" (until its turn comes).
        await wait_for(pilot, lambda: screen._engine_held.is_set() or screen.status.state == WAITING_FOR_API,
                       what="the status line to say the reply waits")
        if not screen._engine_held.is_set():
            assert WAITING_FOR_API in screen_text(app)
        await wait_for(pilot, lambda: screen.status.state == "generating" or not screen.generating, timeout=60,
                       what="the reply's turn")
        await wait_for(pilot, lambda: not screen.generating, timeout=60, what="the chat's reply")
        await asyncio.to_thread(api.join, 60)
        assert replies(screen)[-1].text.strip() and answers and answers[0].strip()
        assert not notifications(app, "error")
        assert app.services.serving_status().served == 2

        await pilot.press("f5")  # stop serving
        await wait_for(pilot, lambda: screen.status.serving_url is None, timeout=30, what="serving to stop")
        assert refused(port_of(url))
        assert "serving on" not in screen_text(app)
        assert "Stopped serving the model" in notifications(app)
        assert not app.services.serving_status().serving
        assert (await ask(pilot, screen, "Say hi.")).text.strip()  # the chat's model stayed loaded

        # Reloading the model stops serving it.
        await pilot.press("f5")
        await wait_for(pilot, lambda: screen.status.serving_url is not None, timeout=30, what="serving again")
        url = screen.status.serving_url or ""
        first = screen.engine
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: screen.engine is not None and screen.engine is not first, timeout=60,
                       what="the model to load again")
        assert screen.status.serving_url is None and not app.services.serving_status().serving
        assert refused(port_of(url))
