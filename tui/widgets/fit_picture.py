"""The fit at a glance: weights, KV cache and compute buffer stacked against each device's budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from runner.format import human_bytes
from tui.render import Segment, legend, stacked_bar, verdict_content

STYLES = {"weights": "$primary", "kv": "$accent", "compute": "$secondary", "overhead": "$foreground 50%"}
LABEL_WIDTH = 7


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


def _segments(est: Any, share: float) -> tuple[Segment, ...]:
    parts = [
        Segment("weights", int(est.weights_bytes * share), STYLES["weights"]),
        Segment("KV cache", int(est.kv_bytes * share), STYLES["kv"]),
        Segment("compute", int(est.compute_bytes * share), STYLES["compute"]),
    ]
    overhead = int(getattr(est, "overhead_bytes", 0) * share)
    if overhead:
        parts.append(Segment("overhead", overhead, STYLES["overhead"]))
    return tuple(parts)


def device_loads(plan: Any, hw: Any) -> list[DeviceLoad]:
    """Split a plan's estimate over the devices that would hold it.

    The GPU part (``gpu_bytes``) is spread over the GPUs in proportion to their free memory, as
    llama.cpp's default tensor split does; the rest (``cpu_bytes``) lands in RAM. Each part keeps
    the estimate's own mix of weights, KV cache and compute buffer.
    """
    est = plan.estimate
    total = max(est.total_bytes, 1)
    margin = int(getattr(plan, "margin_bytes", 0) or 0)
    loads: list[DeviceLoad] = []
    budgets = hw.gpu_budgets() if hw is not None else ()
    gpu_bytes = est.gpu_bytes if plan.verdict in ("full_gpu", "partial_gpu") else 0
    if plan.verdict == "too_big" and budgets:
        gpu_bytes = est.gpu_bytes
    if budgets:
        names = [f"GPU {g.index}" for g in hw.gpus] if hw.backend == "cuda" else ["Metal"]
        free_total = max(sum(budgets), 1)
        for name, budget in zip(names, budgets):
            share = gpu_bytes / total * (budget / free_total)
            loads.append(DeviceLoad(name, budget, _segments(est, share), margin))
    ram_budget = hw.ram.available_bytes if hw is not None else 0
    cpu_bytes = est.cpu_bytes if budgets else est.total_bytes
    if cpu_bytes > 0 or not budgets:
        loads.append(DeviceLoad("RAM", ram_budget, _segments(est, cpu_bytes / total), 0 if budgets else margin))
    return loads


class FitPicture(Widget):
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
        width = max(20, (self.size.width or 80) - LABEL_WIDTH - 28)
        lines: list[Content] = []
        first = plan.estimate
        lines.append(
            Content.assemble(
                (f"{plan.spec.quant} ", "bold"), verdict_content(plan),
                f"  needs {human_bytes(first.total_bytes)} at {plan.context:,} tokens",
            )
        )
        loads = device_loads(plan, self.hardware)
        for load in loads:
            left = load.budget - load.used - load.margin
            tail = (f" {human_bytes(load.used)} of {human_bytes(load.budget)}",)
            status = (f", {human_bytes(left)} left", "$text-muted") if left >= 0 else (
                f", {human_bytes(-left)} short", "bold $error")
            lines.append(
                Content.assemble(
                    (f"{load.name:<{LABEL_WIDTH}}", "bold"),
                    stacked_bar(load.segments, load.budget, width, load.margin),
                    *tail, status,
                )
            )
        if loads:
            merged = [Segment(s.label, sum(l.segments[i].nbytes for l in loads if i < len(l.segments)), s.style)
                      for i, s in enumerate(max((l.segments for l in loads), key=len))]
            lines.append(Content.assemble(" " * LABEL_WIDTH, legend(merged, max(l.margin for l in loads))))
        reason = getattr(plan, "reason", "")
        if reason:
            lines.append(Content.styled(reason, "$text-muted"))
        levers = tuple(getattr(plan, "levers", ()) or ())
        if levers and plan.verdict != "full_gpu":
            lines.append(Content.assemble(("To fit better: ", "bold"), "; ".join(levers)))
        return Content("\n").join(lines)
