"""The chat status line: tok/s with a sparkline over the reply, TTFT, context used, layers on GPU, and
where the model is served while it is."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Sparkline

from fitchat.tui.guard import Guarded
from fitchat.tui.render import usage_bar


class StatusText(Guarded, Widget):
    """The status words; a fixed one-line box, so an update repaints without a new layout."""

    DEFAULT_CSS = """
    StatusText { width: 1fr; height: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.content = Content("")

    def show(self, content: Content) -> None:
        if content != self.content:
            self.content = content
            self.refresh()

    def render(self) -> Content:
        return self.content


class StatusLine(Guarded, Horizontal):
    """One line under the chat. Timings appear only once a reply has produced them."""

    DEFAULT_CSS = """
    StatusLine { height: 1; background: $panel; padding: 0 1; }
    StatusLine Sparkline { width: 10; margin-right: 1; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.state = "no model"
        self.tokens_per_s: float | None = None
        self.ttft_s: float | None = None
        self.context_used = 0
        self.context_size = 0
        self.gpu_layers: int | None = None
        self.n_layers: int | None = None
        self.serving_url: str | None = None

    def compose(self) -> ComposeResult:
        yield Sparkline([], id="status-spark")
        yield StatusText(id="status-text")

    def on_mount(self) -> None:
        self.refresh_text()

    def set_state(self, state: str) -> None:
        """``loading …``, ``ready``, ``generating``, ``stopped`` …"""
        self.state = state
        self.refresh_text()

    def set_serving(self, url: str | None) -> None:
        """``serving on URL`` while the model is served over the API (None: not served)."""
        self.serving_url = url
        self.refresh_text()

    def set_layers(self, gpu_layers: int | None, n_layers: int | None) -> None:
        self.gpu_layers, self.n_layers = gpu_layers, n_layers
        self.refresh_text()

    def set_context(self, used: int, size: int) -> None:
        self.context_used, self.context_size = used, size
        self.refresh_text()

    def set_speed(self, tokens_per_s: float | None, ttft_s: float | None, samples: Sequence[float] | None = None) -> None:
        """Live or final speed; ``samples`` (tok/s over the reply) feed the sparkline."""
        self.tokens_per_s, self.ttft_s = tokens_per_s, ttft_s
        if samples is not None:
            self.query_one(Sparkline).data = list(samples)
        self.refresh_text()

    def clear_speed(self) -> None:
        self.set_speed(None, None, [])

    def _layers_text(self) -> str:
        if self.gpu_layers is None:
            return ""
        if not self.gpu_layers:
            return "CPU only"
        if self.n_layers and self.gpu_layers >= self.n_layers:
            return f"GPU {self.n_layers}/{self.n_layers} layers"
        return f"GPU {self.gpu_layers}/{self.n_layers or '?'} layers"

    def refresh_text(self) -> None:
        parts: list[Content | str | tuple[str, str]] = [(self.state, "bold $accent")]
        if self.serving_url:
            parts += [" · ", (f"serving on {self.serving_url}", "bold $success")]
        if self.tokens_per_s is not None:
            parts += [" · ", (f"{self.tokens_per_s:.1f} tok/s", "bold")]
        if self.ttft_s is not None:
            parts += [f" · TTFT {self.ttft_s:.2f}s"]
        if self.context_size:
            parts += [" · ctx ", usage_bar(self.context_used, self.context_size, 6, "$secondary"),
                      f" {self.context_used:,}/{self.context_size:,}"]
        layers = self._layers_text()
        if layers:
            parts += [" · ", layers]
        self.query_one(StatusText).show(Content.assemble(*parts))
