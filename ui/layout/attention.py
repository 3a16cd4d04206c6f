"""The Attention tab's layout: the source and the controls beside the plot, the head table below.

Every drawing event of the page returns the sliders refitted to what it drew (``ui.logic.attention``)
and sizes the plot for the page's width (measured when the tab opens): on a phone a square-ish plot.
Editing the text redraws. ``/attention`` is the API's, on a hidden button: it knows no page width.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

import gpt2

from .. import inputs
from ..context import AppContext
from ..logic import attention as logic
from ..logic import records
from . import widgets
from .links import GENERATED, MODEL_CHANGED, open_tab, tab_selected

HEADS_LEGEND = ("**Heads** · entropy of a query's attention in nats (low = focused) · previous-token: attention "
                "to the token just before · induction: attention to the token after an earlier copy of the query "
                "token (try repeated random tokens; blank when no token repeats)")


@dataclass
class _Widgets:
    source: gr.Radio
    text: gr.Textbox
    repeat: gr.Button
    record: gr.Dropdown
    step: gr.Slider
    view: gr.Radio
    layer: gr.Slider
    head: gr.Slider
    query: gr.Slider
    scale: gr.Radio
    show: gr.Button
    api: gr.Button
    width: gr.Number
    plot: gr.Plot
    note: gr.Markdown
    table: gr.Dataframe
    knock_out: gr.Button

    def values(self, *names: str) -> dict:
        """The widgets named, by parameter name (the ``/attention`` order when all are asked)."""
        return {name: getattr(self, name) for name in names}

    def sliders(self) -> list:
        return [self.step, self.layer, self.head, self.query]


DRAWING = ("text", "source", "record", "layer", "head", "view", "query", "step", "scale")  # /attention's parameters
FITTING = ("text", "source", "record", "view", "layer", "head", "query", "step")
PAGE_WIDTH = "() => window.innerWidth"  # a JavaScript-only event: the browser's width into ``width``
# "Knock out this head in the Lab ›": the layer.head of the sliders, left in the browser for the Lab's
# knock-out section to turn on (``ui.layout.lab_ablate.PICKED_JS``) once the Lab opens.
KNOCK_OUT_JS = "(layer, head) => { window.gpt2LabHeads = `${Math.round(layer)}.${Math.round(head)}`; }"


def _widest(ctx: AppContext, default: gpt2.GPTConfig) -> tuple[int, int, int]:
    """Layers, heads and token positions that every offered model fits in. A slider refuses values past
    the maximum it was built with for API clients (the page narrows its sliders per session), so the
    built maxima must admit any model: the default and the known hub shapes."""
    configs = [default, *(gpt2.PRESETS[k] for k in ctx.store.entries if k in gpt2.PRESETS)]
    return (max(max(c.n_layer for c in configs), 2), max(max(c.n_head for c in configs), 2),
            max(c.block_size for c in configs) + ctx.caps.max_new_tokens)


def _controls(ctx: AppContext) -> dict:
    """The left column: what to look at and how."""
    cfg = ctx.base(ctx.default_key).config
    n_example = len(inputs.prompt_ids(logic.EXAMPLE, ctx.caps.max_prompt_chars, cfg.block_size)[0])
    n_layer, n_head, n_positions = _widest(ctx, cfg)
    return dict(
        source=widgets.radio(list(logic.SOURCES), value="text", label="Source"),
        text=gr.Textbox(logic.EXAMPLE, label="Text", lines=4, placeholder="Type or paste a text…"),
        repeat=gr.Button("use repeated random tokens", size="sm"),
        record=widgets.dropdown([(records.LATEST_LABEL, inputs.LATEST)], value=inputs.LATEST, label="Generation",
                                visible=False, allow_custom_value=True,  # API clients send ids the page never listed
                                info="kept generations of this session, newest first"),
        step=widgets.slider(0, max(ctx.caps.max_new_tokens - 1, 1), value=0, step=1, label="step", visible=False,
                            info="replay: the text up to this generated token (the query follows it)"),
        view=widgets.radio(list(logic.VIEWS), value=logic.VIEWS[0], label="View"),
        layer=widgets.slider(0, n_layer - 1, value=0, step=1, label="layer"),
        head=widgets.slider(0, n_head - 1, value=0, step=1, label="head"),
        query=widgets.slider(0, n_positions - 1, value=n_example - 1, step=1, label="query token",
                             info="the token whose attention is outlined (or focused)"),
        scale=widgets.radio(list(logic.SCALES), value=logic.FITTED, label="colour scale",
                            info="fitted: the colours span the weights shown; 0 to 1: plots compare"),
        show=gr.Button("Show attention", variant="primary"),
        api=gr.Button(visible=False),  # /attention's trigger
        width=gr.Number(None, visible=False, label="page width"),
    )


def _layout(ctx: AppContext) -> _Widgets:
    # min_width: at phone width the columns stack, each the full width (the plot is never squeezed)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            controls = _controls(ctx)
        with gr.Column(scale=3, min_width=340):
            plot = gr.Plot(label="attention")
            note = gr.Markdown("Pick a source and press **Show attention**.", label="note")
    gr.Markdown(HEADS_LEGEND)
    table = gr.Dataframe(headers=logic.TABLE_COLUMNS, datatype=["number"] * len(logic.TABLE_COLUMNS),
                         interactive=False, label="heads", show_label=False, max_height=400)
    knock_out = gr.Button("Knock out this head in the Lab ›", size="sm")  # the layer and head of the sliders
    return _Widgets(**controls, plot=plot, note=note, table=table, knock_out=knock_out)


def _source_shown(source: str) -> tuple:
    """Text and its button for a text; the generation picker and the step for a generation."""
    is_text = source == "text"
    return (gr.update(visible=is_text), gr.update(visible=is_text), gr.update(visible=not is_text),
            gr.update(visible=not is_text))


def _pick_head(evt: gr.SelectData) -> tuple:
    """A clicked table row: that head, enlarged (the row's values, so a sorted table picks right)."""
    if evt.row_value is None:
        return gr.update(), gr.update(), gr.update()
    return int(evt.row_value[0]), int(evt.row_value[1]), logic.VIEWS[0]


def _wire(page, w: _Widgets) -> None:
    wire = page.wire
    drawn = dict(model=True, show_progress_on=[w.plot], trigger_mode="always_last")  # only the newest request matters
    full = [w.plot, w.table, w.note, *w.sliders()]
    redrawn = [w.plot, w.note, *w.sliders()]
    wire.on(w.api.click, logic.attention, w.values(*DRAWING), [w.plot, w.table, w.note], api_name="attention",
            model=True)
    wire.on(w.show.click, logic.show, w.values(*DRAWING, "width"), full, **drawn)
    wire.on([w.layer.release, w.head.release, w.query.release, w.view.input, w.scale.input], logic.redraw,
            w.values(*DRAWING, "width"), redrawn, **drawn)
    wire.on(w.step.release, logic.replay, w.values(*(n for n in DRAWING if n != "query"), "width"), redrawn, **drawn)
    # Every change of the text (typed, pasted, the repeat button) redraws: the plot never shows another text.
    wire.on([w.text.change, w.source.input, w.record.input], logic.refresh,
            w.values("text", "source", "record", "layer", "head", "view", "scale", "width"), full, **drawn)
    w.source.change(_source_shown, [w.source], [w.text, w.repeat, w.record, w.step], queue=False,
                    api_visibility="private")
    wire.on(w.repeat.click, logic.repeated, {}, [w.text], model=True)
    picked = w.table.select(_pick_head, None, [w.layer, w.head, w.view], api_visibility="private")
    wire.on(picked.success, logic.redraw, w.values(*DRAWING, "width"), redrawn, model=True,
            show_progress_on=[w.plot])


def _follow(page, w: _Widgets) -> None:
    """Links with the other tabs: new generations, Generate's "Inspect attention ›", the tab opening, the
    model changing."""
    wire, fit_out = page.wire, [w.record, *w.sliders()]
    drawn = [w.plot, w.table, w.note]

    def measured(listener):
        """The page's width, measured in the browser, then the next event."""
        return listener(None, None, [w.width], js=PAGE_WIDTH, queue=False, api_visibility="private").then

    page.links.follow(GENERATED, lambda listener: wire.on(
        listener, logic.generated, w.values(*DRAWING, "width"), [w.record, *w.sliders(), *drawn],
        model=True, show_progress_on=[w.plot]))
    page.links.follow(open_tab("attention"), lambda listener: wire.on(
        measured(listener), logic.open_latest, w.values("layer", "head", "view", "scale", "width"),
        [w.source, w.record, *w.sliders(), *drawn], model=True, show_progress_on=[w.plot]))
    page.links.follow(tab_selected("attention"), lambda listener: wire.on(
        measured(listener), logic.fit, w.values(*FITTING), fit_out))
    page.links.follow(MODEL_CHANGED, lambda listener: wire.on(listener, logic.fit, w.values(*FITTING), fit_out))
    knocked = w.knock_out.click(None, [w.layer, w.head], None, js=KNOCK_OUT_JS, queue=False, api_visibility="private")
    page.links.emit(open_tab("lab"), knocked.then)


def build(page) -> None:
    """Lay out the tab and wire it (see ``ui.layout.page``)."""
    w = _layout(page.ctx)
    _wire(page, w)
    _follow(page, w)
