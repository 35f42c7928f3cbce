"""A model's GGUF variants with their fit, a context control, the fit picture and downloads."""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from fitchat.tui.guard import Guarded, on
from fitchat.tui.notify import error_message
from fitchat.tui.render import outside
from fitchat.tui.widgets.context_control import ContextControl
from fitchat.tui.widgets.download_panel import DownloadPanel
from fitchat.tui.widgets.fit_picture import FitPicture
from fitchat.tui.widgets.local_models import model_name
from fitchat.tui.widgets.measure_panel import MeasurePanel
from fitchat.tui.widgets.offline_banner import OfflineBanner
from fitchat.tui.widgets.variants_table import VariantsTable

#: Longest reason or error shown under the table.
REASON_CHARS = 400


class ModelScreen(Guarded, Screen[None]):
    """Variants of ``repo`` (headers read remotely in a worker), or the one ``local`` file."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("d", "download", "Download"),
        Binding("c", "chat", "Chat"),
        Binding("m", "measure", "Measure"),
        Binding("left_square_bracket", "smaller", "Less ctx"),
        Binding("right_square_bracket", "larger", "More ctx"),
    ]
    PALETTE = (
        ("Download the selected variant", "Fetch it with progress, resume and sha256 check", "download"),
        ("Chat with the selected variant", "Open a chat (downloaded variants only)", "chat"),
        ("Measure the selected variant with llama.cpp",
         "llama.cpp's own figures beside the estimate (a dry run; a Hub variant needs only its header)", "measure"),
    )

    def __init__(self, repo: str | None = None, local: Any = None) -> None:
        super().__init__()
        self.repo = repo or getattr(local, "repo", None)
        self.local = local
        self.specs: list[Any] = []
        self.on_disk: dict[str, Any] = {}
        #: The label of the variant being measured (one at a time), or None.
        self.measuring: str | None = None

    @property
    def title_text(self) -> str:
        if self.local is not None:
            return f"{model_name(self.local)} ({self.local.path.name})"
        return self.repo or "?"

    def compose(self) -> ComposeResult:
        yield Header()
        yield OfflineBanner()
        with Horizontal(id="model-top"):
            yield ContextControl(value=self.app.services.default_ctx(), limit=0, id="context")
            yield Static("", id="model-hint")
        yield VariantsTable(id="variants")
        yield Static("", id="reason")
        yield FitPicture(id="fit-picture")
        yield MeasurePanel(id="measure")
        yield DownloadPanel(id="download")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.title_text
        self.query_one("#fit-picture").border_title = "Fit on this machine"
        self.watch(self.app, "hardware", self._hardware_changed, init=True)

    def _hardware_changed(self, hw: Any) -> None:
        self.query_one(FitPicture).hardware = hw
        if hw is not None and not self.specs:
            self.load_plans(self.query_one(ContextControl).value)

    # ------------------------------------------------------------------ planning

    @work(thread=True, exclusive=True, group="plans", exit_on_error=False)
    def load_plans(self, ctx: int) -> None:
        """Read headers (remote ones over HTTP Range) and plan every variant."""
        services, hw = self.app.services, self.app.hardware
        try:
            if self.local is not None:
                plans = [services.local_plan(self.local.path, hw, ctx)]
            else:
                plans = services.remote_plans(self.repo, hw, ctx)
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self._failed, exc)
            return
        try:
            local = services.local_models()
        except Exception:  # noqa: BLE001 - marks are a nicety
            local = []
        self.app.call_from_thread(self._show_plans, plans, local)

    def _failed(self, exc: BaseException) -> None:
        self.app.report_error(exc)
        self.query_one(FitPicture).display = False
        self.query_one("#reason", Static).update(
            Content.assemble("Could not read this model: ", outside(error_message(exc), limit=REASON_CHARS)))

    def _show_plans(self, plans: list[Any], local: list[Any]) -> None:
        if not plans:
            self.query_one("#reason", Static).update("This repo has no GGUF files.")
            return
        self.specs = [p.spec for p in plans]
        if self.local is not None:
            self.on_disk = {self.local.quant or plans[0].spec.quant: self.local}
        else:
            self.on_disk = {m.quant: m for m in local if getattr(m, "repo", None) == self.repo}
        control = self.query_one(ContextControl)
        control.limit = max((s.n_ctx_train or 0) for s in self.specs) or control.limit
        self._render_plans(plans)
        self.query_one(VariantsTable).focus()

    def _render_plans(self, plans: list[Any]) -> None:
        self.query_one(VariantsTable).show(plans, self.on_disk.keys())
        best = next((p for p in plans if p.recommended), None)
        reason = self.query_one("#reason", Static)
        if best is None:
            reason.update("")
        else:
            reason.update(Content.assemble("★ recommended ", outside(best.reason, limit=REASON_CHARS)))

    @on(ContextControl.Changed)
    def _context_changed(self, event: ContextControl.Changed) -> None:
        if self.specs:
            self.replan(event.value)

    @work(thread=True, exclusive=True, group="replan", exit_on_error=False)
    def replan(self, ctx: int) -> None:
        try:
            plans = self.app.services.replan(self.specs, self.app.hardware, ctx)
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self.app.report_error, exc)
            return
        self.app.call_from_thread(self._render_plans, plans)

    @on(VariantsTable.Highlighted)
    def _highlighted(self, event: VariantsTable.Highlighted) -> None:
        self.query_one(FitPicture).plan = event.plan

    @on(VariantsTable.Chosen)
    def _chosen(self, event: VariantsTable.Chosen) -> None:
        if event.plan.spec.quant in self.on_disk:
            self.action_chat()
        else:
            self.action_download()

    def action_smaller(self) -> None:
        self.query_one(ContextControl).action_smaller()

    def action_larger(self) -> None:
        self.query_one(ContextControl).action_larger()

    # ------------------------------------------------------------------ chat and download

    def action_chat(self) -> None:
        plan = self.query_one(VariantsTable).current()
        if plan is None:
            return
        model = self.on_disk.get(plan.spec.quant)
        if model is None:
            self.notify(f"{plan.spec.quant} is not on disk yet: press d to download it", severity="warning")
            return
        self.app.open_chat(model, context=self.query_one(ContextControl).value)

    def action_download(self) -> None:
        plan = self.query_one(VariantsTable).current()
        if plan is None or self.local is not None or not self.repo:
            return
        if self.downloading:
            self.notify("A download is already running", severity="warning")
            return
        if plan.spec.quant in self.on_disk:
            self.notify(f"{plan.spec.quant} is already on disk: press c to chat", severity="information")
            return
        if plan.verdict == "too_big":
            self.notify(f"{plan.spec.quant} does not fit this machine at {plan.context:,} tokens; downloading anyway",
                        severity="warning")
        repo, quant, ctx, pull = self.repo, plan.spec.quant, plan.context, self.app.services.pull
        self.query_one(DownloadPanel).download(
            f"{repo} {quant}", plan.spec.size_bytes,
            lambda progress, cancel: pull(repo, quant=quant, ctx=ctx, progress_class=progress, cancel=cancel),
        )

    # ------------------------------------------------------------------ measuring

    def action_measure(self) -> None:
        """llama.cpp's dry run for the highlighted variant (on disk or on the Hub), in a worker."""
        plan = self.query_one(VariantsTable).current()
        if plan is None:
            return
        if self.measuring is not None:
            self.notify(f"Already measuring {self.measuring}", severity="warning")
            return
        model = self.on_disk.get(plan.spec.quant)
        label = f"{plan.spec.quant or plan.spec.file} at {plan.context:,} tokens"
        self.measuring = label
        self.query_one(MeasurePanel).progress(label, "starting…")
        self.measure(plan, label, None if model is None else model.path)

    @work(thread=True, exclusive=True, group="measure", exit_on_error=False)
    def measure(self, plan: Any, label: str, local_path: Any) -> None:
        services, panel = self.app.services, self.query_one(MeasurePanel)

        def stage(text: str) -> None:
            self.app.call_from_thread(panel.progress, label, text + "…")

        try:
            meas = services.measure_variant(plan, repo=self.repo, local_path=local_path, on_stage=stage)
            checks = services.measure_checks(plan, meas)
        except Exception as exc:  # noqa: BLE001 - shown as one line in the panel
            self.app.call_from_thread(self._measure_failed, label, exc)
            return
        offload = f", {meas.gpu_layers} layers offloaded" if meas.gpu_layers else ""
        how = f"llama.cpp dry run (no_alloc){offload}"
        self.app.call_from_thread(self._measured, label, how, checks)

    def _measured(self, label: str, how: str, checks: Any) -> None:
        self.measuring = None
        self.query_one(MeasurePanel).result(label, how, checks)

    def _measure_failed(self, label: str, exc: BaseException) -> None:
        self.measuring = None
        self.query_one(MeasurePanel).failed(label, error_message(exc))

    @property
    def downloading(self) -> bool:
        return self.query_one(DownloadPanel).running

    @on(DownloadPanel.Ended)
    def _download_ended(self, event: DownloadPanel.Ended) -> None:
        model, error = event.model, event.error
        if error is not None:
            from fitchat.errors import Cancelled

            if isinstance(error, Cancelled):
                self.notify("Download cancelled; it resumes from where it stopped next time.", severity="warning")
            else:
                self.app.report_error(error)
            return
        self.on_disk[model.quant] = model
        table = self.query_one(VariantsTable)
        table.show(table.plans, self.on_disk.keys())
        self.notify(f"Downloaded {model_name(model)} {model.quant}: press c to chat")

    def action_back(self) -> None:
        if self.downloading:
            self.query_one(DownloadPanel).cancel()
            return
        self.app.pop_screen()
