"""Can this llama.cpp build run on this CPU? A smoke decode in a child process, cached per library and CPU.

A native build can die in its CPU kernels: a ``-march=native`` build on an Intel Xeon that reports
AMX, under KVM, faults with SIGILL in ``ggml_backend_amx_mul_mat`` at the first decode (loading alone
works). In fitchat's own process that kills the UI. So before the first load on a machine, and again
whenever the llama.cpp library files or the CPU change, a child process loads a small real model and
decodes a few tokens:

- first with llama.cpp's extra buffer types on (the AMX and CPU_REPACK weight copies, what a load
  uses by default);
- if that child dies by a signal, again with ``use_extra_bufts = False`` (plain CPU kernels only).

The verdict (:class:`SmokeVerdict`) says which way to load, and is kept as JSON in fitchat's cache
dir, keyed by the library files (path, size, mtime) and the CPU (model name and flags).

Which model: the starter model when it is on disk (135M parameters: the child loads and decodes it
in about a second, and its Q4_1 weights are exactly what the AMX buffer type takes), else the model
about to be loaded. A GGUF written on the spot with gguf's writer has no trained vocabulary and
weights, so llama.cpp's load paths for a real file would not be the ones exercised.

The engine's loader calls :func:`guard_load` around its ``Llama(...)`` call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fitchat.child import crash_line, module_command
from fitchat.errors import LoadFailed
from fitchat.llama.signals import signal_meaning, signal_name
from fitchat.model.estimate import LoadSettings

OK, CRASHED, FAILED, SKIPPED = "ok", "crashed", "failed", "skipped"

#: The cache file (in :func:`fitchat.paths.cache_dir`) and its format version.
CACHE_NAME = "llama-smoke.json"
CACHE_VERSION = 1
#: How long one child may take (load + decode), seconds.
SMOKE_TIMEOUT_S = 120.0
#: Tokens decoded after the prompt.
SMOKE_TOKENS = 4
#: A prompt long enough that its evaluation takes the batched (matrix-matrix) kernels too.
SMOKE_PROMPT = "The quick brown fox jumps over the lazy dog. " * 8
#: Test-only: the child sends itself this signal (a name, e.g. SIGILL) when extra buffer types are on,
#: standing in for a CPU that faults in those kernels.
FAKE_SIGNAL_ENV = "FITCHAT_SMOKE_FAKE_SIGNAL"

_RESULT_MARK = "FITCHAT-SMOKE "

#: What a signal that ends llama.cpp most likely means.

#: /proc/cpuinfo flag -> the llama.cpp CMake option that turns on the same instructions.
_PORTABLE_FLAGS: tuple[tuple[str, str], ...] = (
    ("avx", "GGML_AVX"),
    ("avx2", "GGML_AVX2"),
    ("fma", "GGML_FMA"),
    ("f16c", "GGML_F16C"),
    ("bmi2", "GGML_BMI2"),
    ("avx512f", "GGML_AVX512"),
    ("avx512vbmi", "GGML_AVX512_VBMI"),
    ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
)


class BuildUnusable(LoadFailed):
    """The llama.cpp build crashed here even without extra buffer types: loading would take fitchat down."""


@dataclass(frozen=True)
class SmokeVerdict:
    """How llama.cpp may load on this machine, as the smoke decode found.

    ``status`` is the native run's outcome (extra buffer types on): ``ok``, ``crashed`` (died by
    ``signal``), ``failed`` (an error or a timeout: nothing learned, not cached) or ``skipped`` (no model
    to decode with). ``fallback`` is the outcome of the retry without extra buffer types, when there was one.
    """

    use_extra_bufts: bool
    status: str
    signal: str | None
    message: str
    checked_at: float
    fallback: str | None = None
    model: str | None = None
    cached: bool = False

    @property
    def usable(self) -> bool:
        """Whether a load (as ``use_extra_bufts`` says) is expected to run; False only when both runs crashed."""
        return not (self.status == CRASHED and self.fallback != OK)

    @property
    def worked_around(self) -> bool:
        """The native run crashed and the load without extra buffer types works."""
        return self.status == CRASHED and self.fallback == OK

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("cached")
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SmokeVerdict:
        """Raise ValueError (or KeyError/TypeError) on anything that is not a verdict."""
        status, fallback = data["status"], data.get("fallback")
        sig = data.get("signal")
        if status not in (OK, CRASHED) or fallback not in (None, OK, CRASHED, FAILED):
            raise ValueError(f"not a cacheable status: {status!r}/{fallback!r}")
        if not isinstance(data["use_extra_bufts"], bool) or not isinstance(data["message"], str):
            raise ValueError("bad field types")
        if sig is not None and not isinstance(sig, str):
            raise ValueError("bad signal")
        return cls(
            use_extra_bufts=data["use_extra_bufts"], status=status, signal=sig, message=data["message"],
            checked_at=float(data["checked_at"]), fallback=fallback, model=data.get("model"), cached=True,
        )


# --------------------------------------------------------------------------- the override


_override_lock = threading.Lock()
_override_local = threading.local()
_original_default_params: Callable[[], Any] | None = None


def _install_default_params_hook() -> None:
    """Wrap ``llama_model_default_params`` once, so that overrides apply per thread (see below)."""
    global _original_default_params
    with _override_lock:
        if _original_default_params is not None:
            return
        import llama_cpp
        import llama_cpp.llama_cpp as low

        original = low.llama_model_default_params

        def default_params() -> Any:
            params = original()
            for fields in getattr(_override_local, "stack", ()):
                for name, value in fields.items():
                    setattr(params, name, value)
            return params

        _original_default_params = original
        low.llama_model_default_params = default_params  # what llama_cpp.Llama calls
        llama_cpp.llama_model_default_params = default_params  # the package's re-export


@contextlib.contextmanager
def model_params_override(**fields: Any) -> Iterator[None]:
    """While inside, ``llama_cpp.llama_model_default_params()`` returns params with ``fields`` set.

    ``llama_cpp.Llama`` takes its model parameters from that function and has no argument for
    some of them (``use_extra_bufts``, ``no_host``). The override applies to loads made by this
    thread only, so a load elsewhere at the same time is untouched; overrides nest.
    """
    import llama_cpp

    known = {field[0] for field in llama_cpp.llama_model_params._fields_}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"llama_model_params has no field {', '.join(unknown)}")
    _install_default_params_hook()
    stack = getattr(_override_local, "stack", None)
    if stack is None:
        stack = _override_local.stack = []
    stack.append(dict(fields))
    try:
        yield
    finally:
        stack.pop()


def load_params(verdict: SmokeVerdict) -> contextlib.AbstractContextManager[None]:
    """The override a load needs under ``verdict`` (none when extra buffer types are fine)."""
    if verdict.use_extra_bufts:
        return contextlib.nullcontext()
    return model_params_override(use_extra_bufts=False)


# --------------------------------------------------------------------------- identity and cache


def library_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """Where llama-cpp-python loads llama.cpp from (``LLAMA_CPP_LIB_PATH`` or its ``lib/``), without importing it."""
    env = os.environ if env is None else env
    override = env.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "lib"


def library_fingerprint(lib_dir: Path | None = None) -> str:
    """Hash of every shared library file's path, size and mtime in ``lib_dir`` (libllama, libggml-cpu …)."""
    lib_dir = library_dir() if lib_dir is None else lib_dir
    h = hashlib.sha256()
    files: list[Path] = []
    if lib_dir is not None and lib_dir.is_dir():
        files = sorted(p for p in lib_dir.iterdir() if p.is_file() and (".so" in p.name or p.suffix in (".dylib", ".dll")))
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if not files:
        h.update(f"no library in {lib_dir}".encode())
    return h.hexdigest()[:32]


def cache_key(lib_dir: Path | None = None) -> str:
    """The verdict's key: the library files and the CPU (model name and flags)."""
    from fitchat.model.hardware import cpu_identity

    model, flags = cpu_identity()
    cpu = hashlib.sha256(f"{model}\0{' '.join(flags)}".encode()).hexdigest()[:16]
    return f"{library_fingerprint(lib_dir)}-{cpu}"


def cache_path() -> Path:
    from fitchat.paths import cache_dir

    return cache_dir() / CACHE_NAME


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries; a missing or damaged file reads as empty (and is rewritten on the next store)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _write_cache(path: Path, entries: Mapping[str, Any]) -> None:
    """Atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"version": CACHE_VERSION, "entries": dict(entries)}, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def settings_for_this_build(settings: LoadSettings) -> LoadSettings:
    """``settings`` as this build loads them here: without extra buffer types when the smoke decode found the
    native build crashing with them (the cached verdict; no child is started), so the estimate counts no AMX
    or repacked copies that the load will not make."""
    verdict = cached_verdict()
    if verdict is None or verdict.use_extra_bufts or not settings.use_extra_bufts:
        return settings
    return dataclasses.replace(settings, use_extra_bufts=False)


def cached_verdict(key: str | None = None, path: Path | None = None) -> SmokeVerdict | None:
    """The stored verdict for this library and CPU, or None."""
    entry = _read_cache(path or cache_path()).get(key or cache_key())
    if not isinstance(entry, dict):
        return None
    try:
        return SmokeVerdict.from_json(entry["verdict"])
    except (KeyError, TypeError, ValueError):
        return None


def _store(key: str, verdict: SmokeVerdict, path: Path) -> None:
    entries = _read_cache(path)
    entries[key] = {"verdict": verdict.to_json(), "notified": False}
    with contextlib.suppress(OSError):  # a read-only cache only means checking again next time
        _write_cache(path, entries)


# --------------------------------------------------------------------------- the child


@dataclass(frozen=True)
class SmokeRun:
    """One child's outcome."""

    status: str  # ok, crashed, failed
    signal: str | None
    message: str




def smoke_command(model: Path, use_extra_bufts: bool, tokens: int = SMOKE_TOKENS) -> list[str]:
    cmd = module_command("fitchat.llama.smoke", "--child", str(model), "--tokens", str(tokens))
    return cmd if use_extra_bufts else [*cmd, "--no-extra-bufts"]


def run_smoke(
    model: Path,
    use_extra_bufts: bool,
    *,
    timeout_s: float = SMOKE_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> SmokeRun:
    """Load ``model`` and decode a few tokens in a child process; never raises for what the child does."""
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("OMP_NUM_THREADS", "1")
    try:
        proc = subprocess.run(
            smoke_command(model, use_extra_bufts), capture_output=True, text=True, timeout=timeout_s,
            env=child_env, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return SmokeRun(FAILED, None, f"the smoke decode took longer than {timeout_s:.0f} s")
    except OSError as exc:
        return SmokeRun(FAILED, None, f"could not start the smoke decode: {exc}")
    if proc.returncode < 0:
        name = signal_name(proc.returncode)
        return SmokeRun(CRASHED, name, f"died with {name}: {signal_meaning(name)}")
    payload = next((ln[len(_RESULT_MARK):] for ln in reversed(proc.stdout.splitlines()) if ln.startswith(_RESULT_MARK)), None)
    if payload is None:
        return SmokeRun(FAILED, None, f"the smoke decode failed (exit {proc.returncode}): {crash_line(proc.stderr)}")
    try:
        result = json.loads(payload)
        status, message = str(result["status"]), str(result["message"])
    except (ValueError, KeyError, TypeError):
        return SmokeRun(FAILED, None, "the smoke decode answered something unreadable")
    return SmokeRun(OK if status == OK else FAILED, None, message)


def _child(model: str, use_extra_bufts: bool, tokens: int) -> dict[str, Any]:
    """In the child: load, evaluate the prompt, decode ``tokens`` tokens."""
    import llama_cpp

    start = time.perf_counter()
    override = contextlib.nullcontext() if use_extra_bufts else model_params_override(use_extra_bufts=False)
    try:
        with override:
            llm = llama_cpp.Llama(model_path=model, n_ctx=256, n_batch=128, n_gpu_layers=0, verbose=False)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        return {"status": FAILED, "message": f"llama.cpp could not load {Path(model).name}: {exc}"}
    fake = os.environ.get(FAKE_SIGNAL_ENV)
    if fake and use_extra_bufts:
        os.kill(os.getpid(), getattr(signal, fake))
    try:
        prompt = llm.tokenize(SMOKE_PROMPT.encode(), add_bos=True)
        llm.eval(prompt)
        for _ in range(tokens):
            llm.eval([llm.sample(temp=0.0)])
    except Exception as exc:  # noqa: BLE001
        return {"status": FAILED, "message": f"decoding with {Path(model).name} failed: {exc}"}
    finally:
        llm.close()
    return {"status": OK, "message": f"decoded {len(prompt)} + {tokens} tokens in {time.perf_counter() - start:.1f} s"}


# --------------------------------------------------------------------------- the verdict


def smoke_model(model_path: Path | None = None) -> Path | None:
    """The model the smoke decode loads: the starter when it is on disk, else ``model_path``."""
    from fitchat.hub.starter import STARTER
    from fitchat.hub.store import starter_path

    starter = starter_path()
    with contextlib.suppress(OSError):
        if starter.is_file() and starter.stat().st_size == STARTER.size_bytes:
            return starter
    if model_path is not None and Path(model_path).is_file():
        return Path(model_path)
    return None


def check(
    model: Path, *, timeout_s: float = SMOKE_TIMEOUT_S, env: Mapping[str, str] | None = None
) -> SmokeVerdict:
    """Run the smoke decode now (native, then without extra buffer types if the native run died)."""
    now = time.time()
    native = run_smoke(model, True, timeout_s=timeout_s, env=env)
    if native.status == OK:
        return SmokeVerdict(True, OK, None, f"smoke decode with {model.name} ok ({native.message})", now, model=str(model))
    if native.status == FAILED:
        return SmokeVerdict(True, FAILED, None, native.message, now, model=str(model))
    retry = run_smoke(model, False, timeout_s=timeout_s, env=env)
    if retry.status == OK:
        message = (f"the native run {native.message}; without extra buffer types (AMX, CPU_REPACK) "
                   f"it decodes fine ({retry.message})")
    elif retry.status == CRASHED:
        message = f"the native run {native.message}; without extra buffer types it {retry.message} too"
    else:
        message = f"the native run {native.message}; the retry without extra buffer types failed: {retry.message}"
    return SmokeVerdict(False, CRASHED, native.signal, message, now, fallback=retry.status, model=str(model))


def runtime_verdict(
    model_path: Path | None = None,
    *,
    refresh: bool = False,
    run: bool = True,
    timeout_s: float = SMOKE_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    lib_dir: Path | None = None,
    cache: Path | None = None,
) -> SmokeVerdict:
    """How llama.cpp may load here: the cached verdict at once when library and CPU are unchanged, else a smoke decode.

    ``model_path``: the model about to be loaded, used when the starter model is not on disk.
    ``run=False`` never starts a child (a quick ``skipped`` verdict when nothing is cached).
    Definite verdicts (``ok``, ``crashed``) are cached; a failure or a timeout is not, so it is tried again.
    """
    if lib_dir is None and env is not None:
        lib_dir = library_dir(env)
    key = cache_key(lib_dir)
    path = cache or cache_path()
    if not refresh:
        found = cached_verdict(key, path)
        if found is not None:
            return found
    model = smoke_model(model_path)
    if model is None or not run:
        why = "no model on disk to decode with ('fitchat pull starter' fetches a small one)" if model is None \
            else "not checked yet"
        return SmokeVerdict(True, SKIPPED, None, why, time.time())
    verdict = check(model, timeout_s=timeout_s, env=env)
    if verdict.status in (OK, CRASHED):
        _store(key, verdict, path)
    return verdict


# --------------------------------------------------------------------------- telling the user


def cpu_flags() -> tuple[str, ...]:
    from fitchat.model.hardware import cpu_identity

    return cpu_identity()[1]


def portable_cmake_args(flags: Sequence[str] | None = None) -> str:
    """CMake options for a build that needs no run-time detection: this CPU's x86 extensions named one by one
    (AVX-512 kept where the CPU has it), ``GGML_NATIVE`` off, so AMX is left out."""
    have = set(cpu_flags() if flags is None else flags)
    args = ["-DGGML_NATIVE=OFF"]
    args += [f"-D{option}=ON" for flag, option in _PORTABLE_FLAGS if flag in have]
    return " ".join(args)


def rebuild_command(flags: Sequence[str] | None = None, *, pip: str = "pip", extra_cmake: str = "") -> str:
    """The exact command that rebuilds llama-cpp-python without AMX and ``-march=native``."""
    args = " ".join(a for a in (portable_cmake_args(flags), extra_cmake.strip()) if a)
    return f'CMAKE_ARGS="{args}" {pip} install --force-reinstall --no-cache-dir llama-cpp-python'


def notice_text(verdict: SmokeVerdict, flags: Sequence[str] | None = None) -> str | None:
    """What the user is told when fitchat works around the build (None when there is nothing to tell)."""
    if verdict.status != CRASHED:
        return None
    sig = verdict.signal or "a signal"
    where = "in its AMX/repacked CPU kernels" if sig == "SIGILL" else f"({signal_meaning(sig)})"
    fix = rebuild_command(flags)
    if not verdict.usable:
        return (f"this llama.cpp build crashed here with {sig} {where}, even without its repacked CPU kernels: "
                f"fitchat cannot load models with it; rebuild it: {fix}")
    return (f"this llama.cpp build crashed here with {sig} {where}; fitchat loads without them "
            f"(no repacked CPU kernels: slower prompt processing); for a build that needs no workaround: {fix}")


def take_notice(verdict: SmokeVerdict, key: str | None = None, cache: Path | None = None) -> str | None:
    """:func:`notice_text` the first time only for this library and CPU (remembered in the cache)."""
    text = notice_text(verdict)
    if text is None:
        return None
    path = cache or cache_path()
    key = key or cache_key()
    entries = _read_cache(path)
    entry = entries.get(key)
    if isinstance(entry, dict):
        if entry.get("notified"):
            return None
        entry["notified"] = True
        with contextlib.suppress(OSError):
            _write_cache(path, entries)
    return text


@contextlib.contextmanager
def guard_load(
    model_path: str | Path,
    *,
    on_notice: Callable[[str], None] | None = None,
    timeout_s: float = SMOKE_TIMEOUT_S,
) -> Iterator[SmokeVerdict]:
    """Wrap the engine's ``Llama(...)`` call: ``with guard_load(path, on_notice=notify): llm = load(path, ...)``.

    Gets the verdict (cached, or a smoke decode in a child), tells the user once when the build is
    worked around, and inside the block makes loads *in this thread* use ``use_extra_bufts=False``
    when the native build crashed here. Raises :class:`BuildUnusable` when it crashed both ways.
    """
    verdict = runtime_verdict(Path(model_path), timeout_s=timeout_s)
    text = take_notice(verdict)
    if not verdict.usable:
        raise BuildUnusable(text or verdict.message)
    if text and on_notice is not None:
        on_notice(text)
    with load_params(verdict):
        yield verdict


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fitchat.llama.smoke [--recheck] [--model FILE] [--fetch-starter] [--cmake-args]``.

    Exit status: 0 the native build decodes; 2 it crashed, and works without extra buffer types;
    4 it crashed both ways; 1 the check failed (an error, a timeout); 3 skipped (no model to decode with).
    """
    import argparse

    p = argparse.ArgumentParser(prog="python -m fitchat.llama.smoke", description="Smoke-test the llama.cpp build.")
    p.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    p.add_argument("--no-extra-bufts", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=SMOKE_TOKENS, help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help="a GGUF to decode with when the starter model is not on disk")
    p.add_argument("--recheck", action="store_true", help="ignore the cached verdict")
    p.add_argument("--fetch-starter", action="store_true", help="fetch the starter model first when it is missing")
    p.add_argument("--timeout", type=float, default=SMOKE_TIMEOUT_S, help="seconds per child (default %(default)s)")
    p.add_argument("--cmake-args", action="store_true", help="print the portable CMAKE_ARGS for this CPU and exit")
    args = p.parse_args(argv)
    if args.child:
        with contextlib.suppress(ImportError, OSError, ValueError):  # a crash here leaves no core file behind
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        result = _child(args.child, not args.no_extra_bufts, args.tokens)
        sys.stdout.write("\n" + _RESULT_MARK + json.dumps(result) + "\n")
        sys.stdout.flush()
        return 0
    if args.cmake_args:
        print(portable_cmake_args())
        return 0
    if args.fetch_starter and smoke_model(None) is None:
        from fitchat.errors import FitchatError
        from fitchat.hub.starter import fetch_starter
        from fitchat.hub.store import starter_path

        try:
            fetch_starter(starter_path())
        except FitchatError as exc:
            print(f"llama.cpp smoke decode: skipped: could not fetch the starter model: {exc}")
            return 3
    verdict = runtime_verdict(args.model, refresh=args.recheck, timeout_s=args.timeout)
    if verdict.status == OK:
        print(f"llama.cpp smoke decode: ok: {verdict.message}")
        return 0
    if verdict.status == SKIPPED:
        print(f"llama.cpp smoke decode: skipped: {verdict.message}")
        return 3
    if verdict.worked_around:
        print(f"llama.cpp smoke decode: crashed with {verdict.signal}, works without extra buffer types: {verdict.message}")
        print(f"for a build that needs no workaround: {rebuild_command()}")
        return 2
    print(f"llama.cpp smoke decode: {verdict.status}: {verdict.message}")
    if verdict.status == CRASHED:
        print(f"rebuild: {rebuild_command()}")
        return 4
    return 1


if __name__ == "__main__":
    sys.exit(main())
