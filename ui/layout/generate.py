"""The Generate tab's layout: prompt, sampler settings, streaming output, and Compare A/B."""

from __future__ import annotations

import gradio as gr

from ..logic import generate as logic
from . import widgets
from .links import GENERATED, open_tab

INSPECT = (("attention", "Inspect attention ›"), ("probabilities", "Inspect probabilities ›"))


def build(page) -> None:
    """Lay out the tab and wire it (see ``ui.layout.page``)."""
    wire, caps = page.wire, page.ctx.caps
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            prompt = gr.Textbox(label="Prompt", lines=4, placeholder="Type the start of a text…")
            gr.Examples(logic.EXAMPLES, inputs=[prompt], label="Examples")
            with gr.Row():
                run = gr.Button("Generate", variant="primary")
                stop_button = gr.Button("Stop")
            view = gr.HTML(label="Text (prompt, then the generated part)", show_label=True, container=True,
                           elem_id="generated-view", padding=True)
            stats = gr.Markdown(label="stats", elem_id="generate-stats")
            with gr.Accordion("Generated text only (to copy)", open=False):
                output = gr.Textbox(label="Generated text", lines=6, interactive=False, buttons=["copy"],
                                    elem_id="generated-text")
            with gr.Row():
                inspect = {tab_id: gr.Button(label, size="sm") for tab_id, label in INSPECT}
        with gr.Column(scale=2, min_width=300):
            a = widgets.sampler_widgets()
            max_new = widgets.slider(1, caps.max_new_tokens, value=min(80, caps.max_new_tokens), step=1,
                                     label="max new tokens")
            seed = widgets.number(value=0, label="seed", info="blank or -1 = random",
                                  allowed="Give a whole number, or leave it blank (or -1) for a random seed.")
            stop = gr.Textbox("", label="stop sequences", lines=2, placeholder="one per line, e.g. \\n\\n")
    with gr.Accordion("Compare two settings (same prompt and seed)", open=False):
        with gr.Row():
            with gr.Column(min_width=300):
                gr.Markdown("**B settings** (A: the settings above)")
                b = widgets.sampler_widgets(temperature=1.2, top_k=0, suffix=" B")
                compare = gr.Button("Compare A and B", variant="secondary")
            with gr.Column(min_width=300):
                out_a = gr.Textbox(label="A (settings above)", lines=6, interactive=False)
                out_b = gr.Textbox(label="B (settings B)", lines=6, interactive=False)
                compare_stats = gr.Markdown(label="stats")

    common = {"prompt": prompt, "max_new_tokens": max_new}
    settings = {"seed": seed, "stop": stop}
    generated = wire.on(run.click, logic.generate, {**common, **a.inputs(), **settings},
                        [output, stats, view], api_name="generate", model=True, show_progress_on=[stats])
    submitted = wire.on(prompt.submit, logic.generate, {**common, **a.inputs(), **settings},
                        [output, stats, view], model=True, show_progress_on=[stats])
    compared = wire.on(compare.click, logic.compare,
                       {**common, **a.inputs("_a"), **b.inputs("_b"), **settings}, [out_a, out_b, compare_stats],
                       api_name="compare", model=True, show_progress_on=[compare_stats])
    wire.on(stop_button.click, logic.stop, queue=False)
    for event in (generated, submitted, compared):
        page.links.emit(GENERATED, event.then)
    for tab_id, button in inspect.items():
        page.links.emit(open_tab(tab_id), button.click)
