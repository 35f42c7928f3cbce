"""``fitchat hw``: what this machine has and what fitchat will use."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fitchat.format import human_bytes, printable


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("hw", help="show GPUs, RAM, CPU and the llama.cpp build")
    p.add_argument("--json", action="store_true", help="print the machine-readable summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fitchat.model.hardware import detect_hardware

    hw = detect_hardware()
    if args.json:
        print(json.dumps(hw.to_json(), indent=2))
        return 0
    print(render_summary(hw))
    return 0


def render_summary(hw: Any) -> str:
    """The readable ``fitchat hw`` text (also the TUI's fallback text)."""
    lines = [f"Backend:   {hw.backend}"]
    if hw.gpus:
        for g in hw.gpus:
            lines.append(
                f"GPU {g.index}:     {g.name}, {human_bytes(g.free_bytes)} free of {human_bytes(g.total_bytes)}"
                f" (driver {g.driver_version}, compute {g.compute_capability})"
            )
    else:
        lines.append(f"GPUs:      none ({hw.gpu_reason or 'none found'})")
    if hw.metal:
        lines.append(
            f"Metal:     {human_bytes(hw.metal.working_set_bytes)} GPU working set of "
            f"{human_bytes(hw.metal.unified_memory_bytes)} unified memory ({hw.metal.working_set_source})"
        )
    lines.append(f"RAM:       {human_bytes(hw.ram.available_bytes)} available of {human_bytes(hw.ram.total_bytes)}")
    lines.append(
        f"CPU:       {hw.cpu.model}, {hw.cpu.physical_cores} physical / {hw.cpu.logical_cores} logical cores"
        + (f", {' '.join(hw.cpu.isa)}" if hw.cpu.isa else "")
    )
    b = hw.llama_cpp
    offload = "GPU offload" if b.gpu_offload else "no GPU offload (CPU only)"
    lines.append(f"llama.cpp: llama-cpp-python {b.version}, {offload}")
    for d in b.devices:
        lines.append(f"           {d.name} ({d.description}): {human_bytes(d.free_bytes)} free of {human_bytes(d.total_bytes)}")
    for w in hw.warnings:
        lines.append(f"Warning:   {w}")
    # GPU and CPU names come from the driver, NVML and /proc: printed as text, never as terminal controls.
    return printable("\n".join(lines))
