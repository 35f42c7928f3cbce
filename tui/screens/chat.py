"""The chat screen: streamed Markdown replies, Esc to stop, history, settings, live stats.

The model runs in its own process (fitchat.llama.process). When that process dies (a crash in llama.cpp,
the out-of-memory killer), the screen stays: the reply so far is kept (saved as ``interrupted``), the
notification names the signal, and ctrl+l (or "Reload the model" in the palette) loads the model again.

F5 (or "Serve the model" in the palette) serves the loaded model over the OpenAI-compatible API on
127.0.0.1 (fitchat.serve.controller), and stops serving it; the status line shows the URL meanwhile.
The chat and the API take turns on the one engine: a reply sent while the API is answering waits
for it (Esc gives up waiting). Serving stops when the model is switched, reloaded or closed.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header
from textual.worker import get_current_worker

from fitchat.tui.coalesce import BusyPacer, Coalescer, ui_cpu_budget, usable_cores
from fitchat.tui.guard import Guarded, on
from fitchat.tui.render import rate
from fitchat.tui.screens.pick import PickScreen
from fitchat.tui.screens.settings import SettingsScreen
from fitchat.tui.widgets.chat_input import ChatInput
from fitchat.tui.widgets.chat_message import ChatMessage
from fitchat.tui.widgets.history_sidebar import HistorySidebar
from fitchat.tui.widgets.local_models import model_name
from fitchat.tui.widgets.message_log import MessageLog
from fitchat.tui.widgets.status_line import StatusLine

if TYPE_CHECKING:
    from fitchat.chat.session import ChatSession, Turn
    from fitchat.llama.engine import ChatStats, SamplingSettings
    from fitchat.llama.process import ProcessEngine
    from fitchat.model.plan import Plan

#: The status line (tok/s, sparkline) is refreshed with a screen update of the reply at most this
#: often, so that it costs no frame of its own (and by a timer after IDLE_SAMPLE_S without one).
SAMPLE_INTERVAL_S = 0.25
#: Pieces arriving closer together than this are posted to the screen as one update: each
#: update costs a layout of the screen, and the UI thread shares the GIL with llama.cpp's loop.
COALESCE_S = 0.1
#: Updates come further apart, up to this, while the UI thread uses more of a CPU than
#: ``fitchat.tui.coalesce.ui_cpu_budget`` allows (a slow machine, a long reply, every core decoding).
COALESCE_MAX_S = 1.0
#: The status line's timer refresh: no update came for longer than updates can be apart (a slow
#: start, a stall).
IDLE_SAMPLE_S = COALESCE_MAX_S + 0.5
#: The timer's period while a reply streams: the pacer's window. Each tick wakes the UI thread,
#: which takes a core from llama.cpp for a moment.
TIMER_S = 0.5
SIDEBAR_MIN_WIDTH = 100
#: The status while a reply waits for the API's request to let go of the served model.
WAITING_FOR_API = "waiting: an API request is using the model"


def export_conversation(folder: Path, stem: str, text: str) -> Path:
    """Write ``text`` to ``folder/stem.md``, or ``stem-2.md``, ``stem-3.md`` … when taken: an export never
    replaces a file, and is written whole or not at all."""
    from fitchat.chat.history import write_export

    for n in range(1, 1000):
        path = folder / (f"{stem}.md" if n == 1 else f"{stem}-{n}.md")
        try:
            return write_export(path, text)
        except FileExistsError:
            continue
    raise FileExistsError(17, "every export name is taken", str(folder / f"{stem}.md"))


def reply_meta(stats: dict[str, Any] | None, finish_reason: str | None) -> str:
    """``42 tokens · 118.3 tok/s · TTFT 0.21s`` (and ``stopped`` when cut short)."""
    bits: list[str] = []
    if stats:
        if stats.get("completion_tokens") is not None:
            bits.append(f"{stats['completion_tokens']} tokens")
        if stats.get("decode_tokens_per_s"):
            bits.append(f"{stats['decode_tokens_per_s']:.1f} tok/s")
        if stats.get("ttft_s") is not None:
            bits.append(f"TTFT {stats['ttft_s']:.2f}s")
    if finish_reason and finish_reason != "stop":
        bits.append({"cancelled": "stopped", "length": "hit max tokens"}.get(finish_reason, finish_reason))
    return " · ".join(bits)


class ChatScreen(Guarded, Screen[None]):
    """Chat with one local model; the conversation is saved to the history as it goes."""

    BINDINGS = [
        Binding("escape", "stop_or_back", "Stop/Back"),
        Binding("ctrl+n", "new_chat", "New"),
        Binding("ctrl+b", "toggle_history", "History"),
        Binding("f2", "settings", "Settings"),
        Binding("ctrl+o", "switch_model", "Model"),
        Binding("ctrl+r", "copy_reply", "Copy"),
        Binding("ctrl+g", "copy_code", "Copy code", show=False),
        Binding("ctrl+l", "reload_model", "Reload", show=False),
        Binding("f5", "toggle_serving", "Serve", show=False),
    ]
    PALETTE = (
        ("New chat", "Start a new conversation with this model", "new_chat"),
        ("Stop the reply", "Stop generating (Esc)", "stop"),
        ("Chat settings", "System prompt, temperature, top-p, top-k, seed, max tokens", "settings"),
        ("Switch model", "Continue with another model on disk", "switch_model"),
        ("Reload the model", "Load this model again (after its engine stopped)", "reload_model"),
        ("Copy the last reply", "Copy it to the clipboard", "copy_reply"),
        ("Copy a code block", "Copy one code block of the last reply", "copy_code"),
        ("Serve the model", "Start or stop serving it over the OpenAI-compatible API on 127.0.0.1 (F5)",
         "toggle_serving"),
        ("Toggle the history sidebar", "Resume (Enter), delete (d) or export (e) conversations", "toggle_history"),
    )

    class Token(Message):
        """New text of the reply: ``count`` pieces from the engine (posted from the generation thread)."""

        def __init__(self, text: str, count: int = 1) -> None:
            self.text = text
            self.count = count
            super().__init__()

    class Finished(Message):
        """The reply ended: finished, stopped or failed (``taken_back``: the refused message's text)."""

        def __init__(self, stats: ChatStats | None, error: BaseException | None, stopped: bool,
                     taken_back: str | None = None) -> None:
            self.stats = stats
            self.error = error
            self.stopped = stopped
            self.taken_back = taken_back
            super().__init__()

    def __init__(self, model: Any, conversation_id: int | None = None, context: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.context = context
        self._resume_id = conversation_id
        self.engine: ProcessEngine | None = None
        #: The engine process died; nothing is sent until the model is loaded again (ctrl+l).
        self.engine_lost = False
        self.plan: Plan | None = None
        #: The conversation (fitchat.chat.session): turns, saving, taking back a refused message. None until
        #: the first message or a resume; a new chat starts a new one (which tries the history again).
        self.session: ChatSession | None = None
        self._question: ChatMessage | None = None
        self.generating = False
        self.waiting_for_engine = False
        self._reply: ChatMessage | None = None
        self._stopped = False
        #: The reply in progress holds the engine (it may wait its turn while the model is served).
        self._engine_held = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._t_submit = 0.0
        self._t_first: float | None = None
        self._count = 0
        self._last_tick = (0.0, 0)
        self._samples: list[float] = []
        self._timer: Any = None
        self._pacer: BusyPacer | None = None
        self._update_interval = COALESCE_S

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="chat-body"):
            yield HistorySidebar(id="history")
            with Vertical(id="chat-main"):
                yield MessageLog(id="messages")
                yield ChatInput(id="chat-input")
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self._model_title()
        self.query_one(HistorySidebar).display = self.app.size.width >= SIDEBAR_MIN_WIDTH
        self.query_one(StatusLine).set_state("loading model…")
        self.query_one(ChatInput).focus()
        self.refresh_history()
        if self._resume_id is not None:
            self.resume(self._resume_id)
        self.load_engine(self.model)

    def _model_title(self) -> str:
        quant = getattr(self.model, "quant", None)
        return model_name(self.model) + (f" {quant}" if quant else "")

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def conversation_id(self) -> int | None:
        """The saved conversation on screen (None before its first message is saved)."""
        return self.session.conversation_id if self.session is not None else None

    @property
    def messages(self) -> list[Turn]:
        """The conversation's turns, as the session holds them."""
        return self.session.messages if self.session is not None else []

    # ------------------------------------------------------------------ the engine

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False)
    def load_engine(self, model: Any) -> None:
        """Plan the model for this machine, then load it into llama.cpp."""
        services = self.app.services
        self._idle.wait(30)
        old, self.engine = self.engine, None
        if old is not None:
            if services.serving_status().serving:
                services.stop_serving()
                self.app.call_from_thread(self._serving_stopped)
            services.close_engine(old)
        hw = self.app.hardware or services.detect_hardware()
        ctx = self.context or services.default_ctx()
        try:
            plan = services.local_plan(model.path, hw, ctx)
        except Exception as exc:  # noqa: BLE001 - without a plan the engine picks its own settings
            if services.rpc:  # ... but would leave the workers out: a worker not answering is the user's to know
                self.app.call_from_thread(self._load_failed, exc)
                return
            plan = None
        if getattr(self.app, "sampling", None) is None:
            try:
                self.app.sampling = services.default_sampling()
            except Exception as exc:  # noqa: BLE001
                self.app.call_from_thread(self._load_failed, exc)
                return

        def notice(text: str) -> None:
            self.app.call_from_thread(self.notify, text, title="llama.cpp")

        try:
            engine = services.load_engine(model.path, plan=plan, n_ctx=ctx, on_notice=notice)
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self._load_failed, exc)
            return
        self.app.call_from_thread(self._engine_ready, engine, plan, ctx)

    def _load_failed(self, exc: BaseException) -> None:
        from fitchat.llama.process import EngineDied

        if isinstance(exc, EngineDied):
            self._engine_lost(exc)
            return
        self.status.set_state("no model")
        self.app.report_error(exc)

    def _engine_lost(self, exc: BaseException) -> None:
        """The engine process died: say why in one line and offer the reload; the conversation stays."""
        engine, self.engine = self.engine, None
        if engine is not None:
            self.app.services.close_engine(engine)  # reaps the process
        self.engine_lost = True
        self.waiting_for_engine = False
        if self.app.services.serving_status().serving:
            self.stop_serving()
        self.status.set_state("engine stopped · ctrl+l reloads the model")
        if self.app.services.rpc:
            self._find_lost_workers(tuple(self.app.services.rpc), str(exc))  # probing takes time: not on the UI thread
            return
        self._say_engine_stopped(str(exc))

    def _say_engine_stopped(self, reason: str) -> None:
        self.notify(f"{reason}. Press ctrl+l to reload the model.", title="Engine stopped", severity="error",
                    timeout=20, markup=False)

    @work(thread=True, group="lost-workers", exit_on_error=False)
    def _find_lost_workers(self, workers: tuple[str, ...], reason: str) -> None:
        """Which of the engine's workers stopped answering; the reload then goes without them."""
        from fitchat.llama.rpc import unreachable

        gone = unreachable(workers, timeout_s=0.5)
        self.app.call_from_thread(self._report_lost_workers, workers, gone, reason)

    def _report_lost_workers(self, workers: tuple[str, ...], gone: list[str], reason: str) -> None:
        from fitchat.llama.rpc import lost_message

        if not gone:
            self._say_engine_stopped(reason)
            return
        # The reload goes without them: the workers still up and this machine.
        self.app.services.set_workers(tuple(w for w in workers if w not in gone))
        self.notify(f"{lost_message(gone)}. Press ctrl+l to reload the model without "
                    f"{'it' if len(gone) == 1 else 'them'} (the conversation stays).",
                    title="Worker lost", severity="error", timeout=20, markup=False)

    def action_reload_model(self) -> None:
        """Load the model on screen again (the way back after its engine stopped)."""
        if self.generating:
            self.notify("Wait for the reply to finish, or press Esc to stop it", severity="warning")
            return
        self.engine_lost = False
        self.switch_to(self.model)

    async def _engine_ready(self, engine: ProcessEngine, plan: Plan | None, ctx: int) -> None:
        if not self.is_attached:
            engine.close()
            return
        self.engine, self.plan = engine, plan
        self.engine_lost = False
        if self.session is not None:
            self.session.engine = engine
        self.app.settle_heap()
        status = self.status
        status.set_state("ready")
        status.set_context(status.context_used, engine.n_ctx or (plan.context if plan is not None else ctx))
        if plan is not None:
            status.set_layers(plan.gpu_layers, plan.n_layers)
        if self.waiting_for_engine:
            self.waiting_for_engine = False
            await self._start_reply()
        elif self.messages:
            self.count_context()

    @work(thread=True, exclusive=True, group="count", exit_on_error=False)
    def count_context(self) -> None:
        engine, session = self.engine, self.session
        if engine is None or session is None or not self._idle.is_set():
            return
        messages = session.chat_messages()
        if not messages:
            return
        worker = get_current_worker()
        try:
            with self.app.services.engine_turn(lambda: worker.is_cancelled) as mine:
                if not mine:
                    return
                used = int(engine.count_tokens(messages))
        except Exception:  # noqa: BLE001 - the figure is informative only
            return
        self.app.call_from_thread(lambda: self.status.set_context(used, self.status.context_size))

    # ------------------------------------------------------------------ sending and streaming

    @on(ChatInput.Submitted)
    async def _submitted(self, event: ChatInput.Submitted) -> None:
        text = event.text.strip()
        if not text:
            return
        if self.generating or self.waiting_for_engine:
            self.notify("A reply is still coming: Esc stops it", severity="warning")
            return
        if self.engine_lost:
            self.notify("The model's engine stopped: press ctrl+l to reload the model", severity="warning")
            return
        self.query_one(ChatInput).clear()
        self._question = await self._add_message("user", text)
        session = self._session()
        session.add_user_message(text)  # saved at once (one short SQLite transaction)
        # The sidebar lists the conversation again when the reply ends: now it would redraw while
        # the first tokens come (unless the model is still loading, which may take a while).
        if self.engine is None:
            self.refresh_history()
            self.waiting_for_engine = True
            self.status.set_state("loading model… (your message goes when it is ready)")
            return
        await self._start_reply()

    async def _add_message(self, role: str, text: str, meta: str = "") -> ChatMessage:
        container = self.query_one("#messages", MessageLog)
        message = ChatMessage(role, text)
        await container.mount(message)
        if meta:
            message.set_meta(meta)
        container.scroll_end(animate=False)
        return message

    async def _start_reply(self) -> None:
        self._reply = await self._add_message("assistant", "")
        self.query_one("#messages", MessageLog).anchor()
        self.generating = True
        self._stopped = False
        self._engine_held.clear()
        self._t_submit = time.perf_counter()
        self._t_first = None
        self._count = 0
        self._samples = []
        self._last_tick = (self._t_submit, 0)
        self.status.set_state("generating")
        self.status.clear_speed()
        # A blinking cursor repaints twice a second; while a reply streams that CPU is llama.cpp's.
        self.query_one(ChatInput).cursor_blink = False
        self._timer = self.set_interval(TIMER_S, self._tick_if_idle)
        self._idle.clear()
        # Each reply starts at the spacing the last one ended with: the machine has not changed.
        out = Coalescer(lambda text, count: self.post_message(self.Token(text, count)), self._update_interval)
        threads = getattr(getattr(self.engine, "threads", None), "n_threads", None)
        on_gpu = self.plan is not None and bool(self.plan.n_layers) and self.plan.gpu_layers >= self.plan.n_layers
        budget = ui_cpu_budget(threads, usable_cores(), on_gpu)
        self._pacer = BusyPacer(out, budget=budget, floor=COALESCE_S, ceiling=COALESCE_MAX_S)
        # Generation starts once the screen shows the question: laying it out and painting it
        # would otherwise take CPU from the first tokens.
        session = self._session()
        session.engine = self.engine
        if self.app.sampling is not None:
            session.set_settings(self.app.sampling)
        self.call_after_refresh(self.generate, session, out)

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def generate(self, session: ChatSession, out: Coalescer) -> None:
        """Run the engine and post its text to the screen through ``out``, never waiting for the screen.

        A piece goes out at once unless the last post was under ``out.interval`` ago; then it joins
        the next post. Slow replies show every token as it comes, fast ones in at most ~10 updates
        a second (fewer when the UI thread would use more of a CPU than its budget), which keeps
        the CPU and the GIL for llama.cpp.
        """
        worker = get_current_worker()
        error: BaseException | None = None
        engine = session.engine

        def on_piece(piece: str) -> None:
            out.add(piece)
            if (worker.is_cancelled or self._stopped) and engine is not None:
                engine.cancel()

        def holding(pieces: Iterator[str]) -> Iterator[str]:
            self._engine_held.set()  # runs once the reply has its turn on the engine
            yield from pieces

        try:
            self.app.services.stream_reply(holding(session.reply()), on_piece,
                                           cancelled=lambda: worker.is_cancelled or self._stopped)
        except Exception as exc:  # noqa: BLE001 - shown as a notification
            error = exc
        finally:
            out.flush()
            stats = session.last_stats
            self._idle.set()
            self.post_message(self.Finished(stats, error, self._stopped, session.taken_back))

    async def on_chat_screen_token(self, message: Token) -> None:
        if self._reply is None:
            return
        if self._t_first is None:
            self._t_first = time.perf_counter()
        self._count += message.count
        await self._reply.append(message.text)
        if time.perf_counter() - self._last_tick[0] >= SAMPLE_INTERVAL_S:
            self._tick()

    def _tick_if_idle(self) -> None:
        """The timer's turn: the status line when no update has refreshed it, else the pacer's reading alone."""
        self._show_turn()
        if time.perf_counter() - self._last_tick[0] >= IDLE_SAMPLE_S:
            self._tick()
        elif self._pacer is not None:
            self._pacer.sample()

    def _show_turn(self) -> None:
        """While the model is served, a reply may wait for an API request to finish: say so, not "generating"."""
        if not self.generating:
            return
        waiting = not self._engine_held.is_set()
        if waiting and self.status.serving_url and self.status.state == "generating":
            self.status.set_state(WAITING_FOR_API)
        elif not waiting and self.status.state == WAITING_FOR_API:
            self.status.set_state("generating")

    def _tick(self) -> None:
        if self._pacer is not None:
            self._pacer.sample()
        now = time.perf_counter()
        last_t, last_n = self._last_tick
        self._last_tick = (now, self._count)
        if self._t_first is None:
            return
        self._samples.append(rate(self._count - last_n, now - last_t))
        overall = rate(self._count - 1, now - self._t_first) if self._count > 1 else None
        self.status.set_speed(overall, self._t_first - self._t_submit, self._samples[-60:])

    async def on_chat_screen_finished(self, message: Finished) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._tick()
        if self._pacer is not None:
            self._update_interval = self._pacer.interval
        self._pacer = None
        reply, self._reply = self._reply, None
        try:
            if reply is not None:
                await self._end_reply(reply, message)
        finally:
            self.generating = False
            self.query_one(ChatInput).cursor_blink = True

    async def _end_reply(self, reply: ChatMessage, message: Finished) -> None:
        """Show how the reply ended; the session has saved it already (on the llama.cpp thread)."""
        from fitchat.llama.process import EngineDied

        died = isinstance(message.error, EngineDied)
        stats = message.stats.to_json() if message.stats is not None and not died else None
        finish = "cancelled" if message.stopped else (message.stats.finish_reason if message.stats else "stop")
        finish = "interrupted" if died else finish
        state = "stopped" if message.stopped else "ready"
        if died and message.error is not None:
            self._engine_lost(message.error)
            state = "engine stopped · ctrl+l reloads the model"
        elif message.error is not None:
            self.app.report_error(message.error)
        question, self._question = self._question, None
        if not reply.text:
            await reply.finish()
            await reply.remove()
            if message.taken_back is not None:
                await self._take_back(question, message.taken_back)
            self.status.set_state(state)
            self.refresh_history()  # the question was saved (or taken back)
            return
        self.refresh_history()
        await reply.finish(reply_meta(stats, finish))
        status = self.status
        status.set_state(state)
        if stats:
            status.set_speed(stats.get("decode_tokens_per_s"), stats.get("ttft_s"), self._samples[-60:])
            if stats.get("n_ctx"):
                status.set_context(int(stats.get("context_used") or 0), int(stats["n_ctx"]))
            if stats.get("gpu_layers") is not None:
                status.set_layers(int(stats["gpu_layers"]), getattr(self.plan, "n_layers", None))

    async def _take_back(self, question: ChatMessage | None, text: str) -> None:
        """The engine refused the message (too long, a template error): it leaves the screen, as it left
        the conversation, and goes back to the input to be edited (unless something new was typed there)."""
        if question is not None and question.is_attached:
            await question.remove()
        box = self.query_one(ChatInput)
        if not box.text.strip():
            box.load_text(text)
            box.move_cursor(box.document.end)

    def action_stop(self) -> None:
        if self.generating and self.engine is not None:
            self._stopped = True
            if self._engine_held.is_set():  # else it waits its turn, and the engine is the API's
                self.engine.cancel()
            self.status.set_state("stopping…")

    def action_stop_or_back(self) -> None:
        if self.generating:
            self.action_stop()
        elif self.waiting_for_engine:
            self.waiting_for_engine = False
            self.status.set_state("loading model…")
        else:
            self.app.pop_screen()

    # ------------------------------------------------------------------ history

    def _session(self) -> ChatSession:
        """The conversation on screen, started on first use (saved from its first message)."""
        if self.session is None:
            sampling = self.app.sampling or self.app.services.default_sampling()
            self.session = self.app.services.new_chat(
                engine=self.engine, model_name=model_name(self.model), quant=getattr(self.model, "quant", None),
                model_path=str(self.model.path), settings=sampling, on_warning=self._warn_unsaved,
            )
        return self.session

    def _warn_unsaved(self, text: str) -> None:
        """A save failed: told once per conversation (the session stops saving); the chat goes on.

        Called from the llama.cpp thread too (a reply is saved where it ends): ``notify`` posts a message.
        """
        self.notify(text, title="Not saved", severity="warning", timeout=10, markup=False)

    @work(thread=True, exclusive=True, group="history", exit_on_error=False)
    def refresh_history(self) -> None:
        try:
            conversations = self.app.services.history().list_conversations(limit=200)
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self.app.report_error, exc)
            return
        self.app.call_from_thread(self.query_one(HistorySidebar).show, conversations, self.conversation_id)

    @work(thread=True, exclusive=True, group="resume", exit_on_error=False)
    def resume(self, conversation_id: int) -> None:
        """Continue a saved conversation: its turns and settings as ``fitchat chat --resume`` restores them."""
        try:
            session = self.app.services.resume_chat(conversation_id, engine=self.engine, on_warning=self._warn_unsaved)
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self.app.report_error, exc)
            return
        self.app.call_from_thread(self._show_conversation, session)

    async def _show_conversation(self, session: ChatSession) -> None:
        container = self.query_one("#messages", MessageLog)
        await container.remove_children()
        session.engine = self.engine
        self.session = session
        for m in session.messages:
            if m["role"] == "system":
                continue
            meta = reply_meta(m.get("stats"), m.get("finish_reason")) if m["role"] == "assistant" else ""
            await self._add_message(m["role"], m["content"], meta)
        self.app.sampling = session.settings
        self.query_one(HistorySidebar).show(self.query_one(HistorySidebar).conversations, session.conversation_id)
        path = Path(session.model_path) if session.model_path else None
        if path is not None and path != Path(self.model.path) and path.is_file():
            self.notify(f"Continuing with {session.model_name}" + (f" {session.quant}" if session.quant else ""),
                        markup=False)
            self.switch_to(_ConversationModel(session.model_name, session.quant, path))
        elif self.engine is not None:
            self.count_context()

    @on(HistorySidebar.Resume)
    def _resume(self, event: HistorySidebar.Resume) -> None:
        if self._busy():
            return
        self.resume(event.conversation_id)
        self.query_one(ChatInput).focus()

    @on(HistorySidebar.Delete)
    async def _delete(self, event: HistorySidebar.Delete) -> None:
        if event.conversation_id == self.conversation_id and self._busy():
            return
        try:
            self.app.services.history().delete(event.conversation_id)
        except Exception as exc:  # noqa: BLE001
            self.app.report_error(exc)
            return
        if event.conversation_id == self.conversation_id:
            await self.action_new_chat()
        self.notify("Conversation deleted")
        self.refresh_history()

    @on(HistorySidebar.Export)
    def _export(self, event: HistorySidebar.Export) -> None:
        try:
            text = self.app.services.history().export_markdown(event.conversation_id)
            folder = Path(self.app.services.export_dir or Path.cwd())
            path = export_conversation(folder, f"fitchat-conversation-{event.conversation_id}", text)
        except Exception as exc:  # noqa: BLE001
            self.app.report_error(exc)
            return
        self.notify(f"Exported to {path}", markup=False)

    def _busy(self) -> bool:
        if self.generating or self.waiting_for_engine:
            self.notify("Wait for the reply to finish, or press Esc to stop it", severity="warning")
            return True
        return False

    # ------------------------------------------------------------------ actions

    async def action_new_chat(self) -> None:
        if self._busy():
            return
        await self.query_one("#messages", MessageLog).remove_children()
        self.session = None  # the next message starts a new conversation, saved again if the history allows
        self.status.set_context(0, self.status.context_size)
        self.status.clear_speed()
        self.refresh_history()
        self.query_one(ChatInput).focus()

    def action_toggle_history(self) -> None:
        sidebar = self.query_one(HistorySidebar)
        sidebar.display = not sidebar.display
        if sidebar.display:
            sidebar.query_one("#history-list").focus()
        else:
            self.query_one(ChatInput).focus()

    def action_settings(self) -> None:
        if getattr(self.app, "sampling", None) is None:
            try:
                self.app.sampling = self.app.services.default_sampling()
            except Exception as exc:  # noqa: BLE001
                self.app.report_error(exc)
                return

        services = self.app.services
        screen = SettingsScreen(self.app.sampling, workers=services.rpc)

        def saved(settings: SamplingSettings | None) -> None:
            if settings is None:
                return
            self.app.sampling = settings
            if self.session is not None:
                self.session.set_settings(settings)  # saved with the conversation (a failure is told once)
            if screen.rpc_workers is not None and tuple(screen.rpc_workers) != services.rpc:
                services.set_workers(tuple(screen.rpc_workers))
                self.notify("Settings saved; the workers are used from the next model load")
                return
            self.notify("Settings saved")

        self.app.push_screen(screen, saved)

    def action_switch_model(self) -> None:
        if not self._busy():
            self.pick_model()

    @work(thread=True, exclusive=True, group="models", exit_on_error=False)
    def pick_model(self) -> None:
        try:
            models = self.app.services.local_models()
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self.app.report_error, exc)
            return
        self.app.call_from_thread(self._show_picker, models)

    def _show_picker(self, models: list[Any]) -> None:
        if not models:
            self.notify("No models on disk", severity="warning")
            return
        labels = [f"{model_name(m)} {m.quant or ''}".strip() for m in models]

        def chosen(index: int | None) -> None:
            if index is not None:
                self.switch_to(models[index])

        self.app.push_screen(PickScreen("Switch model", labels), chosen)

    def switch_to(self, model: Any) -> None:
        """Chat with ``model`` instead: the engine is closed and the new one loads (the model picker's choice)."""
        self.model = model
        self.sub_title = self._model_title()
        self.status.set_state("loading model…")
        self.load_engine(model)

    # ------------------------------------------------------------------ serving

    def action_toggle_serving(self) -> None:
        """Serve the loaded model over the OpenAI-compatible API on 127.0.0.1, or stop serving it."""
        if self.app.services.serving_status().serving:
            self.stop_serving()
        elif self._busy():
            return  # a reply started before the server would hold the engine outside its queue
        elif self.engine is None:
            self.notify("Load the model first" if self.engine_lost else "The model is still loading",
                        severity="warning")
        else:
            path = Path(self.model.path)
            ref = getattr(self.model, "ref", None)
            model_id = ref if isinstance(ref, str) and ref else path.stem
            aliases = tuple(dict.fromkeys(a for a in (path.name, path.stem, model_name(self.model)) if a != model_id))
            self.start_serving(self.engine, model_id, aliases)

    @work(thread=True, exclusive=True, group="serve", exit_on_error=False)
    def start_serving(self, engine: ProcessEngine, model_id: str, aliases: tuple[str, ...]) -> None:
        try:
            status = self.app.services.start_serving(engine, model_id, aliases)
        except Exception as exc:  # noqa: BLE001 - a taken port range, a failed start: one line
            self.app.call_from_thread(self.app.report_error, exc)
            return
        if engine is not self.engine:  # switched meanwhile: this engine is on its way out
            self.app.services.stop_serving()
            return
        self.app.call_from_thread(self._serving_started, status.url or "")

    def _serving_started(self, url: str) -> None:
        self.status.set_serving(url)
        self.notify(f"Serving {self._model_title()} on {url}", title="Serving", timeout=10)

    @work(thread=True, exclusive=True, group="serve", exit_on_error=False)
    def stop_serving(self) -> None:
        """Stop serving (API replies in progress get a few seconds to finish, off the UI thread)."""
        self.app.services.stop_serving()
        self.app.call_from_thread(self._serving_stopped)

    def _serving_stopped(self) -> None:
        if self.is_attached and self.status.serving_url is not None:
            self.status.set_serving(None)
            self.notify("Stopped serving the model", title="Serving")

    def _last_reply(self) -> ChatMessage | None:
        replies = [m for m in self.query(ChatMessage) if m.role == "assistant" and m.text]
        return replies[-1] if replies else None

    def action_copy_reply(self) -> None:
        reply = self._last_reply()
        if reply is None:
            self.notify("No reply to copy yet", severity="warning")
        else:
            reply.action_copy()

    def action_copy_code(self) -> None:
        reply = self._last_reply()
        if reply is None:
            self.notify("No reply to copy from yet", severity="warning")
        else:
            reply.action_copy_code()

    @on(ChatMessage.CopyCode)
    def _pick_code(self, event: ChatMessage.CopyCode) -> None:
        blocks = event.blocks
        labels = [f"{i + 1}. {(b.strip().splitlines() or [''])[0][:60]}" for i, b in enumerate(blocks)]

        def chosen(index: int | None) -> None:
            if index is not None:
                self.app.copy_to_clipboard(blocks[index])
                self.notify(f"Copied code block {index + 1}")

        self.app.push_screen(PickScreen("Copy which code block?", labels), chosen)

    # ------------------------------------------------------------------ leaving

    def on_unmount(self) -> None:
        """Stop any reply and free the model on the llama.cpp thread, after the reply has ended."""
        engine = self.engine
        self.engine = None
        if engine is None:
            return
        if self.generating:
            self._stopped = True
            if self._engine_held.is_set():
                engine.cancel()
        self.app.services.close_engine(engine)  # stops serving it first


@dataclasses.dataclass(frozen=True)
class _ConversationModel:
    """The model a saved conversation was held with, when it is not in the store's list."""

    repo: str
    quant: str | None
    path: Path
    file: str = ""
    size_bytes: int = 0
