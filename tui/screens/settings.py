"""The chat settings dialog: system prompt and sampling."""

from __future__ import annotations

import dataclasses
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, TextArea

from fitchat.format import printable
from fitchat.tui.guard import Guarded

#: (field, label, type) for the numeric sampling settings.
FIELDS: tuple[tuple[str, str, type], ...] = (
    ("temperature", "Temperature", float),
    ("top_p", "Top p", float),
    ("top_k", "Top k", int),
    ("repeat_penalty", "Repeat penalty", float),
    ("max_tokens", "Max tokens", int),
    ("seed", "Seed", int),
)
OPTIONAL = {"seed", "max_tokens"}


class SettingsScreen(Guarded, ModalScreen[Any]):
    """Edits a SamplingSettings; dismisses with the new one, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, settings: Any, workers: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self._fields = [f for f in FIELDS if hasattr(settings, f[0])]
        #: The RPC workers (``fitchat worker``) models load on; None hides the field. Read after Save.
        self.rpc_workers = workers

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog", id="settings-dialog"):
            yield Label("Chat settings", classes="dialog-title")
            yield Label("System prompt")
            # A saved prompt is edited as text: TextArea would pass an escape sequence in it to the terminal.
            yield TextArea(printable(getattr(self.settings, "system_prompt", None) or ""), id="system-prompt", compact=True)
            with Grid(id="settings-grid"):
                for name, label, _kind in self._fields:
                    value = getattr(self.settings, name)
                    yield Label(label)
                    yield Input("" if value is None else str(value), id=f"set-{name}", compact=True,
                                placeholder="random" if name == "seed" else "default")
            if self.rpc_workers is not None:
                yield Label("RPC workers (HOST:PORT, comma-separated; a reload uses them)")
                yield Input(",".join(self.rpc_workers), id="set-rpc", compact=True, placeholder="none: this machine only")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", variant="primary", id="save", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def collect(self) -> Any:
        """A new settings object from the form; raises ValueError naming the bad field."""
        values: dict[str, Any] = {}
        for name, label, kind in self._fields:
            raw = self.query_one(f"#set-{name}", Input).value.strip()
            if not raw:
                if name in OPTIONAL:
                    values[name] = None
                    continue
                raise ValueError(f"{label} needs a value")
            try:
                values[name] = kind(raw)
            except ValueError:
                raise ValueError(f"{label} must be {'a whole number' if kind is int else 'a number'}, not {raw!r}") from None
        if self.rpc_workers is not None:
            from fitchat.llama.rpc import BadEndpoint, parse_endpoints, require_rpc

            raw = self.query_one("#set-rpc", Input).value.strip()
            try:
                workers = parse_endpoints(raw) if raw else ()
                if workers:
                    require_rpc()
            except BadEndpoint as exc:
                raise ValueError(str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - a build without RPC: its one line
                raise ValueError(str(exc)) from None
            self.rpc_workers = workers
        prompt = self.query_one("#system-prompt", TextArea).text.strip()
        if hasattr(self.settings, "system_prompt"):
            values["system_prompt"] = prompt or None
        from fitchat.llama.engine import InvalidSampling

        try:
            return dataclasses.replace(self.settings, **values)  # the settings check their own ranges
        except InvalidSampling as exc:
            labels = {name: label for name, label, _kind in FIELDS} | {"system_prompt": "System prompt"}
            raise ValueError(f"{labels.get(exc.field, exc.field)} {exc.rule}") from None

    def action_save(self) -> None:
        """Dismiss with the new settings; a bad value is told and the dialog stays open (nothing changes)."""
        try:
            settings = self.collect()
        except (ValueError, TypeError) as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        self.dismiss(settings)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()
