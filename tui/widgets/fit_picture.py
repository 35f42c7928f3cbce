"""The fit at a glance: weights, KV cache and compute buffer stacked against each device's budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from fitchat.format import human_bytes
from fitchat.tui.guard import Guarded
from fitchat.tui.render import Segment, legend, outside, stacked_bar, verdict_content

STYLES = {"weights": "$primary", "kv": "$accent", "compute": "$secondary", "overhead": "$foreground 50%"}
LABEL_WIDTH = 7
#: Longest reason or list of levers shown under the bars.
REASON_CHARS = 400


@dataclass(frozen=True)
class DeviceLoad:
    """What one device would hold, and what it has."""

    name: str
    budget: int
    segments: tuple[Segment, ...]
    margin: int

    @property
    def used(self) -> int:
        return sum(s.nbytes for s in self.segments)


def _segments(weights: int, kv: int, compute: int, overhead: int) -> tuple[Segment, ...]:
    parts = [
        Segment("weights", max(weights, 0), STYLES["weights"]),
        Segment("KV cache", max(kv, 0), STYLES["kv"]),
        Segment("compute", max(compute, 0), STYLES["compute"]),
    ]
    if overhead > 0:
        parts.append(Segment("other", overhead, STYLES["overhead"]))
    return tuple(parts)


def device_loads(plan: Any, hw: Any) -> list[DeviceLoad]:
    """What each device would hold under ``plan``, against its free memory and margin.

    GPU parts come from the estimate's per-device split (``gpu_weights_bytes`` …); with several
    GPUs, weights and KV cache spread in proportion to free memory (llama.cpp's default split) and
    each device keeps its own compute buffer. The rest is RAM; on Apple Silicon, RAM holds it all.
    """
    est = plan.estimate
    loads: list[DeviceLoad] = []
    budgets = hw.gpu_budgets() if hw is not None else ()
    gw, gk, gc = est.gpu_weights_bytes, est.gpu_kv_bytes, est.gpu_compute_bytes
    g_other = est.gpu_bytes - gw - gk - gc
    if budgets:
        names = [f"GPU {g.index}" for g in hw.gpus] if hw.backend == "cuda" else ["Metal"]
        free_total = max(sum(budgets), 1)
        for name, budget in zip(names, budgets):
            share = budget / free_total
            loads.append(DeviceLoad(
                name, budget, _segments(int(gw * share), int(gk * share), gc, int(g_other * share)), plan.margin_bytes,
            ))
    ram_avail = hw.ram.available_bytes if hw is not None else plan.ram_budget_bytes
    ram_margin = max(ram_avail - plan.ram_budget_bytes, 0)
    if hw is not None and hw.backend == "metal":
        ram = _segments(est.weights_bytes, est.kv_bytes, est.compute_bytes, est.total_bytes - est.weights_bytes
                        - est.kv_bytes - est.compute_bytes)
    else:
        cw, ck, cc = est.weights_bytes - gw, est.kv_bytes - gk, est.compute_bytes - gc
        ram = _segments(cw, ck, cc, est.cpu_bytes - cw - ck - cc)
    loads.append(DeviceLoad("RAM", ram_avail, ram, ram_margin))
    return loads


class FitPicture(Guarded, Widget):
    """Renders the highlighted plan; empty until one is set."""

    DEFAULT_CSS = """
    FitPicture { height: auto; }
    """

    plan: reactive[Any] = reactive(None, layout=True)
    hardware: reactive[Any] = reactive(None, layout=True)

    def render(self) -> Content:
        plan = self.plan
        if plan is None:
            return Content.from_markup("[$text-muted]Reading model headers…[/]")
        avail = (self.size.width or 80) - LABEL_WIDTH
        est = plan.estimate
        lines: list[Content] = [
            Content.assemble(
                outside(f"{plan.spec.quant}  ", "bold"), verdict_content(plan),
                f"  needs {human_bytes(est.total_bytes)} at {plan.context:,} tokens",
            )
        ]
        loads = device_loads(plan, self.hardware)
        for load in loads:
            left = load.budget - load.used - load.margin
            if load.used == 0:
                why = f", under its {human_bytes(load.margin)} margin" if load.margin >= load.budget else ""
                tail = Content.styled(f" unused: {human_bytes(load.budget)} free{why}", "$text-muted")
            else:
                tail = Content.assemble(
                    f" {human_bytes(load.used)} of {human_bytes(load.budget)}",
                    (f", {human_bytes(left)} left", "$text-muted") if left >= 0
                    else (f", {human_bytes(-left)} short", "bold $error"),
                )
            width = max(10, min(60, avail - tail.cell_length))
            lines.append(Content.assemble(
                (f"{load.name:<{LABEL_WIDTH}}", "bold"),
                stacked_bar(load.segments, load.budget, width, min(load.margin, load.budget)),
                tail,
            ))
        if plan.verdict == "too_big" and plan.full_gpu_bytes and self.hardware is not None and self.hardware.gpu_budgets():
            lines.append(Content.styled(
                f"{'':<{LABEL_WIDTH}}all layers on the GPU would need {human_bytes(plan.full_gpu_bytes)}", "$text-muted"))
        totals = [Segment("weights", est.weights_bytes, STYLES["weights"]),
                  Segment("KV", est.kv_bytes, STYLES["kv"]),
                  Segment("compute", est.compute_bytes, STYLES["compute"])]
        lines.append(Content.assemble(" " * LABEL_WIDTH, legend(totals, margin=1 if any(d.margin for d in loads) else 0)))
        reason = getattr(plan, "reason", "")
        if reason and not plan.recommended:
            lines.append(outside(reason, "$text-muted", REASON_CHARS))
        levers = tuple(getattr(plan, "levers", ()) or ())
        if levers:
            lines.append(Content.assemble(("To fit better: ", "bold"), outside("; ".join(levers), limit=REASON_CHARS)))
        return Content("\n").join(lines)
