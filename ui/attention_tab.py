"""The Attention tab: where each token looks, for a text or a kept generation.

Only what is drawn is computed: one layer's patterns for the heatmap and the grid, one query row of
every layer for the token focus, and the per-head summary on a bounded prefix. The figures come from
``ui.figures``; this module picks the tokens, runs the model (with the session's adapter) and crops.
"""

from __future__ import annotations

import html
import logging
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

import gpt2
from gpt2.inspection import HeadScores, attention_maps, head_scores, repeated_tokens

from . import figures, widgets
from .context import AppContext
from .generate_tab import GenerateTab, prepare_prompt
from .gpu import Gpu, ModelRef
from .session import MAX_RECORDS, GenerationRecord, Session

log = logging.getLogger(__name__)

SOURCES = ("text", "a generation")
VIEWS = ("one head", "all heads of the layer", "token focus")
EXAMPLE = "The cat sat on the mat. The cat sat on the mat."
HEATMAP_TOKENS = 256  # one head: at most 256² cells go to the browser
GRID_TOKENS = 64  # all heads: n_head × 64² cells (12 heads × 1024² would freeze the page)
FOCUS_CELLS = 150_000  # token focus: (layers × heads) rows × keys; the oldest keys go first
TABLE_TOKENS = 256  # the head summary needs every layer's full (T, T) patterns: a bounded prefix
REPEAT_LENGTH = 50  # random tokens in the induction probe (then repeated once)
TABLE_COLUMNS = ["layer", "head", "entropy", "previous-token", "induction"]
_HIGHLIGHT = "#ff2d55"  # outline of the query row: shows on Viridis and on light and dark pages
_POSITION = re.compile(r"^\d+(?=:)")  # the position prefix of a figures token category ("3:␣the")


# ---------------------------------------------------------------- what to look at


@dataclass
class Shown:
    """The tokens the views read, and the model that reads them (run through ``gpu``)."""

    gpu: Gpu
    ref: ModelRef
    config: gpt2.GPTConfig
    ids: list[int]  # the tokens drawn: a text, or a generation up to the replayed step (≤ the context)
    offset: int = 0  # position of ids[0] in the whole sequence (a generation longer than the context)
    table_ids: list[int] = field(default_factory=list)  # tokens the head summary reads
    step: int | None = None  # the generation step replayed; None for a text
    record_id: int | None = None
    notes: list[str] = field(default_factory=list)


def _whole(name: str, value) -> int:
    """A whole number from a widget or API value (sliders send 3.0), else a ``gr.Error``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number; got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise gr.Error(f"{name} must be a whole number; got {value!r}")
    return int(number)


def _in_range(name: str, value, n: int, why: str) -> int:
    i = _whole(name, value)
    if not 0 <= i < n:
        raise gr.Error(f"{name} must be between 0 and {n - 1} ({why}); got {i}")
    return i


def _record_id(value) -> int | None:
    """The dropdown's value: an id, or None/"" for the latest generation."""
    if value is None or value == "":
        return None
    return _whole("record (a generation id from the list, or empty for the latest)", value)


def record_choices(session: Session) -> list[tuple[str, int]]:
    """The session's kept generations as dropdown choices, newest first."""
    return [(r.label, r.id) for r in reversed(session.records)]


def find_record(session: Session, record_id) -> GenerationRecord:
    """A kept generation by id (None: the latest), or a ``gr.Error`` that says what to do."""
    if not session.records:
        raise gr.Error("No generation yet: generate a text on the Generate tab first, then inspect it here "
                       "(or switch the source to “text”).")
    rid = _record_id(record_id)
    record = session.record(rid)
    if record is None:
        raise gr.Error(f"Generation #{rid} is no longer kept (a session keeps its last {MAX_RECORDS}); "
                       "pick one from the list.")
    return record


def generation_model(ctx: AppContext, session: Session, record: GenerationRecord) -> tuple[ModelRef, list[str]]:
    """The model that made ``record``, as far as the session still has it, plus notes on what differs.
    The session may have switched model or toggled base/fine-tuned since; the record says which it was."""
    notes = []
    if record.model_key == session.model_key:
        ref = ctx.ref(session, finetuned=record.finetuned)
        lost = record.finetuned and not session.has_finetuned()
    else:
        adapter = session.adapter if record.finetuned and session.adapter_base == record.model_key else None
        ref = ModelRef(record.model_key, adapter=adapter)
        lost = record.finetuned and adapter is None
    if lost:
        notes.append("This generation came from a fine-tuned model this session no longer has: "
                     "showing the base model's attention.")
    return ref, notes


def text_source(ctx: AppContext, session: Session, text: str | None) -> Shown:
    """A typed text, cleaned and cropped like a prompt, read by the session's current model."""
    ref = ctx.ref(session)
    config = ctx.config(ref)
    ids, notice = prepare_prompt(text, ctx.caps, config.block_size)
    if not ids:
        raise gr.Error("Enter a text to inspect (or press “use repeated random tokens”).")
    return Shown(ctx.gpu, ref, config, ids, table_ids=ids[:TABLE_TOKENS], notes=[notice] if notice else [])


def generation_source(ctx: AppContext, session: Session, record_id, step) -> Shown:
    """A kept generation replayed up to ``step`` (None: the last): the prompt and the tokens 0..step."""
    record = find_record(session, record_id)
    ref, notes = generation_model(ctx, session, record)
    config = ctx.config(ref)
    n = len(record.token_ids)
    step = n - 1 if step is None else _in_range("step", step, n, f"generation #{record.id} has {n} tokens")
    prompt = record.prompt_ids or [gpt2.EOT_ID]  # gpt2.generate starts an empty prompt from <|endoftext|>
    full = prompt + record.token_ids
    block = config.block_size
    end = len(prompt) + step + 1
    offset = max(0, end - block)
    if offset:  # the model itself slid its window past the context while generating
        notes.append(f"At this step the text is longer than the model's context: showing its last {block} "
                     f"tokens (positions {offset}–{end - 1}).")
    table_ids = full[: min(TABLE_TOKENS, block)]
    return Shown(ctx.gpu, ref, config, full[offset:end], offset, table_ids, step, record.id, notes)


def resolve(ctx: AppContext, session: Session, source: str, text: str | None, record_id, step) -> Shown:
    """The tokens and model for the chosen source."""
    if source == "text":
        return text_source(ctx, session, text)
    if source == "a generation":
        return generation_source(ctx, session, record_id, step)
    raise gr.Error(f"source must be one of {', '.join(repr(s) for s in SOURCES)}; got {source!r}")


def repeated_text(config: gpt2.GPTConfig, seed: int) -> str:
    """Random tokens repeated once, as text: the probe on which induction heads light up."""
    length = min(REPEAT_LENGTH, config.block_size // 2)
    return gpt2.get_tokenizer().decode(repeated_tokens(length, seed, config.vocab_size))


# ---------------------------------------------------------------- computing (only what is drawn)
# ``ui.gpu`` jobs: they run with the session's adapter active, maybe in a ZeroGPU worker.


def layer_patterns(model: gpt2.GPT2, ids: Sequence[int], layer: int) -> np.ndarray:
    """Every head's (T, T) attention in one layer: (n_head, T, T)."""
    return attention_maps(model, ids, [layer]).patterns[0]


@torch.no_grad()
def focus_rows(model: gpt2.GPT2, ids: Sequence[int]) -> np.ndarray:
    """What the last token of ``ids`` attends to, in every layer and head: (n_layer, n_head, len(ids)).
    Attention is causal, so the prefix up to the query is all that is needed, and the trace keeps one
    row per head instead of the full (T, T) squares."""
    n_layer = model.config.n_layer
    trace = gpt2.Trace(attn_layers=range(n_layer), attn_rows=slice(-1, None))
    model(torch.tensor([list(ids)], device=model.device), trace=trace, last_only=True)
    return torch.stack([trace.attn[i][0, :, 0] for i in range(n_layer)]).float().cpu().numpy()


def head_score_job(model: gpt2.GPT2, ids: Sequence[int]) -> HeadScores:
    """Entropy, previous-token and induction score of every head on ``ids``."""
    return head_scores(attention_maps(model, list(ids)))


def head_table(scores: HeadScores) -> pd.DataFrame:
    """The per-head summary as a table, one row per head."""
    n_layer, n_head = scores.entropy.shape
    layer, head = np.divmod(np.arange(n_layer * n_head), n_head)
    return pd.DataFrame({
        "layer": layer, "head": head,
        "entropy": scores.entropy.ravel().round(3),
        "previous-token": scores.previous_token.ravel().round(3),
        "induction": scores.induction.ravel().round(3),  # NaN when no token repeats
    }, columns=TABLE_COLUMNS)


def window(n: int, focus: int, cap: int) -> tuple[int, int]:
    """At most ``cap`` of ``n`` tokens that include ``focus``: the first ``cap`` while the focus is
    among them, else the last ``cap`` up to the focus."""
    end = min(n, max(focus + 1, cap))
    return max(0, end - cap), end


# ---------------------------------------------------------------- drawing


def _shift_positions(fig: go.Figure, offset: int) -> None:
    """The builders number tokens from 0; renumber them as positions in the whole sequence."""
    if not offset:
        return
    for trace in fig.data:
        for axis in ("x", "y"):
            names = trace[axis]
            if names is not None and len(names) and isinstance(names[0], str):
                trace[axis] = [_POSITION.sub(lambda m: str(int(m[0]) + offset), name) for name in names]


def _highlight_row(fig: go.Figure, row: int, n: int, grid: bool) -> None:
    """Outline one query row (category axes take indices as coordinates)."""
    shape = dict(type="rect", x0=-0.5, x1=n - 0.5, y0=row - 0.5, y1=row + 0.5,
                 line=dict(color=_HIGHLIGHT, width=2), fillcolor="rgba(0,0,0,0)")
    if grid:
        fig.add_shape(**shape, row="all", col="all", exclude_empty_subplots=True)
    else:
        fig.add_shape(**shape)


def _focus_index(shown: Shown, query) -> tuple[int, list[str]]:
    """The query token's index in ``shown.ids``: a position in the whole sequence (None: the last
    token); past the end means the last token, so a replay follows the newest token."""
    last = len(shown.ids) - 1
    if query is None or query == "":
        return last, []
    pos = _whole("query", query)
    if pos < 0:
        raise gr.Error(f"query must be a token position, 0 or more; got {pos}")
    i = pos - shown.offset
    if i > last:
        note = [] if shown.step is not None else [f"Query token {pos} is past the end of the text: showing the "
                                                   f"last token ({shown.offset + last})."]
        return last, note
    if i < 0:
        return 0, [f"Token {pos} is outside the model's context at this step: showing the first token in it "
                   f"({shown.offset})."]
    return i, []


def render(shown: Shown, view: str, layer, head, query) -> tuple[go.Figure, list[str]]:
    """The chosen view's figure and notes on what it shows."""
    cfg = shown.config
    if view not in VIEWS:
        raise gr.Error(f"view must be one of {', '.join(repr(v) for v in VIEWS)}; got {view!r}")
    layer = _in_range("layer", layer, cfg.n_layer, f"this model has {cfg.n_layer} layers")
    head = _in_range("head", head, cfg.n_head, f"this model has {cfg.n_head} heads per layer")
    focus, notes = _focus_index(shown, query)
    if view == "token focus":
        fig, more = _focus_figure(shown, focus)
    else:
        fig, more = _layer_figure(shown, layer, head, focus, grid=view == "all heads of the layer")
    return fig, notes + more


def _focus_figure(shown: Shown, focus: int) -> tuple[go.Figure, list[str]]:
    """What token ``focus`` attends to in every layer and head (the oldest keys dropped past a budget)."""
    cfg = shown.config
    ids = shown.ids[: focus + 1]
    keys = max(16, FOCUS_CELLS // (cfg.n_layer * cfg.n_head))
    first = max(0, len(ids) - keys)
    rows = shown.gpu.call(focus_rows, shown.ref, ids)[:, :, first:]  # (L, nh, n)
    labels = gpt2.token_display(ids[first:])
    n = len(labels)
    # token_focus reads only row `query` of (L, nh, T, T) patterns: a zero-copy broadcast of the one
    # row computed stands in for the squares, which would be L × nh × T² floats.
    fig = figures.token_focus(np.broadcast_to(rows[:, :, None, :], (*rows.shape[:2], n, n)), labels, n - 1)
    _shift_positions(fig, shown.offset + first)
    name = f"{shown.offset + focus}:{html.escape(labels[-1], quote=False)}"
    at_step = f" · step {shown.step}" if shown.step is not None else ""
    fig.update_layout(title_text=f"What {name} attends to, in every layer and head{at_step}")
    notes = [f"Drawing the last {n} keys up to the query (at most {FOCUS_CELLS:,} cells); attention to "
             "earlier tokens is not shown."] if first else []
    return fig, notes


def _layer_figure(shown: Shown, layer: int, head: int, focus: int, grid: bool) -> tuple[go.Figure, list[str]]:
    """One head's heatmap, or every head of the layer, over a window of tokens around ``focus``."""
    cap = GRID_TOKENS if grid else HEATMAP_TOKENS
    start, end = window(len(shown.ids), focus, cap)
    patterns = shown.gpu.call(layer_patterns, shown.ref, shown.ids[:end], layer)[:, start:end, start:end]
    labels = gpt2.token_display(shown.ids[start:end])
    at_step = f" · step {shown.step}" if shown.step is not None else ""
    if grid:
        fig = figures.attention_grid(patterns, labels, layer)
        fig.update_layout(title_text=f"{fig.layout.title.text}{at_step}")
    else:
        fig = figures.attention_heatmap(patterns[head], labels, f"Layer {layer}, head {head}{at_step}")
    _highlight_row(fig, focus - start, end - start, grid)
    _shift_positions(fig, shown.offset + start)
    notes = []
    if end - start < len(shown.ids):
        a, b = shown.offset + start, shown.offset + end - 1
        notes.append(f"Drawing tokens {a}–{b} of {shown.offset}–{shown.offset + len(shown.ids) - 1} (at most "
                     f"{cap} in this view): move the query token to see others; attention to tokens before {a} "
                     "is not drawn.")
    if grid:
        notes.append("To enlarge a head, pick it with the head slider and switch the view to “one head” "
                     "(or click its row in the table below).")
    return fig, notes


def describe(shown: Shown, notes: Sequence[str]) -> str:
    """The note under the figure: what is shown, then why anything is cut or different."""
    first, last = shown.offset, shown.offset + len(shown.ids) - 1
    if shown.step is None:
        head = f"**Text**: {len(shown.ids)} tokens (positions {first}–{last})."
    else:
        newest = html.escape(gpt2.token_display([shown.ids[-1]])[0], quote=False)
        head = (f"**Generation #{shown.record_id}**, step {shown.step}: text up to the newest token "
                f"**{last}:{newest}** (outlined row when it is the query).")
    return "\n\n".join([head, *(f"> {n}" for n in [*shown.notes, *notes])])


def table_note(shown: Shown) -> str:
    n = len(shown.table_ids)
    return (f"Head summary over the first {n} tokens (at most {TABLE_TOKENS}: it needs every layer's full "
            "pattern). Sort by clicking a column; click a row to enlarge that head.")


def head_from_row(row: Sequence) -> tuple[int, int]:
    """(layer, head) of a clicked table row."""
    return int(row[0]), int(row[1])


# ---------------------------------------------------------------- the slider limits


@dataclass
class Limits:
    n_layer: int
    n_head: int
    n_tokens: int  # positions the query slider covers (the whole sequence)
    n_steps: int  # generated tokens (0 for a text or when there is none)


def limits(ctx: AppContext, session: Session, source: str, text: str | None, record_id) -> Limits:
    """What the sliders can reach for this source; lenient (no errors for an empty text or no
    generation: the main action says what to do)."""
    if source == "a generation" and session.records:
        record = session.record(_record_id(record_id)) or session.records[-1]
        ref, _ = generation_model(ctx, session, record)
        cfg = ctx.config(ref)
        return Limits(cfg.n_layer, cfg.n_head, len(record.prompt_ids or [0]) + len(record.token_ids),
                      len(record.token_ids))
    cfg = ctx.config(ctx.ref(session))
    n = len(prepare_prompt(text, ctx.caps, cfg.block_size)[0]) if source == "text" else 0
    return Limits(cfg.n_layer, cfg.n_head, n, 0)


def _slider(n: int, value, to_end: bool = False) -> dict:
    """Update for a 0..n-1 slider (a gr.Slider needs maximum > minimum: one choice is shown frozen)."""
    try:
        current = int(float(value))
    except (TypeError, ValueError):
        current = 0
    update = dict(maximum=max(n - 1, 1), interactive=n > 1)
    if to_end or not 0 <= current <= max(n - 1, 0):  # only move a value that must move: a user may be
        target = n - 1 if to_end else current  # dragging this slider while the update is in flight
        update["value"] = min(max(target, 0), max(n - 1, 0))
    return gr.update(**update)


def _fit_handler(ctx: AppContext, to_end: bool) -> Callable:
    def fit(text, source, record, layer, head, query, step, session):
        """Fit the sliders (and the generation list) to the model and the tokens."""
        session = ctx.session(session)
        try:
            lim = limits(ctx, session, source, text, record)
        except gr.Error as e:  # a model that fails to load: the main action reports it
            log.info("attention controls not refitted: %s", e)
            return (gr.update(),) * 5
        choices = record_choices(session)
        kept = [rid for _, rid in choices]
        rid = record if record in kept else (kept[0] if kept else None)
        return (gr.update(choices=choices, value=rid), _slider(lim.n_steps, step, to_end),
                _slider(lim.n_layer, layer), _slider(lim.n_head, head), _slider(lim.n_tokens, query, to_end))

    return fit


def _visibility(source: str) -> tuple[dict, ...]:
    is_text = source == "text"
    return (gr.update(visible=is_text), gr.update(visible=is_text), gr.update(visible=not is_text),
            gr.update(visible=not is_text))


# ---------------------------------------------------------------- the tab


@dataclass
class AttentionTab:
    source: gr.Radio
    text: gr.Textbox
    repeat: gr.Button
    record_picker: gr.Dropdown  # refresh its choices after each generation (see ``connect``)
    step: gr.Slider
    view: gr.Radio
    layer: gr.Slider
    head: gr.Slider
    query: gr.Slider
    show: gr.Button
    plot: gr.Plot
    note: gr.Markdown
    table: gr.Dataframe

    def inputs(self, state: gr.State) -> list:
        """Inputs of the main action, in the order of the ``/attention`` endpoint."""
        return [self.text, self.source, self.record_picker, self.layer, self.head, self.view, self.query,
                self.step, state]

    def fit_io(self, state: gr.State) -> tuple[list, list]:
        return ([self.text, self.source, self.record_picker, self.layer, self.head, self.query, self.step, state],
                [self.record_picker, self.step, self.layer, self.head, self.query])


def make_handlers(ctx: AppContext) -> tuple[Callable, Callable]:
    """The tab's handlers ``(attention, redraw)``: plain functions of widget values (testable without a
    browser). ``attention`` is the ``/attention`` endpoint."""

    def attention(text, source, record, layer, head, view, query, step, session):
        """Attention of one layer/head, all heads of a layer, or one token across layers, for a text or a
        kept generation (``record`` id, None = latest, replayed up to ``step``), with a per-head summary
        table. Returns the figure, the table, a note and the session."""
        session = ctx.session(session)
        shown = resolve(ctx, session, source, text, record, step)
        fig, notes = render(shown, view, layer, head, query)
        table = head_table(ctx.gpu.call(head_score_job, shown.ref, shown.table_ids))
        return fig, table, f"{describe(shown, notes)}\n\n{table_note(shown)}", session

    def redraw(text, source, record, layer, head, view, query, step, session):
        """The figure alone (a slider moved: the table does not change)."""
        session = ctx.session(session)
        shown = resolve(ctx, session, source, text, record, step)
        fig, notes = render(shown, view, layer, head, query)
        return fig, f"{describe(shown, notes)}\n\n{table_note(shown)}", session

    return attention, redraw


def _widest(ctx: AppContext, default: gpt2.GPTConfig) -> tuple[int, int, int]:
    """Layers, heads and token positions that every offered model fits in. A slider refuses values past
    the maximum it was built with for API clients (the page narrows its sliders per session, see
    ``fit``), so the built maxima must admit any model: the default and the known hub shapes."""
    configs = [default, *(gpt2.PRESETS[k] for k in ctx.store.entries if k in gpt2.PRESETS)]
    return (max(max(c.n_layer for c in configs), 2), max(max(c.n_head for c in configs), 2),
            max(c.block_size for c in configs) + ctx.caps.max_new_tokens)


def build(ctx: AppContext, state: gr.State) -> AttentionTab:
    """Lay out the tab and wire its own events (``connect`` wires those that involve other tabs)."""
    cfg = ctx.store.get(ctx.default_key).config
    n_example = len(prepare_prompt(EXAMPLE, ctx.caps, cfg.block_size)[0])
    n_layer, n_head, n_positions = _widest(ctx, cfg)
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            source = widgets.radio(list(SOURCES), value="text", label="Source")
            text = gr.Textbox(EXAMPLE, label="Text", lines=4, placeholder="Type or paste a text…")
            repeat = gr.Button("use repeated random tokens", size="sm")
            record_picker = widgets.dropdown([], value=None, label="Generation", visible=False,
                                        allow_custom_value=True,  # API clients send ids the page never listed
                                        info="kept generations of this session, newest first")
            step = widgets.slider(0, max(ctx.caps.max_new_tokens - 1, 1), value=0, step=1, label="step",
                             visible=False, info="replay: the text up to this generated token")
            view = widgets.radio(list(VIEWS), value="one head", label="View")
            layer = widgets.slider(0, n_layer - 1, value=0, step=1, label="layer")
            head = widgets.slider(0, n_head - 1, value=0, step=1, label="head")
            query = widgets.slider(0, n_positions - 1, value=n_example - 1, step=1, label="query token",
                              info="the token whose attention is outlined or focused (past the end: the last)")
            show = gr.Button("Show attention", variant="primary")
        with gr.Column(scale=3):
            plot = gr.Plot(label="attention")
            note = gr.Markdown("Pick a source and press **Show attention**.", label="note")
    gr.Markdown("**Heads** · entropy of a query's attention in nats (low = focused) · previous-token: attention "
                "to the token just before · induction: attention to the token after an earlier copy of the "
                "query token (try repeated random tokens; blank when no token repeats)")
    table = gr.Dataframe(headers=TABLE_COLUMNS, datatype=["number"] * len(TABLE_COLUMNS), interactive=False,
                         label="heads", show_label=False, max_height=400)
    tab = AttentionTab(source, text, repeat, record_picker, step, view, layer, head, query, show, plot, note, table)

    attention, redraw = make_handlers(ctx)
    inputs = tab.inputs(state)
    full_out, redraw_out = [plot, table, note, state], [plot, note, state]
    fit_in, fit_out = tab.fit_io(state)
    fit_end = _fit_handler(ctx, to_end=True)
    private = dict(api_visibility="private")

    show.click(attention, inputs, full_out, api_name="attention")
    for slider in (layer, head, query, step):
        slider.release(redraw, inputs, redraw_out, **private)
    view.input(redraw, inputs, redraw_out, **private)
    source.change(_visibility, [source], [text, repeat, record_picker, step], queue=False, **private)
    for changed in (source.input, record_picker.input):
        changed(fit_end, fit_in, fit_out, **private).success(attention, inputs, full_out, **private)
    text.change(fit_end, fit_in, fit_out, trigger_mode="always_last", show_progress="hidden", **private)

    def fill_repeated(session):
        """Random tokens repeated once: induction heads attend from the second copy to the token after
        the first."""
        config = ctx.config(ctx.ref(ctx.session(session)))
        return repeated_text(config, random.SystemRandom().randrange(2**31))

    (repeat.click(fill_repeated, [state], [text], **private)
     .success(fit_end, fit_in, fit_out, **private).success(attention, inputs, full_out, **private))

    def pick_head(evt: gr.SelectData):
        """Enlarge the head of a clicked table row."""
        if evt.row_value is None:
            return gr.update(), gr.update(), gr.update()
        layer_, head_ = head_from_row(evt.row_value)
        return layer_, head_, "one head"

    table.select(pick_head, None, [layer, head, view], **private).success(redraw, inputs, redraw_out, **private)
    return tab


def connect(ctx: AppContext, tab: AttentionTab, state: gr.State, generate: GenerateTab, tabs: gr.Tabs,
            page: gr.Tab, model_events: Sequence = ()) -> None:
    """Wire the events that involve other parts of the page (call inside the Blocks, after building):
    refresh the generation list after each generation, open the tab from "Inspect attention ›",
    and refit the sliders when the tab opens or the model changes."""
    attention, _ = make_handlers(ctx)
    fit_in, fit_out = tab.fit_io(state)
    fit_end, fit_keep = _fit_handler(ctx, to_end=True), _fit_handler(ctx, to_end=False)
    private = dict(api_visibility="private")

    def latest(session):
        """The generation list with the newest one chosen."""
        session = ctx.session(session)
        choices = record_choices(session)
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def inspect(session):
        """Open the newest generation in this tab."""
        session = ctx.session(session)
        find_record(session, None)  # says "generate first" when there is nothing to inspect
        return gr.update(selected=page.id), "a generation", latest(session)

    for event in generate.done:
        event.then(latest, [state], [tab.record_picker], **private).then(fit_end, fit_in, fit_out, **private)
    (generate.inspect_attention.click(inspect, [state], [tabs, tab.source, tab.record_picker], **private)
     .success(fit_end, fit_in, fit_out, **private)
     .success(attention, tab.inputs(state), [tab.plot, tab.table, tab.note, state], **private))
    page.select(fit_keep, fit_in, fit_out, **private)
    for event in model_events:
        event.then(fit_keep, fit_in, fit_out, **private)
