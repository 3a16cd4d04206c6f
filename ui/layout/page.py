"""The page: a header with the model and precision pickers, then one tab per entry of ``TABS``.

Adding a tab: write its logic in ``ui/logic/NAME.py`` (plain functions, tested directly), its layout in
``ui/layout/NAME.py`` (a ``build(page)`` that creates widgets and wires them with ``page.wire.on``), and
add one ``Tab`` line below. Links to other tabs go through ``page.links``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from .. import memory
from ..context import AppContext
from ..logic import header
from ..models import DEFAULT
from ..session import Session
from . import attention, beam, chat, diversity, finetune, generate, lab, probabilities, widgets
from .links import MODEL_CHANGED, Links, tab_selected
from .wiring import Wiring

INTRO = """# GPT-2 Playground
See how a GPT-2 language model thinks: **generate** text (sampling, greedy or beam search), look at where each
token **attends**, see the **probabilities** behind every choice and branch from any of them, watch a **beam
search** as a tree, measure the **diversity** of samples, **fine-tune** it on your own text and **chat** with
it, and in the **Lab** knock out heads, attribute a prediction to its inputs and patch activations: all in the
browser."""


# The generation's view tells the prompt (muted) from the generated text, whose tokens are coloured by
# their probability (the bands of ``ui.logic.generate.BANDS``, green = likely, red = unlikely). At phone
# widths (390 px) every tab's name stays in the tab bar: Gradio moves names that do not fit into a "⋯"
# menu, measuring them with these same styles.
CSS = """
#generated-view .generation { white-space: pre-wrap; line-height: 1.6; min-height: 6em; }
#generated-view .prompt { color: var(--body-text-color-subdued); background: var(--background-fill-secondary); }
#generated-view .generated { color: var(--body-text-color); }
#generated-view .tok { border-radius: 3px; }
#generated-view .tok[title] { cursor: help; }
#generated-view .tok.nl::before { content: "↵"; opacity: 0.45; }
#generated-view .p50 { background: hsla(130, 60%, 45%, 0.30); }
#generated-view .p20 { background: hsla(90, 65%, 45%, 0.30); }
#generated-view .p5 { background: hsla(50, 90%, 50%, 0.35); }
#generated-view .p1 { background: hsla(25, 90%, 55%, 0.35); }
#generated-view .p0 { background: hsla(0, 85%, 55%, 0.35); }
#generated-view .legend { margin-top: 0.6em; font-size: 0.85em; color: var(--body-text-color-subdued); }
#generated-view .legend .tok { padding: 0 4px; margin-left: 2px; color: var(--body-text-color); white-space: nowrap; }
@media (max-width: 480px) {
  .tab-wrapper .tab-container button { padding: 0 3px !important; font-size: 11px !important; }
}
"""

# Gradio scopes ``CSS`` to the page's content; the 32 px side margins of the app around it need a plain
# style in the head: at phone widths they would leave too little room for the tab bar (8 tabs).
HEAD = """<style>
@media (max-width: 480px) { gradio-app .main.fillable.app { padding-left: 4px; padding-right: 4px; } }
</style>"""


@dataclass
class Page:
    """What every tab's ``build`` gets: the server's context, the session state, the wiring adapter and
    the links between tabs."""

    ctx: AppContext
    state: gr.State
    wire: Wiring
    links: Links
    demo: gr.Blocks | None = None  # for page-load events (the Generate tab restores a share link's settings)


@dataclass(frozen=True)
class Tab:
    title: str
    id: str
    build: Callable[[Page], None]


TABS = (
    Tab("Generate", "generate", generate.build),
    Tab("Attention", "attention", attention.build),
    Tab("Probabilities", "probabilities", probabilities.build),
    Tab("Fine-tune", "finetune", finetune.build),
    Tab("Chat", "chat", chat.build),
    Tab("Beams", "beam", beam.build),
    Tab("Diversity", "diversity", diversity.build),
    Tab("Lab", "lab", lab.build),
)


def _close(session: Session | None) -> None:
    if isinstance(session, Session):
        session.close()
        memory.trim()


def _close_sessions_on_close(demo: gr.Blocks, state: gr.State) -> None:
    """Make ``demo.close()`` also close every session it holds, so that their private folders (pasted
    text, uploads, zips) go with the server. (A page's session closes when the page goes away; an HTTP
    API caller's has no page, and would wait for its expiry or the process's exit.)"""
    close = demo.close

    def closing(verbose: bool = True) -> None:
        close(verbose)
        holder = getattr(demo, "state_holder", None)  # none before the first launch
        for session_state in list(holder.session_data.values()) if holder else []:
            _close(session_state.state_data.get(state._id))

    demo.close = closing


def build_demo(ctx: AppContext) -> gr.Blocks:
    """The whole app; every tab gets the same ``Page``."""
    # Gradio's copies of uploads and served files (a fine-tuned model's zip: hundreds of MB) go after 15
    # minutes, checked every minute: long enough to start a run on an upload, short for a big download.
    with gr.Blocks(title="GPT-2 Playground", delete_cache=(60, 900)) as demo:
        state = gr.State(None, time_to_live=ctx.caps.session_ttl_s, delete_callback=_close)
        page = Page(ctx, state, Wiring(ctx, state), Links(), demo)
        gr.Markdown(INTRO)
        build_header(page)
        with gr.Tabs() as tabs:
            for tab in TABS:
                with gr.Tab(tab.title, id=tab.id) as opened:
                    tab.build(page)
                page.links.emit(tab_selected(tab.id), opened.select)
        page.links.connect(tabs)

        def page_closed(request: gr.Request) -> None:
            """The page went away: stop its work and free its session now. (Gradio keeps a closed page's
            state for an hour, in case it comes back; the fine-tuned model and records are the big part.)"""
            session_state = demo.state_holder.session_data.get(request.session_hash)
            if session_state is not None:
                _close(session_state.state_data.get(state._id))

        demo.unload(page_closed)
    _close_sessions_on_close(demo, state)
    return demo


def build_header(page: Page) -> None:
    """The model picker, its precision, the base/fine-tuned switch and the model's description."""
    ctx = page.ctx
    key = ctx.store.key(ctx.default_key)  # a new session's model
    with gr.Row(equal_height=True):  # columns with a min_width: on a phone they stack
        with gr.Column(scale=2, min_width=260):
            picker = widgets.dropdown([(e.label, e.key) for e in ctx.store.entries.values()],
                                      value=ctx.default_key, label="Model")
        with gr.Column(scale=1, min_width=180):
            precision = widgets.dropdown(ctx.store.choices(ctx.default_key), value=ctx.store.parse(key)[1],
                                         label="Precision", info="weights' memory; on a CPU int8 is the fastest")
        with gr.Column(scale=1, min_width=220):
            use_finetuned = gr.Checkbox(False, label="use my fine-tuned model",
                                        info="after fine-tuning; off = the base model")
        with gr.Column(scale=2, min_width=260):
            info = gr.Markdown(header.model_info(ctx, key), label="model details")
    load_api = gr.Button(visible=False)  # /load_model's trigger: API callers get an error, the page a message
    # /load_model's precision: "default" is for API callers (the page's picker shows what it resolves to)
    precision_api = widgets.dropdown([DEFAULT, *ctx.store.precisions()], value=DEFAULT, label="precision",
                                     visible=False)

    def shown(switches):
        """The header's outputs for each step of a switch; a failure is a message, never a broken page."""
        for s in switches:
            if s.error:
                gr.Warning(s.error)
            yield s.info, s.picker, s.precision, s.finetuned

    def switch(ctx, session, model):
        """Load one of the offered models for this session, in its default precision."""
        yield from shown(header.switch_model(ctx, session, model))

    def switch_precision(ctx, session, precision):
        """Load this session's model in another precision."""
        yield from shown(header.switch_precision(ctx, session, precision))

    def toggle(ctx, session, value):
        value, message = header.use_finetuned(session, value)
        if message:
            gr.Warning(message)
        return value

    def sync(ctx, session):
        """After a fine-tune or a model switch: the switch and the description follow the session."""
        return session.use_finetuned, header.model_info(ctx, session.model_key)

    outputs = [info, picker, precision, use_finetuned]
    switched = page.wire.on(picker.select, switch, {"model": picker}, outputs, concurrency_limit=1,
                            concurrency_id="load")
    recast = page.wire.on(precision.select, switch_precision, {"precision": precision}, outputs, concurrency_limit=1,
                          concurrency_id="load")
    page.wire.on(load_api.click, header.load_model, {"model": picker, "precision": precision_api},
                 [info], api_name="load_model", concurrency_limit=1, concurrency_id="load")
    # Queued (not queue=False) so its warning reaches the page; never behind a training run.
    toggled = page.wire.on(use_finetuned.input, toggle, {"value": use_finetuned}, [use_finetuned],
                           concurrency_limit=None)
    for event in (switched, recast, toggled):
        page.links.emit(MODEL_CHANGED, event.then)
    page.links.follow(MODEL_CHANGED, lambda listener: page.wire.on(listener, sync, {}, [use_finetuned, info],
                                                                   queue=False))
