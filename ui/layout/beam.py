"""The Beams tab's layout: search settings, the best sequence beside greedy and one sample, and the search
tree with a step slider that replays it."""

from __future__ import annotations

import gradio as gr

from ..logic import beam as logic
from . import widgets

MIN_WIDTH = 300  # a column never narrower: on a phone the columns stack
INTRO = ("### Beam search, step by step\nAt each step every beam is extended by its likeliest tokens; the "
         "best `2 × beams` of those are the step's candidates, and the best that did not end live on. In the "
         "tree each row is a step: live beams solid, pruned candidates faded, finished hypotheses ★ (hover: "
         "their normalised score), the best sequence's path in red. Move “show up to step” to replay the "
         "search (the model is not run again). Greedy and one sample (temperature "
         f"{logic.SAMPLE_TEMPERATURE:g}, seed {logic.SAMPLE_SEED}) from the same prompt are shown beside it.")
EARLY_INFO = ("true: stop as soon as `beams` hypotheses are finished · false: once no live beam can beat them "
              "(transformers' heuristic) · never: once none could at any length")


def _settings(caps) -> dict[str, gr.components.Component]:
    """The search's inputs by API name (the handler checks every value: it knows the caps and the beams)."""
    beams = min(4, caps.max_beams)
    return {
        "num_beams": widgets.slider(1, caps.max_beams, value=beams, step=1, label="beams",
                                    info="1 = greedy", checked_by_handler=True),
        "max_new_tokens": widgets.slider(1, caps.max_new_tokens, value=min(24, caps.max_new_tokens), step=1,
                                         label="max new tokens", checked_by_handler=True),
        "length_penalty": widgets.slider(-2, 3, value=1.0, step=0.1, label="length penalty",
                                         info="score = log-prob / length^penalty; > 0 favours longer",
                                         checked_by_handler=True),
        "early_stopping": _early_stopping(),
        "no_repeat_ngram_size": widgets.slider(0, 6, value=0, step=1, label="no-repeat n-gram size",
                                               info="0 = off", checked_by_handler=True),
        "num_return_sequences": widgets.slider(1, caps.max_beams, value=min(3, beams), step=1,
                                               label="returned sequences", info="at most the beams",
                                               checked_by_handler=True),
    }


def _early_stopping() -> gr.Radio:
    radio = widgets.radio(list(logic.EARLY_STOPPING), value="false", label="early stopping", info=EARLY_INFO)
    # The handler parses it (``logic.early_stopping``): API callers may also send true/false as booleans,
    # which Gradio's choice check would refuse.
    radio.preprocess = lambda payload: payload
    return radio


def build(page) -> None:
    """Lay out the tab and wire it (see ``ui.layout.page``)."""
    wire, caps = page.wire, page.ctx.caps
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=2, min_width=MIN_WIDTH):
            prompt = gr.Textbox(logic.EXAMPLE, label="Prompt", lines=3, placeholder="Type the start of a text…")
            settings = _settings(caps)
            run = gr.Button("Search", variant="primary")
        with gr.Column(scale=3, min_width=MIN_WIDTH):
            best = gr.Textbox(label="Best sequence", lines=3, interactive=False, elem_id="beam-best")
            with gr.Row():
                with gr.Column(min_width=MIN_WIDTH):
                    greedy = gr.Textbox(label="Greedy", lines=3, interactive=False)
                with gr.Column(min_width=MIN_WIDTH):
                    sample = gr.Textbox(label=f"Sample (temperature {logic.SAMPLE_TEMPERATURE:g}, seed "
                                              f"{logic.SAMPLE_SEED})", lines=3, interactive=False)
            hypotheses = gr.Markdown(label="Hypotheses", elem_id="beam-hypotheses")
    step = widgets.slider(0, max(1, caps.max_new_tokens - 1), value=0, step=1, label="show up to step",
                          info="0 = the first new token; the model is not run again", checked_by_handler=True)
    tree = gr.Plot(label="Beam search tree", elem_id="beam-tree")
    kept = gr.State(None, time_to_live=caps.session_ttl_s)  # logic.KeptSearch: the last search, for the slider

    searched = wire.on(run.click, logic.search, {"prompt": prompt, **settings, "kept": kept},
                       [best, hypotheses, tree, greedy, sample, kept], api_name="beam_search", model=True,
                       show_progress_on=[hypotheses])
    wire.on(searched.then, logic.fit_steps, {"kept": kept}, [step])
    wire.on(step.input, logic.show_step, {"step": step, "kept": kept}, [tree], trigger_mode="always_last")
