"""A Hub mirror that lies, against the real CLI: nothing written or removed outside the cache, nothing hangs.

Each test runs ``python -m fitchat …`` (or ``fitchat.cli.main.main``) against the local Hub's hostile mode with
HOME, XDG and the HF cache inside a temporary root, keeps a sentinel file outside the cache, and asserts:
the sentinel and everything else outside the root's own folders is untouched, the command ends within a
bound, and it says one line (``fitchat: error: …``) without a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fitchat import paths
from fitchat.cli.main import main
from fitchat.errors import UnsafePath
from fitchat.hub import client, download, store
from tests import REPO_ROOT
from tests.hubserver import LocalHub

ROOT = REPO_ROOT
REPO = "evil/Tiny-GGUF"
FILE = "tiny-Q8_0.gguf"
PAYLOAD = bytes(range(256)) * 4  # 1,024 bytes, LFS (a .gguf)
DEADLINE_S = 1.0  # FITCHAT_HUB_DEADLINE for these tests: a drip of one byte every 0.3 s must fail fast


@pytest.fixture
def root(tmp_path: Path, private_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary root: HOME, XDG and the HF cache live in it, and a sentinel file sits outside the cache."""
    monkeypatch.setenv("HOME", str(private_home))
    monkeypatch.setenv("FITCHAT_HUB_DEADLINE", str(DEADLINE_S))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel.txt").write_text("keep me\n")
    return tmp_path


@pytest.fixture
def tiny(hub: LocalHub) -> str:
    hub.add_repo(REPO, {FILE: PAYLOAD})
    return REPO


def outside_state(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and link under ``root`` except fitchat's and the HF cache's own folders, with its content."""
    home = root / "home"
    own = [home / "hf", home / "data", home / "cache", home / "config"]
    state: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if any(here == d or here.is_relative_to(d) for d in own):
            continue
        for name in (*filenames, *(d for d in dirnames if (here / d).is_symlink())):
            p = here / name
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else os.readlink(p).encode()
            state[str(p.relative_to(root))] = (p.lstat().st_mode, data)
    return state


def run_cli(*args: str, timeout: float = 30) -> tuple[int, str, str, float]:
    """``python -m fitchat ARGS`` with this process's (private) environment; (rc, stdout, stderr, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fitchat", *args], capture_output=True, text=True, env=env, check=False,
                          timeout=timeout, cwd=str(ROOT))
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """The command's stderr ends in one ``fitchat: error:`` line and holds no traceback."""
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("fitchat: error:")]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def cache_files() -> list[Path]:
    cache = store.hf_cache_dir()
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else []


# -- 1. an etag that is a path ----------------------------------------------------------------------

@pytest.mark.parametrize("target_exists", [False, True], ids=["new-file", "existing-file"])
def test_traversal_etag_is_refused_before_anything_is_written(root: Path, hub: LocalHub, tiny: str,
                                                              target_exists: bool) -> None:
    # blobs/ -> repo -> hub -> hf -> home -> root: six levels up is the temporary root
    target = "outside/sentinel.txt" if target_exists else "outside/written-by-mirror.txt"
    hub.traversal_etag("../../../../../" + target)
    before = outside_state(root)
    rc, _out, err, seconds = run_cli("pull", f"{REPO}:Q8_0")
    assert rc == 1 and _out == ""
    assert_one_line_error(err, "etag", "refused")
    assert seconds < 20
    assert outside_state(root) == before
    assert (root / "outside" / "sentinel.txt").read_text() == "keep me\n"
    assert not hub.cdn_requests()  # not one byte was asked for
    assert [p for p in cache_files() if "blobs" in p.parts or "snapshots" in p.parts] == []
    # and rm has nothing to delete
    rc, _, err, _ = run_cli("rm", REPO)
    assert rc != 0 and outside_state(root) == before


def test_guard_refuses_paths_that_leave_their_root(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "repo" / "blobs").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (cache / "repo" / "blobs" / "out").symlink_to(tmp_path / "elsewhere")
    for bad in ("../../x", "../../../x", "out/x", "/etc/passwd"):
        with pytest.raises(UnsafePath):
            paths.inside(cache / "repo", cache / "repo" / "blobs" / bad)
    # a link is checked as a link: the link itself is inside even though its target is not
    assert paths.inside(cache / "repo", cache / "repo" / "blobs" / "out", follow_last=False).name == "out"
    with pytest.raises(UnsafePath):
        paths.inside(cache / "repo", cache / "repo" / "blobs" / "out")


def test_rm_unlinks_a_snapshot_link_out_of_the_cache_but_never_its_target(root: Path, hub: LocalHub, tiny: str) -> None:
    assert main(["pull", f"{REPO}:Q8_0"]) == 0
    model = store.find_local(REPO)[0]
    snapshot = model.path.parent
    # a planted link in the snapshot that points at a file outside the cache
    planted = snapshot / "tiny-Q4_0.gguf"
    planted.symlink_to(root / "outside" / "sentinel.txt")
    before = outside_state(root)
    assert [m.file for m in store.list_local()] == [FILE]  # the planted link is not a model here
    rc, _out, err, seconds = run_cli("rm", REPO)
    assert rc == 0, err
    assert "Traceback" not in err and seconds < 20
    assert outside_state(root) == before
    assert (root / "outside" / "sentinel.txt").read_text() == "keep me\n"
    assert not model.path.exists()


# -- 2. an endless body, and bodies that lie about their size -----------------------------------------

def test_endless_body_stops_at_the_announced_size(root: Path, hub: LocalHub, tiny: str) -> None:
    hub.endless()
    before = outside_state(root)
    rc, _out, err, seconds = run_cli("pull", f"{REPO}:Q8_0")
    assert rc == 1
    assert_one_line_error(err, "more than the announced", "localhost")
    assert seconds < 20
    assert hub.bytes_served() < 64 << 20  # stopped early, not after gigabytes
    assert outside_state(root) == before
    assert sum(p.stat().st_size for p in cache_files()) < 64 << 10  # nothing big kept


@pytest.mark.parametrize("announced", [100, 4096], ids=["longer-than-announced", "shorter-than-announced"])
def test_body_of_another_size_than_announced(root: Path, hub: LocalHub, tiny: str, announced: int) -> None:
    hub.lie_size(announced)
    before = outside_state(root)
    rc, _out, err, seconds = run_cli("pull", f"{REPO}:Q8_0")
    assert rc == 1
    assert_one_line_error(err)
    assert seconds < 20
    assert outside_state(root) == before
    assert not any(p.name == hashlib.sha256(PAYLOAD).hexdigest() for p in cache_files())  # no blob entered the cache
    assert sum(p.stat().st_size for p in cache_files()) <= max(announced, len(PAYLOAD))


# -- 7. a server that sends one byte at a time --------------------------------------------------------

@pytest.mark.parametrize("route", ["api", "resolve", "cdn"])
def test_drip_fed_answers_hit_the_deadline(root: Path, hub: LocalHub, tiny: str, route: str) -> None:
    hub.drip(0.3, route=route)
    before = outside_state(root)
    rc, _out, err, seconds = run_cli("pull", f"{REPO}:Q8_0")
    assert rc == 1
    host = f"localhost:{hub.port}" if route == "cdn" else f"127.0.0.1:{hub.port}"
    assert_one_line_error(err, host)
    assert seconds < 15  # about one deadline (1 s) per request, not 0.3 s per byte of every answer
    assert outside_state(root) == before


def test_drip_fed_header_range_read_hits_the_deadline(root: Path, hub: LocalHub) -> None:
    from fitchat.hub.remote import read_remote_spec

    hub.add_header_file(REPO, FILE, b"GGUF" + bytes(4096), 4 << 30)
    hub.drip(0.3, route="cdn")
    start = time.monotonic()
    with pytest.raises(client.HubDeadline) as info:
        read_remote_spec(REPO, FILE, endpoint=hub.endpoint)
    assert time.monotonic() - start < 8
    assert f"localhost:{hub.port}" in str(info.value) and "\n" not in str(info.value)


# -- 9. endpoints with user-info ------------------------------------------------------------------------

def test_endpoint_user_info_is_never_shown(root: Path, hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    from fitchat import doctor

    secret_endpoint = hub.endpoint.replace("http://", "http://user:s3cret-pw@")
    check = doctor.check_hub({"HF_ENDPOINT": secret_endpoint}, timeout_s=2)
    assert "s3cret" not in json.dumps(check.details) + check.summary + str(check.fix)
    assert check.details["endpoint"] == hub.endpoint
    monkeypatch.setenv("HF_ENDPOINT", secret_endpoint)
    rc, out, err, _ = run_cli("pull", "missing/Repo-GGUF:Q4_0")
    assert rc == 1 and "s3cret" not in out + err
    assert_one_line_error(err, f"127.0.0.1:{hub.port}")
    rc, out, err, _ = run_cli("doctor", "--json", timeout=60)
    assert "s3cret" not in out + err
    assert client.display_endpoint("https://u:p@host:8080/x?sig=1") == "https://host:8080/x"


# -- 10. hostile listings, registry shapes, names that round-trip ---------------------------------------

HOSTILE_NAMES = ["../x-Q4_0.gguf", "/abs/x-Q4_0.gguf", "nul\x00-Q4_0.gguf", "back\\slash-Q4_0.gguf",
                 "esc\x1b[2J-Q4_0.gguf", "a/../../x-Q4_0.gguf", "x" * 5000 + "-Q4_0.gguf"]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=["dotdot", "absolute", "nul", "backslash", "control",
                                                     "inner-dotdot", "5000-chars"])
def test_hostile_file_names_are_refused_before_the_first_byte(root: Path, hub: LocalHub, tiny: str, name: str) -> None:
    def rename(info: dict[str, Any]) -> dict[str, Any]:
        for sibling in info["siblings"]:
            if sibling["rfilename"] == FILE:
                sibling["rfilename"] = name
        return info

    hub.rewrite_listing(rename)
    before = outside_state(root)
    rc, _out, err, seconds = run_cli("pull", REPO, "--quant", "Q4_0")
    assert rc == 1
    line = assert_one_line_error(err, "refused")
    assert len(line) < 400 and "\x1b" not in line
    assert seconds < 20
    assert not hub.cdn_requests() and not any(r.route == "resolve" for r in hub.requests)
    assert outside_state(root) == before and cache_files() == []
    # download_file refuses the name on its own too, before asking the server anything
    hub.requests.clear()
    with pytest.raises(UnsafePath):
        download.download_file(REPO, name, sha256=None, endpoint=hub.endpoint)
    assert hub.requests == []


@pytest.mark.parametrize("listing", ["huge", "not-json", "a-list", "size-abc"])
def test_malformed_or_oversized_listing_is_one_line(root: Path, hub: LocalHub, tiny: str, listing: str) -> None:
    def hostile(info: dict[str, Any]) -> Any:
        if listing == "huge":
            info["padding"] = "x" * (client.MAX_API_RESPONSE_BYTES + (1 << 20))
            return info
        if listing == "not-json":
            return '{"siblings": [1, 2'
        if listing == "a-list":
            return json.dumps([info])
        info["siblings"][0]["size"] = "abc"
        for s in info["siblings"]:
            s["size"] = "abc"
        return info

    hub.rewrite_listing(hostile)
    before = outside_state(root)
    rc, _out, err, seconds = run_cli("pull", f"{REPO}:Q8_0")
    assert rc == 1
    assert_one_line_error(err)
    assert seconds < 20
    assert outside_state(root) == before and cache_files() == []


@pytest.mark.parametrize("content", ['[]', '{"models": {}}', '"models"', (
    '{"models": [1, [], {"repo": "local/x", "file": "x.gguf", "quant": "Q4_0", "size_bytes": "abc", "path": "/x.gguf"}]}'
)])
def test_registry_of_the_wrong_shape_is_one_line(root: Path, content: str, capsys: pytest.CaptureFixture[str]) -> None:
    registry = paths.data_dir() / "imported.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(content)
    code = main(["ls"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    if content.startswith('{"models": ['):
        assert code == 0 and "warning: skipped 3 unreadable entries" in err  # bad entries skipped, kept on disk
    else:
        assert code == 1
        assert_one_line_error(err, str(registry))
    assert registry.read_text() == content  # nothing lost


def test_imported_name_with_ref_syntax_round_trips(root: Path, smollm2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    link = root / "outside" / "my:model Q4.gguf"
    link.symlink_to(smollm2)
    assert main(["import", str(link), "--json"]) == 0
    name = json.loads(capsys.readouterr().out)["repo"]
    assert name == "local/my-model-Q4"
    assert store.parse_ref(name) == (name, None)
    assert store.resolve_model(name).path == link
    assert main(["rm", name]) == 0
    assert "unregistered local/my-model-Q4" in capsys.readouterr().out
    assert link.is_symlink() and smollm2.is_file()  # the file stays where it is
    assert store.list_local() == [] or all(m.source != "imported" for m in store.list_local())
