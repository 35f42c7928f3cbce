"""Conversation history: SQLite WAL, user_version migrations, round trips, export, concurrency."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from fitchat.chat import history as hist
from fitchat.chat.history import ConversationNotFound, History, HistoryError


def test_default_path_is_under_xdg_data(private_home: Path) -> None:
    with History() as h:
        assert h.path == private_home / "data" / "fitchat" / "history.sqlite3"
        assert h.path.is_file()
        assert h.journal_mode() == "wal"
        assert h.schema_version() == hist.SCHEMA_VERSION


def test_round_trip_with_stats_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    with History(path) as h:
        conv = h.create("HuggingFaceTB/SmolLM2-135M-Instruct", quant="Q4_1", model_path="/m/smol.gguf",
                        settings={"temperature": 0.0, "seed": 7, "system_prompt": "Be brief."})
        h.add_message(conv.id, "user", "Hello there, how are you today?")
        stats = {"prompt_tokens": 30, "completion_tokens": 5, "ttft_s": 0.1, "decode_tokens_per_s": 90.5}
        h.add_message(conv.id, "assistant", "Fine, thanks.", stats=stats, finish_reason="stop")
    # A fresh connection (a new process would see the same) reads everything back.
    with History(path) as h:
        loaded = h.load(conv.id)
        assert loaded.title == "Hello there, how are you today?"
        assert loaded.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert loaded.quant == "Q4_1"
        assert loaded.model_path == "/m/smol.gguf"
        assert loaded.settings == {"temperature": 0.0, "seed": 7, "system_prompt": "Be brief."}
        assert [(m.role, m.content) for m in loaded.messages] == [
            ("user", "Hello there, how are you today?"),
            ("assistant", "Fine, thanks."),
        ]
        assert loaded.messages[1].stats == stats
        assert loaded.messages[1].finish_reason == "stop"
        assert loaded.chat_messages()[0] == {"role": "user", "content": "Hello there, how are you today?"}
        assert [c.id for c in h.list_conversations()] == [conv.id]
        assert h.list_conversations()[0].message_count == 2


def test_list_orders_by_last_update_and_delete_cascades(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite3") as h:
        a = h.create("a")
        b = h.create("b")
        while time.time() <= b.updated_at:  # a coarse clock: the new activity must come strictly later
            time.sleep(0.001)
        h.add_message(a.id, "user", "newer activity")
        assert [c.model for c in h.list_conversations()] == ["a", "b"]
        assert [c.model for c in h.list_conversations(limit=1)] == ["a"]
        h.delete(a.id)
        assert [c.model for c in h.list_conversations()] == ["b"]
        with pytest.raises(ConversationNotFound):
            h.load(a.id)
        with pytest.raises(ConversationNotFound):
            h.add_message(a.id, "user", "x")
        orphans = h._db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (a.id,)).fetchone()[0]
        assert orphans == 0


def test_bad_role_and_long_title(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite3") as h:
        conv = h.create("m")
        with pytest.raises(HistoryError, match="role"):
            h.add_message(conv.id, "tool", "x")
        h.add_message(conv.id, "user", "word " * 40)
        title = h.get(conv.id).title
        assert len(title) == hist.TITLE_CHARS and title.endswith("…")


def test_export_markdown(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite3") as h:
        conv = h.create("smol", quant="Q8_0", settings={"temperature": 0.2})
        h.add_message(conv.id, "system", "You are terse.")
        h.add_message(conv.id, "user", "Capital of France?")
        h.add_message(conv.id, "assistant", "Paris.", stats={"completion_tokens": 3, "decode_tokens_per_s": 50.0,
                                                              "ttft_s": 0.25}, finish_reason="stop")
        md = h.export_markdown(conv.id)
    assert md.startswith("# Capital of France?\n")
    assert "- Model: smol (Q8_0)" in md
    assert "- temperature: 0.2" in md
    assert "## System\n\nYou are terse." in md
    assert "## User\n\nCapital of France?" in md
    assert "## Assistant\n\nParis.\n\n*3 tokens, 50.0 tok/s, TTFT 0.25 s*" in md


def test_migrates_an_unversioned_file_and_refuses_a_newer_one(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    sqlite3.connect(path).close()  # an empty file at user_version 0
    with History(path) as h:
        assert h.schema_version() == hist.SCHEMA_VERSION
        tables = {r[0] for r in h._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"conversations", "messages"} <= tables
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {hist.SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(HistoryError, match="newer fitchat"):
        History(path)


def test_migrations_run_in_order_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def v2(db: sqlite3.Connection) -> None:
        calls.append(2)
        db.execute("ALTER TABLE messages ADD COLUMN rating INTEGER")

    path = tmp_path / "h.sqlite3"
    History(path).close()
    monkeypatch.setattr(hist, "MIGRATIONS", hist.MIGRATIONS + (v2,))
    monkeypatch.setattr(hist, "SCHEMA_VERSION", len(hist.MIGRATIONS))
    with History(path) as h:
        assert h.schema_version() == 2
        cols = {r[1] for r in h._db.execute("PRAGMA table_info(messages)")}
        assert "rating" in cols
    History(path).close()
    assert calls == [2]


def test_not_a_database_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HistoryError, match="move the file aside"):
        History(path)


def test_two_connections_write_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    a, b = History(path), History(path)
    conv = a.create("m")

    def writer(h: History, tag: str) -> None:
        for i in range(25):
            h.add_message(conv.id, "user", f"{tag}{i}")

    threads = [threading.Thread(target=writer, args=(h, t)) for h, t in ((a, "a"), (b, "b"), (a, "c"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(b.load(conv.id).messages) == 75
    a.close()
    b.close()
