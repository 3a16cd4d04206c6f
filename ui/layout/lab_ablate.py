"""The Lab's "Knock out heads" section: the text, the heads (a toggle per head, presets), zero or mean,
then the summary, the two figures and the two continuations side by side.

The toggles follow the session's model (refitted when the tab opens or the model changes). The Attention
tab's "Knock out this head in the Lab ›" leaves its layer.head in the browser (``PICKED_JS`` reads it)
and opens the Lab; this section then selects itself and turns that head on. ``/ablate`` is the API's,
on a hidden button, with ``heads`` as text (``"1.3, 2.0"``).
"""

from __future__ import annotations

import gradio as gr

from ..logic import ablation as logic
from . import widgets
from .links import MODEL_CHANGED, open_tab, tab_selected

# Set by the Attention tab's button (``ui.layout.attention.KNOCK_OUT_JS``): the head to knock out.
PICKED_JS = "() => window.gpt2LabHeads || ''"
# The Lab opened on its last inner tab: show this section (its inner tab's button, by name).
SHOW_SECTION_JS = """() => {
  const tab = [...document.querySelectorAll('#lab-tools [role="tab"]')]
    .find((b) => b.textContent.trim() === 'Knock out heads');
  if (tab && tab.getAttribute('aria-selected') !== 'true') tab.click();
}"""


def _inputs(ctx) -> dict:
    """The left column: what to read and what to knock out."""
    config = ctx.base(ctx.default_key).config
    caps = ctx.caps
    text = gr.Textbox(logic.probe_text(ctx, logic.ModelRef(ctx.default_key), logic.EXAMPLE_SEED), label="Text", lines=4,
                      placeholder="Type or paste a text…", elem_id="ablate-text")
    repeat = gr.Button("use repeated random tokens", size="sm")
    preset = widgets.dropdown(logic.presets(config.n_layer), value=logic.NONE, label="preset",
                              info="top heads: by the Attention tab's head table on repeated random tokens")
    heads = gr.CheckboxGroup(logic.head_choices(config.n_layer, config.n_head), value=[],
                             label="heads to knock out (layer.head)", elem_id="ablate-heads")
    mode = widgets.radio(list(logic.MODES), value="zero", label="mode",
                         info="zero: the head's output is 0; mean: its mean over this text's positions")
    max_new = widgets.slider(1, caps.max_new_tokens, value=min(20, caps.max_new_tokens), step=1,
                             label="max new tokens", checked_by_handler=True)
    seed = widgets.number(value=0, label="seed", info="both continuations use it; blank or -1 = random",
                          allowed="Give a whole number, or leave it blank (or -1) for a random seed.")
    return dict(text=text, repeat=repeat, preset=preset, heads=heads, mode=mode, max_new_tokens=max_new, seed=seed)


def build(page) -> None:
    """Lay out the section and wire it (see ``ui.layout.lab``)."""
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            w = _inputs(page.ctx)
            run = gr.Button("Knock out and compare", variant="primary")
        with gr.Column(scale=2, min_width=320):
            summary = gr.Markdown("Pick heads and press **Knock out and compare**.", label="summary",
                                  elem_id="ablate-summary")
            candidates = gr.Plot(label="next-token candidates", elem_id="ablate-candidates")
            loss = gr.Plot(label="loss per token", elem_id="ablate-loss")
    with gr.Row():
        plain = gr.Textbox(label="continuation: every head", lines=4, interactive=False, elem_id="ablate-plain")
        edited = gr.Textbox(label="continuation: heads knocked out", lines=4, interactive=False,
                            elem_id="ablate-edited")
    api, api_heads = gr.Button(visible=False), gr.Textbox(visible=False, label="heads")  # /ablate's trigger, heads
    picked = gr.Textbox(visible=False)  # the head the Attention tab sent
    outputs = [summary, candidates, loss, plain, edited]
    values = {name: w[name] for name in ("text", "heads", "mode", "max_new_tokens", "seed")}
    wire = page.wire
    wire.on(api.click, logic.ablate, {**values, "heads": api_heads}, outputs, api_name="ablate", model=True)
    wire.on(run.click, logic.ablate, values, outputs, model=True, show_progress_on=[summary])
    wire.on(w["repeat"].click, logic.repeated, {}, [w["text"]], model=True)
    wire.on(w["preset"].input, logic.preset, {"preset": w["preset"]}, [w["heads"]], model=True)

    def fitted(listener):
        return wire.on(listener, logic.fit, {"heads": w["heads"], "preset": w["preset"]},
                       [w["heads"], w["preset"]])

    page.links.follow(tab_selected("lab"), fitted)
    page.links.follow(MODEL_CHANGED, fitted)

    def preselected(listener):
        got = listener(None, None, [picked], js=PICKED_JS, queue=False, api_visibility="private")
        shown = got.then(None, None, None, js=SHOW_SECTION_JS, queue=False, api_visibility="private")
        return wire.on(shown.then, logic.preselect, {"heads": picked}, [w["heads"]])

    page.links.follow(open_tab("lab"), preselected)
