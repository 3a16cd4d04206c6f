"""The Diversity tab's layout: a prompt, the sampler settings (Generate's defaults), the number of samples
and a sweep; the metrics table, the quality/diversity plot and the samples."""

from __future__ import annotations

import gradio as gr

from ..logic import diversity as logic
from . import widgets

SWEEP_CHOICES = [("none", "none"), ("temperature 0.2 to 1.6", "temperature"), ("top-p 0.5 to 1", "top_p")]


def build(page) -> None:
    """Lay out the tab and wire it (see ``ui.layout.page``)."""
    caps = page.ctx.caps
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            prompt = gr.Textbox(logic.EXAMPLE, label="Prompt", lines=3, elem_id="diversity-prompt")
            run = gr.Button("Draw samples", variant="primary", elem_id="diversity-run")
            metrics = gr.Markdown(label="metrics", elem_id="diversity-metrics")
            plot = gr.Plot(label="trade-off plot", elem_id="diversity-plot")
            with gr.Accordion("Samples", open=True):
                samples = gr.Markdown(label="samples", elem_id="diversity-samples")
        with gr.Column(scale=2, min_width=300):
            count = widgets.slider(1, caps.max_diversity_samples,
                                   value=min(logic.DEFAULT_SAMPLES, caps.max_diversity_samples), step=1,
                                   label="samples (N)", checked_by_handler=True)
            sweep = widgets.radio(SWEEP_CHOICES, value="none", label="sweep",
                                  info="also draw N samples at each of these settings (same seed)")
            settings = widgets.sampler_widgets()
            max_new = widgets.slider(1, caps.max_new_tokens, value=min(40, caps.max_new_tokens), step=1,
                                     label="max new tokens")
            seed = widgets.number(value=0, label="seed", info="blank or -1 = random",
                                  allowed="Give a whole number, or leave it blank (or -1) for a random seed.")
            with gr.Accordion("Advanced samplers", open=False):
                advanced = widgets.advanced_sampler_widgets()
            gr.Markdown(f"At most {caps.max_diversity_tokens:,} tokens per request (samples × new tokens × "
                        "settings: the current one plus each sweep point).")
    inputs = {"prompt": prompt, "num_samples": count, "max_new_tokens": max_new, **settings.inputs(), **advanced,
              "seed": seed, "sweep": sweep}
    page.wire.on(run.click, logic.diversity, inputs, [metrics, samples, plot], api_name="diversity", model=True,
                 show_progress_on=[metrics])
