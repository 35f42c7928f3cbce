"""Download progress: a bar with bytes, rate and time left, and a Cancel button."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Button, ProgressBar, Static

from fitchat.format import human_bytes, human_duration
from fitchat.tui.guard import Guarded
from fitchat.tui.progress import ProgressEvent, relay_class
from fitchat.tui.render import outside

#: ``pull(progress_class, cancel)``: the download itself, run in the panel's worker thread.
Pull = Callable[[type, threading.Event], Any]

RATE_WINDOW_S = 3.0
#: The bar's total between downloads.
IDLE_TOTAL = 1


class DownloadPanel(Guarded, Vertical):
    """Runs one download at a time in a worker and shows its progress; posts :class:`Ended` when done."""

    DEFAULT_CSS = """
    DownloadPanel {
        display: none;
        height: auto;
        padding: 0 1;
        border: round $accent 60%;
        border-title-color: $accent;
    }
    DownloadPanel.-active { display: block; }
    DownloadPanel Horizontal { height: auto; }
    DownloadPanel ProgressBar { width: 1fr; padding: 0 1 0 0; }
    DownloadPanel #download-figures { width: 1fr; height: 1; color: $text-muted; }
    DownloadPanel Button { min-width: 10; height: 1; border: none; }
    """

    class Progress(Message):
        """A progress event from the download worker (posted from its thread)."""

        def __init__(self, event: ProgressEvent) -> None:
            self.event = event
            super().__init__()

    class Ended(Message):
        """The download finished (``model``) or failed or was cancelled (``error``)."""

        def __init__(self, model: Any, error: BaseException | None) -> None:
            self.model = model
            self.error = error
            super().__init__()

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.running = False
        self.cancel_event = threading.Event()
        self._bars: dict[int, tuple[int, int | None]] = {}
        self._expected = 0
        self._samples: deque[tuple[float, int]] = deque()

    def compose(self) -> ComposeResult:
        with Horizontal():
            # A known total while idle: a hidden bar of unknown total still animates at 15 frames
            # a second, waking the UI while llama.cpp decodes (start() sets the real one).
            yield ProgressBar(total=IDLE_TOTAL, show_eta=False, id="download-bar")
            yield Button("Cancel", variant="error", id="download-cancel")
        yield Static("", id="download-figures")

    def start(self, label: str, expected_bytes: int) -> threading.Event:
        """Show the panel for a new download; returns the event that cancels it."""
        self.cancel_event = threading.Event()
        self._bars.clear()
        self._samples.clear()
        self._expected = expected_bytes
        self.border_title = Content.assemble("Downloading ", outside(label))  # a str title is read as markup
        self.query_one(ProgressBar).update(total=expected_bytes or None, progress=0)
        self.query_one("#download-figures", Static).update("starting…")
        self.query_one("#download-cancel", Button).disabled = False
        self.add_class("-active")
        return self.cancel_event

    def download(self, label: str, expected_bytes: int, pull: Pull) -> bool:
        """Start ``pull`` in a worker with progress shown here; False when a download already runs."""
        if self.running:
            return False
        self.running = True
        self._pull(pull, self.start(label, expected_bytes))
        return True

    @work(thread=True, exclusive=True, group="download", exit_on_error=False)
    def _pull(self, pull: Pull, cancel: threading.Event) -> None:
        progress = relay_class(lambda event: self.post_message(self.Progress(event)))
        try:
            model = pull(progress, cancel)
        except Exception as exc:  # noqa: BLE001 - Cancelled included: it is reported, not raised
            self.post_message(self.Ended(None, exc))
            return
        self.post_message(self.Ended(model, None))

    def on_download_panel_ended(self, message: Ended) -> None:
        # Not stopped: the screen handles it next, and sees ``running`` already False.
        self.running = False
        self.finish()

    def on_unmount(self) -> None:
        """Leaving the screen (or quitting) stops a running download; a Hub download resumes next time."""
        self.cancel_event.set()

    def finish(self) -> None:
        """Hide the panel (its bar stops animating)."""
        self.remove_class("-active")
        self.query_one(ProgressBar).update(total=IDLE_TOTAL, progress=0)

    @property
    def done_bytes(self) -> int:
        return sum(n for n, _ in self._bars.values())

    def on_download_panel_progress(self, message: Progress) -> None:
        message.stop()
        event = message.event
        self._bars[event.bar] = (event.n, event.total)
        totals = sum(t or 0 for _, t in self._bars.values())
        total = max(self._expected, totals)
        done = self.done_bytes
        now = time.monotonic()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        t0, b0 = self._samples[0]
        rate = (done - b0) / (now - t0) if now > t0 else 0.0
        self.query_one(ProgressBar).update(total=total or None, progress=done)
        figures = f"{human_bytes(done)} of {human_bytes(total)}" if total else human_bytes(done)
        if rate > 0:
            figures += f" · {human_bytes(rate)}/s"
            if total and done < total:
                figures += f" · {human_duration((total - done) / rate)} left"
        self.query_one("#download-figures", Static).update(figures)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "download-cancel":
            event.stop()
            self.cancel()

    def cancel(self) -> None:
        """Ask the download to stop (it keeps what it has for a later resume)."""
        self.cancel_event.set()
        self.query_one("#download-cancel", Button).disabled = True
        self.query_one("#download-figures", Static).update("cancelling…")
