"""Widgets laid out once per change: Textual would lay out a streamed update two or three times."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.geometry import Region, Size
from textual.reactive import Reactive
from textual.widget import Widget

if TYPE_CHECKING:
    from typing_extensions import Self


class SizedByLayout:
    """For a widget whose size only a layout of its parent sets (``height: auto``, not scrollable).

    While a reply streams, Textual drew every update three times, the last two repeating the
    first: a layout that changes ``virtual_size`` asks for another layout, and a new block, given
    its text and styles before it was mounted, asks for a layout and a paint of its own once
    mounted. Here a new size is recorded without asking again (a widget whose size changed is
    repainted anyway), and a widget not yet in the DOM, or not yet mounted and asking only for a
    paint, asks for nothing: mounting it lays it out and paints it.

    A mixin, named before the widget class: Textual takes a widget's style and query names from
    its first base that is a widget.
    """

    virtual_size: Reactive[Size] = Reactive(Size(0, 0), layout=False, repaint=False)

    def refresh(self, *regions: Region, repaint: bool = True, layout: bool = False,
                recompose: bool = False) -> Self:
        widget: Widget = super()  # type: ignore[assignment]
        # Not in the DOM yet, or not mounted and asking for a paint alone: mounting it lays it out
        # and paints it, so Textual's own paint afterwards would repeat a frame.
        if widget.parent is None or not (widget.is_mounted or layout or recompose):
            return self
        return widget.refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)  # type: ignore[return-value]
