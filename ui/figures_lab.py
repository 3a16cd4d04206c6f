"""The Lab tab's figures, as pure functions of plain records (numpy arrays, token labels) to plotly
figures in the shared look of ``ui.figures``. One block per tool: knock out heads, attribution, patching."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import (
    _ROW_PX,
    _ROWS_MAX_PX,
    _below_plot,
    _escape,
    _height,
    _layout,
    _message,
    _series,
    _token_names,
    _token_rows,
    candidates_bar,
)

# ---------------------------------------------------------------- knock out heads (``ui.logic.ablation``)

_BEFORE, _AFTER, _CHANGE = "#1f77b4", "#d62728", "rgba(140,140,140,0.45)"  # plotly blue, red; grey bars


def ablation_candidates(labels: list[str], before: np.ndarray, after: np.ndarray) -> go.Figure:
    """The next token's top candidates with every head in place (``before``) and with the heads knocked
    out (``after``): one pair of bars per candidate, most likely (before) on top."""
    fig = candidates_bar(labels, {"before": before, "after": after}, None)
    fig.update_layout(title_text="Next-token candidates<br>before and after the knock-out")
    return fig


def ablation_loss(labels: Sequence[str], before: np.ndarray, after: np.ndarray, split: int | None = None) -> go.Figure:
    """Each token's loss (−log p, nats) with every head in place and with the heads knocked out, and the
    change as grey bars. ``split``: where the second copy of a repeated text starts (a dotted line)."""
    title = "Loss of each token: before and after"
    if not len(labels):
        return _message(title, "No tokens to score.")
    n = len(labels)
    before, after = _series(before, n, "before"), _series(after, n, "after")
    x = _token_names(labels)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=after - before, name="change (after − before)", marker_color=_CHANGE,
                         hovertemplate="%{x}<br>change %{y:+.3f} nats<extra></extra>"))
    for name, values, color in (("before", before, _BEFORE), ("after", after, _AFTER)):
        fig.add_trace(go.Scatter(x=x, y=values, name=name, mode="lines+markers", marker=dict(size=4, color=color),
                                 line=dict(color=color, width=1.5),
                                 hovertemplate=f"%{{x}}<br>{name} %{{y:.3f}} nats<extra></extra>"))
    if split is not None and 0 < split < n:
        fig.add_vline(x=split - 0.5, line=dict(color="#8c8c8c", dash="dot"))
        fig.add_annotation(x=split - 0.5, y=1, yref="paper", text="second copy", showarrow=False, xanchor="left",
                           yanchor="bottom")
    fig.update_xaxes(type="category", tickangle=-60, nticks=min(n, 60))
    fig.update_yaxes(title="loss (nats)")
    fig.update_layout(legend=dict(orientation="h", y=-0.35), hovermode="x unified")
    return _layout(fig, _escape(title), 420)

# ---------------------------------------------------------------- end of knock out heads

# ---------------------------------------------------------------- attribution (``ui.logic.attribution``)
# One diverging scale: blue raises the score (towards the target, or the target over the foil), red lowers
# it, near-white is nothing; symmetric about 0, so equal colours are equal sizes.

ATTR_SCALE = pcolors.make_colorscale(pcolors.diverging.RdBu)  # red (lowers) -> near-white (0) -> blue (raises)
ATTR_POSITIVE, ATTR_NEGATIVE = "rgb(33,102,172)", "rgb(178,24,43)"  # the bars: the scale's blue and red ends
ATTR_TARGET = "#f59e0b"  # amber: the explained token's outline, seen on either theme
_ATTR_LAYER_PX = 26  # one heatmap row per layer


def _attr_what(target: str, foil: str | None) -> str:
    """The score's target (and foil) as a title names them."""
    return f"'{_escape(target)}'" + (f" vs '{_escape(foil)}'" if foil is not None else "")


def attribution_bars(labels: Sequence[str], scores: np.ndarray, target: str, foil: str | None = None,
                     method: str = "") -> go.Figure:
    """One bar per input token (rows top-down like the text), its attribution score: blue raises the score
    of ``target`` (over ``foil``), red lowers it. ``method`` is named in the title."""
    scores = _series(scores, len(labels), "scores")
    title = f"Attribution to each token · {_escape(method)}<br>for {_attr_what(target, foil)}"
    if not labels:
        return _message(title, "No tokens to show.")
    names = _token_names(labels)
    fig = go.Figure(go.Bar(x=scores, y=names, orientation="h", marker_color=[
        ATTR_POSITIVE if s >= 0 else ATTR_NEGATIVE for s in scores], hovertemplate="%{y}: %{x:+.4g}<extra></extra>"))
    fig.update_xaxes(title="attribution (score units)", zeroline=True)
    fig.update_yaxes(**_token_rows())
    return _layout(fig, title, _height(len(names), _ROW_PX, 300, _ROWS_MAX_PX))


def logit_attribution(heads: np.ndarray, mlps: np.ndarray, embeddings: float, biases: float, total: float,
                      target: str, foil: str | None = None) -> go.Figure:
    """Direct logit attribution: each head's (``heads`` (n_layer, n_head), a heatmap) and each MLP's
    (``mlps`` (n_layer,), bars on the same layer rows) direct contribution to logit(target) − logit(foil)
    (logit(target) without a foil) at the last position. The title gives the embeddings' and biases' parts,
    the sum of all parts and the ``total`` actually computed (equal, up to rounding: the split is exact)."""
    heads = np.asarray(heads, dtype=float)
    if heads.ndim != 2:
        raise ValueError(f"heads must be (n_layer, n_head); got shape {heads.shape}")
    n_layer, n_head = heads.shape
    mlps = _series(mlps, n_layer, "mlps")
    score = f"logit({_attr_what(target, None)})" + (f" − logit('{_escape(foil)}')" if foil is not None else "")
    parts = heads.sum() + mlps.sum() + embeddings + biases
    title = (f"Direct logit attribution to {score}<br><sup>heads {heads.sum():+.3g} · MLPs {mlps.sum():+.3g} · "
             f"embeddings {embeddings:+.3g} · biases {biases:+.3g} = {parts:.4g} · actual: {total:.4g}</sup>")
    if heads.size == 0:
        return _message(title, "This model has no layers.")
    layers = [f"L{layer}" for layer in range(n_layer)]
    top = float(max(np.abs(heads).max(), np.abs(mlps).max(), 1e-9))
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.72, 0.28], horizontal_spacing=0.04)
    fig.add_trace(go.Heatmap(z=heads, x=[f"H{h}" for h in range(n_head)], y=layers, coloraxis="coloraxis",
                             hovertemplate="layer %{y}, head %{x}: %{z:+.4g}<extra></extra>", xgap=1, ygap=1),
                  row=1, col=1)
    fig.add_trace(go.Bar(x=mlps, y=layers, orientation="h", marker=dict(color=mlps, coloraxis="coloraxis"),
                         hovertemplate="MLP %{y}: %{x:+.4g}<extra></extra>", showlegend=False), row=1, col=2)
    height = _height(n_layer, _ATTR_LAYER_PX, 320, 900)
    bar = dict(title=dict(text="direct contribution (logits)", side="bottom"), orientation="h", thickness=12,
               len=0.6, x=0.5, xanchor="center", y=_below_plot(height, axis_px=80), yanchor="top")
    fig.update_layout(coloraxis=dict(colorscale=ATTR_SCALE, cmin=-top, cmax=top, cmid=0, colorbar=bar))
    fig.update_xaxes(type="category", title="head", row=1, col=1)
    fig.update_xaxes(zeroline=True, title="MLP", row=1, col=2)
    fig.update_yaxes(type="category", autorange="reversed", title="layer", row=1, col=1)
    _layout(fig, title, height)
    fig.update_layout(margin=dict(t=90, b=100))  # the two-line title; the colour bar under the axis titles
    return fig

# ---------------------------------------------------------------- end of attribution

# ---------------------------------------------------------------- patching (``ui.logic.patching``)

_PATCH_CHROME_PX, _PATCH_ROW_PX = 360, 36
_PATCH_SCALE = "RdBu"  # diverging: red below 0 (patching hurt), white at 0, blue at 1 (fully recovered) and past it


def patch_row_names(n_layer: int) -> list[str]:
    """The patching grid's rows: the embeddings, then the residual stream after each layer (numbered
    from 0, as everywhere in the app: row ``l`` is after ``l`` blocks, i.e. after layer ``l - 1``)."""
    return ["embeddings"] + [f"after layer {i}" for i in range(n_layer)]


def _patch_hover(grid: np.ndarray, rows: list[str], clean: Sequence[str], corrupted: Sequence[str],
                 ld_clean: float, ld_corrupted: float) -> list[list[str]]:
    text = []
    for layer, name in enumerate(rows):
        line = []
        for p, (a, b) in enumerate(zip(clean, corrupted, strict=True)):
            where = f"{name} · position {p}: {_escape(a)}" + ("" if a == b else f" → {_escape(b)}")
            value = grid[layer, p]
            if not np.isfinite(value):
                line.append(f"{where}<br>not patched yet")
                continue
            patched = ld_corrupted + value * (ld_clean - ld_corrupted)
            line.append(f"{where}<br>recovered {value:.3f}<br>patched LD {patched:.3f}")
        text.append(line)
    return text


def patching_heatmap(grid: np.ndarray, clean: Sequence[str], corrupted: Sequence[str], ld_clean: float,
                     ld_corrupted: float, n_layer: int) -> go.Figure:
    """The recovered fraction of each (layer, position) cell, ``grid`` ``(rows done, T)`` with rows from the
    embeddings down (rows not done yet are blank), columns the clean tokens; on a diverging scale centred
    at 0 with 1 = the clean logit difference fully recovered. Hover: the cell, both tokens, the fraction and
    the patched logit difference."""
    title = "Activation patching: fraction of the logit difference recovered"
    grid = np.asarray(grid, dtype=float)
    if not len(clean):
        return _message(title, "No tokens to patch.")
    if len(corrupted) != len(clean) or grid.ndim != 2 or grid.shape[1] != len(clean) or grid.shape[0] > n_layer + 1:
        raise ValueError(f"grid must be (at most {n_layer + 1}, {len(clean)}) with as many corrupted labels; got "
                         f"{grid.shape} and {len(corrupted)}")
    full = np.full((n_layer + 1, len(clean)), np.nan)
    full[: grid.shape[0]] = grid
    rows = patch_row_names(n_layer)
    finite = np.abs(full[np.isfinite(full)])
    top = max(1.0, float(finite.max()) if finite.size else 1.0)  # symmetric around 0, never narrower than ±1
    x = _token_names(clean)
    hover = _patch_hover(full, rows, clean, corrupted, ld_clean, ld_corrupted)
    bar = dict(title=dict(text="recovered (1 = fully)", side="bottom"), orientation="h", thickness=12, len=0.6,
               x=0.5, xanchor="center", yref="container", y=0, yanchor="bottom")
    fig = go.Figure(go.Heatmap(z=full, x=x, y=rows, text=hover, hovertemplate="%{text}<extra></extra>",
                               colorscale=_PATCH_SCALE, zmid=0, zmin=-top, zmax=top, colorbar=bar, xgap=1, ygap=1))
    if grid.shape[0] < n_layer + 1:
        title += f" ({grid.shape[0]} of {n_layer + 1} rows…)"
    fig.update_xaxes(title="position: clean token", type="category", tickangle=-45, tickfont=dict(size=11))
    fig.update_yaxes(type="category", autorange="reversed", tickfont=dict(size=11))
    # about 340 px of title, rotated token labels, axis title and colour bar below; then ~36 px a row
    fig = _layout(fig, _escape(title), _PATCH_CHROME_PX + _PATCH_ROW_PX * (n_layer + 1))
    fig.update_layout(margin_b=80)
    return fig

# ---------------------------------------------------------------- end of patching
