"""``fitchat pull`` against the local Hub: resume, kill -9, sha256, disk space, errors, cancel, progress."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from fitchat.cli.main import main
from fitchat.errors import Cancelled, GatedRepo, HubError, NotEnoughDisk
from fitchat.hub import download, store
from fitchat.hub.client import HubUnreachable, NotOnHub
from tests import REPO_ROOT
from tests.hubserver import LocalHub

ROOT = REPO_ROOT
REPO = "fitchat-test/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"


@pytest.fixture
def smol(hub: LocalHub, smollm2: Path) -> Path:
    """The starter GGUF published as a Hub repo (real file, 94 MiB)."""
    hub.add_repo(REPO, {FILE: smollm2})
    return smollm2


@pytest.fixture(scope="module")
def smol_sha(smollm2: Path) -> str:
    return hashlib.sha256(smollm2.read_bytes()).hexdigest()


def blobs_dir() -> Path:
    return store.repo_cache_dir(REPO) / "blobs"


def partials() -> list[Path]:
    return sorted(blobs_dir().glob("*.incomplete")) if blobs_dir().is_dir() else []


def test_pull_cli_prints_path_last_and_json(smol: Path, smol_sha: str, hub: LocalHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", f"{REPO}:q4_1"]) == 0
    out = capsys.readouterr().out
    path = Path(out.strip().splitlines()[-1])
    assert path.is_file() and path.read_bytes() == smol.read_bytes()
    assert path.is_relative_to(Path(os.environ["HF_HUB_CACHE"]))  # the shared HF cache
    assert path.parent.name == hub.repos[REPO].commit
    # a second pull is instant and prints the same thing, as JSON this time
    gets = len(hub.cdn_requests())
    assert main(["pull", REPO, "--quant", "Q4_1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {"path": str(path), "sha256": smol_sha, "size_bytes": smol.stat().st_size, "repo": REPO,
                    "file": FILE, "quant": "Q4_1"}
    assert len(hub.cdn_requests()) == gets


def test_resume_after_dropped_connection(smol: Path, smol_sha: str, hub: LocalHub) -> None:
    hub.drop_connection(30 << 20)
    model = download.pull(f"{REPO}:Q4_1")
    assert model.sha256 == smol_sha and model.path.read_bytes() == smol.read_bytes()
    first, second = hub.cdn_requests()
    assert first.bytes_sent == 30 << 20
    start = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 30 << 20 and second.bytes_sent == smol.stat().st_size - start
    assert partials() == []


def test_resume_after_kill_9(smol: Path, smol_sha: str, hub: LocalHub, capsys: pytest.CaptureFixture[str]) -> None:
    hub.slow(15 << 20)  # about 6 s for the whole file
    cmd = [sys.executable, "-m", "fitchat", "pull", f"{REPO}:Q4_1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if partials() and partials()[0].stat().st_size >= 12 << 20:
                break
            assert proc.poll() is None, "the pull ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the pull never got going")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()  # SIGKILL too: the test's own kill, or no process left behind when it failed
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (partial,) = partials()
    kept = partial.stat().st_size
    assert 12 << 20 <= kept < smol.stat().st_size
    assert store.list_local() == []  # a partial download is never listed
    assert main(["ls", "--json"]) == 0 and json.loads(capsys.readouterr().out) == []

    hub.clear_faults()
    rerun = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    path = Path(rerun.stdout.strip().splitlines()[-1])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == smol_sha
    last = hub.cdn_requests()[-1]
    assert last.range == f"bytes={kept}-"  # only the rest was fetched
    assert last.bytes_sent == smol.stat().st_size - kept
    assert partials() == []


def test_sha256_mismatch_is_refused_deleted_and_not_listed(smol: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]) -> None:
    hub.corrupt()
    assert main(["pull", f"{REPO}:Q4_1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fitchat: error: {FILE}: the downloaded bytes hash to ") and "the file was deleted" in err
    assert err.count("\n") == 1
    assert list(blobs_dir().iterdir()) == []  # neither a blob nor a partial
    assert not (store.repo_cache_dir(REPO) / "snapshots").exists()
    assert store.list_local() == []
    hub.clear_faults()
    assert download.pull(f"{REPO}:Q4_1").path.read_bytes() == smol.read_bytes()


def test_disk_space_is_checked_before_the_first_byte(smol: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    need = smol.stat().st_size + download.DISK_MARGIN_BYTES
    Usage = namedtuple("Usage", "total used free")
    seen: list[Path] = []

    def disk_usage(path: Any) -> Any:
        seen.append(Path(path))
        return Usage(need * 10, need * 10 - free, free)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    free = need - 1
    with pytest.raises(NotEnoughDisk) as err:
        download.pull(f"{REPO}:Q4_1")
    assert f"it needs {store_human(need)} free" in str(err.value) and "HF_HUB_CACHE" in str(err.value)
    assert Path(os.environ["HF_HUB_CACHE"]).is_relative_to(seen[0])
    assert hub.cdn_requests() == []
    free = need  # exactly enough
    assert download.pull(f"{REPO}:Q4_1").path.is_file()


def store_human(n: int) -> str:
    from fitchat.format import human_bytes

    return human_bytes(n)


def test_gated_repo_needs_licence_and_token(hub: LocalHub, smollm2: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    hub.add_repo("org/Gated-GGUF", {"Gated-Q4_1.gguf": smollm2}, gated=True)
    assert main(["pull", "org/Gated-GGUF:Q4_1"]) == 1
    err = capsys.readouterr().err
    assert "org/Gated-GGUF is gated: accept its licence at" in err and "HF_TOKEN" in err and err.count("\n") == 1
    monkeypatch.setenv("HF_TOKEN", "hf_not_granted")
    with pytest.raises(GatedRepo, match="has not been granted access"):
        download.pull("org/Gated-GGUF:Q4_1")
    hub.grant("hf_granted", "org/Gated-GGUF")
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    assert download.pull("org/Gated-GGUF:Q4_1").path.is_file()
    assert all(r.authorization is None for r in hub.cdn_requests())  # the token never reaches the CDN


def test_not_found_messages(smol: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "org/does-not-exist"]) == 1
    assert "org/does-not-exist not found on http://127.0.0.1:" in capsys.readouterr().err
    with pytest.raises(NotOnHub, match=r"has no Q2_K variant; it has: Q4_1"):
        download.pull(f"{REPO}:Q2_K")
    with pytest.raises(NotOnHub, match="not a Hub repo id"):
        download.pull("just-a-name")


def test_server_errors_and_no_network(smol: Path, hub: LocalHub, unreachable_endpoint: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    hub.fail(500, route="resolve", times=None)
    with pytest.raises(HubError, match="answered 500"):
        download.pull(f"{REPO}:Q4_1")
    hub.clear_faults()
    hub.fail(503, route="api", times=1)
    with pytest.raises(HubError, match="answered 503 for .*; try again later"):
        download.pull(f"{REPO}:Q4_1")
    assert download.pull(f"{REPO}:Q4_1").path.is_file()  # it was only once
    monkeypatch.setenv("HF_ENDPOINT", unreachable_endpoint)
    with pytest.raises(HubUnreachable, match="cannot reach the Hub at"):
        download.pull(f"{REPO}:Q8_0")


def test_offline_pull_returns_what_is_here(smol: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch,
                                           unreachable_endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    model = download.pull(f"{REPO}:Q4_1")
    monkeypatch.setenv("HF_ENDPOINT", unreachable_endpoint)
    notes: list[str] = []
    assert download.pull(f"{REPO}:Q4_1", notice=notes.append) == model
    assert notes == [f"the Hub is unreachable; {REPO}:Q4_1 is already here"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download.pull(f"{REPO}:Q4_1") == model
    with pytest.raises(HubUnreachable, match="HF_HUB_OFFLINE is set"):
        download.pull("org/other:Q4_K_M")
    assert main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"repo": REPO, "file": FILE, "quant": "Q4_1", "size_bytes": smol.stat().st_size, "path": str(model.path), "source": "hub"}
    ]


class Recorder:
    """A minimal tqdm-like class, as a UI would pass."""

    bars: list[Recorder] = []

    def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any) -> None:
        self.total, self.n, self.updates, self.closed = total, initial, 0, False
        Recorder.bars.append(self)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.updates += 1

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_progress_reaches_the_progress_class(smol: Path, hub: LocalHub) -> None:
    Recorder.bars = []
    download.pull(f"{REPO}:Q4_1", progress_class=Recorder)
    (bar,) = Recorder.bars
    assert bar.total == smol.stat().st_size and bar.n == bar.total and bar.closed
    assert bar.updates >= bar.total // download.CHUNK_BYTES  # one update per MiB at least


def test_cancel_keeps_the_partial_and_the_next_pull_resumes(smol: Path, hub: LocalHub) -> None:
    cancel = threading.Event()

    class CancelAt20MiB(Recorder):
        def update(self, n: int = 1) -> None:
            super().update(n)
            if self.n >= 20 << 20:
                cancel.set()

    hub.slow(50 << 20)
    with pytest.raises(Cancelled, match="cancelled"):
        download.pull(f"{REPO}:Q4_1", progress_class=CancelAt20MiB, cancel=cancel)
    assert hub.cdn_requests()[0].bytes_sent < 60 << 20  # the transfer stopped, it did not run to the end
    (partial,) = partials()
    kept = partial.stat().st_size
    assert 19 << 20 <= kept <= 21 << 20  # the chunk in hand when cancelled is not written
    assert store.list_local() == []
    hub.clear_faults()
    model = download.pull(f"{REPO}:Q4_1")
    assert model.path.read_bytes() == smol.read_bytes()
    assert hub.cdn_requests()[-1].range == f"bytes={kept}-"


def test_resume_when_the_server_ignores_range(smol: Path, smol_sha: str, hub: LocalHub) -> None:
    cancel = threading.Event()

    class CancelAt10MiB(Recorder):
        def update(self, n: int = 1) -> None:
            super().update(n)
            if self.n >= 10 << 20:
                cancel.set()

    with pytest.raises(Cancelled):
        download.pull(f"{REPO}:Q4_1", progress_class=CancelAt10MiB, cancel=cancel)
    assert partials()
    hub.ignore_range()
    model = download.pull(f"{REPO}:Q4_1")  # starts over from byte 0, and hashes only the new bytes
    assert model.sha256 == smol_sha and model.path.read_bytes() == smol.read_bytes()
    last = hub.cdn_requests()[-1]
    assert last.range is not None and last.status == 200 and last.bytes_sent == smol.stat().st_size


def test_split_set_is_pulled_listed_and_removed_as_one(hub: LocalHub, smollm2: Path) -> None:
    data = smollm2.read_bytes()
    half = len(data) // 2
    hub.add_repo("org/Split-GGUF", {
        "Q4_1/m-Q4_1-00001-of-00002.gguf": data[:half],
        "Q4_1/m-Q4_1-00002-of-00002.gguf": data[half:],
    })
    model = download.pull("org/Split-GGUF:Q4_1")
    assert model.file == "Q4_1/m-Q4_1-00001-of-00002.gguf" and model.size_bytes == len(data)
    assert model.path.read_bytes() + model.path.with_name("m-Q4_1-00002-of-00002.gguf").read_bytes() == data
    (listed,) = store.list_local()
    assert (listed.repo, listed.quant, listed.size_bytes, listed.path) == ("org/Split-GGUF", "Q4_1", len(data), model.path)
    assert store.remove("org/Split-GGUF") == [listed]
    assert not store.repo_cache_dir("org/Split-GGUF").exists()


def test_pull_without_quant_takes_the_recommended_plan(hub: LocalHub, smollm2_variants: dict[str, Path]) -> None:
    from fitchat.hub import remote
    from fitchat.model.hardware import detect_hardware

    hub.add_repo(REPO, {f"SmolLM2-135M-Instruct-{q}.gguf": p for q, p in smollm2_variants.items()})
    plans = remote.fit_remote_repo(REPO, detect_hardware(), 4096, endpoint=hub.endpoint)
    (best,) = [p for p in plans if p.recommended]
    notes: list[str] = []
    model = download.pull(REPO, notice=notes.append)
    assert model.quant == best.spec.quant and model.file == best.spec.file
    assert model.path.read_bytes() == smollm2_variants[best.spec.quant].read_bytes()
    assert any(best.spec.quant in n for n in notes)
