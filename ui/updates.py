"""Changes to a widget's properties, as plain values: tab logic returns ``update(maximum=9, value=3)``
without importing Gradio, and ``ui.layout.wiring`` hands it to Gradio as ``gr.update``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Update:
    """New values for some of a widget's properties (``value``, ``choices``, ``maximum``, ``visible``...);
    no properties means "leave the widget as it is"."""

    props: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.props[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.props.get(name, default)


def update(**props: Any) -> Update:
    """An ``Update`` of the given properties."""
    return Update(props)


KEEP = Update()  # leave the widget unchanged
