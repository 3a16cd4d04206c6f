"""The Probabilities tab's layout: a generation step by step (its candidates through the sampler stages,
with "what if" sliders) and any text's token ranks, surprisal and logit lens."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .. import inputs
from ..figures import GLTR_COLORS
from ..logic import branch as branch_logic
from ..logic import probabilities as logic
from ..logic import records
from . import widgets
from .links import GENERATED, open_tab

MIN_WIDTH = 300  # a column never narrower: on a phone the columns stack, each plot full width
STEP_INTRO = ("### A generation, step by step\nThe top candidates for each generated token, raw and after each "
              "sampler stage in the order the sampler applies them (repetition penalty → no-repeat n-gram → "
              "temperature → top-k → top-p → min-p → typical → epsilon → eta; stages left off are marked so in the "
              "legend); ▶ marks the chosen token. Move a slider to see what other settings would have done: the "
              "model is not run again.")
BRANCH_INTRO = ("### Branch from this step\nPick another candidate for the step above and continue from it: same "
                "prompt, model, settings and seed. The branch is a new generation, listed under its parent in every "
                "tab's picker.")
TEXT_INTRO = ("### Any text\nEach token coloured by the rank the model gave it (GLTR: top-10, top-100, top-1000, "
              "beyond), its surprisal and the entropy it met, and a logit lens.")


@dataclass
class StepView:
    picker: gr.Dropdown
    step: gr.Slider
    sliders: dict[str, gr.Slider]  # by parameter name, in the order of logic.SETTINGS
    show: gr.Button
    reset: gr.Button
    candidates: gr.Plot
    info: gr.Markdown
    kept: gr.State  # logic.KeptLogits of the last recomputed step (older records drop their logits)


@dataclass
class BranchView:
    token: gr.Dropdown
    run: gr.Button
    text: gr.Textbox
    info: gr.Markdown
    lineage: gr.Markdown
    family: gr.Radio


def build(page) -> None:
    """Lay out the tab and wire it (see ``ui.layout.page``)."""
    view = _step_view(page)
    branch = _branch_view()
    _wire_steps(page, view, branch)
    _wire_branch(page, view, branch)
    _text_section(page, view.picker)


def _more_samplers() -> dict[str, gr.Slider]:
    """Sliders for the newer samplers, each at its "off" value. The handler checks them (it knows each
    one's own range; the sliders show the useful part of it)."""
    with gr.Accordion("More samplers: min-p, typical, epsilon, eta, no-repeat n-gram", open=False):
        return widgets.advanced_sampler_widgets()


def _step_view(page) -> StepView:
    gr.Markdown(STEP_INTRO)
    with gr.Row():
        with gr.Column(scale=2, min_width=MIN_WIDTH):
            # allow_custom_value: an API caller (whose session the page's choices never saw) names a record id
            picker = widgets.dropdown([(records.LATEST_LABEL, inputs.LATEST)], value=inputs.LATEST,
                                      label="Generation", allow_custom_value=True, elem_id="probabilities-record")
            step = widgets.slider(0, max(1, page.ctx.caps.max_new_tokens - 1), value=0, step=1, label="step",
                                  info="0 = the first generated token", checked_by_handler=True)
            sampler = widgets.sampler_widgets()
            sliders = {**sampler.inputs(), **_more_samplers()}
            with gr.Row():
                show = gr.Button("Show step", variant="primary", min_width=120)
                reset = gr.Button("Reset to the generation's settings", min_width=120)
        with gr.Column(scale=3, min_width=MIN_WIDTH):
            candidates = gr.Plot(label="Candidates")
            info = gr.Markdown(label="step info", elem_id="step-info")
    kept = gr.State(None, time_to_live=page.ctx.caps.session_ttl_s)
    return StepView(picker, step, sliders, show, reset, candidates, info, kept)


def _branch_view() -> BranchView:
    gr.Markdown(BRANCH_INTRO)
    with gr.Row():
        with gr.Column(scale=2, min_width=MIN_WIDTH):
            # allow_custom_value: an API caller may name any token id, not only the listed candidates
            token = widgets.dropdown([], label="Continue with", allow_custom_value=True, elem_id="branch-token",
                                     info="the step's top candidates: text · token id · probability")
            run = gr.Button("Continue from this token", variant="primary", min_width=120)
            lineage = gr.Markdown("**Branches**: none yet.", label="branches", elem_id="branch-lineage")
            family = gr.Radio([], label="Open a generation of this tree", visible=False, elem_id="branch-family")
        with gr.Column(scale=3, min_width=MIN_WIDTH):
            text = gr.Textbox(label="Branch text", lines=5, interactive=False, elem_id="branch-text")
            info = gr.Markdown(label="branch info", elem_id="branch-info")
    return BranchView(token, run, text, info, lineage, family)


def _wire_steps(page, v: StepView, b: BranchView) -> None:
    wire = page.wire
    sliders = list(v.sliders.values())
    drawn = [v.candidates, v.info, v.kept]
    # a generation picked: its range, its settings, its first step, its candidates and its tree of branches
    picked = [v.step, *sliders, *drawn, b.token, b.lineage, b.family]
    shown = wire.on([v.show.click, v.step.input, *(s.input for s in sliders)], logic.step_probabilities,
                    {"record": v.picker, "step": v.step, **v.sliders, "kept": v.kept}, drawn,
                    api_name="step_probabilities", model=True, trigger_mode="always_last")
    # The branch list follows the step (from the record's kept candidates: no model). A follow-up, not a
    # second event of the same click: a session's allowance of queued events is small (``ui.layout.quotas``).
    wire.on(shown.success, branch_logic.token_choices, {"record": v.picker, "step": v.step, "current": b.token},
            [b.token])
    # A step whose logits were dropped is recomputed: every drawing event may run the model.
    wire.on(v.picker.input, logic.show_record, {"record": v.picker, "kept": v.kept}, picked, model=True)
    wire.on(b.family.input, logic.go_to, {"record": b.family, "kept": v.kept}, [v.picker, *picked], model=True)
    wire.on(v.reset.click, logic.reset, {"record": v.picker, "step": v.step, "kept": v.kept}, [*sliders, *drawn],
            model=True)
    page.links.follow(GENERATED, lambda listener: wire.on(
        listener, logic.follow, {"record": v.picker, "kept": v.kept}, [v.picker, *picked], model=True))
    page.links.follow(open_tab("probabilities"), lambda listener: wire.on(
        listener, logic.open_latest, {"kept": v.kept}, [v.picker, *picked], model=True))


def _wire_branch(page, v: StepView, b: BranchView) -> None:
    wire = page.wire
    picked = [v.step, *v.sliders.values(), v.candidates, v.info, v.kept, b.token, b.lineage, b.family]
    branched = wire.on(b.run.click, branch_logic.branch, {"record": v.picker, "step": v.step, "token": b.token},
                       [b.text, b.info], api_name="branch", model=True, show_progress_on=[b.info])
    shown = wire.on(branched.success, logic.show_branch, {"kept": v.kept}, [v.picker, *picked], model=True)
    # Only then do the other tabs refresh their pickers: this tab's own follower then keeps the branch picked.
    page.links.emit(GENERATED, shown.then)


def _text_section(page, picker: gr.Dropdown) -> None:
    gr.Markdown(TEXT_INTRO)
    text = gr.Textbox(label="Text", lines=4, placeholder="Paste or type any text…")
    with gr.Row():
        analyse = gr.Button("Analyse text", variant="primary", min_width=120)
        use = gr.Button("Use the selected generation", min_width=120)
    highlights = gr.HighlightedText(label="Rank of each token", show_legend=True, color_map=GLTR_COLORS,
                                    combine_adjacent=False)
    info = gr.Markdown(label="text info")
    with gr.Row():
        with gr.Column(min_width=MIN_WIDTH):
            surprisal = gr.Plot(label="Surprisal and entropy")
        with gr.Column(min_width=MIN_WIDTH):
            lens = gr.Plot(label="Logit lens")

    analysed = [highlights, info, surprisal, lens]
    page.wire.on([analyse.click, text.submit], logic.text_probabilities, {"text": text}, analysed,
                 api_name="text_probabilities", model=True)
    page.wire.on(use.click, logic.use_generation, {"record": picker}, [text, *analysed], model=True)
