"""The Lab's "Patching" section: a clean and a corrupted prompt (tokenised side by side as they are typed,
the differing tokens marked, the token counts checked), the target and foil of the logit difference
(typed, or filled from the prompts' top predictions), then the layer × position heatmap of the recovered
fraction. ``/patch`` is the API's."""

from __future__ import annotations

import gradio as gr

from ..logic import patching as logic


def build(page) -> None:
    """Lay out the section and wire it (see ``ui.layout.lab``)."""
    ctx, wire = page.ctx, page.wire
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            clean = gr.Textbox(logic.CLEAN, label="clean prompt", lines=2, elem_id="patch-clean")
            corrupted = gr.Textbox(logic.CORRUPTED, label="corrupted prompt", lines=2, elem_id="patch-corrupted",
                                   info="the same number of tokens, a word or two changed")
            view = gr.HTML(logic.diff_view(ctx, logic.CLEAN, logic.CORRUPTED), label="tokens", show_label=True,
                           container=True, elem_id="patch-diff", padding=True)
            with gr.Row():
                target = gr.Textbox(logic.TARGET, label="target", elem_id="patch-target", min_width=120,
                                    info="one token: its text (' thou', with the space) or #id")
                foil = gr.Textbox(logic.FOIL, label="foil", elem_id="patch-foil", min_width=120,
                                  info="LD = logit(target) − logit(foil)")
            fill = gr.Button("Fill from the top predictions", size="sm", elem_id="patch-fill")
            run = gr.Button("Patch", variant="primary", elem_id="patch-run")
            gr.Markdown(f"Each prompt: at most {ctx.caps.max_patch_tokens} tokens. One forward pass per layer "
                        "(the positions of a layer in one batch).")
        with gr.Column(scale=2, min_width=320):
            summary = gr.Markdown("Press **Patch** to put the clean run's residual stream into the corrupted run, "
                                  "one (layer, position) cell at a time.", label="summary",
                                  elem_id="patch-summary")
            plot = gr.Plot(label="recovered fraction", elem_id="patch-plot")
    prompts = {"clean": clean, "corrupted": corrupted}
    # the tokenizer only, never the model: outside the model pool, and only the newest text matters
    wire.on([clean.change, corrupted.change], logic.diff_view, prompts, [view], session=False,
            trigger_mode="always_last", show_progress="hidden")
    wire.on(fill.click, logic.fill_from_top, prompts, [target, foil, summary], model=True)
    wire.on(run.click, logic.patch, {**prompts, "target": target, "foil": foil}, [summary, plot], api_name="patch",
            model=True, show_progress_on=[summary])
