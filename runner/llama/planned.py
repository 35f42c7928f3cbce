"""Loading a model as ``fitchat fit`` plans it: one rule shared by ``fitchat chat`` and ``fitchat serve``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitchat.errors import LoadFailed

if TYPE_CHECKING:
    from fitchat.llama.engine import Notice
    from fitchat.llama.process import ProcessEngine
    from fitchat.model.plan import Plan


def plan_load(path: str | Path, name: str, *, ctx: int | None = None, settings: Any = None,
              gpu_layers: int | None = None, moe_cpu_layers: int | None = None, rpc: Sequence[str] = ()) -> Plan:
    """The fit plan for ``path`` on this machine (and the workers ``rpc`` names: their devices join the split,
    fitchat.llama.rpc); :class:`LoadFailed` when it does not fit (unless the user named the GPU layers, which
    overrides the plan). ``moe_cpu_layers`` (``--cpu-moe``; -1: all) fixes the blocks whose MoE experts stay in
    RAM instead of letting the planner choose."""
    from fitchat.model.estimate import DEFAULT_CTX, DEFAULT_SETTINGS
    from fitchat.model.gguf_spec import read_spec
    from fitchat.model.hardware import detect_hardware
    from fitchat.model.plan import plan_model

    spec = read_spec(path)
    from fitchat.llama.smoke import settings_for_this_build

    chosen = settings_for_this_build(settings if settings is not None else DEFAULT_SETTINGS)
    hw = detect_hardware()
    if rpc:
        from fitchat.llama.rpc import with_workers

        hw = with_workers(hw, rpc)
    plan = plan_model(spec, hw, ctx or DEFAULT_CTX, chosen, moe_cpu_layers=moe_cpu_layers)
    if plan.verdict == "too_big" and gpu_layers is None:
        levers = f"; options: {'; '.join(plan.levers)}" if plan.levers else ""
        raise LoadFailed(f"{name} does not fit this machine at context {plan.context}: {plan.reason}{levers}")
    return plan


def engine_moe(plan: Plan, moe_cpu_layers: int | None) -> int | None:
    """The ``--cpu-moe`` count the engine loads with beside ``plan``: none for a model without experts (the plan
    says 0 there; the count would be reported as experts in RAM and add a fallback rung that loads the same)."""
    return moe_cpu_layers if plan.spec.n_expert else None


def load_planned(path: str | Path, name: str, *, ctx: int | None = None, settings: Any = None,
                 n_threads: int | None = None, gpu_layers: int | None = None,
                 on_notice: Notice | None = None, moe_cpu_layers: int | None = None,
                 rpc: Sequence[str] = ()) -> ProcessEngine:
    """:func:`plan_load`, then the engine process loads it with that plan (and its fallback ladder).

    The model runs in its own process (fitchat.llama.process): a crash in llama.cpp ends that process,
    not the caller.
    """
    from fitchat.llama.process import ProcessEngine

    plan = plan_load(path, name, ctx=ctx, settings=settings, gpu_layers=gpu_layers, moe_cpu_layers=moe_cpu_layers,
                     rpc=rpc)
    return ProcessEngine.load(path, plan=plan, n_ctx=ctx, n_threads=n_threads, gpu_layers=gpu_layers,
                              on_notice=on_notice, moe_cpu_layers=engine_moe(plan, moe_cpu_layers))
