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


def _labelled(component: gr.components.Component, check: Callable[[], Any], message: Callable[[str], str]) -> Any:
    try:
        return check()
    except gr.Error as e:
        raise gr.Error(f"{component.label}: {message(e.message)}") from None


def _not_a_choice(component: gr.Radio | gr.Dropdown, payload: Any) -> Callable[[str], str]:
    choices = ", ".join(repr(value) for _, value in component.choices)
    return lambda _: f"{payload!r} is not one of the choices. Choose one of {choices}."


class Slider(gr.Slider):
    is_template = True

    def preprocess(self, payload: float) -> float:
        allowed = f" Choose a value from {self.minimum:g} to {self.maximum:g}."
        return _labelled(self, lambda: super(Slider, self).preprocess(payload), lambda message: message + allowed)


class Radio(gr.Radio):
    is_template = True

    def preprocess(self, payload):
        return _labelled(self, lambda: super(Radio, self).preprocess(payload), _not_a_choice(self, payload))


class Dropdown(gr.Dropdown):
    is_template = True

    def preprocess(self, payload):
        return _labelled(self, lambda: super(Dropdown, self).preprocess(payload), _not_a_choice(self, payload))
