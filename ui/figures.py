"""Pure figure builders for the playground's tabs: plain records (numpy arrays, display strings) in,
``plotly.graph_objects.Figure`` (or a ``gr.HighlightedText`` value) out. No model, no Gradio, no state.

Shared conventions:

- transparent backgrounds with a mid-grey font and grid, so one figure reads on light and dark pages;
- token axes are categorical with one category per position (``"3:␣the"``): plotly merges equal category
  names, so the position keeps repeated tokens apart, and hovers read the token from the axis;
- layers are numbered from 0 everywhere, as in ``AttentionMaps.layers`` (logit lens: ``"L3"`` is the
  residual stream after layer 3), so one layer has one name across tabs;
- no tokens gives an empty figure that says so (an empty text box is a normal state of the page);
  inconsistent shapes are the caller's bug and raise ``ValueError``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

_CLEAR = "rgba(0,0,0,0)"
_GREY = "#8c8c8c"  # mid grey: over 3:1 contrast both on white and on a near-black dark theme
_GRID = "rgba(140,140,140,0.3)"
_HEAT = "Viridis"  # perceptually even, and neither end is white or black, so both show on either theme
_GRID_COLS = 4  # small multiples per row in the attention grid
_SMALL_TICKS_MAX = 16  # tokens above which the grid's small multiples drop tick labels (they would overlap)
_CELL_TEXT_MAX = 400  # logit-lens cells above which in-cell labels overlap: hover only
_CELL_TEXT_COLS = 8  # logit-lens layer columns above which in-cell labels overlap on a phone: hover only
_ROW_PX, _ROW_FONT = 18, 11  # one row per token (surprisal, logit lens): labels horizontal and readable
_ROWS_MAX_PX = 2400  # past this height plotly labels every other token (or fewer)
_CHROME_PX, _AXIS_PX = 130, 55  # about: title and margins; an x axis's ticks and title below the plot
_ATTN_HOVER = "%{y} → %{x}: %{z:.3f}<extra></extra>"  # query → key: weight
_TOKEN_PX, _TOKEN_FONT = 14, 11  # attention rows: plotly labels every category row of round(1.2 × font) px
_EVERY_TOKEN = 96  # attention figures grow to label every row up to this many; past it plotly thins them
_ATTN_CHROME_PX = 280  # an attention figure's title, rotated key labels, axis titles and colour bar below
GLTR_COLORS = {  # GLTR's palette (gltr.io), for gr.HighlightedText(color_map=GLTR_COLORS)
    "top-10": "#ADFF80",
    "top-100": "#FFEA80",
    "top-1000": "#FF9280",
    "beyond": "#E5B0FF",
}
_GLTR_LIMITS = ((10, "top-10"), (100, "top-100"), (1000, "top-1000"))


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    """Give ``fig`` the theme-neutral look every figure shares."""
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left"),
        height=height,
        paper_bgcolor=_CLEAR,
        plot_bgcolor=_CLEAR,
        font=dict(color=_GREY),
        margin=dict(l=10, r=10, t=60 if title else 20, b=10),
    )
    for update in (fig.update_xaxes, fig.update_yaxes):
        update(gridcolor=_GRID, zerolinecolor=_GRID, linecolor=_GRID, automargin=True)
    return fig


def _message(title: str, text: str) -> go.Figure:
    """An empty figure that says why it is empty."""
    fig = go.Figure()
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=14))
    _layout(fig, title, 250)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _escape(text: str) -> str:
    """Plotly renders labels as HTML-like markup; escape them so a token such as ``<b>`` shows as text."""
    return html.escape(text, quote=False)


def _token_names(labels: Sequence[str], first: int = 0) -> list[str]:
    """One axis category per position, unique even where tokens repeat: ``"3:␣the"``; ``first`` is the
    position of ``labels[0]`` in the whole text."""
    return [f"{first + i}:{_escape(label)}" for i, label in enumerate(labels)]


def _token_axis() -> dict:
    """Axis settings for token categories at a readable size. Plotly thins category ticks that would
    overlap, so the attention figures grow with their rows (``_attention_height``) rather than shrink
    the font."""
    return dict(type="category", tickfont=dict(size=_TOKEN_FONT))


def _attention_height(rows: int) -> int:
    """A height that labels every one of ``rows`` rows up to ``_EVERY_TOKEN`` (a few rows: at least a
    square-ish plot on a phone)."""
    return _ATTN_CHROME_PX + _TOKEN_PX * int(np.clip(rows, 20, _EVERY_TOKEN))


def _height(rows: int, per_row: int, low: int, high: int) -> int:
    """A figure height that grows with its rows, within [low, high] pixels."""
    return int(np.clip(120 + rows * per_row, low, high))


def _check_patterns(patterns: np.ndarray, labels: Sequence[str], dims: tuple[str, ...]) -> np.ndarray:
    """``patterns`` as an array of shape ``dims`` whose last two axes are (query, key) over ``labels``."""
    patterns = np.asarray(patterns)
    n = len(labels)
    if patterns.ndim != len(dims) or patterns.shape[-2:] != (n, n):
        raise ValueError(f"patterns must have shape ({', '.join(dims)}) with T = len(labels) = {n}; "
                         f"got {patterns.shape}")
    return patterns


def _series(values: Sequence[float] | np.ndarray, n: int, name: str) -> np.ndarray:
    """``values`` as a 1-D float array of length ``n``."""
    values = np.asarray(values, dtype=float)
    if values.shape != (n,):
        raise ValueError(f"{name} must have {n} values (one per label or step); got shape {values.shape}")
    return values


def _attention_colors(fig: go.Figure, weights: np.ndarray, zmax: float | None) -> go.Figure:
    """One colour axis for every attention trace, from 0 to ``zmax``: 1 compares any two figures by colour;
    None fits ``weights``. A query shares its weight among its keys, so most weights are far below 1 (on
    0..1 most maps look uniform) while the first queries, with a key or two, hold weights near 1: fitted,
    the colours span all but the largest 1% of the non-zero weights, which take the top colour. Heads in
    one figure always share it. The colour bar lies under the plot: beside it, it narrowed the plot on a
    phone. Call after ``_layout`` (it sets the bottom margin)."""
    positive = np.asarray(weights)[np.asarray(weights) > 0]  # zeros: keys after the query (causal mask)
    top = zmax if zmax is not None else max(float(np.quantile(positive, 0.99)) if positive.size else 1.0, 1e-6)
    title = "weight" if zmax is not None else f"weight (fitted: 0 to {top:.2g}+)"
    bar = dict(title=dict(text=title, side="bottom"), orientation="h", thickness=12, len=0.6, x=0.5,
               xanchor="center", yref="container", y=0, yanchor="bottom")
    fig.update_layout(coloraxis=dict(colorscale=_HEAT, cmin=0, cmax=top, colorbar=bar), margin_b=70)
    return fig


def attention_heatmap(pattern: np.ndarray, labels: list[str], title: str = "", zmax: float | None = 1.0,
                      first: int = 0) -> go.Figure:
    """One head's (T, T) attention: rows are queries (attending tokens) top to bottom, columns keys;
    colours from 0 to ``zmax`` (None: fitted to the pattern); ``labels[0]`` is at position ``first``."""
    pattern = _check_patterns(pattern, labels, ("T", "T"))
    if not labels:
        return _message(title, "No tokens to show.")
    names = _token_names(labels, first)
    fig = go.Figure(go.Heatmap(z=pattern, x=names, y=names, coloraxis="coloraxis", hovertemplate=_ATTN_HOVER))
    fig.update_xaxes(title="key (attended-to token)", **_token_axis())
    fig.update_yaxes(title="query (attending token)", autorange="reversed", **_token_axis())
    return _attention_colors(_layout(fig, title, _attention_height(len(names))), pattern, zmax)


def attention_grid(patterns: np.ndarray, labels: list[str], layer: int, zmax: float | None = 1.0,
                   first: int = 0, cols: int = _GRID_COLS, panel_px: int = 260) -> go.Figure:
    """Every head of one layer ((n_head, T, T)) as small multiples on one shared colour scale, from 0 to
    ``zmax`` (None: fitted to the weights of every head); ``labels[0]`` is at position ``first``; ``cols``
    panels a row, ``panel_px`` tall (a phone: 2 square ones)."""
    patterns = _check_patterns(patterns, labels, ("n_head", "T", "T"))
    title = f"Layer {layer}: attention of every head"
    if patterns.size == 0:
        return _message(title, "No tokens to show.")
    n_head = len(patterns)
    cols = min(cols, n_head)
    rows = math.ceil(n_head / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"head {h}" for h in range(n_head)],
                        horizontal_spacing=0.04, vertical_spacing=0.3 / rows)
    names = _token_names(labels, first)
    for h, pattern in enumerate(patterns):
        fig.add_trace(go.Heatmap(z=pattern, x=names, y=names, coloraxis="coloraxis",
                                 hovertemplate=f"head {h}<br>{_ATTN_HOVER}"),
                      row=h // cols + 1, col=h % cols + 1)
    axis = dict(_token_axis(), showticklabels=len(names) <= _SMALL_TICKS_MAX)
    fig.update_xaxes(**axis)
    fig.update_yaxes(autorange="reversed", **axis)
    for col in range(2, cols + 1):  # the query labels once a row: between panels they overlap the keys
        fig.update_yaxes(showticklabels=False, col=col)
    return _attention_colors(_layout(fig, title, 140 + panel_px * rows), patterns, zmax)


def token_focus(patterns: np.ndarray, labels: list[str], query: int, zmax: float | None = 1.0,
                first: int = 0) -> go.Figure:
    """What token ``query`` attends to in every layer and head: one row per (layer, head), one column per
    key position 0..query, colours from 0 to ``zmax`` (None: fitted). ``patterns`` is (n_layer, n_head, T, T);
    ``labels[0]`` is at position ``first``."""
    patterns = _check_patterns(patterns, labels, ("n_layer", "n_head", "T", "T"))
    if patterns.size == 0:
        return _message("Token focus", "No tokens to show.")
    if not 0 <= query < len(labels):
        raise ValueError(f"query must be a token position in [0, {len(labels) - 1}]; got {query}")
    n_layer, n_head = patterns.shape[:2]
    z = patterns[:, :, query, : query + 1].reshape(n_layer * n_head, query + 1)
    rows = [f"L{layer} H{head}" for layer in range(n_layer) for head in range(n_head)]
    keys = _token_names(labels[: query + 1], first)
    fig = go.Figure(go.Heatmap(z=z, x=keys, y=rows, coloraxis="coloraxis",
                               hovertemplate="%{y} → %{x}: %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title="key (attended-to token)", **_token_axis())
    fig.update_yaxes(title="layer, head", autorange="reversed", **_token_axis())
    title = f"What {keys[-1]} attends to, in every layer and head"
    return _attention_colors(_layout(fig, title, _attention_height(len(rows))), z, zmax)


def _candidate_name(rank: int, label: str, chosen: bool) -> str:
    """A candidate's axis label: its rank keeps equal labels apart; the sampled one is bold with a ▶."""
    name = f"{rank}. {_escape(label)}"
    return f"<b>▶ {name}</b>" if chosen else name


def _below_plot(height: int, axis_px: int = _AXIS_PX) -> float:
    """The paper ``y`` ``axis_px`` pixels under the plot area (past an x axis's ticks and title) of a figure
    ``height`` pixels tall: its legend or colour bar goes there, never beside the plot, which it narrowed
    on a phone."""
    plot_px = max(height - _CHROME_PX, 100)
    return -axis_px / plot_px


def _legend_below(fig: go.Figure, height: int) -> None:
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=_below_plot(height), yanchor="top"))


def _token_rows() -> dict:
    """Y-axis settings for one row per token, first on top, labels horizontal and readable (plotly
    thins them only past the height cap)."""
    return dict(type="category", autorange="reversed", tickfont=dict(size=_ROW_FONT))


def candidates_bar(labels: list[str], stage_probs: dict[str, np.ndarray], chosen: int | None,
                   kept: dict[str, int] | None = None, off: Sequence[str] = ()) -> go.Figure:
    """Top candidates' probabilities after each sampler stage (one bar per stage, in order), most likely
    on top; ``chosen`` is the index of the sampled candidate (None when it is not among them). ``kept``:
    how many tokens of the whole vocabulary each stage leaves (in the legend). Stages in ``off`` change
    nothing: they stay in the legend, marked "off", without bars (a click on one shows it)."""
    title = "Next-token candidates<br>after each sampler stage"
    if not labels:
        return _message(title, "No candidates to show.")
    if not stage_probs:
        raise ValueError("stage_probs must have at least one stage")
    if chosen is not None and not 0 <= chosen < len(labels):
        raise ValueError(f"chosen must be None or a candidate index in [0, {len(labels) - 1}]; got {chosen}")
    names = [_candidate_name(i + 1, label, i == chosen) for i, label in enumerate(labels)]
    fig = go.Figure()
    for stage, probs in stage_probs.items():
        shown = stage not in off
        name = f"{stage} (off)" if not shown else f"{stage} · {kept[stage]:,} kept" if kept else stage
        fig.add_trace(go.Bar(x=_series(probs, len(labels), f"stage_probs[{stage!r}]"), y=names, name=name,
                             orientation="h", hovertemplate="%{y}: %{x:.2%}", visible=True if shown else "legendonly"))
    fig.update_layout(barmode="group")
    # A fixed 0..1 range so that a stage sharpening or flattening the distribution is visible as such.
    fig.update_xaxes(title="probability", range=[0, 1], tickformat=".0%")
    # Categories run upward; reversed, the first (most likely) candidate and the first stage are on top.
    fig.update_yaxes(type="category", autorange="reversed", tickfont=dict(size=_ROW_FONT))
    bars = sum(stage not in off for stage in stage_probs)
    height = _height(len(labels), 12 * max(bars, 1) + 8, 300, 1200)
    _legend_below(fig, height)
    return _layout(fig, title, height)


def surprisal_chart(labels: list[str], surprisal: np.ndarray, entropy: np.ndarray) -> go.Figure:
    """Per-token surprisal (−ln p, bars) and the entropy of the prediction each token met (dots), both in
    nats: one row per token, read top-down like the text, so every label is horizontal at any width."""
    surprisal = _series(surprisal, len(labels), "surprisal")
    entropy = _series(entropy, len(labels), "entropy")
    title = "Surprisal and entropy per token"
    if not labels:
        return _message(title, "No tokens to show.")
    names = _token_names(labels)
    fig = go.Figure([
        go.Bar(x=surprisal, y=names, name="surprisal −ln p", orientation="h",
               hovertemplate="%{y}<br>surprisal %{x:.2f} nats<extra></extra>"),
        go.Scatter(x=entropy, y=names, name="entropy", mode="lines+markers", line=dict(dash="dot"),
                   hovertemplate="%{y}<br>entropy %{x:.2f} nats<extra></extra>"),
    ])
    fig.update_xaxes(title="nats", rangemode="tozero")
    fig.update_yaxes(**_token_rows())
    height = _height(len(names), _ROW_PX, 300, _ROWS_MAX_PX)
    _legend_below(fig, height)
    return _layout(fig, title, height)


def _gltr_bucket(rank: int) -> str:
    """GLTR's bucket for a 1-based rank."""
    return next((name for limit, name in _GLTR_LIMITS if rank <= limit), "beyond")


def gltr_highlights(labels: list[str], ranks: np.ndarray) -> list[tuple[str, str | None]]:
    """Each token's text with its GLTR bucket (rank ≤ 10, ≤ 100, ≤ 1000, beyond), as
    ``gr.HighlightedText`` values; ``labels`` are the decoded texts, ``ranks`` 1-based."""
    ranks = _series(ranks, len(labels), "ranks")
    if (ranks < 1).any():
        raise ValueError(f"ranks are 1-based (1 = the most likely token); got {ranks.min():g}")
    return [(text, _gltr_bucket(int(rank))) for text, rank in zip(labels, ranks, strict=True)]


def _luminance(rgb: str) -> float:
    """WCAG relative luminance of a plotly ``"rgb(r, g, b)"`` colour."""
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
              for c in (v / 255 for v in pcolors.unlabel_rgb(rgb))]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _text_colors(values: np.ndarray, colorscale: str) -> list[str]:
    """For each value's cell on ``colorscale``: near-black or white text, whichever contrasts more with it
    (black wins above luminance 0.179), so labels read on Viridis' yellow and purple ends alike."""
    cells = pcolors.sample_colorscale(colorscale, np.clip(values, 0, 1).ravel().tolist())
    return ["#111111" if _luminance(c) > 0.179 else "#ffffff" for c in cells]


def logit_lens_heatmap(input_labels: list[str], top_labels: list[list[str]], top_probs: np.ndarray,
                       first: int = 0) -> go.Figure:
    """Most likely next token at each position (rows, top-down like the text) read out after each layer
    (columns: "embed" on the left, the last layer, nearest the output, on the right); colour = its
    probability. ``first`` is the position of the first input token in the whole text, so positions
    match the other views when the lens covers only the text's end."""
    top_probs = np.asarray(top_probs)
    n = len(input_labels)
    if top_probs.ndim != 2 or top_probs.shape[1] != n or [len(row) for row in top_labels] != [n] * len(top_probs):
        raise ValueError(f"top_probs must be (n_layer + 1, T) and top_labels as many rows of T labels, with "
                         f"T = len(input_labels) = {n}; got {top_probs.shape} and {len(top_labels)} rows")
    title = "Logit lens: top next token<br>after each layer"
    if top_probs.size == 0:
        return _message(title, "No tokens to show.")
    layers = ["embed", *(f"L{layer}" for layer in range(len(top_probs) - 1))]
    positions = _token_names(input_labels, first)
    z = top_probs.T  # (T, layers)
    text = [[_escape(top_labels[layer][i]) for layer in range(len(layers))] for i in range(n)]
    height = _height(n, _ROW_PX, 300, _ROWS_MAX_PX)
    fig = go.Figure(go.Heatmap(
        z=z, x=layers, y=positions, text=text, colorscale=_HEAT, zmin=0, zmax=1,
        colorbar=dict(title="p(top)", orientation="h", thickness=12, x=0, xanchor="left",
                      y=_below_plot(height, axis_px=10), yanchor="top"),
        hovertemplate="%{y}, after %{x}<br>predicts %{text} (p = %{z:.2f})<extra></extra>",
    ))
    if z.size <= _CELL_TEXT_MAX and len(layers) <= _CELL_TEXT_COLS:
        # In-cell labels as a text layer: plotly gives a heatmap's text one colour for every cell.
        fig.add_trace(go.Scatter(
            x=[layer for _ in positions for layer in layers], y=[p for p in positions for _ in layers],
            text=[label for row in text for label in row], mode="text", hoverinfo="skip", showlegend=False,
            textfont=dict(size=10, color=_text_colors(z, _HEAT)),
        ))
    fig.update_xaxes(type="category", side="top")  # layer names under the title, not 1,000 px down
    fig.update_yaxes(title="input token (predicting the next one)", **_token_rows())
    return _layout(fig, title, height)


def loss_curve(steps: list[int], train_loss: list[float], val_steps: list[int], val_loss: list[float],
               val_accuracy: list[float] | None = None) -> go.Figure:
    """Training loss as a line and validation loss as markers on a line, in nats per token, over steps (the
    validation perplexity, ``exp`` of its loss, in the hover); ``val_accuracy`` (top-1 next-token, one per
    validation step) on a right-hand 0-100% axis."""
    train_loss = _series(train_loss, len(steps), "train_loss")
    val_loss = _series(val_loss, len(val_steps), "val_loss")
    title = "Loss"
    if not len(steps) and not len(val_steps):
        return _message(title, "No training steps yet.")
    fig = go.Figure()
    if len(steps):
        fig.add_trace(go.Scatter(x=list(steps), y=train_loss, name="train", mode="lines",
                                 hovertemplate="step %{x}: %{y:.3f}"))
    if len(val_steps):
        with np.errstate(over="ignore"):  # a huge loss is an infinite perplexity
            perplexity = np.exp(val_loss)
        fig.add_trace(go.Scatter(x=list(val_steps), y=val_loss, name="validation", mode="lines+markers",
                                 customdata=perplexity, hovertemplate="step %{x}: %{y:.3f}<br>perplexity "
                                 "%{customdata:.2f}"))
    if val_accuracy is not None and len(val_steps):
        fig.add_trace(go.Scatter(x=list(val_steps), y=_series(val_accuracy, len(val_steps), "val_accuracy"),
                                 name="validation accuracy", mode="lines+markers", yaxis="y2",
                                 line=dict(dash="dot"), hovertemplate="step %{x}: %{y:.1%}"))
        fig.update_layout(yaxis2=dict(title="accuracy", overlaying="y", side="right", range=[0, 1],
                                      tickformat=".0%", showgrid=False))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="loss (nats/token)", selector=dict(overlaying=None))
    _legend_below(fig, 400)
    return _layout(fig, title, 400)
