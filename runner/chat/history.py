"""Conversation history: SQLite in WAL mode under the user's data directory.

Each conversation keeps the model it was held with (file, quant), its settings, and its messages,
each assistant message with the stats of its reply. Every write is its own committed transaction,
so a process killed mid-reply (kill -9) loses at most the reply being written.

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` brings any older file up
to date when it is opened, and a file from a newer fitchat is refused rather than damaged.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from fitchat import paths
from fitchat.errors import HistoryError
from fitchat.format import printable

__all__ = ["Conversation", "ConversationNotFound", "History", "HistoryError", "Message"]

ROLES = ("system", "user", "assistant")
TITLE_CHARS = 60

_T = TypeVar("_T")

# SQLite's primary result codes (the low byte of ``sqlite_errorcode``).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_NOMEM, _SQLITE_READONLY = 3, 5, 6, 7, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_AUTH, _SQLITE_NOTADB = 10, 11, 13, 14, 23, 26


def history_error(exc: BaseException, path: Path, doing: str) -> HistoryError:
    """A :class:`HistoryError` for a failure of SQLite (or of the file system) while ``doing`` something,
    with advice that fits the cause: a full disk, a read-only file, a lock, a damaged file differ."""
    where = printable(path, 200, one_line=True)
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    detail = printable(exc, 120, one_line=True)
    if primary == _SQLITE_FULL or "disk is full" in text or getattr(exc, "errno", None) == 28:
        cause = f"the disk holding {where} is full; free some space"
    elif primary == _SQLITE_READONLY or "readonly" in text or "read-only" in text:
        cause = f"{where} is read-only; make it and its folder writable"
    elif primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
        cause = f"{where} is locked by another program (another fitchat?); try again once it is done"
    elif primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text or "not a database" in text:
        cause = (f"{where} is damaged ({detail}); move the file aside (add .broken to its name, say) "
                 "and fitchat starts a new history")
    elif "no such table" in text or "no such column" in text or isinstance(exc, _WrongShape):
        cause = (f"{where} is not a fitchat history as this version knows it ({detail}); move the file aside "
                 "(add .broken to its name, say) and fitchat starts a new history")
    elif primary in (_SQLITE_PERM, _SQLITE_AUTH, _SQLITE_CANTOPEN) or isinstance(exc, PermissionError):
        cause = f"{where} cannot be opened ({detail}); check that its folder exists and that you may write there"
    elif primary == _SQLITE_IOERR or isinstance(exc, OSError):
        cause = f"reading or writing {where} failed ({detail}); check the disk"
    elif primary == _SQLITE_NOMEM or isinstance(exc, MemoryError):
        cause = "SQLite ran out of memory"
    else:
        cause = f"{where}: {detail}"
    return HistoryError(f"cannot {doing}: {cause}")


class _WrongShape(Exception):
    """A row whose values are not of the types fitchat wrote (a damaged or foreign file)."""


def _guarded(doing: str) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Turn every SQLite (and file system) failure inside a History method into one HistoryError."""

    def wrap(method: Callable[..., _T]) -> Callable[..., _T]:
        @functools.wraps(method)
        def guarded(self: History, *args: Any, **kwargs: Any) -> _T:
            try:
                return method(self, *args, **kwargs)
            except HistoryError:
                raise
            except (sqlite3.Error, OSError, MemoryError, _WrongShape) as exc:
                raise history_error(exc, self.path, doing) from exc

        return guarded

    return wrap


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
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            self._check_tables()  # before anything is written: a foreign or damaged file is left as it is
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._migrate()
            self._check_tables()
        except HistoryError:
            self.close()
            raise
        except (sqlite3.Error, OSError, MemoryError, _WrongShape) as exc:
            self.close()
            raise history_error(exc, self.path, "open the chat history") from exc

    def _check_tables(self) -> None:
        """A file whose tables are not fitchat's (or that has tables but no version) is foreign or damaged."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version == 0:
            tables = [str(r[0]) for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            if tables:
                raise _WrongShape(f"tables of another program: {', '.join(tables[:5])}")
            return
        expected = {
            "conversations": {"id", "title", "model", "quant", "model_path", "settings", "created_at", "updated_at"},
            "messages": {"id", "conversation_id", "role", "content", "created_at", "stats", "finish_reason"},
        }
        for table, columns in expected.items():
            found = {str(row[1]) for row in self._db.execute(f"PRAGMA table_info({table})")}
            if not columns <= found:
                missing = ", ".join(sorted(columns - found))
                raise _WrongShape(f"table {table} lacks {missing}" if found else f"no table {table}")

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
                    self._rollback()
                    raise

    @_guarded("read the chat history")
    def schema_version(self) -> int:
        """The file's ``PRAGMA user_version``."""
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @_guarded("read the chat history")
    def journal_mode(self) -> str:
        """``wal`` once opened."""
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite); a failure to checkpoint loses nothing."""
        with self._lock:
            db = getattr(self, "_db", None)
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def _rollback(self) -> None:
        """Undo the open transaction; a rollback that fails too (a full disk) leaves the first error to tell."""
        with contextlib.suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def _write(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(sql, params)
                self._db.execute("COMMIT")
                return cur
            except BaseException:
                self._rollback()
                raise

    @_guarded("save the conversation")
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

    @_guarded("save the message")
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
                self._rollback()
                raise
        return Message(int(cur.lastrowid or 0), conversation_id, role, content, now, stats, finish_reason)

    @_guarded("remove a message from the history")
    def delete_message(self, message_id: int) -> None:
        """Remove one message (regenerating replaces the last reply this way)."""
        self._write("DELETE FROM messages WHERE id = ?", (message_id,))

    @_guarded("save the conversation's settings")
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

    @_guarded("delete the conversation")
    def delete(self, conversation_id: int) -> None:
        """Delete a conversation and its messages."""
        self.get(conversation_id)
        self._write("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # ------------------------------------------------------------------ reads

    def _conversation(self, row: sqlite3.Row | tuple[Any, ...], messages: tuple[Message, ...] = ()) -> Conversation:
        cid, title, model, quant, model_path, settings, created, updated, count = row
        parsed = _json_object(settings) or {}
        return Conversation(
            _typed(cid, int), _typed(title, str, ""), _typed(model, str, ""), _typed(quant, str, None),
            _typed(model_path, str, None), parsed, _timestamp(created), _timestamp(updated), _typed(count, int),
            messages,
        )

    _SELECT = (
        "SELECT c.id, c.title, c.model, c.quant, c.model_path, c.settings, c.created_at, c.updated_at,"
        " (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) FROM conversations c"
    )

    @_guarded("read the chat history")
    def get(self, conversation_id: int) -> Conversation:
        """A conversation's header (no messages); raises :class:`ConversationNotFound`."""
        with self._lock:
            row = self._db.execute(self._SELECT + " WHERE c.id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise ConversationNotFound(f"no conversation {conversation_id}; 'fitchat chat --list' shows them")
        return self._conversation(row)

    @_guarded("list the saved conversations")
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

    @_guarded("read the conversation")
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
            Message(_typed(mid, int), _typed(cid, int), _typed(role, str), _typed(content, str), _timestamp(created),
                    _json_object(stats), _typed(finish, str, None))
            for mid, cid, role, content, created, stats, finish in rows
        )
        return Conversation(
            header.id, header.title, header.model, header.quant, header.model_path, header.settings,
            header.created_at, header.updated_at, len(messages), messages,
        )

    @_guarded("export the conversation")
    def export_markdown(self, conversation_id: int) -> str:
        """The conversation as Markdown: a header with model and settings, then each turn."""
        conv = self.load(conversation_id)
        return conversation_markdown(conv)


def _typed(value: Any, kind: type, default: Any = ...) -> Any:
    """A column's value as fitchat wrote it; NULL becomes ``default`` when one is allowed."""
    if value is None and default is not ...:
        return default
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise _WrongShape(f"a {type(value).__name__} where fitchat keeps a {kind.__name__}")


def _timestamp(value: Any) -> float:
    if isinstance(value, (int, float)) and 0 <= value < 1e11:
        return float(value)
    raise _WrongShape(f"a {type(value).__name__} where fitchat keeps a time")


def _json_object(text: Any) -> dict[str, Any] | None:
    """Settings and stats: a JSON object, or None when absent or unreadable (they are only figures)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def write_export(path: str | Path, text: str, *, replace: bool = False) -> Path:
    """Write an exported conversation to ``path`` whole or not at all (a temporary file, then a rename).

    An existing file is kept unless ``replace``: :class:`FileExistsError` then says so, and nothing is
    written. Without replacing, the temporary file is hard-linked into place, which fails atomically
    when the name was taken meanwhile; on a file system without hard links an exclusive create stands in.
    """
    import os
    import tempfile

    target = Path(path)
    if not replace and (target.exists() or target.is_symlink()):
        raise FileExistsError(17, "file exists", str(target))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name[:80]}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        umask = os.umask(0o022)  # read it back: mkstemp makes 0600, an export is an ordinary file
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, target)
            return target
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise
        except OSError:  # no hard links here (FAT, some network shares)
            with open(target, "x", encoding="utf-8") as f:
                f.write(text)
        return target
    finally:
        tmp.unlink(missing_ok=True)


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
