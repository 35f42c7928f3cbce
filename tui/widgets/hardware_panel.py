"""The home screen's summary of the machine: backend, GPUs, RAM, llama.cpp build, warnings."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from fitchat.format import human_bytes
from fitchat.model.hardware import HardwareInfo
from fitchat.tui.guard import Guarded
from fitchat.tui.render import outside, usage_bar

LABEL_WIDTH = 10


class HardwarePanel(Guarded, Widget):
    """Renders a :class:`HardwareInfo`; shows a placeholder until one is set."""

    DEFAULT_CSS = """
    HardwarePanel { height: auto; }
    """

    hardware: reactive[HardwareInfo | None] = reactive(None, layout=True)

    def __init__(self, hardware: HardwareInfo | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.set_reactive(HardwarePanel.hardware, hardware)

    def render(self) -> Content:
        hw = self.hardware
        if hw is None:
            return Content.from_markup("[$text-muted]Detecting hardware…[/]")
        bar_width = max(10, min(30, (self.size.width or 80) // 4))
        lines: list[Content] = []

        def row(label: str, *body: Content | str | tuple[str, str]) -> None:
            lines.append(Content.assemble((f"{label:<{LABEL_WIDTH}}", "bold"), *body))

        build = hw.llama_cpp
        offload = "GPU offload" if build.gpu_offload else "CPU-only build"
        backend = {"cuda": "CUDA", "metal": "Metal", "cpu": "CPU"}.get(hw.backend, hw.backend)
        # Names and versions come from NVML, /proc and the llama.cpp build: shown as plain text.
        row("Backend", outside(backend, "bold $accent"), "  llama-cpp-python ", outside(build.version), f" ({offload})")
        for g in hw.gpus:
            figures = f" {human_bytes(g.free_bytes)} free of {human_bytes(g.total_bytes)}  "
            room = (self.size.width or 80) - LABEL_WIDTH - bar_width - len(figures)
            row(f"GPU {g.index}", usage_bar(g.total_bytes - g.free_bytes, g.total_bytes, bar_width), figures,
                outside(g.name, limit=room))
        if hw.metal is not None:
            row(
                "Metal",
                usage_bar(hw.metal.unified_memory_bytes - hw.metal.working_set_bytes, hw.metal.unified_memory_bytes, bar_width),
                f" {human_bytes(hw.metal.working_set_bytes)} GPU working set of "
                f"{human_bytes(hw.metal.unified_memory_bytes)}",
            )
        ram = hw.ram
        row(
            "RAM",
            usage_bar(ram.total_bytes - ram.available_bytes, ram.total_bytes, bar_width),
            f" {human_bytes(ram.available_bytes)} available of {human_bytes(ram.total_bytes)}",
        )
        cpu = hw.cpu
        isa = f"  {' '.join(cpu.isa[:5])}" if cpu.isa else ""
        row("CPU", outside(f"{cpu.physical_cores} cores / {cpu.logical_cores} threads{isa}  {cpu.model}", limit=None))
        if not hw.gpus and hw.metal is None and hw.gpu_reason:
            row("GPUs", ("none", "$text-muted"), outside(f" ({hw.gpu_reason})", "$text-muted", limit=None))
        for warning in hw.warnings:
            lines.append(Content.assemble(("⚠ ", "bold $warning"), outside(warning, "$warning", limit=None, one_line=False)))
        return Content("\n").join(lines)
