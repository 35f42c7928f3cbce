"""llama.cpp's ``tensor_buft_overrides`` for MoE experts in RAM, built through ctypes.

``llama_model_params.tensor_buft_overrides`` is a NULL-terminated array of
``llama_model_tensor_buft_override {const char *pattern; ggml_backend_buffer_type_t buft}``; llama-cpp-python
declares the field as a plain pointer and has no ``Llama`` argument for it. The array and its strings must
outlive the load that reads them, so :class:`TensorOverrides` holds both. The pattern is
:func:`fitchat.model.estimate.expert_override_pattern`, the buffer type the CPU device's own (the pointer
llama.cpp compares with ``ggml_backend_cpu_buffer_type()`` to let the CPU's repacked copies apply).

Used by the measuring child (fitchat.model.measure) and the engine (fitchat.llama.engine); llama_cpp is
imported only when an override is built.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from fitchat.errors import FitchatError
from fitchat.model.estimate import expert_override_pattern

#: ggml_backend_dev_type: GGML_BACKEND_DEVICE_TYPE_CPU.
_DEVICE_CPU = 0


class _Override(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


@dataclass(frozen=True)
class TensorOverrides:
    """A live override array: pass :attr:`address` as ``tensor_buft_overrides``; keep this object alive."""

    patterns: tuple[str, ...]
    array: Any  # the ctypes array (NULL-terminated), holding the pattern strings

    @property
    def address(self) -> int:
        return ctypes.addressof(self.array)


def cpu_buffer_type() -> int:
    """The CPU device's buffer type (``ggml_backend_cpu_buffer_type()``), found through ggml's device list."""
    from llama_cpp._ggml import libggml as g

    g.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    g.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    g.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    g.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    dev = g.ggml_backend_dev_by_type(_DEVICE_CPU)
    buft = g.ggml_backend_dev_buffer_type(dev) if dev else None
    if not buft:
        raise FitchatError("this llama.cpp build has no CPU device to keep MoE experts on")
    return int(buft)


def expert_overrides(moe_cpu_layers: int) -> TensorOverrides | None:
    """The override keeping the experts of blocks ``0..moe_cpu_layers-1`` (-1: all) in RAM; None for 0."""
    pattern = expert_override_pattern(moe_cpu_layers)
    if pattern is None:
        return None
    array = (_Override * 2)()
    array[0].pattern = pattern.encode()  # the array's own c_char_p keeps the bytes alive
    array[0].buft = cpu_buffer_type()
    array[1].pattern = None  # the terminator
    array[1].buft = None
    return TensorOverrides((pattern,), array)
