"""The Generate tab's layout: prompt, decoding choice and sampler settings, the streaming output coloured
by probability, a share link, and Compare A/B."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..logic import generate as logic
from ..logic import share
from . import widgets
from .links import GENERATED, open_tab

INSPECT = (("attention", "Inspect attention ›"), ("probabilities", "Inspect probabilities ›"))
# The share link's base is the page's own address, as the browser sees it (also behind a Space's proxy).
BASE_URL_JS = "(base, ...values) => [window.location.origin + window.location.pathname, ...values]"


def _range_slider(name: str, value: float, step: float, label: str, info: str) -> gr.Slider:
    """A slider over ``logic.RANGES[name]`` whose values the handler checks (its message names the API
    parameter and what the API allows)."""
    low, high = logic.RANGES[name]
    return widgets.slider(low, high, value=value, step=step, label=label, info=info, checked_by_handler=True)


def _early_stopping() -> gr.Radio:
    """As the Beams tab's: the handler parses it (API callers may also send booleans, which Gradio's own
    choice check would refuse)."""
    radio = widgets.radio(list(logic.EARLY_STOPPING), value="false", label="early stopping",
                          info="true: end once as many texts as beams have finished; never: only when no "
                               "beam can still win")
    radio.preprocess = lambda payload: payload
    return radio


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
            decoding = widgets.radio(list(logic.DECODINGS), value=logic.SAMPLING, label="decoding",
                                     info="greedy: always the most likely token; beam search: settings below")
            a = widgets.sampler_widgets()
            max_new = widgets.slider(1, caps.max_new_tokens, value=min(80, caps.max_new_tokens), step=1,
                                     label="max new tokens")
            seed = widgets.number(value=0, label="seed", info="blank or -1 = random",
                                  allowed="Give a whole number, or leave it blank (or -1) for a random seed.")
            stop = gr.Textbox("", label="stop sequences", lines=2, placeholder="one per line, e.g. \\n\\n")
            extra = _extra_settings(caps)
            shared = _share_widgets()
    with gr.Accordion("Compare two settings (same prompt and seed)", open=False):
        with gr.Row():
            with gr.Column(min_width=300):
                gr.Markdown("**B settings** (A: the four sampler settings above; sampling only)")
                b = widgets.sampler_widgets(temperature=1.2, top_k=0, suffix=" B")
                compare = gr.Button("Compare A and B", variant="secondary")
            with gr.Column(min_width=300):
                out_a = gr.Textbox(label="A (settings above)", lines=6, interactive=False)
                out_b = gr.Textbox(label="B (settings B)", lines=6, interactive=False)
                compare_stats = gr.Markdown(label="stats")

    common = {"prompt": prompt, "max_new_tokens": max_new}
    settings = {"seed": seed, "stop": stop}
    # /generate's parameters: the original ones first (positional callers keep working), then the new ones.
    everything = {**common, **a.inputs(), **settings, **extra.advanced, "decoding": decoding, **extra.beams}
    generated = wire.on(run.click, logic.generate, everything, [output, stats, view], api_name="generate",
                        model=True, show_progress_on=[stats])
    submitted = wire.on(prompt.submit, logic.generate, everything, [output, stats, view], model=True,
                        show_progress_on=[stats])
    compared = wire.on(compare.click, logic.compare,
                       {**common, **a.inputs("_a"), **b.inputs("_b"), **settings}, [out_a, out_b, compare_stats],
                       api_name="compare", model=True, show_progress_on=[compare_stats])
    wire.on(stop_button.click, logic.stop, queue=False)
    _wire_extras(page, everything, extra, shared)
    for event in (generated, submitted, compared):
        page.links.emit(GENERATED, event.then)
    for tab_id, button in inspect.items():
        page.links.emit(open_tab(tab_id), button.click)


@dataclass
class _Extras:
    """The settings beyond the four samplers: the advanced samplers and beam search's, each in an accordion."""

    advanced: dict[str, gr.components.Component]
    advanced_box: gr.Accordion
    beams: dict[str, gr.components.Component]
    beam_box: gr.Accordion


def _extra_settings(caps) -> _Extras:
    with gr.Accordion("Advanced samplers", open=False, elem_id="advanced-samplers") as advanced_box:
        advanced = widgets.advanced_sampler_widgets()
    with gr.Accordion("Beam search settings", open=False, elem_id="beam-settings") as beam_box:
        beams = {
            "num_beams": widgets.slider(2, caps.max_beams, value=min(4, caps.max_beams), step=1, label="beams",
                                        info=f"2 to {caps.max_beams}", checked_by_handler=True),
            "length_penalty": _range_slider("length_penalty", 1.0, 0.1, "length penalty",
                                            "score = log-prob / length^penalty; > 0 favours longer"),
            "early_stopping": _early_stopping(),
        }
    return _Extras(advanced, advanced_box, beams, beam_box)


@dataclass
class _Share:
    """The Share button, the link it writes, the note a link's restore leaves, and the page's address."""

    button: gr.Button
    link: gr.Textbox
    note: gr.Markdown
    base_url: gr.Textbox


def _share_widgets() -> _Share:
    with gr.Row(equal_height=True):
        button = gr.Button("Share settings", size="sm", scale=0, min_width=140)
        link = gr.Textbox(label="Share link", interactive=False, buttons=["copy"], elem_id="share-link",
                          placeholder="this prompt and these settings, as a link", scale=3)
    note = gr.Markdown(visible=False, elem_id="share-note")
    return _Share(button, link, note, gr.Textbox(visible=False))  # the address: filled in by BASE_URL_JS


def _wire_extras(page, everything: dict, extra: _Extras, shared: _Share) -> None:
    """Beam search's settings open when it is chosen; Share writes a link; a link's query fills the widgets."""
    decoding = everything["decoding"]
    page.wire.on(decoding.input, logic.decoding_chosen, {"decoding": decoding}, [extra.beam_box], session=False,
                 queue=False)
    page.wire.on(shared.button.click, share.share_link, {"base": shared.base_url, **everything}, [shared.link],
                 session=False, queue=False, js=BASE_URL_JS)
    _restore_from_link(page, everything, shared.note, extra)


def _restore_from_link(page, widgets_by_name: dict, note: gr.Markdown, extra: _Extras) -> None:
    """Opening the page with a share link's query fills these widgets, and opens the accordions whose
    settings it uses; what cannot be restored is named in ``note``. Nothing runs until Generate."""
    names = list(widgets_by_name)

    def restore(request: gr.Request):
        found = share.from_query(dict(request.query_params), page.ctx.caps)
        updates = [gr.update(value=found.values[n]) if n in found.values else gr.update() for n in names]
        text = share.note_markdown(found)
        uses_advanced = any(found.values.get(k, off) != off for k, off in logic.ADVANCED_OFF.items())
        uses_beams = found.values.get("decoding") == logic.BEAM
        return (*updates, gr.update(value=text, visible=bool(text)),
                gr.update(open=True) if uses_advanced else gr.update(),
                gr.update(open=True) if uses_beams else gr.update())

    page.demo.load(restore, None, [*widgets_by_name.values(), note, extra.advanced_box, extra.beam_box],
                   queue=False, api_visibility="private")
