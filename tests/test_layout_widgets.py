"""ui.widgets: Gradio's own range and choice checks name the input and say what to do."""

from __future__ import annotations

import math
from pathlib import Path

import gradio as gr
import pytest

from ui.layout import widgets


def test_slider_names_itself_and_the_range():
    slider = widgets.slider(0, 2, value=1, label="temperature")
    assert slider.preprocess(1.5) == 1.5 and math.isnan(slider.preprocess(float("nan")))  # NaN: the handler's
    with pytest.raises(gr.Error, match=r"temperature: Value 5\.0 is greater .* Choose from 0 to 2\."):
        slider.preprocess(5.0)
    with pytest.raises(gr.Error, match=r"temperature: Value -1 is less than"):
        slider.preprocess(-1)


@pytest.mark.parametrize("make", [widgets.radio, widgets.dropdown])
def test_choices_name_the_input_and_list_the_choices(make):
    component = make(["LoRA", "full"], value="LoRA", label="Method")
    assert component.preprocess("full") == "full"
    message = r"Method: '\.\./etc' is not one of the choices\. Choose one of 'LoRA', 'full'\."
    with pytest.raises(gr.Error, match=message):
        component.preprocess("../etc")


def test_a_single_choice_dropdown_refuses_a_list():
    """Gradio checks each item of a list against the choices and hands the list on as the choice."""
    one = widgets.dropdown(["gpt2", "tiny"], value="gpt2", label="Model")
    with pytest.raises(gr.Error, match=r"Model: \['gpt2'\] is not one of the choices\. Choose one of 'gpt2', 'tiny'"):
        one.preprocess(["gpt2"])
    assert widgets.dropdown(["a", "b"], multiselect=True, label="x").preprocess(["a", "b"]) == ["a", "b"]


def test_a_blank_slider_value_is_the_handlers_to_judge():
    """None or "" reach the handler (the attention query: the last token; elsewhere a message naming it)."""
    slider = widgets.slider(0, 9, value=1, label="query token")
    assert slider.preprocess(None) is None and slider.preprocess("") == ""
    with pytest.raises(gr.Error, match=r"query token: 'x' is not a number\. Choose from 0 to 9\."):
        slider.preprocess("x")


def test_they_are_plain_gradio_components_and_write_no_files():
    made = [make(label="x") for make in (widgets.slider, widgets.radio, widgets.dropdown)]
    assert [type(c) for c in made] == [gr.Slider, gr.Radio, gr.Dropdown]
    assert not Path(widgets.__file__).with_suffix(".pyi").exists()  # what a component subclass would write
