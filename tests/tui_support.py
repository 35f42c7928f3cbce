"""Helpers for the TUI tests: fixed machines (the hardware boundary) and reading the screen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fitchat.model.hardware import BackendDevice, CpuInfo, GpuInfo, HardwareInfo, LlamaBuild, RamInfo

GiB = 1024**3


def cpu_machine() -> HardwareInfo:
    """A fixed CPU-only laptop: 16 GiB RAM, 10 free, no GPU."""
    return HardwareInfo(
        backend="cpu",
        gpus=(),
        gpu_reason="no NVIDIA driver: NVML Shared Library Not Found",
        cpu=CpuInfo(8, 16, "Test CPU 8-core", ("AVX", "AVX2", "FMA", "F16C")),
        ram=RamInfo(total_bytes=16 * GiB, available_bytes=10 * GiB),
        metal=None,
        llama_cpp=LlamaBuild("0.3.36", False, (BackendDevice("CPU", "Test CPU", "cpu", 16 * GiB, 16 * GiB),), "AVX2 = 1 |"),
        os="Linux",
        arch="x86_64",
    )


def cuda_machine(free_gib: float = 7.0) -> HardwareInfo:
    """A fixed desktop with one 8 GiB NVIDIA GPU and a CUDA build (as NVML would report it)."""
    return HardwareInfo(
        backend="cuda",
        gpus=(GpuInfo(0, "NVIDIA GeForce RTX 4060", 8 * GiB, int(free_gib * GiB), "550.54.15", "8.9"),),
        gpu_reason=None,
        cpu=CpuInfo(8, 16, "Test CPU 8-core", ("AVX", "AVX2", "FMA", "F16C")),
        ram=RamInfo(total_bytes=32 * GiB, available_bytes=24 * GiB),
        metal=None,
        llama_cpp=LlamaBuild(
            "0.3.36", True,
            (BackendDevice("CUDA0", "NVIDIA GeForce RTX 4060", "gpu", int(free_gib * GiB), 8 * GiB),
             BackendDevice("CPU", "Test CPU", "cpu", 32 * GiB, 32 * GiB)),
            "CUDA : ARCHS = 890 | AVX2 = 1 |",
        ),
        os="Linux",
        arch="x86_64",
    )


def mismatched_machine() -> HardwareInfo:
    """An NVIDIA GPU with a CPU-only llama.cpp build: the home screen shows the warning and its fix."""
    from fitchat.model.hardware import CUDA_REBUILD

    hw = cuda_machine()
    return HardwareInfo(
        backend="cpu", gpus=hw.gpus, gpu_reason=None, cpu=hw.cpu, ram=hw.ram, metal=None,
        llama_cpp=LlamaBuild("0.3.36", False, (BackendDevice("CPU", "Test CPU", "cpu", 32 * GiB, 32 * GiB),), ""),
        os="Linux", arch="x86_64",
        warnings=(f"NVIDIA GPU found (NVIDIA GeForce RTX 4060) but llama-cpp-python was built without GPU offload, "
                  f"so models run on the CPU; rebuild with CUDA: {CUDA_REBUILD}",),
    )


def screen_text(app: Any) -> str:
    """The current screen as plain text (what a user would read)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(segment.text for segment in strip) for strip in strips)


async def wait_for(pilot: Any, condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Let the app run until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await pilot.pause(0.05)
    await asyncio.sleep(0)


def link_starter(model: Path) -> Path:
    """Put the test copy of SmolLM2 where the store keeps the starter model (as 'fitchat pull starter' would)."""
    from fitchat.hub.store import starter_path

    dest = starter_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        dest.symlink_to(model)
    return dest
