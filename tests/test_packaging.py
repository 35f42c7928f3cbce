"""Packaging: sdist and wheel from ``python -m build``, the wheel in a fresh venv, the install
script (POSIX sh) and the PyInstaller bundle.

The default tests install the built wheel into a fresh venv with ``--no-deps`` and reach its
dependencies through a ``.pth`` file that names this environment's site-packages, so they take
seconds instead of rebuilding llama-cpp-python; ``pip check`` then proves that the wheel's declared
requirements are met. The slow tests do the full installs (dependencies from the package index or
pip's cache) and build the bundle.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import fitchat
from tests import REPO_ROOT

ROOT = REPO_ROOT
INSTALL_SH = ROOT / "packaging" / "install.sh"
SPEC = ROOT / "packaging" / "fitchat.spec"
VERSION = fitchat.__version__
#: pip's own cache, read before the tests point XDG_CACHE_HOME at a private folder: the full
#: installs reuse the llama-cpp-python wheel pip built before instead of compiling it again.
PIP_CACHE_DIR = os.environ.get("PIP_CACHE_DIR") or str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pip"
)


def project_files() -> list[str]:
    """What a commit of this tree holds: tracked files plus untracked ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return sorted(f for f in out.splitlines() if (ROOT / f).is_file())


def package_files() -> list[str]:
    """Every source file of runner/ and tui/ that an installed fitchat needs (paths in the source tree)."""
    return [f for f in project_files() if f.startswith(("runner/", "tui/")) and "__pycache__" not in f]


def installed_name(source: str) -> str:
    """Where a source file lands in the wheel: runner/ is the ``fitchat`` package, tui/ is ``fitchat.tui``."""
    top, rest = source.split("/", 1)
    return f"fitchat/{rest}" if top == "runner" else f"fitchat/tui/{rest}"


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """``python -m build`` on a copy of the tree (as a clean clone has it): sdist, then wheel from it."""
    base = tmp_path_factory.mktemp("build")
    src = base / "src"
    for rel in project_files():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(base / "dist"), str(src)],
        capture_output=True, text=True, env=clean_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sdists = list((base / "dist").glob("*.tar.gz"))
    wheels = list((base / "dist").glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(base / "dist")
    return Dist(sdists[0], wheels[0])


def this_site_packages() -> list[str]:
    """The running environment's site-packages folders (where llama_cpp and the rest live)."""
    paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"]})


def make_venv_with_wheel(venv: Path, wheel: Path) -> Path:
    """A fresh venv (no system site-packages) with only the fitchat wheel installed in it.

    Its dependencies come from this environment through a .pth file: .pth files inside that
    folder (such as an editable install of fitchat) are not processed, so ``fitchat`` can only
    come from the wheel.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    Path(purelib, "_fitchat_deps.pth").write_text("\n".join(this_site_packages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check", str(wheel)],
        check=True,
    )
    return py


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_CACHE_DIR"] = PIP_CACHE_DIR
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel_venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prefix whose venv (PREFIX/share/fitchat/venv, where install.sh puts it) holds the wheel."""
    prefix = tmp_path_factory.mktemp("prefix")
    make_venv_with_wheel(prefix / "share" / "fitchat" / "venv", dist.wheel)
    return prefix


# --------------------------------------------------------------------------- sdist and wheel


def test_build_makes_an_sdist_and_a_wheel(dist):
    assert dist.sdist.name == f"fitchat-{VERSION}.tar.gz"
    assert dist.wheel.name == f"fitchat-{VERSION}-py3-none-any.whl"


def test_wheel_holds_every_package_file_and_the_entry_point(dist):
    with zipfile.ZipFile(dist.wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(f"fitchat-{VERSION}.dist-info/entry_points.txt").decode()
        metadata = zf.read(f"fitchat-{VERSION}.dist-info/METADATA").decode()
    missing = [f for f in package_files() if installed_name(f) not in names]
    assert not missing, f"files left out of the wheel (add them to package-data in pyproject.toml): {missing}"
    assert "fitchat = fitchat.cli.main:main" in entry_points
    assert not [n for n in names if n.startswith(("tests/", "packaging/", "bench/", "runner/", "tui/"))]
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "extra ==" not in r] == declared


def test_sdist_holds_the_source(dist):
    with tarfile.open(dist.sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for required in ("pyproject.toml", "README.md", *package_files()):
        assert required in names, f"{required} missing from the sdist"


def test_wheel_runs_from_a_fresh_venv(wheel_venv, tmp_path):
    venv = wheel_venv / "share" / "fitchat" / "venv"
    fitchat = venv / "bin" / "fitchat"
    env = clean_env(HF_HUB_OFFLINE="1")
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import fitchat; print(fitchat.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"fitchat imported from {where}, not from the wheel"
    for generic in ("runner", "tui"):  # one namespace: no generic top-level package is installed
        found = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {generic}"], cwd=tmp_path, env=env,
                               capture_output=True, text=True)
        assert found.returncode != 0 and "ModuleNotFoundError" in found.stderr, f"import {generic} worked"

    start = time.monotonic()
    helped = subprocess.run([str(fitchat), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    help_s = time.monotonic() - start
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: fitchat")
    for command in ("hw", "doctor"):
        assert command in helped.stdout
    assert help_s < 5

    version = subprocess.run([str(fitchat), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert version.stdout.strip() == f"fitchat {VERSION}"

    hw = subprocess.run([str(fitchat), "hw", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert hw.returncode == 0, hw.stderr
    report = json.loads(hw.stdout)
    import llama_cpp

    assert report["llama_cpp"]["version"] == llama_cpp.__version__
    assert report["llama_cpp"]["error"] is None and report["llama_cpp"]["devices"]
    assert report["backend"] in ("cpu", "cuda", "metal")

    check = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "check"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert check.returncode == 0, f"the wheel's declared requirements are not met: {check.stdout}"


# --------------------------------------------------------------------------- install.sh


def fake_tool(folder: Path, name: str, script: str) -> Path:
    """An executable shell script standing in for a hardware tool (nvidia-smi, nvcc, uname, sysctl)."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / name
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


def fake_nvidia(fakebin: Path, gpu: bool = True, nvcc: str | None = "12.4") -> None:
    if gpu:
        fake_tool(fakebin, "nvidia-smi", 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0b5d-fake)"\n')
    if nvcc:
        fake_tool(fakebin, "nvcc", f'echo "Cuda compilation tools, release {nvcc}, V{nvcc}.131"\n')


def fake_apple_silicon(fakebin: Path) -> None:
    fake_tool(fakebin, "uname", 'case "$1" in -s) echo Darwin ;; -m) echo arm64 ;; *) echo Darwin ;; esac\n')
    fake_tool(fakebin, "sysctl", 'case "$2" in hw.optional.arm64) echo 1 ;; hw.ncpu) echo 8 ;; *) exit 1 ;; esac\n')


def install_sh(*args: str, fakebin: Path, extra_env: dict[str, str] | None = None, timeout: float = 120):
    """Run packaging/install.sh with PATH = the fake tools first, then the system (no real nvcc)."""
    env = clean_env(
        PATH=f"{fakebin}:/usr/bin:/bin",
        FITCHAT_CUDA_SEARCH="",
        HOME=str(fakebin.parent / "home"),
    )
    for var in ("CUDA_HOME", "CUDA_PATH", "CMAKE_ARGS", "PIPX_HOME", "UV_TOOL_DIR"):
        env.pop(var, None)
    env.update(extra_env or {})
    return subprocess.run(
        ["sh", str(INSTALL_SH), "--python", sys.executable, *args],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=fakebin.parent,
    )


def test_install_script_is_posix_sh():
    proc = subprocess.run(["sh", "-n", str(INSTALL_SH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", "-s", "sh", str(INSTALL_SH)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def test_dry_run_plans_a_cuda_build(tmp_path):
    fakebin = tmp_path / "bin"
    fake_nvidia(fakebin, gpu=True, nvcc="12.4")
    prefix = tmp_path / "prefix"
    proc = install_sh("--dry-run", "--method", "venv", "--prefix", str(prefix), fakebin=fakebin)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert "NVIDIA GPU: NVIDIA H100 80GB HBM3" in out
    assert f"CUDA toolkit: 12.4 ({fakebin / 'nvcc'})" in out
    assert "backend: cuda (NVIDIA GPU and CUDA toolkit found)" in out
    venv_py = prefix / "share" / "fitchat" / "venv" / "bin" / "python"
    assert f"would run: {sys.executable} -m venv {prefix / 'share' / 'fitchat' / 'venv'}" in out
    assert f'would run: CMAKE_ARGS="-DGGML_CUDA=on" {venv_py} -m pip install' in out
    assert "dry run: nothing was changed" in out
    assert f"would check that the build runs here: {venv_py} -m fitchat.llama.smoke" in out
    assert "rebuild llama-cpp-python once with portable flags" in out
    assert not prefix.exists()


def test_dry_run_cuda_toolkit_from_cuda_home(tmp_path):
    fakebin = tmp_path / "bin"
    fake_nvidia(fakebin, gpu=True, nvcc=None)
    cuda_home = tmp_path / "cuda-12.8"
    fake_nvidia(cuda_home / "bin", gpu=False, nvcc="12.8")
    proc = install_sh("--dry-run", "--prefix", str(tmp_path / "p"), fakebin=fakebin,
                      extra_env={"CUDA_HOME": str(cuda_home), "CMAKE_ARGS": "-DCMAKE_CUDA_ARCHITECTURES=90"})
    assert proc.returncode == 0, proc.stderr
    assert "backend: cuda" in proc.stdout
    assert f'CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" CUDACXX={cuda_home / "bin" / "nvcc"} ' in proc.stdout


def test_dry_run_gpu_without_toolkit_stays_on_cpu_and_says_why(tmp_path):
    fakebin = tmp_path / "bin"
    fake_nvidia(fakebin, gpu=True, nvcc=None)
    proc = install_sh("--dry-run", "--prefix", str(tmp_path / "p"), fakebin=fakebin)
    assert proc.returncode == 0, proc.stderr
    assert "backend: cpu (NVIDIA GPU found but no CUDA toolkit: install one (nvcc), then run this again" in proc.stdout
    assert "CMAKE_ARGS" not in proc.stdout


def test_dry_run_with_rpc_builds_llama_cpp_with_its_rpc_backend(tmp_path):
    fakebin = tmp_path / "bin"
    fake_nvidia(fakebin, gpu=False, nvcc=None)
    prefix = tmp_path / "prefix"
    proc = install_sh("--dry-run", "--rpc", "--method", "venv", "--prefix", str(prefix), fakebin=fakebin)
    assert proc.returncode == 0, proc.stderr
    venv_py = prefix / "share" / "fitchat" / "venv" / "bin" / "python"
    assert f'would run: CMAKE_ARGS="-DGGML_RPC=ON" {venv_py} -m pip install' in proc.stdout
    assert "no authentication" in proc.stdout
    cuda = install_sh("--dry-run", "--rpc", "--backend", "cuda", "--prefix", str(tmp_path / "p2"),
                      fakebin=_with_nvcc(tmp_path))
    assert 'CMAKE_ARGS="-DGGML_CUDA=on -DGGML_RPC=ON"' in cuda.stdout, cuda.stdout + cuda.stderr


def _with_nvcc(tmp_path: Path) -> Path:
    fakebin = tmp_path / "bin-cuda"
    fake_nvidia(fakebin, gpu=True, nvcc="12.4")
    return fakebin


def test_dry_run_toolkit_without_gpu_stays_on_cpu(tmp_path):
    fakebin = tmp_path / "bin"
    fake_nvidia(fakebin, gpu=False, nvcc="13.0")
    proc = install_sh("--dry-run", "--prefix", str(tmp_path / "p"), fakebin=fakebin)
    assert proc.returncode == 0, proc.stderr
    assert "backend: cpu (CUDA toolkit found but no NVIDIA GPU" in proc.stdout


def test_dry_run_plans_a_metal_build(tmp_path):
    fakebin = tmp_path / "bin"
    fake_apple_silicon(fakebin)
    proc = install_sh("--dry-run", "--method", "venv", "--prefix", str(tmp_path / "p"), fakebin=fakebin)
    assert proc.returncode == 0, proc.stderr
    assert "machine: Darwin arm64" in proc.stdout
    assert "backend: metal (Apple Silicon)" in proc.stdout
    assert 'would run: CMAKE_ARGS="-DGGML_METAL=on" ' in proc.stdout


@pytest.mark.parametrize("method", ["pipx", "uv"])
def test_dry_run_with_pipx_or_uv(tmp_path, method):
    fakebin = tmp_path / "bin"
    fake_nvidia(fakebin, gpu=True, nvcc="12.4")
    calls = tmp_path / "calls.log"
    fake_tool(fakebin, method, f'echo "$*" >> {calls}\n')
    prefix = tmp_path / "p"
    proc = install_sh("--dry-run", "--prefix", str(prefix), fakebin=fakebin)  # auto picks the tool found
    assert proc.returncode == 0, proc.stderr
    assert f"method: {method}" in proc.stdout
    expected = {
        "pipx": f'would run: CMAKE_ARGS="-DGGML_CUDA=on" pipx install --python {sys.executable} {ROOT}',
        "uv": f'would run: CMAKE_ARGS="-DGGML_CUDA=on" uv tool install --python {sys.executable} {ROOT}',
    }[method]
    assert expected in proc.stdout
    assert not calls.exists(), "a dry run must not call the installer"


def test_cuda_backend_without_toolkit_is_an_error(tmp_path):
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    proc = install_sh("--dry-run", "--backend", "cuda", "--prefix", str(tmp_path / "p"), fakebin=fakebin)
    assert proc.returncode == 1
    assert "a CUDA build needs the CUDA toolkit (nvcc)" in proc.stderr


def test_bad_options_are_one_line_errors(tmp_path):
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    for args, message in (
        (["--backend", "rocm"], "--backend must be auto, cuda, metal or cpu, not 'rocm'"),
        (["--frobnicate"], "unknown option '--frobnicate'"),
        (["--no-index"], "--no-index needs --find-links"),
    ):
        proc = install_sh(*args, fakebin=fakebin)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.startswith(f"fitchat-install: error: {message}") and proc.stderr.count("\n") == 1


@pytest.mark.fresh_smoke_cache  # the smoke step must find no verdict yet
def test_install_script_is_idempotent_on_an_installed_venv(wheel_venv, dist, tmp_path):
    """A venv that already has fitchat and a CPU llama.cpp: the script only links the command, then does nothing."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    args = ("--method", "venv", "--prefix", str(wheel_venv), "--source", str(dist.wheel))
    first = install_sh(*args, fakebin=fakebin)
    assert first.returncode == 0, first.stderr
    assert f"fitchat {VERSION} is already installed in" in first.stdout
    import llama_cpp

    assert f"llama-cpp-python {llama_cpp.__version__} already has the cpu backend" in first.stdout
    assert f"linked {wheel_venv / 'bin' / 'fitchat'}" in first.stdout
    assert "pip install" not in first.stdout
    # The smoke decode ran with the installed environment; no model is on disk in this home, so it says so.
    assert f"smoke decode: {wheel_venv / 'share' / 'fitchat' / 'venv' / 'bin' / 'python'} -m fitchat.llama.smoke" in first.stdout
    assert "no model on disk to decode with yet" in first.stdout
    assert (wheel_venv / "bin" / "fitchat").resolve() == (wheel_venv / "share" / "fitchat" / "venv" / "bin" / "fitchat").resolve()

    second = install_sh(*args, fakebin=fakebin)
    assert second.returncode == 0, second.stderr
    assert "nothing to do: fitchat is installed with the cpu backend" in second.stdout
    assert "  + " not in second.stdout  # ran no command

    # The same venv on an NVIDIA machine: fitchat's own detection sees a CPU build and plans the rebuild.
    fake_nvidia(fakebin, gpu=True, nvcc="12.4")
    plan = install_sh(*args, "--dry-run", fakebin=fakebin)
    assert plan.returncode == 0, plan.stderr
    assert "has the cpu backend, cuda is wanted: rebuilding it" in plan.stdout
    venv_py = wheel_venv / "share" / "fitchat" / "venv" / "bin" / "python"
    assert (
        f'would run: CMAKE_ARGS="-DGGML_CUDA=on" {venv_py} -m pip install --disable-pip-version-check --quiet '
        f"--force-reinstall --no-cache-dir --no-deps llama-cpp-python=={llama_cpp.__version__}"
    ) in plan.stdout


# --------------------------------------------------------------------------- slow: full installs and the bundle


@pytest.mark.slow
def test_wheel_installs_with_its_dependencies(dist, tmp_path):
    """The wheel with its real dependencies in a bare venv (llama-cpp-python from pip's cache if built before)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    start = time.monotonic()
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(dist.wheel)],
        capture_output=True, text=True, env=clean_env(),
    )
    print(f"pip install of the wheel with its dependencies: {time.monotonic() - start:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    hw = subprocess.run([str(venv / "bin" / "fitchat"), "hw", "--json"], capture_output=True, text=True,
                        env=clean_env(), cwd=tmp_path)
    assert hw.returncode == 0, hw.stderr
    assert json.loads(hw.stdout)["llama_cpp"]["error"] is None


@pytest.mark.slow
def test_install_script_cpu_install_into_a_prefix(dist, tmp_path):
    """The real thing, CPU build: a fresh venv, fitchat and its dependencies, the command linked."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    prefix = tmp_path / "prefix"
    args = ("--method", "venv", "--prefix", str(prefix), "--source", str(dist.wheel))
    start = time.monotonic()
    first = install_sh(*args, fakebin=fakebin, timeout=1200)
    print(f"install.sh (CPU, fresh prefix): {time.monotonic() - start:.1f} s")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created the virtual environment" in first.stdout and f"installed fitchat {VERSION} with venv" in first.stdout
    assert "already has the cpu backend" in first.stdout
    fitchat = prefix / "bin" / "fitchat"
    hw = subprocess.run([str(fitchat), "hw", "--json"], capture_output=True, text=True, env=clean_env(), cwd=tmp_path)
    assert hw.returncode == 0 and json.loads(hw.stdout)["backend"] == "cpu"
    again = install_sh(*args, fakebin=fakebin)
    assert "nothing to do" in again.stdout


@pytest.mark.slow
def test_pyinstaller_bundle_builds_and_runs(tmp_path, smollm2):
    """Build the one-folder bundle from packaging/fitchat.spec and run it: llama.cpp loads and generates."""
    pytest.importorskip("PyInstaller")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--distpath", str(tmp_path / "dist"),
         "--workpath", str(tmp_path / "work"), str(SPEC)],
        cwd=ROOT, capture_output=True, text=True,
    )
    build_s = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    folder = tmp_path / "dist" / "fitchat"
    exe = folder / "fitchat"
    lib = folder / "_internal" / "llama_cpp" / "lib"
    assert (lib / "libllama.so").is_file() or (lib / "libllama.dylib").is_file() or (lib / "llama.dll").is_file()
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())

    env = clean_env(HF_HUB_OFFLINE="1", PATH="/usr/bin:/bin")  # no Python of ours on PATH
    start = time.monotonic()
    helped = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    help_s = time.monotonic() - start
    assert helped.returncode == 0 and helped.stdout.startswith("usage: fitchat"), helped.stderr

    start = time.monotonic()
    hw = subprocess.run([str(exe), "hw", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    hw_s = time.monotonic() - start
    assert hw.returncode == 0, hw.stderr
    build = json.loads(hw.stdout)["llama_cpp"]
    import llama_cpp

    assert build["error"] is None and build["version"] == llama_cpp.__version__
    from fitchat.model.hardware import probe_llama_build

    assert [d["name"] for d in build["devices"]] == [d.name for d in probe_llama_build().devices]

    doctor = subprocess.run([str(exe), "doctor", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert doctor.returncode in (0, 1), doctor.stderr
    assert json.loads(doctor.stdout)["checks"][0]["details"]["version"] == llama_cpp.__version__

    chat = subprocess.run(
        [str(exe), "chat", str(smollm2), "-p", "Say hi", "--max-tokens", "8", "--temp", "0", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert chat.returncode == 0, chat.stderr
    answer = json.loads(chat.stdout)
    assert answer["reply"].strip() and answer["stats"]["completion_tokens"] > 0
    print(
        f"bundle: built in {build_s:.0f} s, {size / 2**20:.1f} MiB; "
        f"--help {help_s * 1000:.0f} ms, hw --json {hw_s * 1000:.0f} ms (first run); "
        f"chat reply {answer['reply']!r}"
    )


@pytest.mark.fresh_smoke_cache  # the smoke step must find no verdict yet
def test_install_script_rebuilds_once_with_portable_flags_when_the_native_build_crashes(wheel_venv, dist, smollm2, tmp_path):
    """The smoke decode's child is told to die with SIGILL while extra buffer types are on (a CPU faulting in
    the AMX kernels): the script rebuilds llama-cpp-python with the portable flag set. Packages come from an
    empty folder only, so the rebuild itself stops at once; what it ran is on screen."""
    from fitchat.llama.smoke import portable_cmake_args

    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    empty = tmp_path / "wheels"
    empty.mkdir()
    args = ("--method", "venv", "--prefix", str(wheel_venv), "--source", str(dist.wheel), "--check-model", str(smollm2),
            "--find-links", str(empty), "--no-index")
    proc = install_sh(*args, fakebin=fakebin, extra_env={"FITCHAT_SMOKE_FAKE_SIGNAL": "SIGILL"}, timeout=300)
    out = proc.stdout
    assert "llama.cpp smoke decode: crashed with SIGILL, works without extra buffer types" in out
    portable = portable_cmake_args()
    assert f"the native build crashed here: rebuilding llama-cpp-python once with portable flags ({portable})" in out
    assert f'+ CMAKE_ARGS="{portable}" ' in out and "--force-reinstall --no-cache-dir --no-deps llama-cpp-python" in out
    assert proc.returncode != 0  # the rebuild could not fetch llama-cpp-python from the empty folder


def test_dry_run_prints_commands_that_paste_as_what_runs(tmp_path):
    """A path with a space, or a CMAKE_ARGS holding quotes and '$(…)': the printed command, pasted into a shell,
    runs with exactly those values (and runs nothing else)."""
    fakebin = tmp_path / "bin"
    fake_nvidia(fakebin, gpu=False, nvcc=None)
    prefix = tmp_path / "my dir"
    hostile = "-DFOO=\"a b\" $(touch pwned) it's"
    proc = install_sh("--dry-run", "--rpc", "--method", "venv", "--prefix", str(prefix), fakebin=fakebin,
                      extra_env={"CMAKE_ARGS": hostile})
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "CMAKE_ARGS=" in ln).removeprefix("  would run: ")
    venv_py = shlex.quote(str(prefix / "share" / "fitchat" / "venv" / "bin" / "python"))
    assignment = line.split(f" {venv_py} ")[0]  # CMAKE_ARGS="…", as printed
    pasted = subprocess.run(["sh", "-c", f"{assignment} sh -c 'printf %s \"$CMAKE_ARGS\"'"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert pasted.stdout == f"-DGGML_RPC=ON {hostile}"
    assert not (tmp_path / "pwned").exists()
    assert f"would run: {sys.executable} -m venv {shlex.quote(str(prefix / 'share' / 'fitchat' / 'venv'))}" in proc.stdout
