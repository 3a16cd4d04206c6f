"""Every link between tabs, in one place.

A tab announces what happens in it (``emit``: a generation ended, the model changed, "open this in the
attention tab" was clicked) and subscribes to what others announce (``follow``). ``connect`` wires each
announcement to its followers once every tab exists, so no tab imports another.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import gradio as gr

from .wiring import Listener

GENERATED = "generated"  # a generation ended (Generate, Compare): pickers of kept generations refresh
MODEL_CHANGED = "model changed"  # the header's picker or base/fine-tuned switch, or a fine-tune ended


def open_tab(tab_id: str) -> str:
    """The announcement "show the newest generation in tab ``tab_id``": the tab is selected first."""
    return f"open {tab_id}"


Follower = Callable[[Listener], object]  # wires its own chain of events on the listener it is given


class Links:
    def __init__(self) -> None:
        self._emitted: list[tuple[str, Listener]] = []
        self._followers: defaultdict[str, list[Follower]] = defaultdict(list)

    def emit(self, name: str, listener: Listener) -> None:
        """Announce ``name`` whenever ``listener`` fires (e.g. ``event.then``, ``button.click``)."""
        self._emitted.append((name, listener))

    def follow(self, name: str, follower: Follower) -> None:
        """Call ``follower(listener)`` for each announcement of ``name``."""
        self._followers[name].append(follower)

    def connect(self, tabs: gr.Tabs) -> None:
        """Wire every announcement to its followers (call once, after building every tab)."""
        for name, listener in self._emitted:
            tab_id = name.removeprefix("open ") if name.startswith("open ") else None
            if tab_id is not None:
                selected = listener(lambda tab_id=tab_id: gr.Tabs(selected=tab_id), None, [tabs], queue=False,
                                    api_visibility="private")
                listener = selected.then
            for follower in self._followers[name]:
                follower(listener)


def tab_selected(tab_id: str) -> str:
    """The announcement "the user opened tab ``tab_id``" (its controls may need refitting)."""
    return f"selected {tab_id}"
