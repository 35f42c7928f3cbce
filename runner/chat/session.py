"""A conversation held with a loaded engine and saved to the history as it goes: the one rule for chat
turns, used by the CLI's REPL and the TUI's chat screen alike.

The user's message is committed before the reply starts and the reply when it ends (a stopped
reply is kept with what was written, marked ``cancelled``), so a crash mid-reply loses at most
that reply. When the engine process dies mid-reply (:class:`fitchat.llama.process.EngineDied`), the
reply so far is kept too, marked ``interrupted``, and the error goes on to the caller. A save that
fails (a full disk, a read-only or locked file) costs the history, not the chat: the user is warned
once and the conversation goes on unsaved. A message the engine refuses
before replying (it does not fit the context, the template fails) is taken back, from the history
too, so it can be edited and sent again. A session may start before its engine is loaded (the TUI
saves the question while the model loads) and may change engines (the TUI switches models).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypeAlias, TypedDict, TypeVar

from fitchat.chat.history import Conversation, History
from fitchat.errors import HistoryError
from fitchat.llama.engine import ChatEngine, ChatStats, EngineError, InvalidSampling, SamplingSettings
from fitchat.llama.process import EngineDied, ProcessEngine

#: Either engine: in this process, or in its own (fitchat.llama.process); the same public methods.
Engine: TypeAlias = ChatEngine | ProcessEngine

_T = TypeVar("_T")


class _TurnText(TypedDict):
    role: str
    content: str


class Turn(_TurnText, total=False):
    """One message of a session: ``id`` once saved; ``stats`` (ChatStats as a dict) and ``finish_reason``
    for replies."""

    id: int
    stats: dict[str, Any] | None
    finish_reason: str | None


class ChatSession:
    """Messages, settings and the engine; saved to ``history`` when one is given."""

    def __init__(
        self,
        engine: Engine | None,
        history: History | None = None,
        *,
        settings: SamplingSettings | None = None,
        model_name: str = "",
        quant: str | None = None,
        model_path: str | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.history = history
        self.on_warning = on_warning
        #: Why the history stopped being written (None while it is, or when there is none).
        self.unsaved_reason: str | None = None
        self.settings = settings or SamplingSettings()
        self.model_path = model_path or (engine.path if engine is not None else "")
        self.model_name = model_name or self.model_path.rsplit("/", 1)[-1]
        self.quant = quant
        self.messages: list[Turn] = []
        self.conversation_id: int | None = None
        self.started_at = time.time()
        #: The text of the message the last reply took back (the engine refused it), else None.
        self.taken_back: str | None = None
        self._regen_attempt = 0

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def resume(
        cls,
        engine: Engine | None,
        history: History,
        conversation_id: int,
        *,
        on_warning: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> ChatSession:
        """Continue a saved conversation with its settings (``overrides`` replace single settings).

        Saved settings that are no longer valid give way to the defaults, with a warning.
        """
        conv = history.load(conversation_id)
        try:
            settings = SamplingSettings.from_json(conv.settings) if conv.settings else SamplingSettings()
        except InvalidSampling as exc:
            settings = SamplingSettings()
            if on_warning is not None:
                on_warning(f"the saved settings of conversation {conv.id} are not usable ({exc}); using the defaults")
        known = {k: v for k, v in overrides.items() if v is not None}
        if known:
            settings = replace(settings, **known)
        session = cls(engine, history, settings=settings, model_name=conv.model, quant=conv.quant,
                      model_path=conv.model_path, on_warning=on_warning)
        session.conversation_id = conv.id
        session.started_at = conv.created_at
        session.messages = [_turn(m.role, m.content, m.id, m.stats, m.finish_reason) for m in conv.messages]
        return session

    @property
    def unanswered(self) -> bool:
        """True when the last message is the user's with no reply (a crash or kill mid-reply)."""
        return bool(self.messages) and self.messages[-1]["role"] == "user"

    @property
    def last_stats(self) -> ChatStats | None:
        return self.engine.last_stats if self.engine is not None else None

    def set_system(self, text: str | None) -> None:
        """Set (or with None/empty, remove) the system prompt for the next replies."""
        self.set_settings(replace(self.settings, system_prompt=text or None))

    def set_settings(self, settings: SamplingSettings) -> None:
        """Use ``settings`` for the next replies and save them with the conversation."""
        changed = settings != self.settings
        self.settings = settings
        if changed:
            self._save_settings()

    def clear(self) -> None:
        """Start a new conversation (the old one stays in the history); settings carry over."""
        self.messages = []
        self.conversation_id = None

    def export_markdown(self) -> str:
        """This conversation as Markdown (from the history when it is saved there, else from memory)."""
        if self.history is not None and self.conversation_id is not None:
            try:
                return self.history.export_markdown(self.conversation_id)
            except HistoryError:
                pass  # what this session holds is the whole conversation
        from fitchat.chat.history import Message, conversation_markdown, make_title

        msgs = tuple(Message(0, 0, m["role"], m["content"], self.started_at) for m in self.messages)
        first = next((m["content"] for m in self.messages if m["role"] == "user"), "")
        conv = Conversation(0, make_title(first) if first else "", self.model_name, self.quant, self.model_path,
                            self.settings.to_json(), self.started_at, self.started_at, len(msgs), msgs)
        return conversation_markdown(conv)

    # ------------------------------------------------------------------ saving

    def _save(self, write: Callable[[History], _T]) -> _T | None:
        """Run one history write; on failure warn once, stop saving and go on (returns None)."""
        history = self.history
        if history is None:
            return None
        try:
            return write(history)
        except HistoryError as exc:
            self.history = None
            self.unsaved_reason = str(exc)
            if self.on_warning is not None:
                self.on_warning(f"{exc}; this chat goes on, unsaved")
            return None

    def _ensure_conversation(self) -> int | None:
        if self.history is not None and self.conversation_id is None:
            conv = self._save(lambda h: h.create(
                self.model_name, quant=self.quant, model_path=self.model_path or None, settings=self.settings.to_json()
            ))
            self.conversation_id = conv.id if conv is not None else None
        return self.conversation_id if self.history is not None else None

    def _save_settings(self) -> None:
        cid = self.conversation_id
        if cid is not None:
            self._save(lambda h: h.update(cid, settings=self.settings.to_json()))

    # ------------------------------------------------------------------ turns

    def chat_messages(self) -> list[dict[str, str]]:
        """The conversation as the engine takes it."""
        return [{"role": m["role"], "content": m["content"]} for m in self.messages]

    def _engine(self) -> Engine:
        if self.engine is None:
            raise EngineError("no model is loaded yet")
        return self.engine

    def add_user_message(self, text: str) -> None:
        """Add the user's message and save it at once (before any reply: a crash mid-reply keeps it)."""
        cid = self._ensure_conversation()
        entry = _turn("user", text)
        if cid is not None:
            saved = self._save(lambda h: h.add_message(cid, "user", text))
            if saved is not None:
                entry["id"] = saved.id
        self.messages.append(entry)
        self._regen_attempt = 0

    def send(self, text: str) -> Iterator[str]:
        """Add the user's message (saved at once) and stream the reply (saved when it ends)."""
        self.add_user_message(text)
        return self.reply()

    def reply(self) -> Iterator[str]:
        """Stream the reply to the user's last message (saved when it ends).

        When the engine refuses the turn before replying (the message does not fit the context,
        the template fails), that message is taken back (:attr:`taken_back`) so it can be edited
        and sent again.
        """
        engine = self._engine()
        entry = self.messages[-1] if self.unanswered else None
        self.taken_back = None
        return self._reply(engine, engine.stream(self.chat_messages(), self.settings), taken_back=entry)

    def regenerate(self) -> Iterator[str]:
        """Replace the last reply with a new one (or answer an unanswered last message)."""
        engine = self._engine()
        while self.messages and self.messages[-1]["role"] == "assistant":
            old_id = self.messages.pop().get("id")
            if isinstance(old_id, int):
                self._save(functools.partial(History.delete_message, message_id=old_id))
        self._regen_attempt += 1
        self.taken_back = None
        pieces = engine.regenerate(self.chat_messages(), self.settings, attempt=self._regen_attempt)
        return self._reply(engine, pieces)

    def _reply(self, engine: Engine, pieces: Iterator[str], taken_back: Turn | None = None) -> Iterator[str]:
        parts: list[str] = []
        before = engine.last_stats
        try:
            for piece in pieces:
                parts.append(piece)
                yield piece
        except EngineDied:
            self._record("".join(parts), None, finish="interrupted")
            raise
        except Exception:
            if not parts and taken_back is not None and engine.last_stats is before:
                self._take_back(taken_back)
            raise
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
            if engine.last_stats is not before:
                self._record("".join(parts), engine.last_stats)

    def _take_back(self, entry: Turn) -> None:
        if self.messages and self.messages[-1] is entry:
            self.messages.pop()
            self.taken_back = entry["content"]
        message_id = entry.get("id")
        if isinstance(message_id, int):
            self._save(lambda h: h.delete_message(message_id))

    def _record(self, text: str, stats: ChatStats | None, finish: str | None = None) -> None:
        finish = finish or (stats.finish_reason if stats else "stop")
        if not text and finish in ("cancelled", "interrupted"):
            return  # stopped before any text: nothing to keep
        stats_json = stats.to_json() if stats else None
        entry = _turn("assistant", text, stats=stats_json, finish_reason=finish)
        cid = self.conversation_id
        if cid is not None:
            saved = self._save(lambda h: h.add_message(cid, "assistant", text, stats=stats_json, finish_reason=finish))
            if saved is not None:
                entry["id"] = saved.id
        self.messages.append(entry)


def _turn(role: str, content: str, message_id: int | None = None, stats: dict[str, Any] | None = None,
          finish_reason: str | None = None) -> Turn:
    turn: Turn = {"role": role, "content": content}
    if message_id is not None:
        turn["id"] = message_id
    if stats is not None:
        turn["stats"] = stats
    if finish_reason is not None:
        turn["finish_reason"] = finish_reason
    return turn
