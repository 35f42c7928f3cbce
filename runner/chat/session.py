"""A conversation held with a loaded engine and saved to the history as it goes.

The user's message is committed before the reply starts and the reply when it ends (a stopped
reply is kept with what was written, marked ``cancelled``), so a crash mid-reply loses at most
that reply. A save that fails (a full disk, a read-only or locked file) costs the history, not the
chat: the user is warned once and the conversation goes on unsaved. The CLI's REPL drives chats
through this class.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

from fitchat.chat.history import Conversation, History
from fitchat.errors import HistoryError
from fitchat.llama.engine import ChatEngine, ChatStats, SamplingSettings

_T = TypeVar("_T")


class ChatSession:
    """Messages, settings and the engine; saved to ``history`` when one is given."""

    def __init__(
        self,
        engine: ChatEngine,
        history: History | None = None,
        *,
        settings: SamplingSettings | None = None,
        model_name: str = "",
        quant: str | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.history = history
        self.on_warning = on_warning
        #: Why the history stopped being written (None while it is, or when there is none).
        self.unsaved_reason: str | None = None
        self.settings = settings or SamplingSettings()
        self.model_name = model_name or engine.path.rsplit("/", 1)[-1]
        self.quant = quant
        self.messages: list[dict[str, Any]] = []  # {"role", "content", "id"?}
        self.conversation_id: int | None = None
        self.started_at = time.time()
        self._regen_attempt = 0

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def resume(cls, engine: ChatEngine, history: History, conversation_id: int, **overrides: Any) -> ChatSession:
        """Continue a saved conversation with its settings (``overrides`` replace single settings)."""
        conv = history.load(conversation_id)
        settings = SamplingSettings.from_json(conv.settings) if conv.settings else SamplingSettings()
        known = {k: v for k, v in overrides.items() if v is not None and k != "on_warning"}
        if known:
            settings = replace(settings, **known)
        session = cls(engine, history, settings=settings, model_name=conv.model, quant=conv.quant,
                      on_warning=overrides.get("on_warning"))
        session.conversation_id = conv.id
        session.messages = [{"role": m.role, "content": m.content, "id": m.id} for m in conv.messages]
        return session

    @property
    def unanswered(self) -> bool:
        """True when the last message is the user's with no reply (a crash or kill mid-reply)."""
        return bool(self.messages) and self.messages[-1]["role"] == "user"

    @property
    def last_stats(self) -> ChatStats | None:
        return self.engine.last_stats

    def set_system(self, text: str | None) -> None:
        """Set (or with None/empty, remove) the system prompt for the next replies."""
        self.settings = replace(self.settings, system_prompt=text or None)
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
        conv = Conversation(0, make_title(first) if first else "", self.model_name, self.quant, self.engine.path,
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
                self.model_name, quant=self.quant, model_path=self.engine.path, settings=self.settings.to_json()
            ))
            self.conversation_id = conv.id if conv is not None else None
        return self.conversation_id if self.history is not None else None

    def _save_settings(self) -> None:
        cid = self.conversation_id
        if cid is not None:
            self._save(lambda h: h.update(cid, settings=self.settings.to_json()))

    # ------------------------------------------------------------------ turns

    def _chat_messages(self) -> list[dict[str, str]]:
        return [{"role": m["role"], "content": m["content"]} for m in self.messages]

    def send(self, text: str) -> Iterator[str]:
        """Add the user's message (saved at once) and stream the reply (saved when it ends).

        When the engine refuses the turn before replying (the message does not fit the context,
        the template fails), the user's message is taken back so it can be edited and sent again.
        """
        cid = self._ensure_conversation()
        entry: dict[str, Any] = {"role": "user", "content": text}
        if cid is not None:
            saved = self._save(lambda h: h.add_message(cid, "user", text))
            if saved is not None:
                entry["id"] = saved.id
        self.messages.append(entry)
        self._regen_attempt = 0
        return self._reply(self.engine.stream(self._chat_messages(), self.settings), taken_back=entry)

    def regenerate(self) -> Iterator[str]:
        """Replace the last reply with a new one (or answer an unanswered last message)."""
        while self.messages and self.messages[-1]["role"] == "assistant":
            old_id = self.messages.pop().get("id")
            if isinstance(old_id, int):
                self._save(functools.partial(History.delete_message, message_id=old_id))
        self._regen_attempt += 1
        return self._reply(self.engine.regenerate(self._chat_messages(), self.settings, attempt=self._regen_attempt))

    def _reply(self, pieces: Iterator[str], taken_back: dict[str, Any] | None = None) -> Iterator[str]:
        parts: list[str] = []
        before = self.engine.last_stats
        try:
            for piece in pieces:
                parts.append(piece)
                yield piece
        except Exception:
            if not parts and taken_back is not None and self.engine.last_stats is before:
                self._take_back(taken_back)
            raise
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
            if self.engine.last_stats is not before:
                self._record("".join(parts))

    def _take_back(self, entry: dict[str, Any]) -> None:
        if self.messages and self.messages[-1] is entry:
            self.messages.pop()
        message_id = entry.get("id")
        if isinstance(message_id, int):
            self._save(lambda h: h.delete_message(message_id))

    def _record(self, text: str) -> None:
        stats = self.engine.last_stats
        finish = stats.finish_reason if stats else "stop"
        if not text and finish == "cancelled":
            return  # stopped before any text: nothing to keep
        entry: dict[str, Any] = {"role": "assistant", "content": text}
        cid = self.conversation_id
        if cid is not None:
            saved = self._save(lambda h: h.add_message(
                cid, "assistant", text, stats=stats.to_json() if stats else None, finish_reason=finish
            ))
            if saved is not None:
                entry["id"] = saved.id
        self.messages.append(entry)
