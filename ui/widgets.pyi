"""Gradio inputs whose own checks name the input and say what to do.

Gradio checks a value against a component's range or choices before a handler sees it, and its message
("Value 1.5 is greater than maximum value 1.") does not say which input was wrong: an API caller sends
several at once. These subclasses add the component's label and the allowed values; the page draws them
as the plain components (``is_template``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr


def _labelled(component: gr.components.Component, check: Callable[[], Any], allowed: str) -> Any:
    try:
        return check()
    except gr.Error as e:
        raise gr.Error(f"{component.label}: {e.message} {allowed}") from None


def _choices(component: gr.Radio | gr.Dropdown) -> str:
    return "Choose one of " + ", ".join(repr(value) for _, value in component.choices) + "."

from gradio.events import Dependency

class Slider(gr.Slider):
    is_template = True

    def preprocess(self, payload: float) -> float:
        allowed = f" Choose a value from {self.minimum:g} to {self.maximum:g}."
        return _labelled(self, lambda: super(Slider, self).preprocess(payload), lambda message: message + allowed)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class Radio(gr.Radio):
    is_template = True

    def preprocess(self, payload):
        return _labelled(self, lambda: super(Radio, self).preprocess(payload), _not_a_choice(self, payload))
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class Dropdown(gr.Dropdown):
    is_template = True

    def preprocess(self, payload):
        return _labelled(self, lambda: super(Dropdown, self).preprocess(payload), _not_a_choice(self, payload))
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component