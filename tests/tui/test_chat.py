"""Chat flows in the TUI, driven with Pilot, against the real SmolLM2 model through llama.cpp."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from pathlib import Path

import pytest

from fitchat.chat.history import History
from fitchat.chat.session import ChatSession
from fitchat.llama.engine import ContextOverflow, SamplingSettings
from fitchat.tui.app import FitchatApp
from fitchat.tui.screens.chat import ChatScreen
from fitchat.tui.screens.pick import PickScreen
from fitchat.tui.screens.settings import SettingsScreen
from fitchat.tui.services import Services
from fitchat.tui.widgets.chat_message import ChatMessage
from fitchat.tui.widgets.history_sidebar import HistorySidebar
from fitchat.tui.widgets.local_models import LocalModels
from tests.tui_support import RecordingApp, cpu_machine, link_starter, notifications, screen_text, wait_for

GREEDY = SamplingSettings(temperature=0.0, seed=1, max_tokens=24)


def make_app(tmp_path: Path, endpoint: str, sampling: SamplingSettings = GREEDY) -> FitchatApp:
    services = Services(hardware=cpu_machine(), endpoint=endpoint, n_threads=1, export_dir=tmp_path)
    app = RecordingApp(services)
    app.sampling = sampling
    return app


async def open_chat(pilot, app: FitchatApp) -> ChatScreen:
    """From the home screen: Enter on the model on disk, then wait for llama.cpp to load it."""
    await wait_for(pilot, lambda: app.screen.query(LocalModels) and app.screen.query_one(LocalModels).row_count == 1,
                   what="the model on disk")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat screen")
    screen = app.screen
    await wait_for(pilot, lambda: screen.engine is not None, timeout=60, what="the model to load")
    return screen


def replies(screen: ChatScreen) -> list[ChatMessage]:
    return [m for m in screen.query(ChatMessage) if m.role == "assistant"]


async def ask(pilot, screen: ChatScreen, text: str, timeout: float = 60) -> ChatMessage:
    """Type a question in the input, send it, and wait for the whole reply."""
    before = len(replies(screen))
    screen.query_one("#chat-input").focus()
    await pilot.pause()
    await pilot.press(*text)
    await pilot.press("enter")
    await wait_for(pilot, lambda: len(replies(screen)) > before and not screen.generating, timeout=timeout,
                   what="the reply")
    return replies(screen)[-1]


async def test_choose_local_model_chat_and_save(smollm2: Path, tmp_path: Path, unreachable_endpoint: str) -> None:
    link_starter(smollm2)
    app = make_app(tmp_path, unreachable_endpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_chat(pilot, app)
        assert "SmolLM2-135M-Instruct" in screen.sub_title
        # With the model ready the heap was collected and frozen, so that later full collections
        # (which hold the GIL) scan only what comes after.
        assert gc.get_freeze_count() > 0
        # The prompt box takes several lines: Ctrl+J adds one, Enter sends.
        box = screen.query_one("#chat-input")
        await pilot.press("a", "ctrl+j", "b")
        assert box.text == "a\nb"
        box.clear()
        reply = await ask(pilot, screen, "What is the capital of France?")
        assert reply.text.strip(), "the model replied nothing"
        # What streamed in is what the Markdown widget shows and what the history kept.
        assert reply.markdown.source == reply.text
        history = app.services.history()
        conv = history.load(screen.conversation_id)
        assert [m.role for m in conv.messages] == ["user", "assistant"]
        assert conv.messages[0].content == "What is the capital of France?"
        assert conv.messages[1].content == reply.text
        assert conv.messages[1].stats["completion_tokens"] >= 1
        assert conv.messages[1].finish_reason in ("stop", "length")
        text = screen_text(app)
        assert "tok/s" in text and "TTFT" in text and "/4,096" in text
        first_words = reply.text.split()[0]
        assert first_words in text
        # The same text goes to the clipboard.
        await pilot.press("ctrl+r")
        assert app.clipboard == reply.text
        # A follow-up keeps the conversation.
        await ask(pilot, screen, "And of Italy?")
        assert len(history.load(screen.conversation_id).messages) == 4
    assert gc.get_freeze_count() == 0  # the app gave the frozen objects back when it closed


async def test_escape_stops_the_reply(smollm2: Path, tmp_path: Path, unreachable_endpoint: str) -> None:
    link_starter(smollm2)
    app = make_app(tmp_path, unreachable_endpoint, dataclasses.replace(GREEDY, max_tokens=2000))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_chat(pilot, app)
        await pilot.press(*"Write a very long story about a dragon who learns to cook.")
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(screen.query(ChatMessage).last().text) >= 30, what="a few tokens")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.generating, timeout=5, what="the reply to stop")
        assert screen.app.screen is screen, "Esc while streaming must stop, not leave"
        reply = [m for m in screen.query(ChatMessage) if m.role == "assistant"][-1]
        assert reply.text.strip()
        saved = app.services.history().load(screen.conversation_id).messages[-1]
        assert saved.finish_reason == "cancelled"
        assert saved.content == reply.text
        assert saved.stats["completion_tokens"] < 2000
        assert "stopped" in screen_text(app)
        # The engine is usable again at once.
        app.sampling = GREEDY
        again = await ask(pilot, screen, "Say hi.")
        assert again.text.strip()
        # Esc with nothing streaming goes back home.
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ChatScreen), what="the home screen")


async def test_history_resume_delete_export(smollm2: Path, tmp_path: Path, unreachable_endpoint: str) -> None:
    starter = link_starter(smollm2)
    with History() as history:
        old = history.create("HuggingFaceTB/SmolLM2-135M-Instruct", quant="Q4_1", model_path=starter,
                             settings={"temperature": 0.0, "seed": 1, "max_tokens": 40})
        history.add_message(old.id, "user", "Name a colour.")
        history.add_message(old.id, "assistant", "Blue.", stats={"completion_tokens": 2, "decode_tokens_per_s": 50.0,
                                                                 "ttft_s": 0.1}, finish_reason="stop")
    app = make_app(tmp_path, unreachable_endpoint)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_chat(pilot, app)
        sidebar = screen.query_one(HistorySidebar)
        assert sidebar.display, "the sidebar shows on a wide terminal"
        await wait_for(pilot, lambda: len(sidebar.conversations) == 1, what="the saved conversation")
        sidebar.query_one("#history-list").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.conversation_id == old.id and len(screen.messages) == 2,
                       what="the conversation to resume")
        shown = [(m.role, m.text) for m in screen.query(ChatMessage)]
        assert shown == [("user", "Name a colour."), ("assistant", "Blue.")]
        # What the screen continues is what `fitchat chat --resume` continues: the same turns and settings.
        restored = ChatSession.resume(None, app.services.history(), old.id)
        assert screen.messages == restored.messages and app.sampling == restored.settings
        assert app.sampling == SamplingSettings(temperature=0.0, seed=1, max_tokens=40)
        assert "2 tokens · 50.0 tok/s" in screen_text(app)
        await ask(pilot, screen, "Another one?")
        assert len(app.services.history().load(old.id).messages) == 4
        # Export, then delete.
        sidebar.query_one("#history-list").focus()
        await pilot.press("e")
        exported = tmp_path / f"fitchat-conversation-{old.id}.md"
        await wait_for(pilot, exported.exists, what="the export")
        body = exported.read_text()
        assert "Name a colour." in body and "Another one?" in body
        await pilot.press("d")
        await wait_for(pilot, lambda: not sidebar.conversations, what="the deletion")
        assert app.services.history().list_conversations() == []
        assert not list(screen.query(ChatMessage)), "deleting the open conversation starts a new one"


async def test_a_refused_message_is_taken_back_as_in_the_cli(smollm2: Path, tmp_path: Path,
                                                             unreachable_endpoint: str) -> None:
    link_starter(smollm2)
    app = make_app(tmp_path, unreachable_endpoint)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_chat(pilot, app)
        first = await ask(pilot, screen, "Hi")
        too_long = "word " * 5000  # more tokens than the context keeps for a message
        box = screen.query_one("#chat-input")
        box.load_text(too_long)
        box.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("the message takes" in m for m in notifications(app))
                       and not screen.generating, what="the refusal")
        # Gone from the conversation, the history and the screen; back in the input to be edited.
        assert [m["role"] for m in screen.messages] == ["user", "assistant"]
        saved = app.services.history().load(screen.conversation_id)
        assert [(m.role, m.content) for m in saved.messages] == [("user", "Hi"), ("assistant", first.text)]
        assert [(m.role, m.text) for m in screen.query(ChatMessage)] == [("user", "Hi"), ("assistant", first.text)]
        assert box.text == too_long.strip()
        # The CLI's session, on the same engine and conversation, does the same.
        cli = ChatSession.resume(screen.engine, app.services.history(), screen.conversation_id)

        def refused() -> None:
            with pytest.raises(ContextOverflow):
                "".join(cli.send(too_long.strip()))

        await asyncio.to_thread(app.services.on_llama_thread, refused)
        assert cli.taken_back == too_long.strip() and cli.messages == screen.messages
        assert len(app.services.history().load(screen.conversation_id).messages) == 2
        # The next message goes as usual.
        box.clear()
        again = await ask(pilot, screen, "Bye")
        assert again.text.strip() and len(screen.messages) == 4


async def test_settings_modal_and_code_block_copy(smollm2: Path, tmp_path: Path, unreachable_endpoint: str) -> None:
    starter = link_starter(smollm2)
    reply = "Two ways:\n\n```python\nprint('one')\n```\n\nor\n\n```sh\necho two\n```\n"
    with History() as history:
        conv = history.create("HuggingFaceTB/SmolLM2-135M-Instruct", quant="Q4_1", model_path=starter)
        history.add_message(conv.id, "user", "Show me code.")
        history.add_message(conv.id, "assistant", reply, finish_reason="stop")
    app = make_app(tmp_path, unreachable_endpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_chat(pilot, app)
        screen.resume(conv.id)
        await wait_for(pilot, lambda: len(screen.messages) == 2, what="the conversation")
        # Copy the second of two code blocks through the picker.
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, PickScreen), what="the code block picker")
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.clipboard == "echo two\n", what="the copy")
        # Settings: a bad number is refused with a message, a good one is kept.
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), what="the settings dialog")
        dialog = app.screen
        dialog.query_one("#set-temperature").value = "warm"
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SettingsScreen)
        assert any("Temperature must be a number" in m for m in notifications(app))
        # The RPC workers field: bad input is one line, and nothing changes.
        dialog.query_one("#set-temperature").value = "0.8"
        dialog.query_one("#set-rpc").value = "nohost"
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SettingsScreen)
        assert any("is not HOST:PORT" in m for m in notifications(app))
        dialog.query_one("#set-rpc").value = "x:²"  # a digit to str.isdigit, not to int(): the usual words
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SettingsScreen)
        assert any("worker 'x:²': the port must be a number from 1 to 65535" in m for m in notifications(app))
        assert app.services.rpc == ()
        dialog.query_one("#set-rpc").value = ""
        # A value out of range is refused by the settings themselves, told by its label; nothing changes.
        before = app.sampling
        dialog.query_one("#set-temperature").value = "0.3"
        dialog.query_one("#set-repeat_penalty").value = "0"
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SettingsScreen)
        assert "Repeat penalty must be more than 0 (1 turns it off)" in notifications(app)
        assert app.sampling is before
        dialog.query_one("#set-repeat_penalty").value = "1.1"
        dialog.query_one("#set-temperature").value = "0.3"
        dialog.query_one("#set-seed").value = "7"
        dialog.query_one("#system-prompt").text = "Answer in one word."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen, what="the dialog to close")
        assert app.sampling.temperature == 0.3 and app.sampling.seed == 7
        assert app.sampling.system_prompt == "Answer in one word."
        assert app.services.history().get(conv.id).settings["seed"] == 7


async def test_model_switch_and_load_error_is_a_notification(smollm2: Path, tmp_path: Path,
                                                             unreachable_endpoint: str) -> None:
    link_starter(smollm2)
    app = make_app(tmp_path, unreachable_endpoint)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_chat(pilot, app)
        first = screen.engine
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, PickScreen), what="the model picker")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.engine is not None and screen.engine is not first, timeout=60,
                       what="the model to reload")
        # A file llama.cpp cannot load ends in a notification; the app keeps running.
        bad = tmp_path / "broken.gguf"
        bad.write_bytes(b"GGUF" + b"\0" * 64)
        screen.switch_to(dataclasses.replace(screen.model, path=bad, quant="Q4_1"))
        await wait_for(pilot, lambda: bool(notifications(app, "error")), what="the error")
        assert app.is_running
        assert screen.engine is None


async def test_engine_killed_mid_reply_keeps_the_app_and_the_reply_and_offers_a_reload(
    smollm2: Path, tmp_path: Path, unreachable_endpoint: str
) -> None:
    import os
    import signal

    link_starter(smollm2)
    app = make_app(tmp_path, unreachable_endpoint, dataclasses.replace(GREEDY, max_tokens=2000))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_chat(pilot, app)
        engine = screen.engine
        assert engine is not None and engine.pid != os.getpid()  # the model runs in its own process
        await pilot.press(*"Write a very long story about a dragon who learns to cook.")
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(screen.query(ChatMessage).last().text) >= 30, what="a few tokens")
        os.kill(engine.pid, signal.SIGKILL)
        await wait_for(pilot, lambda: not screen.generating, timeout=10, what="the reply to end")
        assert app.is_running and app.screen is screen
        lost = notifications(app, "error")
        assert len(lost) == 1 and "SIGKILL" in lost[0] and "ctrl+l" in lost[0] and "\n" not in lost[0]
        assert screen.engine is None and screen.engine_lost
        reply = replies(screen)[-1]
        assert reply.text.strip()
        saved = app.services.history().load(screen.conversation_id).messages
        assert [m.role for m in saved] == ["user", "assistant"]
        assert saved[-1].finish_reason == "interrupted" and saved[-1].content == reply.text
        assert "interrupted" in screen_text(app)

        await pilot.press("ctrl+l")  # the reload
        await wait_for(pilot, lambda: screen.engine is not None, timeout=60, what="the model to load again")
        assert screen.engine.pid != engine.pid and not screen.engine_lost
        app.sampling = GREEDY
        again = await ask(pilot, screen, "Say hi.")
        assert again.text.strip()
        assert len(app.services.history().load(screen.conversation_id).messages) == 4


async def test_worker_lost_mid_reply_keeps_the_chat_and_reloads_without_it(
    rpc_build: None, smollm2: Path, tmp_path: Path, unreachable_endpoint: str
) -> None:
    from tests.rpc_support import start_worker

    link_starter(smollm2)
    keep, doomed = start_worker(), start_worker()
    try:
        app = make_app(tmp_path, unreachable_endpoint, dataclasses.replace(GREEDY, max_tokens=300))
        app.services.set_workers((keep.endpoint, doomed.endpoint))
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await open_chat(pilot, app)
            names = dict(screen.engine.devices)
            assert names[f"RPC0[{keep.endpoint}]"] > 0 and names[f"RPC0[{doomed.endpoint}]"] > 0
            await pilot.press(*"Write a very long story about a dragon who learns to cook.")
            await pilot.press("enter")
            await wait_for(pilot, lambda: len(screen.query(ChatMessage).last().text) >= 20, what="a few tokens")
            doomed.kill()
            await wait_for(pilot, lambda: not screen.generating, timeout=30, what="the reply to end")
            assert app.is_running and app.screen is screen
            # Which worker went is found off the UI thread (each probe may wait for a timeout), then said.
            await wait_for(pilot, lambda: bool(notifications(app, "error")), timeout=10, what="the worker-lost notice")
            lost = notifications(app, "error")
            assert len(lost) == 1 and f"worker {doomed.endpoint} stopped answering" in lost[0], lost
            assert "ctrl+l" in lost[0] and "\n" not in lost[0]
            assert app.services.rpc == (keep.endpoint,)
            assert replies(screen)[-1].text.strip()  # the reply so far stays
            await pilot.press("ctrl+l")  # the reload, on the worker still up
            await wait_for(pilot, lambda: screen.engine is not None, timeout=60, what="the model to load again")
            assert dict(screen.engine.devices).get(f"RPC0[{keep.endpoint}]") == 31
            app.sampling = GREEDY
            assert (await ask(pilot, screen, "Say hi.")).text.strip()
            assert len(app.services.history().load(screen.conversation_id).messages) == 4
    finally:
        keep.stop()
        doomed.kill()


async def test_a_worker_not_running_at_load_is_one_line_not_a_load_without_it(
    rpc_build: None, smollm2: Path, tmp_path: Path, unreachable_endpoint: str
) -> None:
    from tests.rpc_support import free_port

    link_starter(smollm2)
    app = make_app(tmp_path, unreachable_endpoint)
    missing = f"127.0.0.1:{free_port()}"
    app.services.set_workers((missing,))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.screen.query(LocalModels) and app.screen.query_one(LocalModels).row_count == 1,
                       what="the model on disk")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat screen")
        screen = app.screen
        await wait_for(pilot, lambda: any(missing in m for m in notifications(app, "error")), timeout=30,
                       what="the line naming the worker")
        await pilot.pause(0.5)
        assert screen.engine is None  # no load on this machine alone, behind the user's back
        assert screen.status.state == "no model"
        lines = [m for m in notifications(app, "error") if missing in m]
        assert all("\n" not in m for m in lines), lines
