"""Compare the variants of one model on disk: quality against the most precise one, speed, probes.

fitchat.compare.run does the measuring in a worker thread; this screen shows its progress (Cancel or
Esc stops it, keeping only finished variants in the cache), then a table and the verdict in words.
"""

from __future__ import annotations

import threading
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from fitchat.errors import Cancelled
from fitchat.tui.guard import Guarded, on
from fitchat.tui.render import outside
from fitchat.tui.widgets.compare_progress import CompareProgress
from fitchat.tui.widgets.compare_table import CompareTable

TOO_FEW = "Compare needs two or more variants of one model on disk; {name} has {count}. Download another quant of it first."


class CompareScreen(Guarded, Screen[None]):
    """Runs ``fitchat compare`` on the local variants of ``repo``."""

    BINDINGS = [Binding("escape", "back", "Cancel / Back")]

    class Advanced(Message):
        """A fitchat.compare.run.Progress, posted from the worker thread."""

        def __init__(self, progress: Any) -> None:
            self.progress = progress
            super().__init__()

    def __init__(self, repo: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.repo = repo
        self.cancel_event = threading.Event()
        self.running = False
        self.report: Any = None
        self.verdict: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Content.assemble("Comparing the variants of ", outside(self.repo, "bold"), " on disk"),
                     id="compare-title")
        yield CompareProgress(id="compare-progress")
        yield CompareTable(id="compare-table")
        yield Static("", id="compare-verdict")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(CompareTable).display = False
        self.running = True
        self.run_compare(self.cancel_event)

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def run_compare(self, cancel: threading.Event) -> None:
        services = self.app.services
        try:
            candidates = services.compare_candidates(self.repo)
            if len(candidates) < 2:
                self.app.call_from_thread(self._too_few, len(candidates))
                return
            report = services.compare(candidates, hw=self.app.hardware, cancel=cancel,
                                      progress=lambda p: self.post_message(self.Advanced(p)))
            from fitchat.compare.run import verdict_lines

            lines = verdict_lines(report)
        except Exception as exc:  # noqa: BLE001 - Cancelled included: reported, never raised
            self.app.call_from_thread(self._ended, None, [], exc)
            return
        self.app.call_from_thread(self._ended, report, lines, None)

    def on_compare_screen_advanced(self, message: Advanced) -> None:
        if self.running and not self.cancel_event.is_set():
            self.query_one(CompareProgress).show(message.progress)

    def _too_few(self, count: int) -> None:
        self.running = False
        self.notify(TOO_FEW.format(name=self.repo, count=count), severity="warning", timeout=8)
        self.dismiss()

    def _ended(self, report: Any, lines: list[str], error: BaseException | None) -> None:
        self.running = False
        self.query_one(CompareProgress).display = False
        if isinstance(error, Cancelled):
            self.notify("Compare cancelled; finished variants stay cached.", severity="warning")
            self.dismiss()
            return
        if error is not None:
            self.app.report_error(error)
            self.query_one("#compare-verdict", Static).update("The compare did not finish (see the notification).")
            return
        self.report, self.verdict = report, lines
        table = self.query_one(CompareTable)
        table.show(report)
        table.display = True
        table.focus()
        cached = sum(v.cached for v in report.variants)
        footer = f"Context {report.ctx}, {report.budget:,} tokens per variant, scored on {report.text}."
        if cached:
            footer += f" {cached} of {len(report.variants)} rows from the cache."
        self.query_one("#compare-verdict", Static).update(outside("\n".join([*lines, "", footer]), limit=None,
                                                                  one_line=False))

    @on(CompareProgress.CancelPressed)
    def _cancel_pressed(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Stop the running compare (the worker notices within a token or so)."""
        if self.running and not self.cancel_event.is_set():
            self.cancel_event.set()
            self.query_one(CompareProgress).cancelling()

    def action_back(self) -> None:
        if self.running:
            self.cancel()
        else:
            self.dismiss()

    def on_unmount(self) -> None:
        self.cancel_event.set()
