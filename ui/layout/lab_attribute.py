"""The Lab's attribution section: what to explain (a typed text and target, or a kept generation's step),
the method, then the text coloured by attribution, the per-token bars and, beside them, the direct logit
attribution of every head and MLP. ``/attribute`` is the Attribute button's endpoint."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .. import inputs
from ..logic import attribution as logic
from ..logic import records
from . import widgets
from .links import GENERATED

MIN_WIDTH = 300  # a column never narrower: on a phone the columns stack, each plot the whole width
INTRO = ("Which input tokens drove a prediction, and which heads and MLPs wrote it. Pick a generated token "
         "(a generation and a step: the text is what the model had read before it) or type a text and the "
         "next token to explain; a foil explains the target *over* the foil. Blue raises the score, red lowers "
         "it.")
# /attribute's parameters, in order
PARAMETERS = ("text", "target", "foil", "method", "steps", "record", "step", "source")


@dataclass
class _Widgets:
    source: gr.Radio
    text: gr.Textbox
    target: gr.Textbox
    foil: gr.Textbox
    record: gr.Dropdown
    step: gr.Slider
    method: gr.Radio
    steps: gr.Slider
    run: gr.Button
    summary: gr.Markdown
    colored: gr.HTML
    bars: gr.Plot
    dla: gr.Plot

    def values(self, *names: str) -> dict:
        return {name: getattr(self, name) for name in names}


def _controls(page) -> dict:
    caps = page.ctx.caps
    token_info = "one token's text (mind the leading space: ' Paris') or its id as #123"
    return dict(
        source=widgets.radio(list(logic.SOURCES), value="text", label="Source", elem_id="attribute-source"),
        text=gr.Textbox(logic.EXAMPLE, label="Text", lines=3, placeholder="The text the model reads…",
                        elem_id="attribute-text"),
        target=gr.Textbox(logic.EXAMPLE_TARGET, label="Target token", info=token_info, elem_id="attribute-target"),
        foil=gr.Textbox("", label="Foil token (optional)", info="explain the target over this token",
                        elem_id="attribute-foil"),
        # allow_custom_value: an API caller (whose session the page's choices never saw) names a record id
        record=widgets.dropdown([(records.LATEST_LABEL, inputs.LATEST)], value=inputs.LATEST, label="Generation",
                                allow_custom_value=True, visible=False, elem_id="attribute-record"),
        step=widgets.slider(0, max(1, caps.max_new_tokens - 1), value=0, step=1, label="step", visible=False,
                            info="the generated token to explain (0 = the first)", checked_by_handler=True),
        method=widgets.radio([(label, name) for name, label in logic.METHOD_LABELS.items()],
                             value=logic.METHODS[0], label="Method", elem_id="attribute-method"),
        steps=widgets.slider(1, caps.max_attribution_steps, value=min(logic.DEFAULT_STEPS, caps.max_attribution_steps),
                             step=1, label="steps", info="integrated gradients only: points along the path",
                             checked_by_handler=True),
        run=gr.Button("Attribute", variant="primary"),
    )


def _layout(page) -> _Widgets:
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=2, min_width=MIN_WIDTH):
            controls = _controls(page)
        with gr.Column(scale=3, min_width=MIN_WIDTH):
            summary = gr.Markdown("Press **Attribute** to explain the target.", label="summary",
                                  elem_id="attribute-summary")
            colored = gr.HTML(label="Text coloured by attribution", show_label=True, container=True,
                              elem_id="attribute-text-view")
    with gr.Row():
        with gr.Column(min_width=MIN_WIDTH):
            bars = gr.Plot(label="Attribution per token", elem_id="attribute-bars")
        with gr.Column(min_width=MIN_WIDTH):
            dla = gr.Plot(label="Direct logit attribution", elem_id="attribute-dla")
    return _Widgets(**controls, summary=summary, colored=colored, bars=bars, dla=dla)


def _source_shown(source: str) -> tuple:
    """Text and target for a text; the generation picker and the step for a generation."""
    is_text = source == "text"
    return (gr.update(visible=is_text), gr.update(visible=is_text), gr.update(visible=not is_text),
            gr.update(visible=not is_text))


def build(page) -> None:
    """Lay out the section and wire it (see ``ui.layout.lab``)."""
    w = _layout(page)
    wire = page.wire
    wire.on([w.run.click, w.target.submit], logic.attribute_tokens, w.values(*PARAMETERS),
            [w.summary, w.colored, w.bars, w.dla], api_name="attribute", model=True,
            show_progress_on=[w.summary], trigger_mode="always_last")
    w.source.change(_source_shown, [w.source], [w.text, w.target, w.record, w.step], queue=False,
                    api_visibility="private")
    wire.on(w.record.input, logic.step_range, {"record": w.record, "step": w.step}, [w.step])
    page.links.follow(GENERATED, lambda listener: wire.on(listener, logic.follow, w.values("record", "step"),
                                                          [w.record, w.step]))
