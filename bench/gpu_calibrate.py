"""fitchat's estimate against llama.cpp's own GPU and host buffers, per device, for the plans fitchat makes.

    python bench/gpu_calibrate.py [--ctx 4096 32768] [--quick] [--json] [--no-flash-attn]
    LLAMA_CPP_LIB_PATH=<cuda build>/bin python bench/gpu_calibrate.py      # with bench/cuda_build.sh's libraries

Every figure comes from llama.cpp's dry run (``no_alloc`` with ``LLAMA_LOAD_MODE_NONE``, in a child
process; fitchat.model.measure): no VRAM is allocated and no tensor data is read, so real-scale models
are measured from their header alone, written into a sparse file of the full size. Models:

- the real SmolLM2-135M quants and gemma-3-270m Q4_K_M of tests/models.py;
- the real-scale headers of tests/arch_factory.py (Llama-3.1-8B and 70B, Qwen3-30B-A3B, gpt-oss-20b and
  120b, gemma-3-12b, DeepSeek-V2-Lite).

Plans, each at every context: ``cpu`` (no offload), and where the build sees a GPU ``full`` (every
layer and the output on the GPU), ``split`` (half the layers) and ``moe-ram`` (all layers on the GPU,
every block's experts in RAM; MoE models only). The device names are llama.cpp's own, read from its buffer lines (``CUDA0``,
``CUDA_Host``, ``CPU``, ``CPU_Mapped`` …). A dry run sizes the KV cache (all devices together), the
compute buffer of each device and the output buffer, not the weights; those rows are checked against
fitchat's tolerances (each part within max(2 %, 16 MiB), their sum within max(3 %, 32 MiB)).

Without a GPU in the build (a CPU-only llama-cpp-python) it says so and runs the ``cpu`` plan.
Exit status 0 when it ran (whatever the verdicts; ``--strict`` makes a row outside tolerance exit 1),
2 when llama.cpp could not measure a model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fitchat.model.estimate import DEFAULT_SETTINGS, Estimate, LoadSettings, estimate  # noqa: E402
from fitchat.model.gguf_spec import ModelSpec, read_spec  # noqa: E402
from fitchat.model.hardware import BackendDevice, parse_isa, probe_llama_build  # noqa: E402
from fitchat.model.measure import (  # noqa: E402
    PART_TOLERANCE,
    TOTAL_TOLERANCE,
    Measurement,
    device_bytes,
    measure_many,
    within,
)

MiB = 1024 * 1024


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Subject:
    """A model to measure: a file on disk, or a header with the full size it announces (measured sparse)."""

    name: str
    path: Path  # a GGUF llama.cpp can dry-run (a sparse file holding the header alone is enough)


def real_models(quick: bool) -> Iterator[Subject]:
    from tests import models

    yield Subject("SmolLM2-135M Q4_K_M", models.smollm2_variant("Q4_K_M"))
    if quick:
        return
    for q in ("Q4_1", "Q8_0"):
        yield Subject(f"SmolLM2-135M {q}", models.smollm2_variant(q))
    yield Subject("gemma-3-270m Q4_K_M", models.gemma3_270m())


def real_scale_models(directory: Path) -> Iterator[Subject]:
    """The real-scale headers of tests/arch_factory.py (Llama-3.1-8B/70B, Qwen3-30B-A3B, gpt-oss, gemma-3-12b,
    DeepSeek-V2-Lite), each a sparse file of the model's full size."""
    from tests import arch_factory

    for name in arch_factory.REAL:
        yield Subject(f"{name} (header)", arch_factory.real_scale(name, directory))


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class PlanCase:
    name: str
    gpu_layers: int
    moe_cpu_layers: int = 0


def plans_for(spec: ModelSpec, gpu: bool) -> list[PlanCase]:
    if not gpu:
        return [PlanCase("cpu", 0)]
    n = spec.n_layers
    out = [PlanCase("cpu", 0), PlanCase("full", n + 1), PlanCase("split", max(1, n // 2))]
    if spec.n_expert:
        out.append(PlanCase("moe-ram", n + 1, moe_cpu_layers=n))
    return out


# --------------------------------------------------------------------------- comparing


def is_gpu_buffer(device: str) -> bool:
    """llama.cpp's buffer names: ``CUDA0``, ``Metal``, ``Vulkan0`` … are device memory; ``CPU``, ``CPU_Mapped``,
    ``CPU_REPACK``, ``CUDA_Host`` (pinned host memory) are RAM."""
    return not (device.startswith("CPU") or device.endswith("_Host") or device == "AMX")


def rows_for(est: Estimate, meas: Measurement) -> list[tuple[str, int, int]]:
    """(figure, estimated, measured) for what a dry run sizes, split between GPU and host where llama.cpp does."""
    dev = device_bytes(meas)
    gpu_compute = sum(k.get("compute", 0) for d, k in dev.items() if is_gpu_buffer(d))
    host_compute = sum(k.get("compute", 0) for d, k in dev.items() if not is_gpu_buffer(d))
    rows = [("KV cache", est.kv_bytes, meas.kv_bytes)]
    if gpu_compute or est.gpu_compute_bytes:
        rows.append(("GPU compute", est.gpu_compute_bytes, gpu_compute))
        rows.append(("host compute", est.compute_bytes - est.gpu_compute_bytes, host_compute))
    else:
        rows.append(("compute", est.compute_bytes, meas.compute_bytes))
    rows.append(("output", est.output_bytes, meas.output_bytes))
    rows.append(("sum", est.kv_bytes + est.compute_bytes + est.output_bytes,
                 meas.kv_bytes + meas.compute_bytes + meas.output_bytes))
    return rows


def estimate_for(spec: ModelSpec, ctx: int, settings: LoadSettings, plan: PlanCase, isa: tuple[str, ...],
                 gpu_host_buffer: bool) -> Estimate:
    """The estimate as fitchat's planner makes it for this plan (on a CUDA build, CPU weights sit in its host buffer)."""
    return estimate(spec, ctx, settings, gpu_layers=plan.gpu_layers, cpu_isa=isa, moe_cpu_layers=plan.moe_cpu_layers,
                    gpu_host_buffer=gpu_host_buffer)


def run_subject(subject: Subject, jobs: list[tuple[int, LoadSettings]], plan: PlanCase) -> list[Measurement]:
    return measure_many(subject.path, jobs, mode="dry_run", gpu_layers=plan.gpu_layers, moe_cpu_layers=plan.moe_cpu_layers)


# --------------------------------------------------------------------------- main


def gpu_devices() -> tuple[list[BackendDevice], str]:
    build = probe_llama_build()
    return [d for d in build.devices if d.kind in ("gpu", "igpu")], build.system_info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, nargs="+", default=[4096, 32768], help="contexts (default 4096 32768)")
    parser.add_argument("--quick", action="store_true", help="one model (SmolLM2 Q4_K_M) at 2048 tokens, no real-scale header")
    parser.add_argument("--no-flash-attn", action="store_true", help="measure with flash attention off")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a row is outside tolerance")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    settings = dataclasses.replace(DEFAULT_SETTINGS, flash_attn=not args.no_flash_attn)
    contexts = [2048] if args.quick else args.ctx
    gpus, system_info = gpu_devices()
    isa = parse_isa(system_info)
    host_buffer = any(d.name.startswith("CUDA") for d in gpus)  # as fitchat.model.plan estimates for CUDA machines
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    if gpus:
        say("GPU devices: " + "; ".join(f"{d.name} ({d.description}, {d.total_bytes / 1024**3:.1f} GiB)" for d in gpus))
    else:
        say("No GPU device found in this llama.cpp build (a CPU build, or no GPU here): running the cpu plan only.")

    results: list[dict[str, Any]] = []
    failed = False
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fitchat-gpu-calibrate-") as tmp:
        subjects = list(real_models(args.quick))
        if not args.quick:
            subjects += list(real_scale_models(Path(tmp)))
        for subject in subjects:
            spec = read_spec(subject.path)
            for plan in plans_for(spec, bool(gpus)):
                jobs = [(c, settings) for c in contexts]
                try:
                    measured = run_subject(subject, jobs, plan)
                except Exception as exc:  # noqa: BLE001 - reported, the other models still run
                    say(f"{subject.name} [{plan.name}]: could not measure: {exc}")
                    failed = True
                    continue
                for meas in measured:
                    est = estimate_for(spec, meas.context, settings, plan, isa, host_buffer)
                    rows = [
                        {"figure": f, "estimated": e, "measured": m,
                         "within": within(e, m, TOTAL_TOLERANCE if f == "sum" else PART_TOLERANCE)}
                        for f, e, m in rows_for(est, meas)
                    ]
                    results.append({
                        "model": subject.name, "plan": plan.name, "gpu_layers": plan.gpu_layers,
                        "moe_cpu_layers": plan.moe_cpu_layers, "context": meas.context,
                        "flash_attn": settings.flash_attn, "rows": rows,
                        "devices": {d: k for d, k in device_bytes(meas).items()},
                        "estimate_gpu_bytes": est.gpu_bytes, "estimate_gpu_weights_bytes": est.gpu_weights_bytes,
                        "estimate_gpu_kv_bytes": est.gpu_kv_bytes, "seconds": round(meas.seconds, 3),
                    })
    worst = worst_row(results)
    if args.json:
        print(json.dumps({"gpus": [dataclasses.asdict(d) for d in gpus], "results": results, "worst": worst,
                          "seconds": round(time.perf_counter() - start, 1)}, indent=2))
    else:
        print_table(results, worst)
        print(f"\n{len(results)} rows in {time.perf_counter() - start:.1f} s")
    if failed:
        return 2
    if args.strict and any(not r["within"] for res in results for r in res["rows"]):
        return 1
    return 0


def worst_row(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row furthest from llama.cpp, relative to its tolerance."""
    best: tuple[float, dict[str, Any]] | None = None
    for res in results:
        for r in res["rows"]:
            rel, absolute = TOTAL_TOLERANCE if r["figure"] == "sum" else PART_TOLERANCE
            allowed = max(rel * r["measured"], absolute)
            score = abs(r["estimated"] - r["measured"]) / allowed
            if best is None or score > best[0]:
                best = (score, {"model": res["model"], "plan": res["plan"], "context": res["context"], **r,
                                "of_tolerance": round(score, 3)})
    return None if best is None else best[1]


def print_table(results: list[dict[str, Any]], worst: dict[str, Any] | None) -> None:
    head = f"{'model':32} {'plan':8} {'ctx':>6} {'figure':13} {'estimate':>10} {'llama.cpp':>10} {'diff MiB':>9}  ok"
    print(head)
    print("-" * len(head))
    for res in results:
        for r in res["rows"]:
            d = (r["estimated"] - r["measured"]) / MiB
            print(f"{res['model'][:32]:32} {res['plan']:8} {res['context']:>6} {r['figure']:13} "
                  f"{r['estimated'] / MiB:>10.1f} {r['measured'] / MiB:>10.1f} {d:>+9.1f}  {'yes' if r['within'] else 'NO'}")
        devices = ", ".join(f"{d} " + "/".join(f"{k} {b / MiB:.1f}" for k, b in kinds.items() if b)
                            for d, kinds in res["devices"].items() if any(kinds.values()))
        print(f"{'':32} {'':8} {'':>6} buffers: {devices or '-'}")
    if worst is not None:
        print(f"\nWorst row: {worst['model']} [{worst['plan']}] at {worst['context']}: {worst['figure']} estimated "
              f"{worst['estimated'] / MiB:.1f} MiB, measured {worst['measured'] / MiB:.1f} MiB "
              f"({worst['of_tolerance']:.2f} of its tolerance)")


if __name__ == "__main__":
    sys.exit(main())
