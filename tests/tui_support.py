"""Helpers for the TUI tests: fixed machines (the hardware boundary), reading the screen and the notifications."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.app import App
from textual.notifications import Notification, Notify, SeverityLevel

from fitchat.model.hardware import BackendDevice, CpuInfo, GpuInfo, HardwareInfo, LlamaBuild, RamInfo
from fitchat.tui.app import FitchatApp

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


class NotificationLog:
    """Mixin for an app under test: keeps every notification it shows, in order.

    It handles Textual's public ``Notify`` message, which ``App.notify`` posts after fitchat has made
    the text printable; Textual's own handler (which shows the toast) still runs after this one, and
    unlike the toasts, the log does not forget a notification when it times out.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notification_log: list[Notification] = []

    def on_notify(self, event: Notify) -> None:
        self.notification_log.append(event.notification)


class RecordingApp(NotificationLog, FitchatApp):
    """FitchatApp that keeps its notifications for :func:`notifications` to read."""

    # Textual reads a relative CSS_PATH next to the subclass's own file: name fitchat's stylesheet where it is.
    CSS_PATH = Path(inspect.getfile(FitchatApp)).with_name(str(FitchatApp.CSS_PATH))


def notifications(app: App[Any], severity: SeverityLevel | None = None) -> list[str]:
    """The messages of the notifications ``app`` has shown (of one severity if given), oldest first."""
    assert isinstance(app, NotificationLog), f"{type(app).__name__} does not keep its notifications (use RecordingApp)"
    return [n.message for n in app.notification_log if severity is None or n.severity == severity]


def screen_text(app: Any) -> str:
    """The current screen as plain text (what a user would read)."""
    # Textual has no public plain-text render of a screen; export_screenshot() itself reads the compositor.
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
