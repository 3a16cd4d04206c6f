"""The Attention tab: where each token looks, for a text or a kept generation.

Only what is drawn is computed: one layer's patterns for the heatmap and the grid, one query row of
every layer for the token focus, the per-head summary on a bounded prefix. They are computed from the
session's kept queries and keys of the text (``ui.redraw``): the first drawing of a text runs the model
once, and moving a slider or the view after it does not run it again. Each page event also refits the
sliders to what it drew: the query slider shows the token outlined, layer and head rest in the token
focus (it shows them all).
"""

from __future__ import annotations

import html
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

import gpt2
from gpt2.inspection import HeadScores, repeated_probe

from .. import figures, inputs
from ..context import AppContext
from ..gpu import ModelRef
from ..inputs import LATEST, UserError
from ..redraw import Views, all_head_scores
from ..session import Session
from ..updates import KEEP, Update, update
from . import records

SOURCES = ("text", "a generation")
VIEWS = ("one head", "all heads of the layer", "token focus")
FOCUS = VIEWS[2]
# Fitted by default: a query's weights sum to 1 over all its keys, so past a few tokens most weights are
# far below 1 and a fixed 0..1 scale paints most maps one colour. Fitted, the colours span the weights
# drawn (the largest 1% share the top colour, see ``ui.figures``), and the colour bar says to what.
SCALES = ("fitted to the data", "0 to 1")
FITTED = SCALES[0]
EXAMPLE = "The cat sat on the mat. The cat sat on the mat."
HEATMAP_TOKENS = 256  # one head: at most 256² cells go to the browser
GRID_TOKENS = 64  # all heads: n_head × 64² cells (12 heads × 1024² would freeze the page)
FOCUS_CELLS = 150_000  # token focus: (layers × heads) rows × keys; the oldest keys go first
TABLE_TOKENS = 256  # the head summary needs every layer's full (T, T) patterns: a bounded prefix
REPEAT_LENGTH = 50  # random tokens in the induction probe (then repeated once)
TABLE_COLUMNS = ["layer", "head", "entropy", "previous-token", "induction"]
_HIGHLIGHT = "#ff2d55"  # outline of the query row: shows on Viridis and on light and dark pages
NARROW_PX, SQUARE_PX = 700, 160  # a page this narrow stacks the plot under the controls: height ≈ width + SQUARE_PX


@dataclass(frozen=True)
class Limits:
    """What the sliders can reach for a source: the model's shape and the token positions."""

    n_layer: int
    n_head: int
    n_prompt: int  # positions before the first generated token (a text: all of its tokens)
    n_steps: int = 0  # generated tokens (0 for a text)

    def end(self, step: int) -> int:
        """Positions shown when replaying up to ``step`` (a text: all of them)."""
        return self.n_prompt + (min(max(step, 0), self.n_steps - 1) + 1 if self.n_steps else 0)


@dataclass
class Shown:
    """The tokens the views read, and the model that reads them."""

    ref: ModelRef
    limits: Limits
    ids: list[int]  # the tokens drawn: a text, or a generation up to the replayed step (≤ the context)
    offset: int = 0  # position of ids[0] in the whole sequence (a generation longer than the context)
    table_ids: list[int] = field(default_factory=list)  # tokens the head summary reads
    # tokens whose queries and keys the session keeps for redraws (empty: ``ids``): a generation's longest
    # window from its first token, so that replaying any step inside the context reads a prefix of it
    kept_ids: list[int] = field(default_factory=list)
    step: int | None = None  # the generation step replayed; None for a text
    record_id: int | None = None
    notes: list[str] = field(default_factory=list)


def text_source(ctx: AppContext, session: Session, text: str | None) -> Shown:
    """A typed text, cleaned and cropped like a prompt, read by the session's current model."""
    ref, config = ctx.ref(session), ctx.config(ctx.ref(session))
    ids, notice = inputs.prompt_ids(text, ctx.caps.max_prompt_chars, config.block_size)
    if not ids:
        raise UserError("text is empty: type a text to inspect (or press “use repeated random tokens”).")
    notes = [notice] if notice else []
    return Shown(ref, Limits(config.n_layer, config.n_head, len(ids)), ids, table_ids=ids[:TABLE_TOKENS], notes=notes)


def generation_source(ctx: AppContext, session: Session, record, step) -> Shown:
    """A kept generation replayed up to ``step`` (None: the last): the prompt and the tokens 0..step."""
    rec = records.find(session, record)
    ref, note = ctx.record_model(session, rec)
    config = ctx.config(ref)
    n = len(rec.token_ids)
    step = n - 1 if step is None else inputs.index("step", step, n, f"generation #{rec.id} has {n} tokens")
    prompt = inputs.model_input(rec.prompt_ids)  # what the model read first (<|endoftext|> for an empty prompt)
    full = prompt + rec.token_ids
    block, end = config.block_size, len(prompt) + step + 1
    offset = max(0, end - block)
    notes = [note] if note else []
    if offset:  # the model itself slid its window past the context while generating
        notes.append(f"At this step the text is longer than the model's context: showing its last {block} "
                     f"tokens (positions {offset}–{end - 1}).")
    return Shown(ref, Limits(config.n_layer, config.n_head, len(prompt), n), full[offset:end], offset,
                 full[: min(TABLE_TOKENS, block)], [] if offset else full[:block], step, rec.id, notes)


def resolve(ctx: AppContext, session: Session, source, text: str | None, record, step) -> Shown:
    """The tokens and model for the chosen source."""
    if inputs.choice("source", source, SOURCES) == "text":
        return text_source(ctx, session, text)
    return generation_source(ctx, session, record, step)


def limits(ctx: AppContext, session: Session, source, text: str | None, record) -> Limits:
    """What the sliders can reach; nothing to show yet (the drawing says why) still has the model's shape."""
    try:
        return resolve(ctx, session, source, text, record, None).limits
    except UserError:  # nothing to show: no tokens, the session's model
        config = ctx.config(ctx.ref(session))
        return Limits(config.n_layer, config.n_head, 0)


# ---------------------------------------------------------------- computing (only what is drawn)


def views(ctx: AppContext, session: Session, shown: Shown) -> Views:
    """What the drawings of ``shown`` read: the session's kept queries and keys (see ``ui.redraw``)."""
    return Views(ctx, session, shown.ref, shown.kept_ids or shown.ids)


def scores_table(scores: HeadScores) -> pd.DataFrame:
    """Entropy, previous-token and induction score of every head, one row per head."""
    n_layer, n_head = scores.entropy.shape
    layer, head = np.divmod(np.arange(n_layer * n_head), n_head)
    scored = (scores.entropy, scores.previous_token, scores.induction)  # induction: NaN when no token repeats
    return pd.DataFrame(dict(zip(TABLE_COLUMNS, [layer, head, *(s.ravel().round(3) for s in scored)], strict=True)))


def head_table(model: gpt2.GPT2, ids: Sequence[int]) -> pd.DataFrame:
    """``scores_table`` of every head on ``ids`` (a ``ui.gpu`` job, for the Lab's head presets)."""
    return scores_table(all_head_scores(model, ids))


def window(n: int, focus: int, cap: int) -> tuple[int, int]:
    """At most ``cap`` of ``n`` tokens that include ``focus``: the first ``cap`` while the focus is
    among them, else the last ``cap`` up to the focus."""
    end = min(n, max(focus + 1, cap))
    return max(0, end - cap), end


# ---------------------------------------------------------------- drawing


def _highlight_row(fig: go.Figure, row: int, n: int, grid: bool) -> None:
    """Outline one query row (category axes take indices as coordinates)."""
    shape = dict(type="rect", x0=-0.5, x1=n - 0.5, y0=row - 0.5, y1=row + 0.5,
                 line=dict(color=_HIGHLIGHT, width=2), fillcolor="rgba(0,0,0,0)")
    if grid:
        fig.add_shape(**shape, row="all", col="all", exclude_empty_subplots=True)
    else:
        fig.add_shape(**shape)


def focus_index(shown: Shown, query) -> tuple[int, list[str]]:
    """The query token's index in ``shown.ids`` from a position in the whole sequence (None: the last
    token), clamped to the tokens shown, and a note when it was."""
    last = len(shown.ids) - 1
    if query is None or query == "":
        return last, []
    pos = inputs.integer("query", query, 0, allowed="a token position, 0 or more")
    i = pos - shown.offset
    if i > last:
        what = "text" if shown.step is None else f"text at step {shown.step}"
        return last, [f"Query token {pos} is past the end of the {what}: showing the last token "
                      f"({shown.offset + last})."]
    if i < 0:
        return 0, [f"Token {pos} is outside the model's context at this step: showing the first token in it "
                   f"({shown.offset})."]
    return i, []


def draw(read: Views, shown: Shown, layer, head, view, query, scale, width=None) -> tuple[go.Figure, str, int]:
    """The chosen view of ``shown`` (its attention from ``read``), the note under it, and the position of
    the token outlined (or focused). ``width``: the page's, in pixels (None: any)."""
    lim = shown.limits
    view = inputs.choice("view", view, VIEWS)
    zmax = None if inputs.choice("scale", scale, SCALES) == FITTED else 1.0
    layer = inputs.index("layer", layer, lim.n_layer, f"this model has {lim.n_layer} layers")
    head = inputs.index("head", head, lim.n_head, f"this model has {lim.n_head} heads per layer")
    focus, notes = focus_index(shown, query)
    phone = px if (px := _whole(width) or NARROW_PX) < NARROW_PX else None
    if view == FOCUS:
        fig, more = _focus_figure(read, shown, focus, zmax)
    else:
        fig, more = _layer_figure(read, shown, layer, head, focus, zmax, view == VIEWS[1], phone)
    if shown.step is not None:
        fig.update_layout(title_text=f"{fig.layout.title.text} · step {shown.step}")
    if phone and view != VIEWS[1]:  # a square-ish plot (plotly thins the labels), not a tall strip
        fig.update_layout(height=min(fig.layout.height, phone + SQUARE_PX))
    return fig, describe(shown, [*notes, *more]), shown.offset + focus


def _focus_figure(read: Views, shown: Shown, focus: int, zmax: float | None) -> tuple[go.Figure, list[str]]:
    """What token ``focus`` attends to in every layer and head (the oldest keys dropped past a budget)."""
    ids = shown.ids[: focus + 1]
    keys = max(16, FOCUS_CELLS // (shown.limits.n_layer * shown.limits.n_head))
    first = max(0, len(ids) - keys)
    rows = read.focus(ids)[:, :, first:]  # (L, nh, n)
    labels, n = gpt2.token_display(ids[first:]), len(ids) - first
    # token_focus reads only row `query` of (L, nh, T, T) patterns: a zero-copy broadcast of the one
    # row computed stands in for the squares, which would be L × nh × T² floats.
    patterns = np.broadcast_to(rows[:, :, None, :], (*rows.shape[:2], n, n))
    fig = figures.token_focus(patterns, labels, n - 1, zmax, first=shown.offset + first)
    notes = [f"Drawing the last {n} keys up to the query (at most {FOCUS_CELLS:,} cells); attention to "
             "earlier tokens is not shown."] if first else []
    return fig, notes


def _layer_figure(read: Views, shown: Shown, layer: int, head: int, focus: int, zmax: float | None,
                  grid: bool, phone: int | None) -> tuple[go.Figure, list[str]]:
    """One head's heatmap, or every head of the layer (on a ``phone`` of that width: 2 square panels a
    row), over a window of tokens around ``focus``."""
    cap = GRID_TOKENS if grid else HEATMAP_TOKENS
    start, end = window(len(shown.ids), focus, cap)
    patterns = read.layer(shown.ids[:end], layer, start)  # (nh, end - start, end - start)
    labels = gpt2.token_display(shown.ids[start:end])
    if grid:
        shape = dict(cols=2, panel_px=(phone - 60) // 2) if phone else {}
        fig = figures.attention_grid(patterns, labels, layer, zmax, first=shown.offset + start, **shape)
    else:
        fig = figures.attention_heatmap(patterns[head], labels, f"Layer {layer}, head {head}", zmax,
                                        first=shown.offset + start)
    _highlight_row(fig, focus - start, end - start, grid)
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
    """The note under the figure: what is shown, why anything is cut or different, and the table."""
    first, last = shown.offset, shown.offset + len(shown.ids) - 1
    if shown.step is None:
        head = f"**Text**: {len(shown.ids)} tokens (positions {first}–{last})."
    else:
        newest = html.escape(gpt2.token_display([shown.ids[-1]])[0], quote=False)
        head = (f"**Generation #{shown.record_id}**, step {shown.step}: text up to the newest token "
                f"**{last}:{newest}**.")
    table = (f"Head summary over the first {len(shown.table_ids)} tokens (at most {TABLE_TOKENS}: it needs every "
             "layer's full pattern). To sort it, hover a column's name and open its ⋮ menu; click a row to "
             "enlarge that head.")
    return "\n\n".join([head, *(f"> {n}" for n in [*shown.notes, *notes]), table])


# ---------------------------------------------------------------- the sliders


def _whole(value) -> int | None:
    """A slider's value as a whole number (sliders send 3.0), None when it is none."""
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def _slider(low: int, high: int, current, target: int | None = None, active: bool = True) -> Update:
    """A ``low..high`` slider refitted (one choice: frozen). Its value moves only to ``target``, or into the
    range when out of it: a user may be dragging it while the update is in flight."""
    high = max(high, low)
    props = dict(minimum=low, maximum=max(high, low + 1), interactive=active and high > low)
    value = _whole(current)
    if target is not None and target != value:
        props["value"] = target
    elif value is None or not low <= value <= high:
        props["value"] = min(max(low if value is None else value, low), high)
    return update(**props)


def sliders(lim: Limits, view, layer, head, query, step, step_to: int | None = None,
            query_to: int | None = None) -> tuple[Update, Update, Update, Update]:
    """(step, layer, head, query) sliders fitted to ``lim``: the query covers the tokens shown at the step,
    layer and head rest in the token focus. ``step_to`` and ``query_to`` move those values (to what was drawn)."""
    at = step_to if step_to is not None else _whole(step) or 0
    end = lim.end(at)
    idle = view == FOCUS
    return (_slider(0, lim.n_steps - 1, step, step_to),
            _slider(0, lim.n_layer - 1, layer, active=not idle),
            _slider(0, lim.n_head - 1, head, active=not idle),
            _slider(0, end - 1, query, query_to))


def _fitted(ctx: AppContext, session: Session, text, source, record, view, layer, head, query, step) -> tuple:
    try:
        return sliders(limits(ctx, session, source, text, record), view, layer, head, query, step)
    except UserError:  # a model that fails to load: drawing says so
        return KEEP, KEEP, KEEP, KEEP


# ---------------------------------------------------------------- the tab's events


def attention(ctx: AppContext, session: Session, text: str | None, source, record, layer, head, view, query, step,
              scale=FITTED) -> tuple[go.Figure, pd.DataFrame, str]:
    """Attention of one layer and head, every head of a layer, or one token in every layer and head, for
    a text or a kept generation (``record``: its id, or empty or "latest" for the newest; replayed up to
    ``step``), with a per-head summary table. ``query`` is the token outlined or focused (past the end:
    the last); ``scale`` is "fitted to the data" (the default) or "0 to 1". Returns the figure, the table
    and a note."""
    shown = resolve(ctx, session, source, text, record, step)
    read = views(ctx, session, shown)
    fig, note, _ = draw(read, shown, layer, head, view, query, scale)
    return fig, scores_table(read.scores(shown.table_ids)), note


def _page(ctx: AppContext, session: Session, text, source, record, layer, head, view, query, step, scale, width,
          table: bool = True) -> tuple:
    """(plot, [table,] note, step, layer, head, query): the drawing, sized for the page, and the sliders on
    what it drew. Nothing to show (an empty text, no generation) is said by the plot and the note."""
    try:
        shown = resolve(ctx, session, source, text, record, step)
    except UserError as e:
        empty = figures.attention_heatmap(np.zeros((0, 0)), [], "Attention")
        out = (empty, pd.DataFrame(columns=TABLE_COLUMNS), str(e)) if table else (empty, str(e))
        return *out, *_fitted(ctx, session, text, source, record, view, layer, head, query, step)
    read = views(ctx, session, shown)
    fig, note, drawn = draw(read, shown, layer, head, view, query, scale, width)
    controls = sliders(shown.limits, view, layer, head, query, step, shown.step, drawn)
    return *((fig, scores_table(read.scores(shown.table_ids)), note) if table else (fig, note)), *controls


def show(ctx: AppContext, session: Session, text, source, record, layer, head, view, query, step, scale,
         width) -> tuple:
    """The Show button: ``/attention`` for the page (plot, table, note, step, layer, head, query)."""
    return _page(ctx, session, text, source, record, layer, head, view, query, step, scale, width)


def redraw(ctx: AppContext, session: Session, text, source, record, layer, head, view, query, step, scale,
           width) -> tuple:
    """A slider, the view or the colours changed: (plot, note, step, layer, head, query); the table stays."""
    return _page(ctx, session, text, source, record, layer, head, view, query, step, scale, width, table=False)


def replay(ctx: AppContext, session: Session, text, source, record, layer, head, view, step, scale, width) -> tuple:
    """The step moved: as ``redraw``, the query on the step's newest token."""
    return _page(ctx, session, text, source, record, layer, head, view, None, step, scale, width, table=False)


def refresh(ctx: AppContext, session: Session, text, source, record, layer, head, view, scale, width) -> tuple:
    """The text, the source or the generation changed: as ``show``, at the newest token (and last step)."""
    return _page(ctx, session, text, source, record, layer, head, view, None, None, scale, width)


def fit(ctx: AppContext, session: Session, text, source, record, view, layer, head, query, step) -> tuple:
    """The tab opened or the model changed: (picker, step, layer, head, query) refitted; values move only
    when out of range."""
    picker = records.picker(session, record)
    return picker, *_fitted(ctx, session, text, source, picker["value"], view, layer, head, query, step)


def generated(ctx: AppContext, session: Session, text, source, record, layer, head, view, query, step, scale,
              width) -> tuple:
    """A generation ended: (picker, step, layer, head, query, plot, table, note). The list is refreshed;
    while the latest generation is shown, the plot follows it."""
    picker = records.picker(session, record)
    if source != "a generation" or picker["value"] != LATEST:
        return picker, *_fitted(ctx, session, text, source, record, view, layer, head, query, step), KEEP, KEEP, KEEP
    plot, table, note, *controls = _page(ctx, session, text, source, LATEST, layer, head, view, None, None, scale,
                                         width)
    return picker, *controls, plot, table, note


def open_latest(ctx: AppContext, session: Session, layer, head, view, scale, width) -> tuple:
    """Generate's “Inspect attention ›”: (source, picker, step, layer, head, query, plot, table, note) on the
    newest generation at its last step."""
    records.find(session, LATEST)  # says "generate first" when there is nothing to inspect
    plot, table, note, *controls = _page(ctx, session, "", "a generation", LATEST, layer, head, view, None, None,
                                         scale, width)
    return "a generation", records.picker(session, LATEST), *controls, plot, table, note


def repeated(ctx: AppContext, session: Session, seed: int | None = None) -> str:
    """Random tokens the model tells apart (at most half its context) repeated once, as text: induction heads
    attend from the second copy to the token after the first. ``seed`` None: a new probe each time."""
    ref = ctx.ref(session)
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    ids = ctx.gpu.call(repeated_probe, ref, min(REPEAT_LENGTH, ctx.config(ref).block_size // 2), seed)
    return gpt2.get_tokenizer().decode(ids)
