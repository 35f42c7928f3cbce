"""``fitchat doctor``: the real llama.cpp build, real nvcc executables on PATH, a real HTTP endpoint.

Fakes only for hardware a test machine may lack: NVML (an NVIDIA driver), sysctl (a Mac), and a
llama.cpp build with a GPU backend.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fitchat import doctor
from fitchat.cli.main import main
from fitchat.model.hardware import BackendDevice, LlamaBuild, detect_hardware, probe_llama_build
from tests.fakes import MAC_16G, FakeGpu, FakeNvml, NoDriverNvml, fake_sysctl

GOOD_TOKEN = "hf_doctorTestTokenThatMustNeverBePrinted01"
GiB = 1024**3


# --------------------------------------------------------------------------- fakes at the hardware boundary


def nvidia_machine(driver: str = "550.54.15") -> FakeNvml:
    """NVML on a machine with one RTX 4090 and the given driver."""
    return FakeNvml([FakeGpu("NVIDIA GeForce RTX 4090", 24 * GiB, 23 * GiB)], driver=driver)


def gpu_build(device: str, description: str) -> LlamaBuild:
    """The real llama.cpp build with a GPU backend added (the real one may be CPU only)."""
    real = probe_llama_build()
    return LlamaBuild(
        version=real.version,
        gpu_offload=True,
        devices=(BackendDevice(device, description, "gpu", 23 * GiB, 24 * GiB), *real.devices),
        system_info=real.system_info,
    )


@pytest.fixture(scope="module")
def real_build() -> LlamaBuild:
    build = probe_llama_build()
    assert build.error is None, build.error
    return build


def fake_nvcc(folder: Path, release: str) -> Path:
    """An ``nvcc`` executable that answers ``--version`` like the real one."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvcc"
    exe.write_text(
        "#!/bin/sh\n"
        'echo "nvcc: NVIDIA (R) Cuda compiler driver"\n'
        f'echo "Cuda compilation tools, release {release}, V{release}.99"\n'
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


def env_with_path(*dirs: Path) -> dict[str, str]:
    """The environment with PATH = the given folders plus /bin (for sh), and no CUDA_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env["PATH"] = os.pathsep.join([*(str(d) for d in dirs), "/bin"])
    return env


# --------------------------------------------------------------------------- a local endpoint


@dataclass
class Endpoint:
    url: str
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    mode: str = "ok"  # "ok", "503" or "hang"
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    """A tiny Hub-like server on 127.0.0.1: /api/models and /api/whoami-v2."""
    state = Endpoint(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None: ...

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("authorization")))
            if state.mode == "hang":
                state.release.wait(10)
                return
            if state.mode == "503":
                return self._send(503, {"error": "maintenance"})
            if self.path.startswith("/api/models"):
                return self._send(200, [{"id": "org/model"}])
            if self.path == "/api/whoami-v2":
                if self.headers.get("authorization") == f"Bearer {GOOD_TOKEN}":
                    return self._send(200, {"name": "someone", "type": "user"})
                return self._send(401, {"error": "Invalid credentials in Authorization header"})
            self._send(404, {"error": "not found"})

        def _send(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def ample_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk check runs for real, with thresholds any disk meets (its verdict is tested on its own)."""
    real = doctor.check_disk
    monkeypatch.setattr(doctor, "DISK_WARN_BYTES", 0)
    monkeypatch.setattr(doctor, "DISK_FAIL_BYTES", 0)
    monkeypatch.setattr(doctor, "check_disk", lambda cache, warn_below=0, fail_below=0: real(cache, warn_below, fail_below))


def doctor_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    rc = main(["doctor", "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


# --------------------------------------------------------------------------- the command on the machine at hand


def test_cli_json_on_this_machine(capsys, monkeypatch, unreachable_endpoint, real_build, ample_disk):
    monkeypatch.setenv("HF_ENDPOINT", unreachable_endpoint)
    rc, report = doctor_json(capsys)
    assert rc == (1 if report["failed"] else 0)
    checks = {c["key"]: c for c in report["checks"]}
    assert list(checks) == ["llama_build", "llama_smoke", "cuda", "metal", "rpc", "disk", "hub", "token"]
    assert checks["rpc"]["status"] in ("ok", "info")  # RPC is optional: never a problem
    assert checks["rpc"]["details"]["rpc"] is (checks["rpc"]["status"] == "ok")
    build = checks["llama_build"]
    hw = detect_hardware()
    assert build["details"]["backend"] == hw.backend
    assert build["status"] == ("ok" if not hw.warnings else "fail")
    assert build["details"]["version"] == real_build.version
    assert build["details"]["devices"] == [d.name for d in real_build.devices]
    assert checks["metal"]["status"] == "info"
    assert checks["hub"]["status"] == "warn" and checks["hub"]["details"]["reachable"] is False
    assert checks["hub"]["details"]["endpoint"] == unreachable_endpoint
    assert "HF_HUB_OFFLINE=1" in checks["hub"]["fix"]
    assert checks["token"]["details"] == {"present": False, "source": None}
    if not hw.warnings:  # the build suits the hardware (a CPU build and no GPU, say): the Hub is the only problem
        assert report["problems"] == 1 and report["ok"] is False and report["failed"] is False
    assert checks["disk"]["details"]["path"] == os.environ["HF_HUB_CACHE"]


def test_cli_text_names_each_problem_and_its_fix(capsys, monkeypatch, unreachable_endpoint):
    monkeypatch.setenv("HF_ENDPOINT", unreachable_endpoint)
    main(["doctor"])
    out = capsys.readouterr().out
    hub_line = next(line for line in out.splitlines() if "Hugging Face Hub" in line)
    assert hub_line.startswith("[WARN]") and unreachable_endpoint in hub_line
    assert "fix: check HF_ENDPOINT" in out
    assert re.search(r"\n\d+ problems? \(\d+ failing, \d+ warnings?\)\.$", out.rstrip())


def test_command_module_imports_nothing_heavy():
    code = (
        "import sys, fitchat.cli.doctor as d, argparse; p = argparse.ArgumentParser(); "
        "d.register(p.add_subparsers()); "
        "heavy = [m for m in ('llama_cpp', 'huggingface_hub', 'textual', 'gguf', 'fitchat.doctor') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- the Hub


def test_hub_reachable_through_a_local_endpoint(monkeypatch, capsys, endpoint, ample_disk):
    monkeypatch.setenv("HF_ENDPOINT", endpoint.url + "/")
    rc, report = doctor_json(capsys)
    hub = next(c for c in report["checks"] if c["key"] == "hub")
    assert hub["status"] == "ok" and hub["details"]["reachable"] is True
    assert hub["details"]["endpoint"] == endpoint.url
    assert ("/api/models?limit=1", None) in endpoint.requests
    assert rc == 0 and report["problems"] == 0


def test_hub_offline_mode_contacts_nothing(monkeypatch, endpoint):
    monkeypatch.setenv("HF_ENDPOINT", endpoint.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    report = doctor.run_doctor()
    assert report.get("hub").status == "info" and "HF_HUB_OFFLINE" in report.get("hub").summary
    assert report.get("token").status == "ok" and report.get("token").details["verified"] is None
    assert endpoint.requests == []


def test_transformers_offline_also_means_offline_and_is_named(endpoint):
    """Doctor reads offline mode as the rest of fitchat does (fitchat.hub.catalog), from the env it is given."""
    check = doctor.check_hub({"HF_ENDPOINT": endpoint.url, "TRANSFORMERS_OFFLINE": "1"})
    assert check.status == "info" and check.summary.startswith("TRANSFORMERS_OFFLINE is set")
    assert check.details["offline"] is True
    assert endpoint.requests == []


def test_hub_error_status_is_a_warning(endpoint):
    endpoint.mode = "503"
    check = doctor.check_hub({"HF_ENDPOINT": endpoint.url})
    assert check.status == "warn" and "HTTP 503" in check.summary
    assert check.details["http_status"] == 503 and check.details["reachable"] is False


def test_hub_that_never_answers_times_out_quickly(endpoint):
    endpoint.mode = "hang"
    start = time.monotonic()
    check = doctor.check_hub({"HF_ENDPOINT": endpoint.url}, timeout_s=0.5)
    assert time.monotonic() - start < 3
    assert check.status == "warn" and check.details["reachable"] is False
    assert "Timeout" in check.details["error"]


# --------------------------------------------------------------------------- the token


def test_token_is_verified_and_never_printed(monkeypatch, capsys, endpoint):
    monkeypatch.setenv("HF_ENDPOINT", endpoint.url)
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    rc, report = doctor_json(capsys)
    token = next(c for c in report["checks"] if c["key"] == "token")
    assert token["status"] == "ok" and token["details"] == {"present": True, "source": "HF_TOKEN", "verified": True}
    assert ("/api/whoami-v2", f"Bearer {GOOD_TOKEN}") in endpoint.requests
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert GOOD_TOKEN not in json.dumps(report) and GOOD_TOKEN not in text
    assert GOOD_TOKEN[3:12] not in text  # no prefix of it either
    assert "found in HF_TOKEN (not shown)" in text


def test_rejected_token_from_the_token_file(monkeypatch, capsys, endpoint, private_home):
    monkeypatch.setenv("HF_ENDPOINT", endpoint.url)
    token_file = Path(os.environ["HF_HOME"]) / "token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text("hf_revokedTokenValue123456789\n")
    rc, report = doctor_json(capsys)
    token = next(c for c in report["checks"] if c["key"] == "token")
    assert token["status"] == "warn" and "rejected" in token["summary"]
    assert token["details"]["source"] == str(token_file) and token["details"]["verified"] is False
    assert "hf auth login" in token["fix"]
    assert "hf_revokedTokenValue" not in json.dumps(report)


def test_token_that_is_not_an_hf_token():
    check = doctor.check_token({"HF_TOKEN": "paste-your-token-here", "HF_HOME": "/nonexistent"})
    assert check.status == "warn" and "hf_" in check.summary
    assert "paste-your-token-here" not in check.summary + (check.fix or "")


def test_no_token_explains_gated_models(monkeypatch):
    check = doctor.check_token(dict(os.environ))
    assert check.status == "info" and "gated" in check.summary and "hf auth login" in check.fix


# --------------------------------------------------------------------------- CUDA and the llama.cpp build


def test_cpu_build_on_an_nvidia_machine_fails_with_the_rebuild_command(real_build, tmp_path):
    hw = detect_hardware(nvml=nvidia_machine(driver="550.54.15"), build=real_build, system="Linux", machine="x86_64")
    check = doctor.check_llama_build(hw)
    assert check.status == "fail" and "RTX 4090" in check.summary and "CPU" in check.summary
    assert check.fix.startswith('CMAKE_ARGS="-DGGML_CUDA=on" ')
    assert f"--force-reinstall --no-cache-dir --no-deps llama-cpp-python=={real_build.version}" in check.fix
    assert sys.executable in check.fix  # rebuilds in the environment fitchat runs from


def test_cuda_toolkit_newer_than_the_driver(real_build, tmp_path):
    fake_nvcc(tmp_path / "bin", "13.0")
    hw = detect_hardware(nvml=nvidia_machine(driver="550.54.15"), build=real_build, system="Linux", machine="x86_64")
    report = doctor.run_doctor(hw, env=env_with_path(tmp_path / "bin") | {"HF_HUB_OFFLINE": "1"}, cuda_homes=())
    cuda = report.get("cuda")
    assert cuda.status == "fail"
    assert cuda.details["toolkit"] == "13.0" and cuda.details["driver"] == "550.54.15"
    assert "needs NVIDIA driver 580 or newer" in cuda.summary
    assert "12.x" in cuda.fix and "11.x" in cuda.fix and "13.x" not in cuda.fix
    assert report.failed


def test_cuda_toolkit_ready_to_rebuild(real_build, tmp_path):
    fake_nvcc(tmp_path / "bin", "12.4")
    hw = detect_hardware(nvml=nvidia_machine(driver="550.54.15"), build=real_build, system="Linux", machine="x86_64")
    toolkit = doctor.probe_cuda_toolkit(env_with_path(tmp_path / "bin"), default_homes=())
    assert toolkit is not None and toolkit.release == "12.4" and toolkit.on_path
    assert toolkit.nvcc == str(tmp_path / "bin" / "nvcc")
    check = doctor.check_cuda(hw, toolkit, {})
    assert check.status == "ok" and "ready to rebuild" in check.summary


def test_no_cuda_toolkit_on_an_nvidia_machine(real_build, tmp_path):
    env = env_with_path(tmp_path / "empty")
    assert doctor.probe_cuda_toolkit(env, default_homes=()) is None
    hw = detect_hardware(nvml=nvidia_machine(driver="550.54.15"), build=real_build, system="Linux", machine="x86_64")
    check = doctor.check_cuda(hw, None, env)
    assert check.status == "fail" and "no CUDA toolkit" in check.summary
    assert "12.x" in check.fix and "CMAKE_ARGS=\"-DGGML_CUDA=on\"" in check.fix


def test_nvcc_found_through_cuda_home_but_not_on_path(real_build, tmp_path):
    fake_nvcc(tmp_path / "cuda" / "bin", "12.8")
    env = env_with_path(tmp_path / "empty") | {"CUDA_HOME": str(tmp_path / "cuda")}
    toolkit = doctor.probe_cuda_toolkit(env, default_homes=())
    assert toolkit is not None and not toolkit.on_path and toolkit.release == "12.8"
    hw = detect_hardware(nvml=nvidia_machine(driver="570.86.10"), build=real_build, system="Linux", machine="x86_64")
    check = doctor.check_cuda(hw, toolkit, env)
    assert check.status == "warn" and "not on PATH" in check.summary
    assert f'export PATH="{tmp_path / "cuda" / "bin"}:$PATH"' in check.fix


def test_cuda_home_pointing_nowhere(real_build, tmp_path):
    fake_nvcc(tmp_path / "bin", "12.4")
    env = env_with_path(tmp_path / "bin") | {"CUDA_HOME": str(tmp_path / "no-such-cuda")}
    hw = detect_hardware(nvml=nvidia_machine(), build=real_build, system="Linux", machine="x86_64")
    check = doctor.check_cuda(hw, doctor.probe_cuda_toolkit(env, default_homes=()), env)
    assert check.status == "warn" and "CUDA_HOME" in check.summary
    assert check.fix.startswith(f"export CUDA_HOME={tmp_path}")


def test_cuda_build_on_an_nvidia_machine_is_healthy(tmp_path):
    hw = detect_hardware(
        nvml=nvidia_machine(driver="575.51.03"), build=gpu_build("CUDA0", "NVIDIA GeForce RTX 4090"),
        system="Linux", machine="x86_64",
    )
    report = doctor.run_doctor(hw, env=env_with_path(tmp_path / "empty") | {"HF_HUB_OFFLINE": "1"}, cuda_homes=())
    assert report.get("llama_build").status == "ok" and "with CUDA" in report.get("llama_build").summary
    assert report.get("cuda").status == "ok" and "needed only to rebuild" in report.get("cuda").summary
    assert not report.failed


def test_toolkit_without_a_gpu_is_not_a_problem(real_build, tmp_path):
    fake_nvcc(tmp_path / "bin", "13.0")
    hw = detect_hardware(nvml=NoDriverNvml(), build=real_build, system="Linux", machine="x86_64")
    assert not hw.gpus and "NVML Shared Library Not Found" in hw.gpu_reason
    check = doctor.check_cuda(hw, doctor.probe_cuda_toolkit(env_with_path(tmp_path / "bin"), default_homes=()), {})
    assert check.status == "info" and "CUDA toolkit 13.0" in check.summary and not check.is_problem


# --------------------------------------------------------------------------- Metal


def test_apple_silicon_with_a_cpu_build(real_build):
    hw = detect_hardware(nvml=NoDriverNvml(), sysctl=fake_sysctl(MAC_16G), build=real_build,
                         system="Darwin", machine="arm64")
    build = doctor.check_llama_build(hw)
    assert build.status == "fail" and "without Metal" in build.summary
    assert build.fix.startswith('CMAKE_ARGS="-DGGML_METAL=on" ')
    metal = doctor.check_metal(hw, fake_sysctl(MAC_16G))
    assert metal.status == "info" and "does not use it" in metal.summary


def test_apple_silicon_with_metal():
    metal_build = gpu_build("Metal", "Apple M2 Pro")
    hw = detect_hardware(nvml=NoDriverNvml(), sysctl=fake_sysctl(MAC_16G), build=metal_build, system="Darwin", machine="arm64")
    assert hw.backend == "metal"
    assert doctor.check_llama_build(hw).status == "ok"
    check = doctor.check_metal(hw, fake_sysctl(MAC_16G))
    assert check.status == "ok" and check.details["working_set_source"] == "llama.cpp"
    assert check.details["working_set_bytes"] == 24 * GiB


def test_metal_default_working_set_suggests_the_wired_limit(real_build):
    build = LlamaBuild(real_build.version, True, (BackendDevice("Metal", "Apple M1", "gpu", 0, 0),), real_build.system_info)
    hw = detect_hardware(nvml=NoDriverNvml(), sysctl=fake_sysctl(MAC_16G), build=build, system="Darwin", machine="arm64")
    check = doctor.check_metal(hw, fake_sysctl(MAC_16G))
    assert check.status == "ok" and check.details["working_set_source"] == "default"
    assert "sudo sysctl iogpu.wired_limit_mb=13107" in check.summary


def test_python_under_rosetta(real_build):
    sysctl = fake_sysctl(MAC_16G | {"sysctl.proc_translated": "1"})
    hw = detect_hardware(nvml=NoDriverNvml(), sysctl=sysctl, build=real_build, system="Darwin", machine="x86_64")
    check = doctor.check_metal(hw, sysctl)
    assert check.status == "fail" and "Rosetta" in check.summary and "arm64 Python" in check.fix


def test_intel_mac(real_build):
    sysctl = fake_sysctl(MAC_16G | {"sysctl.proc_translated": "0"})
    hw = detect_hardware(nvml=NoDriverNvml(), sysctl=sysctl, build=real_build, system="Darwin", machine="x86_64")
    assert doctor.check_metal(hw, sysctl).status == "info"


# --------------------------------------------------------------------------- disk


def _fake_cached_model(cache: Path, size: int) -> None:
    repo = cache / "models--org--tiny-GGUF"
    blob = repo / "blobs" / "0123abcd"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"\0" * size)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    snap = repo / "snapshots" / "c0ffee"
    snap.mkdir(parents=True)
    (snap / "tiny.Q4_K_M.gguf").symlink_to(blob)


def test_disk_space_and_cached_models(tmp_path):
    cache = tmp_path / "hf" / "hub"
    _fake_cached_model(cache, 12345)
    check = doctor.check_disk(cache)
    free = check.details["free_bytes"]
    assert check.details["cached_bytes"] == 12345 and free > 0
    assert check.status == ("ok" if free >= doctor.DISK_WARN_BYTES else "warn" if free >= doctor.DISK_FAIL_BYTES else "fail")
    warn = doctor.check_disk(cache, warn_below=free + GiB, fail_below=0)
    assert warn.status == "warn" and "HF_HUB_CACHE" in warn.fix and "fitchat rm" in warn.fix
    fail = doctor.check_disk(cache, warn_below=free + GiB, fail_below=free + GiB)
    assert fail.status == "fail"


def test_disk_check_on_a_cache_that_does_not_exist_yet(tmp_path):
    check = doctor.check_disk(tmp_path / "not" / "yet" / "hub")
    assert check.details["cached_bytes"] == 0 and check.details["total_bytes"] > 0


# --------------------------------------------------------------------------- fix commands per install kind


def test_reinstall_command_per_install_kind(tmp_path):
    (tmp_path / "uv").mkdir()
    (tmp_path / "uv" / "uv-receipt.toml").write_text("[tool]\n")
    (tmp_path / "pipx").mkdir()
    (tmp_path / "pipx" / "pipx_metadata.json").write_text("{}")
    assert doctor.install_kind(str(tmp_path / "uv")) == "uv"
    assert doctor.install_kind(str(tmp_path / "pipx")) == "pipx"
    assert doctor.install_kind(str(tmp_path)) == "pip"
    py = "/opt/fitchat/bin/python"
    assert doctor.reinstall_command("cuda", "0.3.36", kind="uv", executable=py, windows=False) == (
        f'CMAKE_ARGS="-DGGML_CUDA=on" uv pip install --python "{py}" --reinstall --no-cache --no-deps llama-cpp-python==0.3.36'
    )
    assert doctor.reinstall_command("metal", "0.3.36", kind="pipx", executable=py, windows=False) == (
        'CMAKE_ARGS="-DGGML_METAL=on" pipx runpip fitchat install'
        " --force-reinstall --no-cache-dir --no-deps llama-cpp-python==0.3.36"
    )
    assert doctor.reinstall_command("cuda", "not installed", kind="pip", executable="C:\\fc\\python.exe", windows=True) == (
        '$env:CMAKE_ARGS="-DGGML_CUDA=on"; "C:\\fc\\python.exe" -m pip install --force-reinstall --no-cache-dir llama-cpp-python'
    )
    assert doctor.reinstall_command("cpu", "0.3.36", kind="pip", executable=py) == (
        f'"{py}" -m pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python==0.3.36'
    )


def test_min_driver_table():
    assert doctor.min_driver_for("13.0") == 580
    assert doctor.min_driver_for("12.4") == 525 and doctor.min_driver_for("12.4", windows=True) == 527
    assert doctor.min_driver_for("10.2") is None and doctor.min_driver_for("garbage") is None


# --------------------------------------------------------------------------- llama.cpp smoke decode


def _verdict(status: str, *, signal: str | None = None, fallback: str | None = None, cached: bool = True):
    from fitchat.llama.smoke import SmokeVerdict

    return SmokeVerdict(use_extra_bufts=status != "crashed", status=status, signal=signal, message="m",
                        checked_at=0.0, fallback=fallback, cached=cached)


def test_smoke_check_names_the_crash_and_the_exact_rebuild_command(real_build):
    from fitchat.llama.smoke import rebuild_command

    hw = detect_hardware(nvml=NoDriverNvml(), build=real_build)
    worked_around = doctor.check_llama_smoke(hw, _verdict("crashed", signal="SIGILL", fallback="ok"))
    assert worked_around.status == "warn" and "crashed here with SIGILL" in worked_around.summary
    assert "slower prompt processing" in worked_around.summary
    exact = rebuild_command(pip=f'"{sys.executable}" -m pip')
    assert worked_around.fix == f"for a build that needs no workaround: {exact}"
    assert "-DGGML_NATIVE=OFF" in exact and "AMX" not in exact
    broken = doctor.check_llama_smoke(hw, _verdict("crashed", signal="SIGSEGV", fallback="crashed"))
    assert broken.status == "fail" and broken.fix == exact and "even without extra buffer types" in broken.summary
    assert doctor.check_llama_smoke(hw, _verdict("ok")).status == "ok"
    skipped = doctor.check_llama_smoke(hw, _verdict("skipped", cached=False))
    assert skipped.status == "info" and "fitchat pull starter" in (skipped.fix or "")
    assert doctor.check_llama_smoke(hw, _verdict("failed", cached=False)).status == "warn"


@pytest.mark.fresh_smoke_cache
def test_smoke_check_runs_once_then_uses_the_cached_verdict(smollm2, real_build, ample_disk):
    """With the starter model on disk the first doctor decodes with it in a child; the next reads the cache."""
    from fitchat.hub.store import starter_path

    starter_path().parent.mkdir(parents=True, exist_ok=True)
    starter_path().symlink_to(smollm2)
    hw = detect_hardware(nvml=NoDriverNvml(), build=real_build)
    env = {"HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "")}
    first = doctor.run_doctor(hw, env=env, smoke_timeout_s=120).get("llama_smoke")
    assert first.status == "ok" and first.details["cached"] is False and first.details["use_extra_bufts"] is True
    start = time.monotonic()
    second = doctor.run_doctor(hw, env=env, smoke_timeout_s=120).get("llama_smoke")
    assert second.status == "ok" and second.details["cached"] is True
    assert time.monotonic() - start < 5
