"""bench/cuda_build.sh --dry-run with hostile folder names: each path stays one argument (the cuBLAS -D options
included), the command it prints to paste is shell-quoted, a folder named like an option is made absolute,
and a dry run creates nothing."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "cuda_build.sh"


def dry_run(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def commands(out: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("name", ["d w/o; touch PWNED", "x/$(touch PWNED)", "a*b/`touch PWNED`"])
def test_hostile_folder_names_stay_one_argument(tmp_path: Path, name: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out_dir = str(work / name)
    text = dry_run(work, "--cublas-from-pip", "--out", out_dir)
    cmake = next(c for c in commands(text) if c[:2] == ["cmake", "-S"])
    assert cmake[2] == out_dir + ".work/llama.cpp" and cmake[4] == out_dir + ".work/build"
    cublas = [a for a in cmake if a.startswith(("-DCUDA_cublas", "-DCMAKE_CUDA_FLAGS", "-DCMAKE_CXX_FLAGS"))]
    assert len(cublas) == 4 and all(out_dir + ".work/cublas/" in a for a in cublas), cmake
    paste = next(line for line in text.splitlines() if "LLAMA_CPP_LIB_PATH=" in line)
    assert shlex.split(paste) == [f"LLAMA_CPP_LIB_PATH={out_dir}/bin", "python", "bench/gpu_calibrate.py"]
    assert list(work.iterdir()) == []  # a dry run runs nothing: no folder, no PWNED


def test_a_folder_named_like_an_option_is_made_absolute(tmp_path: Path) -> None:
    text = dry_run(tmp_path, "--out", "-rf")
    mkdir = next(c for c in commands(text) if c[0] == "mkdir")
    assert mkdir == ["mkdir", "-p", f"{tmp_path}/-rf.work", f"{tmp_path}/-rf.work/llama.cpp", f"{tmp_path}/-rf/bin"]
