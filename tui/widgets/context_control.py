"""Context length control: ◀ 4,096 ▶, doubling and halving in powers of two."""

from __future__ import annotations

from textual.binding import Binding
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from fitchat.tui.guard import Guarded

MIN_CTX = 512


def context_steps(limit: int) -> list[int]:
    """512, 1024 … up to ``limit`` (the model's trained length), with ``limit`` itself last."""
    limit = max(limit, MIN_CTX)
    steps = []
    value = MIN_CTX
    while value < limit:
        steps.append(value)
        value *= 2
    steps.append(limit)
    return steps


class ContextControl(Guarded, Widget, can_focus=True):
    """Left/right (or [ and ]) change the context; posts :class:`ContextControl.Changed`."""

    DEFAULT_CSS = """
    ContextControl { height: 1; width: auto; padding: 0 1; }
    ContextControl:focus { background: $primary 20%; }
    """

    BINDINGS = [
        Binding("left,minus", "smaller", "Less context", show=False),
        Binding("right,plus,equals_sign", "larger", "More context", show=False),
    ]

    value: reactive[int] = reactive(4096, layout=True)
    limit: reactive[int] = reactive(131072, layout=True)

    class Changed(Message):
        """The context length changed."""

        def __init__(self, value: int) -> None:
            self.value = value
            super().__init__()

    def __init__(self, value: int = 4096, limit: int = 131072, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.set_reactive(ContextControl.limit, limit)
        self.set_reactive(ContextControl.value, value)

    def render(self) -> Content:
        trained = f"  (trained {self.limit:,})" if self.limit else ""
        return Content.assemble(
            ("Context ", "bold"), ("◀ ", "$accent"), (f"{self.value:,}", "bold"), (" ▶", "$accent"),
            " tokens", (trained, "$text-muted"),
        )

    def _step(self, direction: int) -> None:
        steps = context_steps(self.limit)
        if direction > 0:
            bigger = [s for s in steps if s > self.value]
            new = bigger[0] if bigger else self.value
        else:
            smaller = [s for s in steps if s < self.value]
            new = smaller[-1] if smaller else self.value
        if new != self.value:
            self.value = new
            self.post_message(self.Changed(new))

    def action_smaller(self) -> None:
        self._step(-1)

    def action_larger(self) -> None:
        self._step(+1)

    def on_click(self, event: object) -> None:
        x = getattr(event, "x", 0)
        self._step(-1 if x < 12 else +1)
