"""Gradio inputs whose own checks name the input and say what to do.

Gradio checks a value against a component's range or choices before a handler sees it, and its message
("Value 1.5 is greater than maximum value 1.") does not say which input was wrong: an API caller sends
several at once. ``slider``/``radio``/``dropdown`` build the plain components and wrap that check of
each instance to add the label and the allowed values. (A subclass would survive Gradio's per-session
copies of updated components, but Gradio writes a ``.pyi`` stub beside any module that subclasses a
component; the page's own widgets never send out-of-range values, API callers meet these instances.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr

from .. import inputs
from ..inputs import shown

C = TypeVar("C", bound=gr.components.Component)


def _labelled(component: C, explain: Callable[[Any, str], str], accepts: Callable[[Any], bool] | None = None) -> C:
    """``component`` whose check names it; ``accepts``: a check of the payload's shape before Gradio's."""
    check = component.preprocess

    def preprocess(payload: Any) -> Any:
        if accepts is not None and not accepts(payload):
            raise gr.Error(f"{component.label}: {explain(payload, '')}")
        try:
            return check(payload)
        except gr.Error as e:
            raise gr.Error(f"{component.label}: {explain(payload, e.message)}") from None
        except (TypeError, ValueError, OverflowError):  # text where a number belongs, NaN to an int, ...
            raise gr.Error(f"{component.label}: {explain(payload, f'{shown(payload)} is not a number.')}") from None

    component.preprocess = preprocess
    return component


def _not_a_choice(component: gr.Radio | gr.Dropdown) -> Callable[[Any, str], str]:
    def explain(payload: Any, _: str) -> str:
        choices = ", ".join(repr(value) for _, value in component.choices)
        return f"{shown(payload)} is not one of the choices. Choose one of {choices}."

    return explain


def slider(*args, checked_by_handler: bool = False, **kwargs) -> gr.Slider:
    """A ``gr.Slider`` whose range check names it and the range. ``checked_by_handler``: no check here,
    the handler's is better (it knows the session's real limit, e.g. its model's context). A blank value
    (an API caller's None or "") always goes to the handler, which parses every value (``ui.inputs``) and
    knows what blank means: the attention query's last token, elsewhere a message naming the input."""
    s = gr.Slider(*args, **kwargs)
    if checked_by_handler:
        s.preprocess = lambda payload: payload  # what gr.Slider passes on for an in-range value
        return s
    check = _labelled(s, lambda _, message: f"{message} Choose from {s.minimum:g} to {s.maximum:g}.").preprocess
    s.preprocess = lambda payload: payload if payload is None or payload == "" else check(payload)
    return s


def number(*args, allowed: str = "", **kwargs) -> gr.Number:
    """A ``gr.Number`` whose check (text, a number too big) names it; ``allowed`` says what is."""
    n = gr.Number(*args, **kwargs)
    return _labelled(n, lambda _, message: f"{message} {allowed}".rstrip())


def radio(*args, **kwargs) -> gr.Radio:
    """A ``gr.Radio`` whose choice check names it and the choices."""
    r = gr.Radio(*args, **kwargs)
    return _labelled(r, _not_a_choice(r))


def dropdown(*args, **kwargs) -> gr.Dropdown:
    """A ``gr.Dropdown`` whose choice check names it and the choices. A single-choice one also refuses a
    list (Gradio checks each item of a list, then hands the list to the handler as the choice)."""
    d = gr.Dropdown(*args, **kwargs)
    return _labelled(d, _not_a_choice(d), None if d.multiselect else lambda payload: not isinstance(payload, list))


@dataclass
class SamplerWidgets:
    """The four sampler sliders (Generate's A and B settings, Probabilities' "what if")."""

    temperature: gr.Slider
    top_k: gr.Slider
    top_p: gr.Slider
    repetition_penalty: gr.Slider

    def inputs(self, suffix: str = "") -> dict[str, gr.Slider]:
        """The sliders by parameter name (``suffix`` "_b": ``temperature_b``...)."""
        return {f"{name}{suffix}": getattr(self, name) for name in ("temperature", "top_k", "top_p",
                                                                      "repetition_penalty")}


# The advanced samplers' sliders: name -> (step, label, info); ranges ``inputs.ADVANCED_RANGES``.
ADVANCED = {
    "min_p": (0.01, "min-p", "0 = off; drops tokens below min-p × the top token's probability"),
    "typical_p": (0.01, "typical-p", "1 = off; keeps the tokens closest to the expected surprisal"),
    "epsilon_cutoff": (0.0001, "epsilon cutoff", "0 = off; drops tokens below this probability"),
    "eta_cutoff": (0.0001, "eta cutoff", "0 = off; a cutoff that shrinks as the entropy grows"),
    "no_repeat_ngram_size": (1, "no-repeat n-gram size", "0 = off; never repeats an n-gram of this size"),
}


def advanced_sampler_widgets() -> dict[str, gr.Slider]:
    """Sliders for the advanced samplers, by ``SamplingParams`` name, each at its "off" value. The handler
    checks them (``ui.inputs.advanced_sampling``: its messages name the parameter and the API's range)."""
    return {name: slider(*inputs.ADVANCED_RANGES[name], value=inputs.ADVANCED_OFF[name], step=step, label=label,
                         info=info, checked_by_handler=True)
            for name, (step, label, info) in ADVANCED.items()}


def sampler_widgets(temperature: float = 0.8, top_k: int = 40, top_p: float = 1.0, penalty: float = 1.0,
                    suffix: str = "") -> SamplerWidgets:
    """Sliders for the sampler settings; ``suffix`` is added to their labels (" B")."""
    return SamplerWidgets(
        slider(0, 2, value=temperature, step=0.05, label=f"temperature{suffix}", info="0 = greedy"),
        slider(0, 200, value=top_k, step=1, label=f"top-k{suffix}", info="0 = off"),
        slider(0, 1, value=top_p, step=0.01, label=f"top-p{suffix}", info="1 = off"),
        slider(0.5, 2, value=penalty, step=0.05, label=f"repetition penalty{suffix}", info="1 = off"),
    )
