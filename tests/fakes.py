"""Fakes at the hardware boundary, and only there: NVML (an NVIDIA driver) and sysctl (a Mac).

``detect_hardware`` takes these readers as arguments, so a test can stand on a machine with GPUs
the test machine lacks while CPU, RAM and llama.cpp stay real.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import pynvml

GiB = 1024**3


@dataclass(frozen=True)
class FakeGpu:
    """One NVIDIA GPU as NVML would describe it."""

    name: str = "NVIDIA GeForce RTX 4060"
    total: int = 8 * GiB
    free: int = 6 * GiB
    compute_capability: tuple[int, int] = (8, 9)


class FakeNvml:
    """The slice of the pynvml module fitchat calls, answering for the GPUs given."""

    def __init__(self, gpus: Sequence[FakeGpu] = (), driver: str = "550.54.15") -> None:
        self.gpus = list(gpus)
        self.driver = driver
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self.gpus[handle].name.encode()

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        gpu = self.gpus[handle]
        return SimpleNamespace(total=gpu.total, free=gpu.free, used=gpu.total - gpu.free)

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return self.gpus[handle].compute_capability


class NoDriverNvml(FakeNvml):
    """pynvml on a machine with no NVIDIA driver: ``nvmlInit`` fails as the real one does."""

    def nvmlInit(self) -> None:
        raise pynvml.NVMLError_LibraryNotFound()


def fake_sysctl(values: dict[str, str]) -> Callable[[str], str | None]:
    """A ``sysctl -n`` reader that knows only the keys given (a missing key reads as None)."""
    return values.get


MAC_16G = {"hw.memsize": str(16 * GiB), "iogpu.wired_limit_mb": "0"}
"""sysctl on a 16 GiB Apple Silicon Mac with the default GPU wired limit."""
