"""Verdicts per variant for a machine (full GPU / N of M layers / CPU / too big) and the recommendation.

Safety margin (per GPU device): ``clamp(10 % of the device's memory, 512 MiB, 1 GiB)``.

- Large GPUs (10 GiB and up) keep 1 GiB, the same as llama.cpp's own ``--fit``. The estimate
  itself is within a few MiB of what llama.cpp logs (``bench/estimate_accuracy.py``), so that
  gigabyte is for what llama.cpp does not log: the CUDA context and cuBLAS workspace, the
  allocator's pools, and other programs' VRAM changing after fitchat looked.
- Small GPUs keep less, because a flat 1 GiB is a quarter of a 4 GiB card and refuses models that
  fit (the complaint users have about over-cautious tools). The floor of 512 MiB still covers
  the CUDA context and cuBLAS workspace (Ollama reserves 457 MiB on CUDA for the same reason)
  with room for the desktop's own use of the card.
- RAM keeps ``clamp(5 % of total RAM, 512 MiB, 2 GiB)`` free for the operating system and the app.

MoE experts in RAM: when a mixture-of-experts variant does not fit the GPU whole, the planner keeps every
layer on the GPU and the expert tensors of the first N blocks in RAM (``moe_cpu_layers``, llama.cpp's
``--n-cpu-moe N``), the way llama.cpp's own ``--fit`` does: experts of all blocks in RAM first, then fewer
while the GPU still holds it. Only a few experts run per token, so the CPU's share of the work is small
and this runs several times faster than a layer split; it wins over the split whenever it fits (RAM
too). When not even every layer without its experts fits, it splits layers with every expert in RAM
(more layers fit that way than in a plain split).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fitchat.errors import FitchatError
from fitchat.format import human_bytes
from fitchat.model.estimate import DEFAULT_CTX, DEFAULT_SETTINGS, Estimate, LoadSettings, estimate, expert_layers
from fitchat.model.gguf_spec import ModelSpec
from fitchat.model.hardware import GpuInfo, HardwareInfo, MetalInfo, RamInfo
from fitchat.model.split import CPU, MAX_DEVICES, PlanDevice, Target, assign_units, describe, split_units

MiB = 1024**2
GiB = 1024**3

VERDICTS = ("full_gpu", "partial_gpu", "cpu", "too_big")
#: How good each verdict is, higher is better: the one order the recommendation, the levers and the
#: first-model suggestion rank by.
VERDICT_RANK: dict[str, int] = {"too_big": 0, "cpu": 1, "partial_gpu": 2, "full_gpu": 3}
#: The word for each verdict wherever one is shown (``fit``'s table, ``compare``, the TUI); a partial offload
#: adds its layer count (:func:`verdict_label`).
VERDICT_WORDS: dict[str, str] = {"full_gpu": "full GPU", "partial_gpu": "GPU", "cpu": "CPU", "too_big": "too big"}

#: The variants fitchat prefers, best quality first (the recommendation's first choice).
PREFERRED_QUANTS = ("Q8_0", "Q5_K_M", "Q4_K_M")


def default_gpu_margin(device_bytes: int) -> int:
    """The safety margin kept free on a GPU of ``device_bytes`` (see the module docstring)."""
    return min(GiB, max(512 * MiB, device_bytes // 10))


def gpu_margin(margin_bytes: int | None, device_bytes: int) -> int:
    """The margin kept free on a device of ``device_bytes``: ``--margin`` when given, else the default."""
    return margin_bytes if margin_bytes is not None else default_gpu_margin(device_bytes)


def default_ram_margin(total_ram: int) -> int:
    """RAM kept free for the system when a model runs on the CPU."""
    return min(2 * GiB, max(512 * MiB, total_ram // 20))


@dataclass(frozen=True)
class Plan:
    """How one variant will load on one machine at one context."""

    spec: ModelSpec
    context: int
    settings: LoadSettings
    estimate: Estimate
    verdict: str  # "full_gpu" | "partial_gpu" | "cpu" | "too_big"
    gpu_layers: int  # llama.cpp n_gpu_layers (n_layers + 1 = everything, output included)
    n_layers: int  # offloadable layers: blocks + the output layer
    recommended: bool
    reason: str
    levers: tuple[str, ...] = ()
    gpu_budget_bytes: int = 0  # usable GPU memory after the margin (0 without a GPU)
    ram_budget_bytes: int = 0  # usable RAM after the margin
    margin_bytes: int = 0
    full_gpu_bytes: int = 0  # what a full offload would need on the GPU
    #: Where the ``n_layers`` units go, the CPU first, then the offload devices in llama.cpp's order (workers'
    #: devices, then local GPUs); the layers add up to ``n_layers`` (fitchat.model.split).
    devices: tuple[PlanDevice, ...] = ()

    @property
    def rpc_endpoints(self) -> tuple[str, ...]:
        """The workers this plan loads on, in order (empty for a plan on this machine alone)."""
        seen: list[str] = []
        for d in self.devices:
            if d.endpoint and d.endpoint not in seen:
                seen.append(d.endpoint)
        return tuple(seen)

    @property
    def moe_cpu_layers(self) -> int:
        """Blocks whose expert tensors stay in RAM (llama.cpp ``--n-cpu-moe``); 0 when not used."""
        return self.estimate.moe_cpu_layers

    def to_json(self) -> dict[str, Any]:
        """One entry of ``fitchat fit --json``'s ``variants`` list."""
        e = self.estimate
        return {
            "file": self.spec.file,
            "quant": self.spec.quant,
            "size_bytes": self.spec.size_bytes,
            "n_layers": self.n_layers,
            "weights_bytes": e.weights_bytes,
            "kv_bytes": e.kv_bytes,
            "compute_bytes": e.compute_bytes,
            "total_bytes": e.total_bytes,
            "gpu_layers": self.gpu_layers,
            "moe_cpu_layers": self.moe_cpu_layers,
            "verdict": self.verdict,
            "recommended": self.recommended,
            "reason": self.reason,
            "overhead_bytes": e.overhead_bytes,
            "gpu_bytes": e.gpu_bytes,
            "cpu_bytes": e.cpu_bytes,
            "levers": list(self.levers),
            "architecture": self.spec.architecture,
            "path_or_url": self.spec.path_or_url,
            "notes": list(e.notes),
            "devices": [d.to_json() for d in self.devices],
        }


# --------------------------------------------------------------------------- hardware for planning


def plan_hardware(hw: HardwareInfo, *, gpu_mem: int | None = None, ram: int | None = None) -> HardwareInfo:
    """``hw`` with its GPU memory and/or RAM replaced, to plan for another machine.

    ``gpu_mem=0`` plans for a CPU-only machine; a positive value plans for one GPU (or, on Apple
    Silicon, a Metal working set) of that many free bytes.
    """
    out = hw
    if ram is not None:
        if ram <= 0:
            raise FitchatError("--ram must be a positive size, like 16G")
        out = dataclasses.replace(out, ram=RamInfo(total_bytes=ram, available_bytes=ram))
    if gpu_mem is not None:
        if gpu_mem < 0:
            raise FitchatError("--gpu-mem must be a size, like 8G (0 plans for a machine without a GPU)")
        if gpu_mem == 0:
            out = dataclasses.replace(out, backend="cpu", gpus=(), metal=None, gpu_reason="planning without a GPU")
        elif out.backend == "metal" and out.metal is not None:
            out = dataclasses.replace(out, metal=MetalInfo(out.metal.unified_memory_bytes, gpu_mem, "--gpu-mem"))
        else:
            gpu = GpuInfo(
                index=0,
                name="planned GPU (--gpu-mem)",
                total_bytes=gpu_mem,
                free_bytes=gpu_mem,
                driver_version="n/a",
                compute_capability="n/a",
            )
            out = dataclasses.replace(out, backend="cuda", gpus=(gpu,), gpu_reason=None)
    return out


def _gpu_devices(hw: HardwareInfo) -> list[tuple[int, int]]:
    """(free, total) per GPU device fitchat offloads to."""
    if hw.backend == "cuda":
        return [(g.free_bytes, g.total_bytes) for g in hw.gpus]
    if hw.backend == "metal" and hw.metal is not None:
        return [(hw.metal.working_set_bytes, hw.metal.working_set_bytes)]
    return []


# --------------------------------------------------------------------------- planning one variant


@dataclass(frozen=True)
class _Budget:
    gpu: int | None  # usable bytes over all devices (None: no GPU)
    n_devices: int
    ram: int
    margin: int
    unified: bool  # Metal: GPU and CPU share the RAM


def _budget(hw: HardwareInfo, margin_bytes: int | None) -> _Budget:
    devices = _gpu_devices(hw)
    ram = max(0, hw.ram.available_bytes - default_ram_margin(hw.ram.total_bytes))
    if not devices:
        return _Budget(None, 0, ram, 0, False)
    margins = [gpu_margin(margin_bytes, total) for _, total in devices]
    usable = sum(max(0, free - m) for (free, _), m in zip(devices, margins))
    return _Budget(usable, len(devices), ram, max(margins), hw.backend == "metal")


def _fits(e: Estimate, b: _Budget) -> bool:
    if b.gpu is None:
        return e.total_bytes <= b.ram
    # With several GPUs each device holds its own compute buffer.
    gpu_need = e.gpu_bytes + (b.n_devices - 1) * e.gpu_compute_bytes
    ram_need = e.total_bytes if b.unified else e.cpu_bytes
    return gpu_need <= b.gpu and ram_need <= b.ram


def _gpu_fits(e: Estimate, b: _Budget) -> bool:
    return b.gpu is not None and e.gpu_bytes + (b.n_devices - 1) * e.gpu_compute_bytes <= b.gpu


def _experts_in_ram(spec: ModelSpec, ctx: int, settings: LoadSettings, b: _Budget,
                    isa: tuple[str, ...] | None, host: bool) -> Estimate | None:
    """Every layer on the GPU with the experts of the fewest first blocks in RAM that fits, or None.

    llama.cpp's ``--fit`` order: the experts of all blocks in RAM first (if even that does not fit the GPU,
    nothing of this kind does), then fewer while the GPU holds it. GPU bytes shrink as more experts stay
    in RAM and RAM bytes grow, so the fewest that fit the GPU is also the easiest on RAM.
    """
    if not spec.n_expert or not expert_layers(spec):
        return None
    n_off, top = spec.n_layers + 1, spec.n_layers
    every = estimate(spec, ctx, settings, gpu_layers=n_off, cpu_isa=isa, moe_cpu_layers=top, gpu_host_buffer=host)
    if not _gpu_fits(every, b):
        return None
    lo, hi, best = 1, top - 1, every
    while lo <= hi:
        mid = (lo + hi) // 2
        e = estimate(spec, ctx, settings, gpu_layers=n_off, cpu_isa=isa, moe_cpu_layers=mid, gpu_host_buffer=host)
        if _gpu_fits(e, b):
            best, hi = e, mid - 1
        else:
            lo = mid + 1
    return best if _fits(best, b) else None


def _solve(
    spec: ModelSpec, hw: HardwareInfo, ctx: int, settings: LoadSettings, b: _Budget,
    moe_cpu_layers: int | None = None,
) -> tuple[str, int, Estimate, Estimate | None]:
    """(verdict, gpu_layers, estimate at those layers, full-offload estimate or None).

    ``moe_cpu_layers`` set (``--cpu-moe``) fixes the blocks whose experts stay in RAM instead of choosing
    them; the estimate returned carries the count either way (``Estimate.moe_cpu_layers``).
    """
    isa = hw.cpu.isa or None
    host = hw.backend == "cuda"  # a build with a GPU host buffer type (estimate's gpu_host_buffer)
    n_off = spec.n_layers + 1
    moe = moe_cpu_layers or 0
    full = None
    if b.gpu is not None:
        full = estimate(spec, ctx, settings, gpu_layers=n_off, cpu_isa=isa, gpu_host_buffer=host)
        if _fits(full, b) and not moe:
            return "full_gpu", n_off, full, full
        if moe_cpu_layers is None:
            held = _experts_in_ram(spec, ctx, settings, b, isa, host)
            if held is not None:
                return "partial_gpu", n_off, held, full
        elif moe:
            held = estimate(spec, ctx, settings, gpu_layers=n_off, cpu_isa=isa, moe_cpu_layers=moe, gpu_host_buffer=host)
            if _fits(held, b):
                return ("partial_gpu" if held.moe_cpu_layers else "full_gpu"), n_off, held, full
        # A layer split: for a MoE model whose layers do not all fit even without their experts, first with
        # every expert in RAM (the GPU then holds more layers; llama.cpp's --fit does the same), then plain.
        chosen = moe_cpu_layers is None and spec.n_expert and expert_layers(spec)
        for split_moe in ((-1, 0) if chosen else (moe,)):
            # The largest gpu_layers whose GPU share fits: GPU bytes grow with the layers offloaded.
            lo, hi, best = 1, n_off - 1, None
            while lo <= hi:
                mid = (lo + hi) // 2
                e = estimate(spec, ctx, settings, gpu_layers=mid, cpu_isa=isa, moe_cpu_layers=split_moe, gpu_host_buffer=host)
                if _gpu_fits(e, b):
                    best, lo = (mid, e), mid + 1
                else:
                    hi = mid - 1
            if best is not None and _fits(best[1], b):
                return "partial_gpu", best[0], best[1], full
    cpu = estimate(spec, ctx, settings, gpu_layers=0, cpu_isa=isa, gpu_host_buffer=host)
    if cpu.total_bytes <= b.ram:
        return "cpu", 0, cpu, full
    return "too_big", 0, cpu, full


def plan_model(
    spec: ModelSpec,
    hw: HardwareInfo,
    ctx: int = DEFAULT_CTX,
    settings: LoadSettings = DEFAULT_SETTINGS,
    margin_bytes: int | None = None,
    moe_cpu_layers: int | None = None,
) -> Plan:
    """The verdict for one variant on ``hw`` at ``ctx``, with its reason and the levers that would help.

    ``moe_cpu_layers``: keep the experts of that many first blocks in RAM (``--cpu-moe``) instead of
    letting the planner choose (None).
    """
    b = _budget(hw, margin_bytes)
    if hw.rpc:
        if moe_cpu_layers:
            raise FitchatError("--cpu-moe cannot be combined with --rpc workers yet: the split over workers keeps "
                               "each layer's experts with the layer; drop one of the two")
        local = len(hw.gpu_budgets())
        if len(hw.rpc) + local > MAX_DEVICES:
            raise FitchatError(f"the workers lend {len(hw.rpc)} devices and this machine offloads to {local}: "
                               f"llama.cpp loads onto at most {MAX_DEVICES}; name fewer workers")
        return _plan_split(spec, hw, ctx, settings, margin_bytes, b)
    verdict, gpu_layers, est, full = _solve(spec, hw, ctx, settings, b, moe_cpu_layers)
    n_off = spec.n_layers + 1
    plan = Plan(
        spec=spec,
        context=ctx,
        settings=settings,
        estimate=est,
        verdict=verdict,
        gpu_layers=gpu_layers,
        n_layers=n_off,
        recommended=False,
        reason="",
        gpu_budget_bytes=b.gpu or 0,
        ram_budget_bytes=b.ram,
        margin_bytes=b.margin,
        full_gpu_bytes=full.gpu_bytes if full else 0,
        devices=_local_devices(spec, hw, ctx, settings, gpu_layers, margin_bytes, est),
    )
    plan = dataclasses.replace(plan, reason=explain(plan, hw))
    if verdict != "full_gpu":
        plan = dataclasses.replace(plan, levers=tuple(_levers(plan, hw, b)))
    return plan


# --------------------------------------------------------------------------- devices and workers


def _local_targets(hw: HardwareInfo, margin_bytes: int | None) -> list[Target]:
    """This machine's offload devices under llama.cpp's names (CUDA0, Metal …), with their usable bytes."""
    names = [d.name for d in hw.llama_cpp.devices if d.kind in ("gpu", "igpu")]
    out = []
    for i, (free, total) in enumerate(_gpu_devices(hw)):
        margin = gpu_margin(margin_bytes, total)
        name = names[i] if i < len(names) else ("Metal" if hw.backend == "metal" else f"CUDA{i}")
        out.append(Target(name, max(0, free - margin), "", i))
    return out


def _local_devices(spec: ModelSpec, hw: HardwareInfo, ctx: int, settings: LoadSettings, gpu_layers: int,
                   margin_bytes: int | None, est: Estimate) -> tuple[PlanDevice, ...]:
    """The devices of a plan on this machine alone: ``gpu_layers`` over the GPUs as llama.cpp spreads them
    by default (in proportion to free memory), the rest on the CPU.

    With one GPU at most the bytes are the plan's estimate itself (which also knows MoE experts kept in RAM
    and CUDA's host buffer); the split over several GPUs keeps each layer's experts with the layer."""
    targets = _local_targets(hw, margin_bytes)
    if len(targets) <= 1:
        n_units = spec.n_layers + 1
        g = n_units if gpu_layers < 0 else min(gpu_layers, n_units)
        cpu = PlanDevice(CPU, n_units - g, est.cpu_bytes)
        return (cpu,) + tuple(PlanDevice(t.name, g, est.gpu_bytes, "", t.index) for t in targets)
    frees = [free for free, _ in _gpu_devices(hw)]
    _, counts = assign_units(spec.n_layers + 1, gpu_layers, frees)
    return describe(spec, ctx, settings, targets, counts, hw.cpu.isa or None)


def _rpc_targets(hw: HardwareInfo, margin_bytes: int | None) -> list[Target]:
    """The workers' devices, before the local GPUs (llama.cpp puts RPC devices first)."""
    out = []
    for d in hw.rpc:
        margin = gpu_margin(margin_bytes, d.total_bytes)
        out.append(Target(d.name, max(0, d.free_bytes - margin), d.endpoint, d.index))
    return out


def _plan_split(spec: ModelSpec, hw: HardwareInfo, ctx: int, settings: LoadSettings, margin_bytes: int | None,
                b: _Budget) -> Plan:
    """A plan over the workers' devices and this machine's (``--rpc``): see fitchat.model.split."""
    targets = _rpc_targets(hw, margin_bytes) + _local_targets(hw, margin_bytes)
    counts = split_units(spec, ctx, targets, settings)
    devices = describe(spec, ctx, settings, targets, counts, hw.cpu.isa or None)
    n_off = spec.n_layers + 1
    offloaded = sum(counts)
    est = estimate(spec, ctx, settings, gpu_layers=offloaded, cpu_isa=hw.cpu.isa or None)
    off_bytes = sum(d.bytes for d in devices if d.name != CPU)
    total = off_bytes + est.cpu_bytes
    # Each device holds its own compute buffer: the compute figure is what is left of the total.
    est = dataclasses.replace(est, gpu_bytes=off_bytes, total_bytes=total,
                              compute_bytes=total - est.weights_bytes - est.kv_bytes - est.overhead_bytes)
    margins = [gpu_margin(margin_bytes, d.total_bytes) for d in hw.rpc]
    cpu_fits = est.cpu_bytes <= b.ram
    if not cpu_fits:
        verdict = "too_big"
    elif offloaded == n_off:
        verdict = "full_gpu"
    elif offloaded:
        verdict = "partial_gpu"
    else:
        verdict = "cpu"
    plan = Plan(spec=spec, context=ctx, settings=settings, estimate=est, verdict=verdict, gpu_layers=offloaded,
                n_layers=n_off, recommended=False, reason="",
                gpu_budget_bytes=sum(t.budget for t in targets), ram_budget_bytes=b.ram,
                margin_bytes=max([b.margin, *margins]),
                full_gpu_bytes=off_bytes, devices=devices)
    return dataclasses.replace(plan, reason=explain_split(plan, hw, margin_bytes))


def split_label(devices: Sequence[PlanDevice]) -> str:
    """'CPU 0, RPC0[10.0.0.2:50052] 15, RPC0[10.0.0.3:50052] 16' (layers per device)."""
    return ", ".join(f"{d.name} {d.layers}" for d in devices)


def explain_split(plan: Plan, hw: HardwareInfo, margin_bytes: int | None = None) -> str:
    """Why this split, in one clause: where the layers go, and what did not fit where (``margin_bytes``: the
    ``--margin`` the plan was made with; None, the default margin per device)."""
    targets = _rpc_targets(hw, margin_bytes) + _local_targets(hw, margin_bytes)
    c = ctx_label(plan.context)
    cpu = plan.devices[0]
    text = f"{plan.gpu_layers} of {plan.n_layers} layers on {len(targets)} device(s) at {c} context ({split_label(plan.devices)})"
    full = [d for d, t in zip(plan.devices[1:], targets) if d.bytes and t.budget - d.bytes < plan.spec.block_bytes(0)]
    if cpu.layers and plan.gpu_layers < plan.n_layers:
        names = ", ".join(d.name for d in full) or "the devices"
        text += f"; {cpu.layers} stay on the CPU because {names} have no room for more"
    if plan.verdict == "too_big":
        text += (f"; the CPU's share needs {human_bytes(cpu.bytes)} but only "
                 f"{human_bytes(plan.ram_budget_bytes)} of RAM is usable")
    return text


# --------------------------------------------------------------------------- words


def ctx_label(ctx: int) -> str:
    """``8192 -> '8k'``, ``1000 -> '1000'``."""
    return f"{ctx // 1024}k" if ctx >= 1024 and ctx % 1024 == 0 else str(ctx)


def verdict_label(plan: Plan | None) -> str:
    """The verdict in words, the same in the CLI, ``compare`` and the TUI: 'full GPU', 'GPU 20/31 layers',
    'CPU', 'too big', 'split 31/31 layers' over workers; '?' without a plan."""
    verdict = getattr(plan, "verdict", None)
    if verdict in ("full_gpu", "partial_gpu") and getattr(plan, "rpc_endpoints", None):
        return f"split {plan.gpu_layers}/{plan.n_layers} layers"  # type: ignore[union-attr]
    moe = getattr(plan, "moe_cpu_layers", 0)
    if verdict == "partial_gpu" and moe:
        layers = "" if plan.gpu_layers == plan.n_layers else f" {plan.gpu_layers}/{plan.n_layers} layers,"  # type: ignore[union-attr]
        return f"{VERDICT_WORDS[verdict]},{layers} experts {moe}/{plan.spec.n_layers} in RAM"  # type: ignore[union-attr]
    if verdict == "partial_gpu":
        return f"{VERDICT_WORDS[verdict]} {plan.gpu_layers}/{plan.n_layers} layers"  # type: ignore[union-attr]
    return VERDICT_WORDS.get(verdict or "", verdict or "?")


def explain(plan: Plan, hw: HardwareInfo) -> str:
    """Why this verdict, in one clause."""
    if plan.rpc_endpoints or hw.rpc:
        return explain_split(plan, hw)
    e, c = plan.estimate, ctx_label(plan.context)
    if plan.verdict == "full_gpu":
        spare = plan.gpu_budget_bytes - e.gpu_bytes
        return f"all {plan.n_layers} layers on GPU at {c} context, {human_bytes(max(spare, 0))} to spare"
    if plan.verdict == "partial_gpu" and plan.moe_cpu_layers:
        layers = "all layers" if plan.gpu_layers == plan.n_layers else f"{plan.gpu_layers} of {plan.n_layers} layers"
        return (
            f"{layers} on GPU, experts of {plan.moe_cpu_layers} of {plan.spec.n_layers} layers in RAM "
            f"at {c} context (--cpu-moe {plan.moe_cpu_layers}; all on the GPU would need "
            f"{human_bytes(plan.full_gpu_bytes)} of GPU memory, {human_bytes(plan.gpu_budget_bytes)} usable)"
        )
    if plan.verdict == "partial_gpu":
        return (
            f"{plan.gpu_layers} of {plan.n_layers} layers on GPU at {c} context, the rest on the CPU "
            f"(all layers would need {human_bytes(plan.full_gpu_bytes)} of GPU memory, "
            f"{human_bytes(plan.gpu_budget_bytes)} usable)"
        )
    where = "no usable GPU" if plan.gpu_budget_bytes == 0 and hw.backend == "cpu" else "too big for the GPU"
    if plan.verdict == "cpu":
        return (f"runs on the CPU at {c} context ({where}): needs {human_bytes(e.total_bytes)} "
                f"of {human_bytes(plan.ram_budget_bytes)} usable RAM")
    return (f"needs {human_bytes(e.total_bytes)} at {c} context "
            f"but only {human_bytes(plan.ram_budget_bytes)} of RAM is usable ({where})")


def plan_tier(plan: Plan) -> int:
    """How good a plan is, finer than :data:`VERDICT_RANK`: a partial offload that keeps every layer on the
    GPU (MoE experts in RAM) ranks above a layer split, which it outruns several times over."""
    if plan.verdict == "partial_gpu" and plan.moe_cpu_layers and plan.gpu_layers >= plan.n_layers:
        return 3
    return {"too_big": 0, "cpu": 1, "partial_gpu": 2, "full_gpu": 4}[plan.verdict]


def _better(verdict: str, than: Plan) -> bool:
    return VERDICT_RANK[verdict] > VERDICT_RANK[than.verdict]


def _levers(plan: Plan, hw: HardwareInfo, b: _Budget) -> list[str]:
    """Settings that would move this variant to a better verdict (shorter context, q8_0 KV, …)."""
    spec, s, ctx = plan.spec, plan.settings, plan.context
    out: list[str] = []

    def outcome(settings: LoadSettings, c: int) -> tuple[str, int, Estimate]:
        v, g, e, _ = _solve(spec, hw, c, settings, b)
        return v, g, e

    def words(v: str, g: int, e: Estimate | None = None) -> str:
        if v == "partial_gpu" and e is not None and e.moe_cpu_layers:
            return f"puts all layers on the GPU with the experts of {e.moe_cpu_layers} of {spec.n_layers} layers in RAM"
        return "fits fully on the GPU" if v == "full_gpu" else (
            f"puts {g} of {plan.n_layers} layers on the GPU" if v == "partial_gpu" else "fits in RAM on the CPU"
        )

    candidates: list[tuple[str, LoadSettings]] = []
    if s.type_k != "q8_0" or s.type_v != "q8_0":
        q8_cache = dataclasses.replace(s, type_k="q8_0", type_v="q8_0", flash_attn=True)
        candidates.append(("a q8_0 KV cache (--kv-type q8_0)", q8_cache))
    if s.n_ubatch > 256:
        candidates.append(("n_ubatch 256 (--n-ubatch 256)", dataclasses.replace(s, n_ubatch=256)))
    if spec.sliding_window and any(spec.swa_layers) and s.swa_full:
        candidates.append(("a window-sized SWA cache (--swa-window)", dataclasses.replace(s, swa_full=False)))
    if not s.flash_attn:
        candidates.append(("flash attention (--flash-attn)", dataclasses.replace(s, flash_attn=True)))
    for label, alt in candidates:
        v, g, e = outcome(alt, ctx)
        if _better(v, plan):
            saved = plan.estimate.total_bytes - e.total_bytes
            out.append(f"{label} {words(v, g, e)}" + (f", saving {human_bytes(saved)}" if saved > 0 else ""))
    c, floor = ctx // 2, min(2048, ctx // 2)
    while c >= max(floor, 256):
        v, g, e = outcome(s, c)
        if _better(v, plan):
            out.append(f"a {ctx_label(c)} context (--ctx {c}) {words(v, g, e)}")
            break
        c //= 2
    return out


# --------------------------------------------------------------------------- the recommendation


def same_model(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether two specs are variants (quants) of one model: same architecture and shapes."""
    def shape(s: ModelSpec) -> tuple[object, ...]:
        return (s.architecture, s.n_layers, s.n_embd, s.vocab_size, s.n_head)

    return shape(a) == shape(b)


def choose(plans: Sequence[Plan]) -> int:
    """Index of the recommended plan.

    The largest of Q8_0, Q5_K_M and Q4_K_M that fits fully on the GPU; failing that, the best
    partial offload (the largest share of layers, so every layer on the GPU with MoE experts in RAM beats
    any layer split; then the larger share of the weights on the GPU, then the larger file); failing that, the largest
    preferred variant that fits in RAM (any variant if none of those does); when nothing fits, the
    smallest variant.
    """
    idx = range(len(plans))
    full_pref = [i for i in idx if plans[i].verdict == "full_gpu" and plans[i].spec.quant in PREFERRED_QUANTS]
    if full_pref:
        return max(full_pref, key=lambda i: plans[i].spec.size_bytes)
    on_gpu = [i for i in idx if plans[i].verdict in ("full_gpu", "partial_gpu")]
    if on_gpu:
        return max(
            on_gpu,
            key=lambda i: (
                plans[i].gpu_layers / plans[i].n_layers,
                plans[i].estimate.gpu_weights_bytes / max(plans[i].estimate.weights_bytes, 1),
                plans[i].spec.quant in PREFERRED_QUANTS,
                plans[i].spec.size_bytes,
            ),
        )
    cpu_pref = [i for i in idx if plans[i].verdict == "cpu" and plans[i].spec.quant in PREFERRED_QUANTS]
    if cpu_pref:
        return max(cpu_pref, key=lambda i: plans[i].spec.size_bytes)
    cpu_any = [i for i in idx if plans[i].verdict == "cpu"]
    if cpu_any:
        return max(cpu_any, key=lambda i: plans[i].spec.size_bytes)
    return min(idx, key=lambda i: plans[i].estimate.total_bytes)


def _recommendation(plans: Sequence[Plan], i: int, hw: HardwareInfo, margin_bytes: int | None) -> str:
    chosen = plans[i]
    q = chosen.spec.quant
    if chosen.verdict == "too_big":
        return f"{q}: nothing fits; this is the smallest, and it {explain(chosen, hw)}"
    text = f"{q}: {explain(chosen, hw)}"
    # The next better-quality preferred variant that did not make it, and what it would need.
    larger = sorted(
        (
            p
            for p in plans
            if p.spec.size_bytes > chosen.spec.size_bytes and p.spec.quant in PREFERRED_QUANTS and same_model(p.spec, chosen.spec)
        ),
        key=lambda p: p.spec.size_bytes,
    )
    if larger and not hw.rpc:
        nxt = larger[0]
        if chosen.verdict in ("full_gpu", "partial_gpu") and nxt.full_gpu_bytes:
            text += f"; {nxt.spec.quant} would need {human_bytes(nxt.full_gpu_bytes)} on the GPU"
        elif chosen.verdict == "cpu" and nxt.verdict == "too_big":
            text += f"; {nxt.spec.quant} would need {human_bytes(nxt.estimate.total_bytes)}"
        trade = _tradeoff(nxt, hw, margin_bytes)
        if trade:
            text += f" ({trade})"
    return text


def _tradeoff(p: Plan, hw: HardwareInfo, margin_bytes: int | None) -> str | None:
    """'Q8_0 fits fully at 4k context but not at 8k', when a shorter context would lift ``p``."""
    if p.verdict == "full_gpu":
        return None
    b = _budget(hw, margin_bytes)
    c = p.context // 2
    while c >= 2048:
        v, g, _, _ = _solve(p.spec, hw, c, p.settings, b)
        if VERDICT_RANK[v] > VERDICT_RANK[p.verdict]:
            how = "fits fully" if v == "full_gpu" else ("fits partly on the GPU" if v == "partial_gpu" else "fits in RAM")
            return f"{p.spec.quant} {how} at {ctx_label(c)} context but not at {ctx_label(p.context)}"
        c //= 2
    return None


def plan_variants(
    specs: Iterable[ModelSpec],
    hw: HardwareInfo,
    ctx: int = DEFAULT_CTX,
    settings: LoadSettings = DEFAULT_SETTINGS,
    margin_bytes: int | None = None,
    moe_cpu_layers: int | None = None,
) -> list[Plan]:
    """Plan every variant, largest file first; exactly one comes back with ``recommended=True``.

    ``moe_cpu_layers`` (``--cpu-moe``; -1: all) fixes the blocks whose MoE experts stay in RAM."""
    specs = sorted(specs, key=lambda s: s.size_bytes, reverse=True)
    if not specs:
        raise FitchatError("no GGUF variants to plan")
    plans = [plan_model(s, hw, ctx, settings, margin_bytes, moe_cpu_layers) for s in specs]
    i = choose(plans)
    plans[i] = dataclasses.replace(plans[i], recommended=True, reason=_recommendation(plans, i, hw, margin_bytes))
    return plans
