"""Measured, not only estimated: what llama.cpp itself reports it allocates for a model.

Two ways to ask, both in a child process so that an abort inside llama.cpp (a ``GGML_ASSERT``
ends the whole process with SIGABRT) cannot take fitchat down:

``load``
    A real load on the CPU (``n_gpu_layers=0``) with the settings fitchat would chat with.
    llama.cpp logs every buffer it allocates (``CPU_Mapped model buffer size = 92.10 MiB``,
    ``CPU KV buffer size``, ``CPU compute buffer size``, ``CPU output buffer size``); the child
    routes that log through ``llama_log_set`` and hands the lines back.
``dry_run``
    llama.cpp's ``no_alloc`` mode ("only load metadata and simulate memory allocations"), the
    one its own ``--fit`` uses. It needs ``load_mode = LLAMA_LOAD_MODE_NONE`` (otherwise it
    aborts) and it logs 0 MiB for the model and KV buffers, so only its compute and output
    buffers are read from the buffer lines; the KV size comes from the ``llama_kv_cache: size =``
    lines, which are computed from the tensors even when nothing is allocated. The weights are
    not measured. A dry run can simulate a GPU offload (``gpu_layers``) without allocating VRAM.

Both take ``moe_cpu_layers``: the experts of that many first blocks stay in RAM through
``tensor_buft_overrides`` (fitchat.model.overrides), as a planned load does; llama.cpp logs each tensor
it overrides ("tensor blk.0.ffn_up_exps.weight (… MiB …) buffer type overridden to CPU"), kept in
``Measurement.overridden``. A real load with an override goes through the same low-level calls as a dry
run (``Llama`` has no argument for it).

Every file is validated with ``read_spec`` before llama.cpp sees it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fitchat.child import crash_line, module_command
from fitchat.errors import FitchatError, LoadFailed
from fitchat.model.estimate import DEFAULT_CTX, DEFAULT_SETTINGS, Estimate, LoadSettings

MiB = 1024 * 1024

_BUFFER_RE = re.compile(r"(?P<device>\S+)\s+(?P<kind>model|KV|compute|output|RS) buffer size =\s*(?P<mib>[\d.]+) MiB")
_KV_SIZE_RE = re.compile(r"llama_kv_cache: size =\s*(?P<mib>[\d.]+) MiB")
_OVERRIDE_RE = re.compile(r"tensor (?P<name>\S+) \(.*\) buffer type overridden to (?P<buft>\S+)")
_RESULT_MARK = "FITCHAT-MEASURE "

#: The accuracy the estimate promises against llama.cpp's own figures: each part within
#: max(2 %, 16 MiB), the total within max(3 %, 32 MiB).
PART_TOLERANCE = (0.02, 16 * MiB)
TOTAL_TOLERANCE = (0.03, 32 * MiB)


class MeasureFailed(LoadFailed):
    """llama.cpp could not load the model to measure it (or died trying)."""


@dataclass(frozen=True)
class Buffer:
    """One buffer line from llama.cpp's log."""

    device: str  # CPU, CPU_Mapped, CPU_REPACK, CUDA0, CUDA_Host, Metal …
    kind: str  # model, KV, compute, output, RS
    bytes: int


@dataclass(frozen=True)
class Measurement:
    """What llama.cpp reported for one load."""

    mode: str  # "load" or "dry_run"
    context: int
    settings: LoadSettings
    gpu_layers: int
    weights_bytes: int | None  # None on a dry run: llama.cpp does not size the weights then
    kv_bytes: int
    compute_bytes: int
    output_bytes: int
    total_bytes: int  # what was measured, all devices (a dry run: without the weights)
    seconds: float
    buffers: tuple[Buffer, ...] = field(default=())
    recurrent_bytes: int = 0  # llama.cpp's RS buffer (recurrent state); counted in kv_bytes too
    moe_cpu_layers: int = 0  # the experts of that many first blocks were kept in RAM (tensor_buft_overrides)
    overridden: tuple[tuple[str, str], ...] = field(default=())  # (tensor, buffer type) llama.cpp overrode

    def measured_json(self) -> dict[str, Any]:
        """The ``"measured"`` object of a variant in ``fitchat fit --json``.

        ``kv_bytes`` here is the attention KV cache alone, ``recurrent_bytes`` the RS buffer; a figure
        llama.cpp logs no buffer for is 0. ``devices`` sums the buffers llama.cpp logged per device
        (a dry run logs its model and KV buffers as 0).
        """
        per_device: dict[str, int] = {}
        for b in self.buffers:
            per_device[b.device] = per_device.get(b.device, 0) + b.bytes
        return {
            "mode": self.mode,
            "context": self.context,
            "gpu_layers": self.gpu_layers,
            "weights_bytes": self.weights_bytes,
            "kv_bytes": self.kv_bytes - self.recurrent_bytes,
            "compute_bytes": self.compute_bytes,
            "output_bytes": self.output_bytes,
            "recurrent_bytes": self.recurrent_bytes,
            "devices": [{"name": name, "bytes": n} for name, n in per_device.items()],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "context": self.context,
            "gpu_layers": self.gpu_layers,
            "weights_bytes": self.weights_bytes,
            "kv_bytes": self.kv_bytes,
            "compute_bytes": self.compute_bytes,
            "output_bytes": self.output_bytes,
            "total_bytes": self.total_bytes,
            "seconds": round(self.seconds, 3),
            "buffers": [{"device": b.device, "kind": b.kind, "bytes": b.bytes} for b in self.buffers],
        }


def parse_buffer_log(text: str) -> list[Buffer]:
    """Every ``… <DEVICE> <kind> buffer size = <N> MiB`` line of a llama.cpp log."""
    return [
        Buffer(m.group("device"), m.group("kind"), round(float(m.group("mib")) * MiB)) for m in _BUFFER_RE.finditer(text)
    ]


def measurement_from_log(
    text: str, *, mode: str, context: int, settings: LoadSettings, gpu_layers: int = 0, seconds: float = 0.0,
    moe_cpu_layers: int = 0,
) -> Measurement:
    """Turn a captured llama.cpp load log into a Measurement."""
    buffers = parse_buffer_log(text)
    if not any(b.kind == "compute" for b in buffers):
        raise MeasureFailed("llama.cpp's log has no compute buffer line; the model did not finish loading")
    kv_sizes = [round(float(m.group("mib")) * MiB) for m in _KV_SIZE_RE.finditer(text)]

    def total(kind: str) -> int:
        return sum(b.bytes for b in buffers if b.kind == kind)

    weights = total("model") if mode == "load" else None
    kv = total("KV") + total("RS")
    if mode == "dry_run" or (kv == 0 and kv_sizes):
        kv = sum(kv_sizes) + total("RS")
    compute, output = total("compute"), total("output")
    return Measurement(
        mode=mode,
        context=context,
        settings=settings,
        gpu_layers=gpu_layers,
        weights_bytes=weights,
        kv_bytes=kv,
        compute_bytes=compute,
        output_bytes=output,
        total_bytes=(weights or 0) + kv + compute + output,
        seconds=seconds,
        buffers=tuple(buffers),
        recurrent_bytes=total("RS"),
        moe_cpu_layers=moe_cpu_layers,
        overridden=tuple((m.group("name"), m.group("buft")) for m in _OVERRIDE_RE.finditer(text)),
    )


# --------------------------------------------------------------------------- accuracy


def within(estimated: int, measured: int, tolerance: tuple[float, int]) -> bool:
    """``|estimated - measured| <= max(rel × measured, abs)``."""
    rel, absolute = tolerance
    return abs(estimated - measured) <= max(rel * measured, absolute)


def accuracy_failures(est: Estimate, meas: Measurement) -> list[str]:
    """The parts (weights, kv, compute, total) where the estimate misses the tolerance; empty when all pass."""
    failures = []
    parts = [("kv", est.kv_bytes, meas.kv_bytes), ("compute", est.compute_bytes, meas.compute_bytes)]
    if meas.weights_bytes is not None:
        parts.insert(0, ("weights", est.weights_bytes, meas.weights_bytes))
        parts.append(("total", est.total_bytes, meas.total_bytes))
    for name, e, m in parts:
        tol = TOTAL_TOLERANCE if name == "total" else PART_TOLERANCE
        if not within(e, m, tol):
            failures.append(f"{name}: estimated {e / MiB:.2f} MiB, measured {m / MiB:.2f} MiB")
    return failures


@dataclass(frozen=True)
class PartCheck:
    """One figure of the estimate beside llama.cpp's, for a side-by-side view."""

    name: str  # weights, KV cache, compute, output, total
    estimated: int
    measured: int | None  # None: llama.cpp did not size it (a dry run's weights)
    within: bool | None  # against PART_TOLERANCE (TOTAL_TOLERANCE for the total); None when not measured
    #: True for a dry run's total: the weights in it are the estimate's (the file's tensors), not llama.cpp's.
    weights_estimated: bool = False


def part_checks(est: Estimate, meas: Measurement) -> tuple[PartCheck, ...]:
    """Weights, KV cache, compute, output and total, estimated and measured, each with its tolerance verdict.

    A dry run does not size the weights; its total then takes the estimate's weights (the tensor
    bytes in the file) plus what llama.cpp measured, so the total still checks KV, compute and output.
    """
    rows: list[PartCheck] = []
    for name, e, m in (("weights", est.weights_bytes, meas.weights_bytes), ("KV cache", est.kv_bytes, meas.kv_bytes),
                       ("compute", est.compute_bytes, meas.compute_bytes),
                       ("output", est.output_bytes, meas.output_bytes)):
        rows.append(PartCheck(name, e, m, None if m is None else within(e, m, PART_TOLERANCE)))
    borrowed = meas.weights_bytes is None
    total = (est.weights_bytes if borrowed else meas.weights_bytes or 0) + meas.kv_bytes + meas.compute_bytes \
        + meas.output_bytes
    rows.append(PartCheck("total", est.total_bytes, total, within(est.total_bytes, total, TOTAL_TOLERANCE), borrowed))
    return tuple(rows)


def device_bytes(meas: Measurement) -> dict[str, dict[str, int]]:
    """llama.cpp's buffers per device name (CUDA0, CUDA_Host, CPU, CPU_Mapped, CPU_REPACK, Metal …) and kind."""
    out: dict[str, dict[str, int]] = {}
    for b in meas.buffers:
        kinds = out.setdefault(b.device, {})
        kinds[b.kind] = kinds.get(b.kind, 0) + b.bytes
    return out


# --------------------------------------------------------------------------- running llama.cpp


def measure(
    path: str | Path,
    ctx: int = DEFAULT_CTX,
    settings: LoadSettings = DEFAULT_SETTINGS,
    *,
    mode: str = "load",
    gpu_layers: int = 0,
    timeout: float = 600,
    moe_cpu_layers: int = 0,
) -> Measurement:
    """Load ``path`` in a child process and return llama.cpp's reported buffers (see module doc)."""
    return measure_many(path, [(ctx, settings)], mode=mode, gpu_layers=gpu_layers, timeout=timeout,
                        moe_cpu_layers=moe_cpu_layers)[0]


def measure_many(
    path: str | Path,
    jobs: list[tuple[int, LoadSettings]],
    *,
    mode: str = "load",
    gpu_layers: int = 0,
    timeout: float = 600,
    moe_cpu_layers: int = 0,
) -> list[Measurement]:
    """Several contexts/settings of one model in one child process (one model load each)."""
    from fitchat.model.gguf_spec import read_spec

    if mode not in ("load", "dry_run"):
        raise FitchatError(f"unknown measure mode {mode!r}; use load or dry_run")
    if mode == "load" and gpu_layers:
        raise FitchatError("a real measuring load runs on the CPU; use a dry run to simulate a GPU offload")
    spec = read_spec(path)  # never hand an invalid file to llama.cpp
    request = {
        "path": str(Path(spec.parts[0])),
        "mode": mode,
        "gpu_layers": gpu_layers,
        "moe_cpu_layers": moe_cpu_layers,
        "jobs": [{"ctx": c, "kwargs": s.llama_kwargs()} for c, s in jobs],
    }
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        proc = subprocess.run(
            module_command("fitchat.model.measure", json.dumps(request)),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise MeasureFailed(f"measuring {spec.file} took longer than {timeout:.0f} s; try --measure dry") from None
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        raise MeasureFailed(f"llama.cpp aborted ({sig}) while measuring {spec.file}: {crash_line(proc.stderr)}")
    payload = next((ln[len(_RESULT_MARK):] for ln in reversed(proc.stdout.splitlines()) if ln.startswith(_RESULT_MARK)), None)
    if payload is None:
        raise MeasureFailed(f"measuring {spec.file} failed (exit {proc.returncode}): {crash_line(proc.stderr)}")
    results = json.loads(payload)
    out = []
    for (c, s), r in zip(jobs, results):
        if "error" in r:
            raise MeasureFailed(f"llama.cpp could not load {spec.file} at context {c}: {r['error']}")
        out.append(measurement_from_log(r["log"], mode=mode, context=c, settings=s, gpu_layers=gpu_layers,
                                        seconds=r["seconds"], moe_cpu_layers=moe_cpu_layers))
    return out


#: The largest model a sparse header file is made for (the sizes come from the Hub).
MAX_SPARSE_BYTES = 2 * 1024**4


def measure_header(
    parts: Sequence[tuple[int, bytes]],
    ctx: int = DEFAULT_CTX,
    settings: LoadSettings = DEFAULT_SETTINGS,
    *,
    gpu_layers: int = 0,
    label: str = "the model",
    timeout: float = 600,
    moe_cpu_layers: int = 0,
) -> Measurement:
    """llama.cpp's dry run on a model of which only the header bytes are at hand (``(full size, first bytes)``
    per file of the set, in order), as for a variant on the Hub.

    Each file becomes a sparse file of its full size holding those bytes, in a temporary folder under
    fitchat's cache folder that is removed afterwards; a dry run reads no tensor data, so the zeros
    beyond the header are never looked at.
    """
    from fitchat.paths import cache_dir

    if not parts:
        raise FitchatError(f"no header bytes for {label}")
    total = 0
    for size, head in parts:
        if not head or size < len(head):
            raise FitchatError(f"{label}: the header read does not fit the announced file size")
        total += size
    if total > MAX_SPARSE_BYTES:
        raise FitchatError(f"{label} is announced at {total / 1024**4:.1f} TiB, more than fitchat measures "
                           f"({MAX_SPARSE_BYTES // 1024**4} TiB)")
    root = cache_dir() / "dry-run"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="header-", dir=root))
    try:
        # Names llama.cpp derives the other parts of a split set from (llama_split_path).
        names = ["model.gguf"] if len(parts) == 1 else [
            f"model-{i:05d}-of-{len(parts):05d}.gguf" for i in range(1, len(parts) + 1)]
        for name, (size, head) in zip(names, parts):
            with open(folder / name, "wb") as fh:
                fh.write(head)
                fh.truncate(size)
            if (folder / name).stat().st_blocks * 512 > len(head) + (64 << 20):
                # The file system filled the hole with real blocks: a dry run must not cost the model's size.
                raise FitchatError(f"{label}: the file system at {root} does not keep sparse files, so fitchat cannot "
                                   "measure without taking the model's size on disk; measure a downloaded file instead")
        return measure(folder / names[0], ctx, settings, mode="dry_run", gpu_layers=gpu_layers, timeout=timeout,
                       moe_cpu_layers=moe_cpu_layers)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- the child


def _child(request: dict[str, Any]) -> list[dict[str, Any]]:
    import ctypes

    import llama_cpp

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    path = request["path"]
    from fitchat.model.overrides import expert_overrides

    overrides = expert_overrides(int(request.get("moe_cpu_layers", 0)))  # alive until the child ends
    results: list[dict[str, Any]] = []
    for job in request["jobs"]:
        lines.clear()
        start = time.perf_counter()
        try:
            if request["mode"] == "load" and overrides is None:
                _real_load(llama_cpp, path, job["ctx"], job["kwargs"])
            else:
                _dry_run(llama_cpp, path, job["ctx"], job["kwargs"], request["gpu_layers"],
                         overrides=overrides, alloc=request["mode"] == "load")
        except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
            results.append({"error": f"{type(exc).__name__}: {exc}"})
            continue
        text = "".join(lines)
        keep = "\n".join(ln for ln in text.splitlines()
                         if "buffer size" in ln or "llama_kv_cache: size" in ln or "buffer type overridden" in ln)
        results.append({"log": keep, "seconds": time.perf_counter() - start})
    return results


def _real_load(llama_cpp: Any, path: str, ctx: int, kwargs: dict[str, Any]) -> None:
    llm = llama_cpp.Llama(path, n_ctx=ctx, n_gpu_layers=0, verbose=False, **kwargs)
    llm.close()


def _dry_run(llama_cpp: Any, path: str, ctx: int, kwargs: dict[str, Any], gpu_layers: int, *,
             overrides: Any = None, alloc: bool = False) -> None:
    """A dry run (or with ``alloc``, a real load through the same calls, for what ``Llama`` cannot set)."""
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = gpu_layers
    if overrides is not None:
        mp.tensor_buft_overrides = overrides.address
    if not alloc:
        mp.no_alloc = True
        mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE  # without it no_alloc aborts the process
    model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
    if not model:
        raise RuntimeError("llama_model_load_from_file failed")
    try:
        # The same clamping llama-cpp-python's Llama applies, so the figures match a real load.
        n_batch = min(ctx, kwargs["n_batch"])
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = ctx
        cp.n_batch = n_batch
        cp.n_ubatch = min(n_batch, kwargs["n_ubatch"])
        cp.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if kwargs["flash_attn"] else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cp.swa_full = kwargs["swa_full"]
        cp.type_k = kwargs["type_k"]
        cp.type_v = kwargs["type_v"]
        context = llama_cpp.llama_init_from_model(model, cp)
        if not context:
            raise RuntimeError("llama_init_from_model failed")
        llama_cpp.llama_free(context)
    finally:
        llama_cpp.llama_model_free(model)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    results = _child(json.loads(argv[0]))
    sys.stdout.write("\n" + _RESULT_MARK + json.dumps(results) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
