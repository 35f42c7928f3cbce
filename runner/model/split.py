"""Layers split over several devices (local GPUs and the devices ``fitchat worker``\\s lend), as llama.cpp loads them.

llama.cpp counts ``n_layers + 1`` offloadable units (the blocks, then the output layer). With
``n_gpu_layers = g`` the first ``n_layers + 1 - g`` blocks stay on the CPU; the rest go to the offload
devices in llama.cpp's order (RPC devices first, then local GPUs), each taking a consecutive run in
proportion to ``tensor_split`` (llama-model.cpp: ``upper_bound`` of the unit's fraction over the
cumulative splits). With whole-unit counts as ``tensor_split`` that placement is exact, so a plan's
counts are what the load gets (:func:`assign_units` mirrors the rule, the load passes the counts).

Bytes per device come from the estimate's pieces (fitchat.model.estimate): the device's blocks'
weights and KV cache, the output layer's weights where it lands (and a copy of token_embd for a tied
output), and a compute buffer of its own: the logits stage on the device holding the output layer,
the attention/feed-forward peak on the others. The CPU's share is the estimate's CPU side for the same
number of offloaded units (weights of its blocks, token_embd, its repacked copies, its compute buffer,
the output buffer).

How a split is chosen: the offload devices share the units in proportion to their usable memory (what
llama.cpp does by default), no device above what it can hold; what none can hold stays on the CPU.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from fitchat.model.estimate import (
    DEFAULT_SETTINGS,
    Estimate,
    LoadSettings,
    _extra_buft_rules,
    _layout,
    compute_stages,
    effective_batches,
    estimate,
    kv_layer_bytes,
    pad,
    recurrent_layer_bytes,
)
from fitchat.model.gguf_spec import ModelSpec

#: llama.cpp's LLAMA_MAX_DEVICES: the most offload devices (workers' and local GPUs together) one load takes;
#: more and llama-cpp-python refuses the tensor_split.
MAX_DEVICES = 16
#: The name the CPU has in a plan's devices (llama.cpp's name for its CPU device).
CPU = "CPU"

#: ggml's GGML_SCHED_MAX_COPIES: with pipeline parallelism the scheduler keeps this many copies of the graph's
#: inputs, so that micro-batches overlap on consecutive devices.
PIPELINE_COPIES = 4


def pipelined(n_devices: int, offloaded: int, n_units: int) -> bool:
    """Whether llama.cpp turns pipeline parallelism on (llama-context.cpp): more than one offload device and
    every unit offloaded (RPC devices and CUDA have the async compute and events it needs)."""
    return n_devices > 1 and offloaded >= n_units


def pipeline_inputs(spec: ModelSpec, ctx: int, settings: LoadSettings) -> tuple[int, int]:
    """(extra bytes per offload device, the CPU's compute buffer) under pipeline parallelism.

    The scheduler keeps PIPELINE_COPIES copies of each input: the attention mask (f16 with flash attention,
    f32 without; two masks for sliding-window models) and the hidden state arriving from the device before.
    Measured on llama.cpp 0.3.36 over two RPC workers (SmolLM2, ctx 1k to 16k, flash attention on and off):
    the mask term is exact; the hidden-state term, five of ``4·ub·n_embd``, is fitted.
    """
    _, ub = effective_batches(ctx, settings)
    n_kv = pad(max(ctx, 1))
    masks = 2 if spec.sliding_window and any(spec.swa_layers) else 1
    mask = masks * ub * n_kv * (2 if settings.flash_attn else 4)
    hidden = 4 * ub * spec.n_embd
    return (PIPELINE_COPIES - 1) * mask + 5 * hidden, PIPELINE_COPIES * mask + 5 * hidden


@dataclass(frozen=True)
class PlanDevice:
    """One device of a plan: how many of the ``n_layers + 1`` units it holds and the bytes it needs."""

    name: str
    layers: int
    bytes: int
    endpoint: str = ""  # the worker lending it ("" for this machine's own devices)
    index: int = 0  # its index on its worker (RPC) or among local devices

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "layers": self.layers, "bytes": self.bytes}


@dataclass(frozen=True)
class Target:
    """An offload device to split over, in llama.cpp's order, with the bytes it can give."""

    name: str
    budget: int
    endpoint: str = ""
    index: int = 0


def assign_units(n_units: int, n_gpu_layers: int, weights: Sequence[float]) -> tuple[int, list[int]]:
    """(units on the CPU, units per offload device) as llama.cpp places them (llama-model.cpp, load_tensors).

    ``weights`` is ``tensor_split`` (all zero or empty: llama.cpp would use free memory, not mirrored here).
    """
    n_dev = len(weights)
    if n_dev == 0 or n_gpu_layers <= 0:
        return n_units, [0] * n_dev
    act = min(n_gpu_layers, n_units)
    start = max(n_units - n_gpu_layers, 0)
    total, cumulative = 0.0, []
    for w in weights:
        total += float(w)
        cumulative.append(total)
    splits = [c / total for c in cumulative]
    counts = [0] * n_dev
    for il in range(start, start + act):
        k = bisect.bisect_right(splits, (il - start) / act)
        counts[min(k, n_dev - 1)] += 1
    return start, counts


@dataclass(frozen=True)
class _UnitCosts:
    """What each unit of a model costs on an offload device at one context: worked out once per (spec, ctx,
    settings), since a split weighs every device for every candidate count."""

    block: tuple[int, ...]  # per block: weights (its expert tensors included), KV cache and recurrent state
    output: int  # the output layer's weights (and the tied output's copy of token_embd)
    compute_output: int  # the compute buffer of the device holding the output layer (the logits stage included)
    compute_layers: int  # the compute buffer of the others (attention/feed-forward peak)
    pipeline: int  # each device's copies of the inputs under pipeline parallelism


@functools.lru_cache(maxsize=64)
def _unit_costs(spec: ModelSpec, ctx: int, settings: LoadSettings) -> _UnitCosts:
    layout = _layout(spec, _extra_buft_rules(None, False))
    kv = kv_layer_bytes(spec, ctx, settings)
    rs = recurrent_layer_bytes(spec)  # like the KV cache, a layer's state lives with the layer
    # A block's expert tensors are a group of their own (blk.N.exps): they move with the block here.
    block = tuple(sum(layout.get(g, (0, 0, 0))[0] for g in (f"blk.{i}", f"blk.{i}.exps")) + kv[i] + rs[i]
                  for i in range(spec.n_layers))
    output = sum(layout.get(g, (0, 0, 0))[0] for g in ("output", "output_norm"))
    if spec.tied_embeddings:
        output += spec.tensor_bytes.get("token_embd", 0)
    stages = compute_stages(spec, ctx, settings)
    return _UnitCosts(block, output, max(stages.values()), max(stages["attention"], stages["ffn"]),
                      pipeline_inputs(spec, ctx, settings)[0])


def device_bytes(spec: ModelSpec, ctx: int, settings: LoadSettings, first: int, last: int, *,
                 largest_cpu_matrix: int = 0, pipeline: bool = False) -> int:
    """Bytes an offload device needs for units ``first`` to ``last - 1`` (unit ``n_layers`` = the output layer);
    ``pipeline``: under pipeline parallelism (:func:`pipelined`), with its copies of the inputs."""
    if last <= first:
        return 0
    costs = _unit_costs(spec, ctx, settings)
    n_layers = spec.n_layers
    total = sum(costs.block[first:min(last, n_layers)])
    if last > n_layers:
        total += costs.output + costs.compute_output
    else:
        total += costs.compute_layers
    if pipeline:
        total += costs.pipeline
    return total + largest_cpu_matrix


def cpu_share(spec: ModelSpec, ctx: int, settings: LoadSettings, offloaded: int,
              cpu_isa: tuple[str, ...] | None) -> Estimate:
    """The estimate with ``offloaded`` units off the CPU: its ``cpu_bytes`` is the CPU's share of any split."""
    return estimate(spec, ctx, settings, gpu_layers=offloaded, cpu_isa=cpu_isa)


def _largest_cpu_matrix(spec: ModelSpec, cpu_units: int) -> int:
    layout = _layout(spec, _extra_buft_rules(None, False))
    return max((layout.get(g, (0, 0, 0))[2] for i in range(min(cpu_units, spec.n_layers))
                for g in (f"blk.{i}", f"blk.{i}.exps")), default=0)


def describe(spec: ModelSpec, ctx: int, settings: LoadSettings, targets: Sequence[Target], counts: Sequence[int],
             cpu_isa: tuple[str, ...] | None = None) -> tuple[PlanDevice, ...]:
    """The plan's devices for ``counts`` units per target (the CPU first, holding the rest)."""
    n_units = spec.n_layers + 1
    offloaded = sum(counts)
    cpu_units = n_units - offloaded
    cpu = cpu_share(spec, ctx, settings, offloaded, cpu_isa)
    pipeline = pipelined(len(targets), offloaded, n_units)
    cpu_bytes = cpu.cpu_bytes
    if pipeline:  # the CPU's compute buffer then holds the inputs' copies, not just the input embeddings
        _, ub = effective_batches(ctx, settings)
        cpu_bytes += pipeline_inputs(spec, ctx, settings)[1] - 4 * ub * spec.n_embd
    out = [PlanDevice(CPU, cpu_units, cpu_bytes)]
    first = cpu_units
    op_offload = _largest_cpu_matrix(spec, cpu_units) if cpu_units and offloaded else 0
    first_local = next((i for i, t in enumerate(targets) if not t.endpoint and counts[i]), None)
    for i, (t, n) in enumerate(zip(targets, counts)):
        # ggml offloads big CPU matrix products to the first local GPU (RPC devices take no offloaded ops).
        extra = op_offload if i == first_local else 0
        out.append(PlanDevice(t.name, n, device_bytes(spec, ctx, settings, first, first + n, largest_cpu_matrix=extra,
                                                      pipeline=pipeline), t.endpoint, t.index))
        first += n
    return tuple(out)


def _fits(spec: ModelSpec, ctx: int, settings: LoadSettings, targets: Sequence[Target],
          counts: Sequence[int]) -> list[bool]:
    n_units = spec.n_layers + 1
    first = n_units - sum(counts)
    pipeline = pipelined(len(targets), sum(counts), n_units)
    ok = []
    for t, n in zip(targets, counts):
        ok.append(n == 0 or device_bytes(spec, ctx, settings, first, first + n, pipeline=pipeline) <= t.budget)
        first += n
    return ok


def split_units(spec: ModelSpec, ctx: int, targets: Sequence[Target],
                settings: LoadSettings = DEFAULT_SETTINGS) -> list[int]:
    """Units per target: in proportion to the targets' budgets, none above what its budget holds.

    The last target holds the output layer; units no target can hold stay on the CPU.
    """
    n_units = spec.n_layers + 1
    if not targets:
        return []
    budgets = [max(0, t.budget) for t in targets]
    total = sum(budgets)
    if total <= 0:
        return [0] * len(targets)
    # Start from llama.cpp's own proportional rule over all units; take units back where a device is over
    # its budget (they go to the CPU), then let devices with room take more, the last device first.
    _, counts = assign_units(n_units, n_units, budgets)
    while True:
        ok = _fits(spec, ctx, settings, targets, counts)
        if all(ok):
            break
        counts[ok.index(False)] -= 1
    for i in reversed(range(len(targets))):
        while sum(counts) < n_units:
            counts[i] += 1
            if not all(_fits(spec, ctx, settings, targets, counts)):
                counts[i] -= 1
                break
    return counts
