"""What this machine has: NVIDIA GPUs (NVML), Apple Metal, CPU and RAM, and the llama.cpp build.

``detect_hardware()`` returns one frozen :class:`HardwareInfo`. Each probe takes its boundary
(the ``pynvml`` module, a ``sysctl`` reader, the llama.cpp build) as an argument so that tests can
fake the hardware they stand for, and none of them raises: a missing driver becomes an empty GPU
list with the reason kept.
"""

from __future__ import annotations

import ctypes
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

import psutil

GiB = 1024**3

#: The rebuild commands named in mismatch warnings.
CUDA_REBUILD = (
    'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
)
METAL_REBUILD = (
    'CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
)

_ISA_FLAGS = ("AVX", "AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16", "FMA", "F16C", "NEON", "ARM_FMA", "SVE", "AMX_INT8")


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU as NVML reports it."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    driver_version: str
    compute_capability: str
    vendor: str = "nvidia"


@dataclass(frozen=True)
class CpuInfo:
    """Cores and the instruction-set extensions llama.cpp was built to use."""

    physical_cores: int
    logical_cores: int
    model: str
    isa: tuple[str, ...]


@dataclass(frozen=True)
class RamInfo:
    """System memory (psutil)."""

    total_bytes: int
    available_bytes: int


@dataclass(frozen=True)
class MetalInfo:
    """Apple Silicon: unified memory and the GPU working-set limit Metal allows."""

    unified_memory_bytes: int
    working_set_bytes: int
    working_set_source: str  # "llama.cpp", "iogpu.wired_limit_mb" or "default"


@dataclass(frozen=True)
class BackendDevice:
    """A ggml backend device the llama.cpp build sees (CPU, CUDA0, Metal …)."""

    name: str
    description: str
    kind: str  # "cpu", "gpu", "igpu" or "accel"
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class RpcDevice:
    """A device a ``fitchat worker`` lends over llama.cpp's RPC, as llama.cpp sees it from here.

    ``name`` is llama.cpp's buffer name for it, ``RPC<index on that worker>[<endpoint>]`` (the name its
    load log uses), so a plan's devices and a load's buffer lines line up.
    """

    endpoint: str
    name: str
    total_bytes: int
    free_bytes: int
    index: int = 0  # the device's index on its worker


@dataclass(frozen=True)
class LlamaBuild:
    """The installed llama-cpp-python and what its llama.cpp was compiled with."""

    version: str
    gpu_offload: bool
    devices: tuple[BackendDevice, ...]
    system_info: str
    error: str | None = None

    def has_device(self, prefix: str) -> bool:
        """Whether a backend device whose name starts with ``prefix`` (``CUDA``, ``Metal``) exists."""
        return any(d.name.lower().startswith(prefix.lower()) for d in self.devices)


@dataclass(frozen=True)
class HardwareInfo:
    """Everything fitchat knows about the machine; ``backend`` is what it will actually use."""

    backend: str  # "cuda", "metal" or "cpu"
    gpus: tuple[GpuInfo, ...]
    gpu_reason: str | None
    cpu: CpuInfo
    ram: RamInfo
    metal: MetalInfo | None
    llama_cpp: LlamaBuild
    os: str
    arch: str
    warnings: tuple[str, ...] = field(default=())
    rpc: tuple[RpcDevice, ...] = field(default=())  # devices lent by workers (``--rpc``), in llama.cpp's order

    def gpu_budgets(self) -> tuple[int, ...]:
        """Free bytes on each device fitchat will offload to (empty for the CPU backend)."""
        if self.backend == "cuda":
            return tuple(g.free_bytes for g in self.gpus)
        if self.backend == "metal" and self.metal is not None:
            return (self.metal.working_set_bytes,)
        return ()

    def to_json(self) -> dict[str, Any]:
        """The ``fitchat hw --json`` contract."""
        return {
            "backend": self.backend,
            "gpus": [asdict(g) for g in self.gpus],
            "gpu_reason": self.gpu_reason,
            "cpu": {
                "physical_cores": self.cpu.physical_cores,
                "logical_cores": self.cpu.logical_cores,
                "model": self.cpu.model,
                "isa": list(self.cpu.isa),
            },
            "ram": asdict(self.ram),
            "metal": asdict(self.metal) if self.metal else None,
            "llama_cpp": {
                "version": self.llama_cpp.version,
                "gpu_offload": self.llama_cpp.gpu_offload,
                "devices": [asdict(d) for d in self.llama_cpp.devices],
                "system_info": self.llama_cpp.system_info,
                "error": self.llama_cpp.error,
            },
            "os": self.os,
            "arch": self.arch,
            "warnings": list(self.warnings),
            "rpc": [
                {"endpoint": d.endpoint, "name": d.name, "total_bytes": d.total_bytes, "free_bytes": d.free_bytes}
                for d in self.rpc
            ],
        }


# --------------------------------------------------------------------------- NVIDIA


def probe_nvidia(nvml: ModuleType | None = None) -> tuple[tuple[GpuInfo, ...], str | None]:
    """Every NVIDIA GPU through NVML, or an empty tuple and the reason there are none."""
    if nvml is None:
        try:
            import pynvml  # nvidia-ml-py
        except ImportError as exc:
            return (), f"nvidia-ml-py is not installed ({exc})"
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded …
        return (), f"no NVIDIA driver: {_nvml_text(exc)}"
    try:
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            return (), "the NVIDIA driver reports no GPUs"
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                capability = f"{major}.{minor}"
            except Exception:
                capability = "unknown"
            gpus.append(
                GpuInfo(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    total_bytes=int(mem.total),
                    free_bytes=int(mem.free),
                    driver_version=driver,
                    compute_capability=capability,
                )
            )
        return tuple(gpus), None
    except Exception as exc:
        return (), f"NVML query failed: {_nvml_text(exc)}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- Apple


def read_sysctl(name: str) -> str | None:
    """``sysctl -n NAME``, or None where there is no such key (or no sysctl)."""
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value else None


def default_metal_working_set(unified_bytes: int) -> int:
    """Metal's observed default working set: about 2/3 of RAM up to 36 GiB, about 3/4 above."""
    return unified_bytes * 2 // 3 if unified_bytes <= 36 * GiB else unified_bytes * 3 // 4


def probe_apple(
    sysctl: Callable[[str], str | None] = read_sysctl,
    build: LlamaBuild | None = None,
) -> MetalInfo | None:
    """Unified memory and the Metal working-set limit, or None when sysctl has no hw.memsize."""
    memsize = sysctl("hw.memsize")
    if not memsize or not memsize.isdigit():
        return None
    unified = int(memsize)
    metal_dev = next((d for d in build.devices if d.name.lower().startswith(("metal", "mtl"))), None) if build else None
    if metal_dev is not None and metal_dev.total_bytes > 0:
        return MetalInfo(unified, metal_dev.total_bytes, "llama.cpp")
    wired = sysctl("iogpu.wired_limit_mb")
    if wired and wired.isdigit() and int(wired) > 0:
        return MetalInfo(unified, int(wired) * 1024 * 1024, "iogpu.wired_limit_mb")
    return MetalInfo(unified, default_metal_working_set(unified), "default")


# --------------------------------------------------------------------------- CPU and RAM


def probe_ram() -> RamInfo:
    """Total and available system memory."""
    vm = psutil.virtual_memory()
    return RamInfo(total_bytes=int(vm.total), available_bytes=int(vm.available))


def parse_isa(system_info: str) -> tuple[str, ...]:
    """ISA flags set to 1 in ``llama_print_system_info()`` (``AVX2 = 1 | NEON = 0 | …``)."""
    found = set(re.findall(r"\b([A-Z0-9_]+) = 1\b", system_info))
    return tuple(flag for flag in _ISA_FLAGS if flag in found) + tuple(
        sorted(f for f in found if f not in _ISA_FLAGS and f in {"SSE3", "SSSE3", "AVX_VNNI", "SME", "DOTPROD", "MATMUL_INT8"})
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        return read_sysctl("machdep.cpu.brand_string") or platform.processor()
    return platform.processor() or platform.machine()


def cpu_flags() -> tuple[str, ...]:
    """The CPU's own feature flags (``/proc/cpuinfo`` flags or Features; ``sysctl`` on an Intel Mac), sorted.

    What the CPU reports, not what llama.cpp was built for (that is ``CpuInfo.isa``).
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return tuple(sorted(set(value.split())))
    except OSError:
        pass
    if sys.platform == "darwin":
        found = " ".join(filter(None, (read_sysctl("machdep.cpu.features"), read_sysctl("machdep.cpu.leaf7_features"))))
        return tuple(sorted({f.lower().replace(".", "_") for f in found.split()}))
    return ()


def cpu_identity() -> tuple[str, tuple[str, ...]]:
    """(model name, feature flags): what a cached per-CPU verdict is keyed by."""
    return _cpu_model(), cpu_flags()


def probe_cpu(system_info: str) -> CpuInfo:
    """Physical and logical cores (psutil) and ISA flags from the llama.cpp build."""
    logical = psutil.cpu_count(logical=True) or 1
    physical = psutil.cpu_count(logical=False) or logical
    return CpuInfo(physical_cores=physical, logical_cores=logical, model=_cpu_model(), isa=parse_isa(system_info))


# --------------------------------------------------------------------------- llama.cpp build

_DEV_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


def ggml_device_api(libggml: Any) -> Any:
    """``libggml`` with the ctypes signatures of the device calls fitchat makes (llama-cpp-python declares none)."""
    g, p, sz = libggml, ctypes.c_void_p, ctypes.c_size_t
    g.ggml_backend_dev_count.restype = sz
    g.ggml_backend_dev_get.argtypes, g.ggml_backend_dev_get.restype = [sz], p
    g.ggml_backend_dev_name.argtypes, g.ggml_backend_dev_name.restype = [p], ctypes.c_char_p
    g.ggml_backend_dev_description.argtypes, g.ggml_backend_dev_description.restype = [p], ctypes.c_char_p
    g.ggml_backend_dev_type.argtypes, g.ggml_backend_dev_type.restype = [p], ctypes.c_int
    g.ggml_backend_dev_memory.argtypes = [p, ctypes.POINTER(sz), ctypes.POINTER(sz)]
    g.ggml_backend_dev_memory.restype = None
    return g


def ggml_device_handles(libggml: Any) -> Iterator[tuple[int, BackendDevice]]:
    """Each ggml backend device with its ``ggml_backend_dev_t`` (valid in this process only: a worker
    lends devices by it), in llama.cpp's order."""
    g = ggml_device_api(libggml)
    for i in range(int(g.ggml_backend_dev_count())):
        dev = g.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        yield int(dev), BackendDevice(
            name=(g.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
            description=(g.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
            kind=_DEV_KINDS.get(g.ggml_backend_dev_type(dev), "unknown"),
            free_bytes=int(free.value),
            total_bytes=int(total.value),
        )


def _ggml_devices(libggml: Any) -> tuple[BackendDevice, ...]:
    return tuple(device for _, device in ggml_device_handles(libggml))


def local_gpu_offload() -> bool:
    """Whether llama.cpp has a GPU of this machine to offload to.

    Not ``llama_supports_gpu_offload()``: that also says yes for every build with RPC (llama.cpp counts
    workers as offload targets), with no GPU here at all.
    """
    from llama_cpp._ggml import libggml

    return any(d.kind in ("gpu", "igpu") for d in _ggml_devices(libggml))


def probe_llama_build() -> LlamaBuild:
    """Version, GPU offload support and backend devices of the installed llama-cpp-python."""
    try:
        import llama_cpp
        from llama_cpp._ggml import libggml
    except Exception as exc:  # missing, or its shared library fails to load
        return LlamaBuild(version="not installed", gpu_offload=False, devices=(), system_info="", error=str(exc))
    try:
        llama_cpp.llama_backend_init()
        system_info = _text(llama_cpp.llama_print_system_info())
        devices = _ggml_devices(libggml)
        gpu_offload = any(d.kind in ("gpu", "igpu") for d in devices)  # see local_gpu_offload
    except Exception as exc:
        return LlamaBuild(
            version=getattr(llama_cpp, "__version__", "unknown"), gpu_offload=False, devices=(), system_info="", error=str(exc)
        )
    return LlamaBuild(
        version=getattr(llama_cpp, "__version__", "unknown"),
        gpu_offload=gpu_offload,
        devices=devices,
        system_info=system_info,
    )


# --------------------------------------------------------------------------- the verdict


def choose_backend(
    gpus: tuple[GpuInfo, ...], metal: MetalInfo | None, build: LlamaBuild, is_apple_silicon: bool
) -> tuple[str, tuple[str, ...]]:
    """The backend fitchat will use (the build applied to the hardware) and mismatch warnings."""
    warnings: list[str] = []
    if gpus:
        if build.gpu_offload and build.has_device("CUDA"):
            return "cuda", ()
        names = ", ".join(g.name for g in gpus)
        if build.gpu_offload:
            warnings.append(
                f"NVIDIA GPU found ({names}) but the llama.cpp build has no CUDA backend "
                f"(it has: {', '.join(d.name for d in build.devices) or 'none'}); rebuild with CUDA: {CUDA_REBUILD}"
            )
        else:
            warnings.append(
                f"NVIDIA GPU found ({names}) but llama-cpp-python was built without GPU offload, "
                f"so models run on the CPU; rebuild with CUDA: {CUDA_REBUILD}"
            )
        return "cpu", tuple(warnings)
    if is_apple_silicon and metal is not None:
        if build.gpu_offload and (build.has_device("Metal") or build.has_device("MTL")):
            return "metal", ()
        warnings.append(
            "Apple Silicon found but llama-cpp-python was built without Metal, "
            f"so models run on the CPU; rebuild with Metal: {METAL_REBUILD}"
        )
        return "cpu", tuple(warnings)
    if build.error:
        warnings.append(
            f"llama-cpp-python could not be loaded ({build.error}); reinstall it: pip install --force-reinstall llama-cpp-python"
        )
    return "cpu", tuple(warnings)


def detect_hardware(
    nvml: ModuleType | None = None,
    sysctl: Callable[[str], str | None] | None = None,
    build: LlamaBuild | None = None,
    system: str | None = None,
    machine: str | None = None,
) -> HardwareInfo:
    """Probe the whole machine. Every argument overrides one boundary (for tests and planning)."""
    system = system or platform.system()
    machine = machine or platform.machine()
    build = build or probe_llama_build()
    gpus, reason = probe_nvidia(nvml)
    is_apple_silicon = system == "Darwin" and machine in ("arm64", "aarch64")
    metal = probe_apple(sysctl or read_sysctl, build) if is_apple_silicon else None
    backend, warnings = choose_backend(gpus, metal, build, is_apple_silicon)
    return HardwareInfo(
        backend=backend,
        gpus=gpus,
        gpu_reason=reason,
        cpu=probe_cpu(build.system_info),
        ram=probe_ram(),
        metal=metal,
        llama_cpp=build,
        os=system,
        arch=machine,
        warnings=warnings,
    )
