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
import plotly.graph_objects as go
from plotly.subplots import make_subplots

_CLEAR = "rgba(0,0,0,0)"
_GREY = "#8c8c8c"  # mid grey: over 3:1 contrast both on white and on a near-black dark theme
_GRID = "rgba(140,140,140,0.3)"
_HEAT = "Viridis"  # perceptually even, and neither end is white or black, so both show on either theme
_GRID_COLS = 4  # small multiples per row in the attention grid
_SMALL_TICKS_MAX = 16  # tokens above which the grid's small multiples drop tick labels (they would overlap)
_CELL_TEXT_MAX = 400  # logit-lens cells above which in-cell labels overlap: hover only
_ATTN_HOVER = "%{y} → %{x}: %{z:.3f}<extra></extra>"  # query → key: weight
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


def _token_names(labels: Sequence[str]) -> list[str]:
    """One axis category per position, unique even where tokens repeat: ``"3:␣the"``."""
    return [f"{i}:{_escape(label)}" for i, label in enumerate(labels)]


def _token_axis(n: int) -> dict:
    """Axis settings for ``n`` token categories; a smaller font on long texts lets plotly fit more ticks
    (it thins category ticks by itself so that they never overlap)."""
    size = 12 if n <= 24 else 10 if n <= 64 else 8
    return dict(type="category", tickfont=dict(size=size))


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


def _attention_colors(fig: go.Figure) -> None:
    """One colour axis for every attention trace: fixed 0..1, so heads and layers compare by colour."""
    fig.update_layout(coloraxis=dict(colorscale=_HEAT, cmin=0, cmax=1, colorbar=dict(title="weight")))


def attention_heatmap(pattern: np.ndarray, labels: list[str], title: str = "") -> go.Figure:
    """One head's (T, T) attention: rows are queries (attending tokens) top to bottom, columns keys."""
    pattern = _check_patterns(pattern, labels, ("T", "T"))
    if not labels:
        return _message(title, "No tokens to show.")
    names = _token_names(labels)
    fig = go.Figure(go.Heatmap(z=pattern, x=names, y=names, coloraxis="coloraxis", hovertemplate=_ATTN_HOVER))
    _attention_colors(fig)
    fig.update_xaxes(title="key (attended-to token)", **_token_axis(len(names)))
    fig.update_yaxes(title="query (attending token)", autorange="reversed", **_token_axis(len(names)))
    return _layout(fig, title, _height(len(names), 14, 400, 900))


def attention_grid(patterns: np.ndarray, labels: list[str], layer: int) -> go.Figure:
    """Every head of one layer ((n_head, T, T)) as small multiples on one shared 0..1 colour scale."""
    patterns = _check_patterns(patterns, labels, ("n_head", "T", "T"))
    title = f"Layer {layer}: attention of every head"
    if patterns.size == 0:
        return _message(title, "No tokens to show.")
    n_head = len(patterns)
    cols = min(_GRID_COLS, n_head)
    rows = math.ceil(n_head / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"head {h}" for h in range(n_head)],
                        horizontal_spacing=0.04, vertical_spacing=0.3 / rows)
    names = _token_names(labels)
    for h, pattern in enumerate(patterns):
        fig.add_trace(go.Heatmap(z=pattern, x=names, y=names, coloraxis="coloraxis",
                                 hovertemplate=f"head {h}<br>{_ATTN_HOVER}"),
                      row=h // cols + 1, col=h % cols + 1)
    _attention_colors(fig)
    axis = dict(_token_axis(len(names)), showticklabels=len(names) <= _SMALL_TICKS_MAX)
    fig.update_xaxes(**axis)
    fig.update_yaxes(autorange="reversed", **axis)
    return _layout(fig, title, 80 + 260 * rows)


def token_focus(patterns: np.ndarray, labels: list[str], query: int) -> go.Figure:
    """What token ``query`` attends to in every layer and head: one row per (layer, head), one column per
    key position 0..query. ``patterns`` has shape (n_layer, n_head, T, T)."""
    patterns = _check_patterns(patterns, labels, ("n_layer", "n_head", "T", "T"))
    if patterns.size == 0:
        return _message("Token focus", "No tokens to show.")
    if not 0 <= query < len(labels):
        raise ValueError(f"query must be a token position in [0, {len(labels) - 1}]; got {query}")
    n_layer, n_head = patterns.shape[:2]
    z = patterns[:, :, query, : query + 1].reshape(n_layer * n_head, query + 1)
    rows = [f"L{layer} H{head}" for layer in range(n_layer) for head in range(n_head)]
    keys = _token_names(labels[: query + 1])
    fig = go.Figure(go.Heatmap(z=z, x=keys, y=rows, coloraxis="coloraxis",
                               hovertemplate="%{y} → %{x}: %{z:.3f}<extra></extra>"))
    _attention_colors(fig)
    fig.update_xaxes(title="key (attended-to token)", **_token_axis(len(keys)))
    fig.update_yaxes(title="layer, head", autorange="reversed", **_token_axis(len(rows)))
    title = f"What {query}:{_escape(labels[query])} attends to, in every layer and head"
    return _layout(fig, title, _height(len(rows), 12, 300, 1600))


def _candidate_name(rank: int, label: str, chosen: bool) -> str:
    """A candidate's axis label: its rank keeps equal labels apart; the sampled one is bold with a ▶."""
    name = f"{rank}. {_escape(label)}"
    return f"<b>▶ {name}</b>" if chosen else name


def candidates_bar(labels: list[str], stage_probs: dict[str, np.ndarray], chosen: int | None) -> go.Figure:
    """Top candidates' probabilities after each sampler stage (one bar per stage), most likely on top;
    ``chosen`` is the index of the sampled candidate (None when it is not among them)."""
    title = "Next-token candidates through the sampler stages"
    if not labels:
        return _message(title, "No candidates to show.")
    if not stage_probs:
        raise ValueError("stage_probs must have at least one stage")
    if chosen is not None and not 0 <= chosen < len(labels):
        raise ValueError(f"chosen must be None or a candidate index in [0, {len(labels) - 1}]; got {chosen}")
    names = [_candidate_name(i + 1, label, i == chosen) for i, label in enumerate(labels)]
    fig = go.Figure()
    for stage, probs in stage_probs.items():
        fig.add_trace(go.Bar(x=_series(probs, len(labels), f"stage_probs[{stage!r}]"), y=names, name=stage,
                             orientation="h", hovertemplate="%{y}: %{x:.2%}"))
    fig.update_layout(barmode="group", legend=dict(title="stage"))
    # A fixed 0..1 range so that a stage sharpening or flattening the distribution is visible as such.
    fig.update_xaxes(title="probability", range=[0, 1], tickformat=".0%")
    # Categories run upward; reversed, the first (most likely) candidate and the first stage are on top.
    fig.update_yaxes(type="category", autorange="reversed")
    return _layout(fig, title, _height(len(labels), 12 * len(stage_probs) + 8, 300, 1200))


def surprisal_chart(labels: list[str], surprisal: np.ndarray, entropy: np.ndarray) -> go.Figure:
    """Per-token surprisal (−ln p) and the entropy of the prediction each token met, both in nats."""
    surprisal = _series(surprisal, len(labels), "surprisal")
    entropy = _series(entropy, len(labels), "entropy")
    title = "Surprisal and entropy per token"
    if not labels:
        return _message(title, "No tokens to show.")
    names = _token_names(labels)
    fig = go.Figure([
        go.Scatter(x=names, y=surprisal, name="surprisal −ln p", mode="lines+markers",
                   hovertemplate="%{x}<br>surprisal %{y:.2f} nats<extra></extra>"),
        go.Scatter(x=names, y=entropy, name="entropy", mode="lines", line=dict(dash="dot"),
                   hovertemplate="%{x}<br>entropy %{y:.2f} nats<extra></extra>"),
    ])
    fig.update_xaxes(title="token", **_token_axis(len(names)))
    fig.update_yaxes(title="nats (surprisal −ln p, entropy)", rangemode="tozero")
    return _layout(fig, title, 400)


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


def logit_lens_heatmap(input_labels: list[str], top_labels: list[list[str]], top_probs: np.ndarray) -> go.Figure:
    """Most likely next token at each position (columns) read out after each layer (rows: "embed" at
    the bottom, the last layer, nearest the output, on top); colour = its probability."""
    top_probs = np.asarray(top_probs)
    n = len(input_labels)
    if top_probs.ndim != 2 or top_probs.shape[1] != n or [len(row) for row in top_labels] != [n] * len(top_probs):
        raise ValueError(f"top_probs must be (n_layer + 1, T) and top_labels as many rows of T labels, with "
                         f"T = len(input_labels) = {n}; got {top_probs.shape} and {len(top_labels)} rows")
    title = "Logit lens: the most likely next token after each layer"
    if top_probs.size == 0:
        return _message(title, "No tokens to show.")
    rows = ["embed", *(f"L{layer}" for layer in range(len(top_probs) - 1))]
    text = [[_escape(label) for label in row] for row in top_labels]
    fig = go.Figure(go.Heatmap(
        z=top_probs, x=_token_names(input_labels), y=rows, text=text, colorscale=_HEAT, zmin=0, zmax=1,
        colorbar=dict(title="p(top)"), textfont=dict(size=10),
        texttemplate="%{text}" if top_probs.size <= _CELL_TEXT_MAX else None,
        hovertemplate="after %{y}, at %{x}<br>predicts %{text} (p = %{z:.2f})<extra></extra>",
    ))
    fig.update_xaxes(title="input token (predicting the next one)", **_token_axis(n))
    fig.update_yaxes(title="layer", type="category")
    return _layout(fig, title, _height(len(rows), 28, 300, 1400))


def loss_curve(steps: list[int], train_loss: list[float], val_steps: list[int], val_loss: list[float]) -> go.Figure:
    """Training loss as a line and validation loss as markers on a line, in nats per token, over steps."""
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
        fig.add_trace(go.Scatter(x=list(val_steps), y=val_loss, name="validation", mode="lines+markers",
                                 hovertemplate="step %{x}: %{y:.3f}"))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="loss (nats/token)")
    return _layout(fig, title, 400)
