"""The adapter between widgets and tab logic (``ui.layout.wiring``): values by name, the session first
and kept, ``Update`` as ``gr.update``, ``UserError`` as ``gr.Error``, generators streamed."""

from __future__ import annotations

import inspect

import gradio as gr
import pytest

from ui.inputs import UserError, integer
from ui.layout.wiring import Wiring
from ui.session import Session
from ui.updates import update


def count(ctx, session, text, times):
    """Repeat ``text``."""
    n = integer("times", times, 0, 5)
    return text * n, update(maximum=n)


def stream(ctx, session, text):
    for i in range(3):
        yield f"{text}{i}"


@pytest.fixture()
def page(app_ctx):
    with gr.Blocks() as demo:
        state = gr.State(None)
        wire = Wiring(app_ctx, state)
        text, times = gr.Textbox(label="text"), gr.Number(2, label="times")
        out, slider = gr.Textbox(label="repeated"), gr.Slider(label="count")
        button = gr.Button()
        wire.on(button.click, count, {"text": text, "times": times}, [out, slider], api_name="count")
        wire.on(button.click, stream, {"text": text}, [out])
    return demo, wire


def test_values_arrive_by_name_and_the_api_uses_those_names(page):
    demo, _ = page
    endpoint = demo.get_api_info()["named_endpoints"]["/count"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == ["text", "times"]
    assert [r["label"] for r in endpoint["returns"]] == ["repeated", "count"]  # the session state is not listed
    assert len(demo.get_api_info()["named_endpoints"]) == 1  # events without an api_name stay private


def test_results_become_gradio_values_and_the_session_is_kept(page):
    _, wire = page
    run = wire._adapt(count, True, 2)
    text, slider, session = run(text="ab", times=2.0, session=None)
    assert text == "abab" and slider == gr.update(maximum=2) and isinstance(session, Session)
    assert run(text="a", times=1, session=session)[2] is session


def test_user_errors_become_gr_errors(page):
    _, wire = page
    with pytest.raises(gr.Error, match="times must be a whole number from 0 to 5; got 9"):
        wire._adapt(count, True, 2)(text="a", times=9, session=None)
    with pytest.raises(TypeError, match="returned 1 values for 2 outputs"):
        wire._adapt(lambda ctx, session: ("x",), True, 2)(session=None)

    def refuses(ctx, session):
        raise UserError("no")
        yield

    with pytest.raises(gr.Error, match="no"):
        next(wire._adapt(refuses, True, 1)(session=None))


def test_generators_stream(page):
    _, wire = page
    run = wire._adapt(stream, True, 1)
    assert inspect.isgeneratorfunction(run)  # Gradio streams only generator functions
    assert [text for text, _ in run(text="x", session=None)] == ["x0", "x1", "x2"]
