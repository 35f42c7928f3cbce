"""A one-line banner shown while the Hub cannot be reached; local models keep working."""

from __future__ import annotations

from textual.widgets import Static

from fitchat.tui.guard import Guarded

OFFLINE_TEXT = "Offline: the Hugging Face Hub cannot be reached. Models on disk still work."


class OfflineBanner(Guarded, Static):
    """Hidden unless the app's ``hub_online`` is False."""

    DEFAULT_CSS = """
    OfflineBanner {
        display: none;
        height: auto;
        padding: 0 1;
        background: $warning 30%;
        color: $text;
    }
    OfflineBanner.-offline { display: block; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(OFFLINE_TEXT, **kwargs)  # type: ignore[arg-type]

    def on_mount(self) -> None:
        self.watch(self.app, "hub_online", self._show, init=True)

    def _show(self, online: bool | None) -> None:
        self.set_class(online is False, "-offline")
