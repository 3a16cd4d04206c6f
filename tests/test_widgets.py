"""ui.widgets: Gradio's own range and choice checks name the input and say what to do."""

from __future__ import annotations

import math

import gradio as gr
import pytest

from ui import widgets


def test_slider_names_itself_and_the_range():
    slider = widgets.Slider(0, 2, value=1, label="temperature")
    assert slider.preprocess(1.5) == 1.5 and math.isnan(slider.preprocess(float("nan")))  # NaN: the handler's
    with pytest.raises(gr.Error, match=r"temperature: Value 5\.0 is greater .* Choose a value from 0 to 2\."):
        slider.preprocess(5.0)
    with pytest.raises(gr.Error, match=r"temperature: Value -1 is less than"):
        slider.preprocess(-1)


@pytest.mark.parametrize("cls", [widgets.Radio, widgets.Dropdown])
def test_choices_name_the_input_and_list_the_choices(cls):
    component = cls(["LoRA", "full"], value="LoRA", label="Method")
    assert component.preprocess("full") == "full"
    message = r"Method: '\.\./etc' is not one of the choices\. Choose one of 'LoRA', 'full'\."
    with pytest.raises(gr.Error, match=message):
        component.preprocess("../etc")


def test_the_page_draws_them_as_gradio_components():
    names = [c(label="x").get_block_name() for c in (widgets.Slider, widgets.Radio, widgets.Dropdown)]
    assert names == ["slider", "radio", "dropdown"]
