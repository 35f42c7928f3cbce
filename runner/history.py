"""Conversation history: SQLite in WAL mode under the user's data directory.

Each conversation keeps the model it was held with (file, quant), its settings, and its messages,
each assistant message with the stats of its reply. Every write is its own committed transaction,
so a process killed mid-reply (kill -9) loses at most the reply being written.

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` brings any older file up
to date when it is opened, and a file from a newer fitchat is refused rather than damaged.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from runner import paths
from runner.errors import FitchatError

ROLES = ("system", "user", "assistant")
TITLE_CHARS = 60


class HistoryError(FitchatError):
    """The history database cannot be used (newer schema, unreadable file, unknown conversation)."""


class ConversationNotFound(HistoryError):
    """No conversation has the id asked for."""


@dataclass(frozen=True)
class Message:
    """One turn of a conversation. ``stats`` (assistant replies) is ChatStats as a dict."""

    id: int
    conversation_id: int
    role: str
    content: str
    created_at: float
    stats: dict[str, Any] | None = None
    finish_reason: str | None = None

    def as_chat(self) -> dict[str, str]:
        """The ``{"role", "content"}`` dict the engine takes."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    """A conversation's header, and its messages when loaded with :meth:`History.load`."""

    id: int
    title: str
    model: str
    quant: str | None
    model_path: str | None
    settings: dict[str, Any]
    created_at: float
    updated_at: float
    message_count: int = 0
    messages: tuple[Message, ...] = field(default=())

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages as the engine takes them, in order."""
        return [m.as_chat() for m in self.messages]


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """Run DDL statements one by one (``executescript`` would commit the migration's transaction)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _migrate_v1(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE conversations (
            id          INTEGER PRIMARY KEY,
            title       TEXT    NOT NULL DEFAULT '',
            model       TEXT    NOT NULL DEFAULT '',
            quant       TEXT,
            model_path  TEXT,
            settings    TEXT    NOT NULL DEFAULT '{}',
            created_at  REAL    NOT NULL,
            updated_at  REAL    NOT NULL
        );
        CREATE TABLE messages (
            id              INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role            TEXT    NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content         TEXT    NOT NULL,
            created_at      REAL    NOT NULL,
            stats           TEXT,
            finish_reason   TEXT
        );
        CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
        CREATE INDEX conversations_by_update ON conversations(updated_at);
        """
    )


#: Schema migrations; entry ``i`` takes a file from ``user_version == i`` to ``i + 1``.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migrate_v1,)
SCHEMA_VERSION = len(MIGRATIONS)


def default_path() -> Path:
    """``$XDG_DATA_HOME/fitchat/history.sqlite3``."""
    return paths.data_dir() / "history.sqlite3"


class History:
    """The conversation store. Thread-safe: one connection, serialised by a lock."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise HistoryError(
                f"cannot open the chat history at {self.path}: {exc}; move the file aside to start a new history"
            ) from exc

    # ------------------------------------------------------------------ schema

    def _migrate(self) -> None:
        with self._lock:
            version = self.schema_version()
            if version > SCHEMA_VERSION:
                raise HistoryError(
                    f"the chat history at {self.path} was written by a newer fitchat (schema {version}, "
                    f"this one knows {SCHEMA_VERSION}); upgrade fitchat to read it"
                )
            for target in range(version, SCHEMA_VERSION):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    # Re-read inside the write lock: another process may have migrated meanwhile.
                    if self.schema_version() != target:
                        self._db.execute("ROLLBACK")
                        continue
                    MIGRATIONS[target](self._db)
                    self._db.execute(f"PRAGMA user_version = {target + 1}")
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise

    def schema_version(self) -> int:
        """The file's ``PRAGMA user_version``."""
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def journal_mode(self) -> str:
        """``wal`` once opened."""
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def _write(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(sql, params)
                self._db.execute("COMMIT")
                return cur
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def create(
        self,
        model: str,
        *,
        quant: str | None = None,
        model_path: str | Path | None = None,
        settings: dict[str, Any] | None = None,
        title: str = "",
    ) -> Conversation:
        """Start a conversation held with ``model`` (a display name, e.g. ``repo`` or the file name)."""
        now = time.time()
        cur = self._write(
            "INSERT INTO conversations (title, model, quant, model_path, settings, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (title, model, quant, str(model_path) if model_path else None, json.dumps(settings or {}), now, now),
        )
        return self.get(int(cur.lastrowid or 0))

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        stats: dict[str, Any] | None = None,
        finish_reason: str | None = None,
    ) -> Message:
        """Append a message (committed before this returns). The first user message titles the conversation."""
        if role not in ROLES:
            raise HistoryError(f"unknown message role {role!r}; use one of {', '.join(ROLES)}")
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
                    raise ConversationNotFound(f"no conversation {conversation_id}; 'fitchat chat --list' shows them")
                cur = self._db.execute(
                    "INSERT INTO messages (conversation_id, role, content, created_at, stats, finish_reason)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (conversation_id, role, content, now, json.dumps(stats) if stats is not None else None, finish_reason),
                )
                self._db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))
                if role == "user":
                    self._db.execute(
                        "UPDATE conversations SET title = ? WHERE id = ? AND title = ''",
                        (make_title(content), conversation_id),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return Message(int(cur.lastrowid or 0), conversation_id, role, content, now, stats, finish_reason)

    def delete_message(self, message_id: int) -> None:
        """Remove one message (regenerating replaces the last reply this way)."""
        self._write("DELETE FROM messages WHERE id = ?", (message_id,))

    def update(
        self, conversation_id: int, *, title: str | None = None, settings: dict[str, Any] | None = None
    ) -> Conversation:
        """Change a conversation's title or settings."""
        self.get(conversation_id)
        if title is not None:
            self._write("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))
        if settings is not None:
            self._write("UPDATE conversations SET settings = ? WHERE id = ?", (json.dumps(settings), conversation_id))
        return self.get(conversation_id)

    def delete(self, conversation_id: int) -> None:
        """Delete a conversation and its messages."""
        self.get(conversation_id)
        self._write("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # ------------------------------------------------------------------ reads

    def _conversation(self, row: sqlite3.Row | tuple[Any, ...], messages: tuple[Message, ...] = ()) -> Conversation:
        cid, title, model, quant, model_path, settings, created, updated, count = row
        try:
            parsed = json.loads(settings or "{}")
        except ValueError:
            parsed = {}
        return Conversation(cid, title, model, quant, model_path, parsed, created, updated, count, messages)

    _SELECT = (
        "SELECT c.id, c.title, c.model, c.quant, c.model_path, c.settings, c.created_at, c.updated_at,"
        " (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) FROM conversations c"
    )

    def get(self, conversation_id: int) -> Conversation:
        """A conversation's header (no messages); raises :class:`ConversationNotFound`."""
        with self._lock:
            row = self._db.execute(self._SELECT + " WHERE c.id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise ConversationNotFound(f"no conversation {conversation_id}; 'fitchat chat --list' shows them")
        return self._conversation(row)

    def list_conversations(self, limit: int | None = None) -> list[Conversation]:
        """Conversations, most recently updated first (headers only)."""
        sql = self._SELECT + " ORDER BY c.updated_at DESC, c.id DESC"
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [self._conversation(r) for r in rows]

    def load(self, conversation_id: int) -> Conversation:
        """A conversation with all its messages, in order."""
        header = self.get(conversation_id)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, conversation_id, role, content, created_at, stats, finish_reason"
                " FROM messages WHERE conversation_id = ? ORDER BY id",
                (conversation_id,),
            ).fetchall()
        messages = tuple(
            Message(mid, cid, role, content, created, json.loads(stats) if stats else None, finish)
            for mid, cid, role, content, created, stats, finish in rows
        )
        return Conversation(
            header.id, header.title, header.model, header.quant, header.model_path, header.settings,
            header.created_at, header.updated_at, len(messages), messages,
        )

    def export_markdown(self, conversation_id: int) -> str:
        """The conversation as Markdown: a header with model and settings, then each turn."""
        conv = self.load(conversation_id)
        return conversation_markdown(conv)


def make_title(text: str) -> str:
    """A one-line title from the first user message."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def conversation_markdown(conv: Conversation) -> str:
    """Render a loaded conversation as Markdown."""
    when = datetime.fromtimestamp(conv.created_at).strftime("%Y-%m-%d %H:%M")
    model = conv.model + (f" ({conv.quant})" if conv.quant else "")
    lines = [f"# {conv.title or 'Conversation'}", "", f"- Model: {model}", f"- Started: {when}"]
    for key, value in sorted(conv.settings.items()):
        if value is not None and key != "system_prompt":
            lines.append(f"- {key}: {value}")
    lines.append("")
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    for m in conv.messages:
        lines.append(f"## {names.get(m.role, m.role)}")
        lines.append("")
        lines.append(m.content.rstrip())
        if m.role == "assistant" and m.stats:
            s = m.stats
            bits = [f"{s.get('completion_tokens', '?')} tokens"]
            if s.get("decode_tokens_per_s"):
                bits.append(f"{s['decode_tokens_per_s']:.1f} tok/s")
            if s.get("ttft_s") is not None:
                bits.append(f"TTFT {s['ttft_s']:.2f} s")
            if m.finish_reason and m.finish_reason != "stop":
                bits.append(m.finish_reason)
            lines.append("")
            lines.append(f"*{', '.join(bits)}*")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
