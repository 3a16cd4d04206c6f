"""The beam-search tree as a plotly figure: a pure function of a ``gpt2.search.BeamResult`` record and its
candidates' display labels (no model, no Gradio, no state).

Steps run down the figure (step 0 under the prompt) and each step's candidates across it, best cumulative
log-probability on the left. Down, not across: one row per step keeps token labels readable at 40 steps
on a page (and 390 px wide phones), where one column per step leaves ~17 px per label. Edges join each
candidate to the beam it extends. Live beams are solid, pruned candidates faded (hover only), finished
hypotheses are stars with their normalised score on hover, and the winner's path (``paths[0]``) is drawn
over the rest. ``upto`` draws the search up to that step only (the step slider).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import plotly.graph_objects as go

from gpt2.search import BeamResult, Candidate

from .figures import _escape, _layout, _message

TITLE = "Beam search tree"
KEPT, PRUNED, FINISHED, BEST = "kept", "pruned", "finished", "best path"  # trace names (the legend)
KEPT_COLOR, FINISHED_COLOR, BEST_COLOR = "#3b82f6", "#f59e0b", "#e4572e"  # read on light and dark pages
PRUNED_OPACITY = 0.3
_PRUNED_EDGE = "rgba(140,140,140,0.22)"
_KEPT_EDGE = "rgba(59,130,246,0.55)"
_ROW_PX, _MIN_ROW_PX, _CHROME_PX, _MAX_PX = 26, 8, 150, 2600  # one row per step; past _MAX_PX rows shrink
_LABEL_ROW_PX = 16  # rows narrower than this drop the node labels (hover still tells)
_PRUNED_SPACING = 0.4  # the worse half of a step's candidates, this close together
_LABEL_CHARS = 9  # node labels cut to this many characters (hover shows the whole token)
_NO_RESULT = "Run a search to see its tree."


@dataclass
class _Layer:
    """Points, labels, hover texts and edges of one kind of node."""

    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    hover: list[str] = field(default_factory=list)
    edges_x: list[float | None] = field(default_factory=list)
    edges_y: list[float | None] = field(default_factory=list)

    def add(self, xy: tuple[float, float], parent: tuple[float, float], text: str, hover: str) -> None:
        self.x.append(xy[0])
        self.y.append(xy[1])
        self.text.append(text)
        self.hover.append(hover)
        self.edges_x += [parent[0], xy[0], None]
        self.edges_y += [parent[1], xy[1], None]


def _short(label: str) -> str:
    return _escape(label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "…")


def _hover(step: int, rank: int, label: str, c: Candidate) -> str:
    score = f"<br>normalised score: {c.score:.4f}" if c.score is not None else ""
    return (f"step {step} · rank {rank}<br>token: <b>{_escape(label)}</b> (id {c.token_id})<br>"
            f"token log-prob: {c.token_logprob:.4f}<br>cumulative log-prob: {c.logprob:.4f}<br>"
            f"status: {c.status}{score}")


def check_labels(result: BeamResult, labels: Sequence[Sequence[str]]) -> None:
    """``labels`` must hold one label per candidate of every step (the caller's bug otherwise)."""
    shape = [len(s.candidates) for s in result.tree]
    if [len(row) for row in labels] != shape:
        raise ValueError(f"labels must have one row per step with one label per candidate {shape}; "
                         f"got {[len(row) for row in labels]}")


def column_x(index: int, width: int) -> float:
    """Where a step's candidate of rank ``index`` (of ``width``) is drawn across: the better half, where
    the live beams mostly are, a column each; the rest (mostly pruned) closer together, so the labels of
    the beams get the room on a phone."""
    half = (width + 1) // 2
    return index if index < half else half - 1 + (index - half + 1) * _PRUNED_SPACING


@dataclass(frozen=True)
class _Grid:
    """Node positions: step ``s``'s candidate ``i`` at (``column_x(i)``, s); the prompt above the middle."""

    result: BeamResult
    width: int  # candidates of the widest step

    def node(self, step: int, index: int) -> tuple[float, float]:
        return (column_x(self.width - 1, self.width) / 2, -1) if step < 0 else (column_x(index, self.width), step)

    def parent(self, step: int, c: Candidate) -> tuple[float, float]:
        """The node of the beam that ``c`` extends."""
        return self.node(-1, 0) if step == 0 else self.node(step - 1, self.result.tree[step - 1].kept[c.parent])


def _layers(grid: _Grid, labels: Sequence[Sequence[str]], last: int) -> dict[str, _Layer]:
    """Every candidate of steps 0..``last``, sorted into kept, pruned and finished."""
    layers = {KEPT: _Layer(), PRUNED: _Layer(), FINISHED: _Layer()}
    for step in range(last + 1):
        for i, c in enumerate(grid.result.tree[step].candidates):
            kind = c.status if c.status in layers else PRUNED
            layers[kind].add(grid.node(step, i), grid.parent(step, c), _short(labels[step][i]),
                             _hover(step, i, labels[step][i], c))
    return layers


def _best_path(grid: _Grid, last: int) -> _Layer:
    """The winner's nodes and edges, up to step ``last``."""
    best = _Layer()
    path = grid.result.paths[0] if grid.result.paths else []
    parent = grid.node(-1, 0)
    for step, index in enumerate(path[: last + 1]):
        xy = grid.node(step, index)
        best.add(xy, parent, "", "")
        parent = xy
    return best


def _edges(layer: _Layer, name: str, color: str, width: float) -> go.Scatter:
    return go.Scatter(x=layer.edges_x, y=layer.edges_y, mode="lines", line=dict(color=color, width=width),
                      hoverinfo="skip", showlegend=False, name=f"{name} edges")


def _nodes(layer: _Layer, name: str, marker: dict, labelled: bool, opacity: float = 1.0) -> go.Scatter:
    return go.Scatter(x=layer.x, y=layer.y, mode="markers+text" if labelled else "markers", name=name,
                      text=layer.text if labelled else None, textposition="middle right",
                      texttemplate="\u2002%{text}",  # clear of the best path's ring
                      textfont=dict(size=11), hovertext=layer.hover, hoverinfo="text", marker=marker,
                      opacity=opacity)


def beam_tree(result: BeamResult | None, labels: Sequence[Sequence[str]] = (), upto: int | None = None,
              prompt: str = "prompt") -> go.Figure:
    """The search tree of ``result`` up to step ``upto`` (None: every step); ``labels[s][i]`` is the
    display text of candidate ``i`` of step ``s`` (``gpt2.token_display``); ``prompt``: the root's hover."""
    if result is None or not result.tree:
        return _message(TITLE, _NO_RESULT)
    check_labels(result, labels)
    last = len(result.tree) - 1 if upto is None else max(0, min(int(upto), len(result.tree) - 1))
    rows = last + 2  # the prompt, then the steps
    row_px = max(_MIN_ROW_PX, min(_ROW_PX, (_MAX_PX - _CHROME_PX) // rows))
    labelled = row_px >= _LABEL_ROW_PX
    grid = _Grid(result, max(len(s.candidates) for s in result.tree))
    layers, best, root = _layers(grid, labels, last), _best_path(grid, last), grid.node(-1, 0)
    fig = go.Figure([
        _edges(layers[PRUNED], PRUNED, _PRUNED_EDGE, 1),
        _edges(layers[KEPT], KEPT, _KEPT_EDGE, 1.5),
        _edges(layers[FINISHED], FINISHED, _KEPT_EDGE, 1.5),
        _edges(best, BEST, BEST_COLOR, 4),
        _nodes(layers[PRUNED], PRUNED, dict(color="#8c8c8c", size=6), False, PRUNED_OPACITY),
        _nodes(layers[KEPT], KEPT, dict(color=KEPT_COLOR, size=9), labelled),
        _nodes(layers[FINISHED], FINISHED, dict(color=FINISHED_COLOR, size=15, symbol="star"), labelled),
        go.Scatter(x=best.x, y=best.y, mode="markers", name=BEST, hoverinfo="skip",
                   marker=dict(color="rgba(0,0,0,0)", size=15, line=dict(color=BEST_COLOR, width=2.5))),
        go.Scatter(x=[root[0]], y=[root[1]], mode="markers", name="prompt", showlegend=False,
                   hovertext=[_escape(prompt)], hoverinfo="text", marker=dict(color="#8c8c8c", size=10,
                                                                              symbol="square")),
    ])
    shown = f"steps 0 to {last} of {len(result.tree)}" if last < len(result.tree) - 1 else f"{len(result.tree)} steps"
    _layout(fig, f"{TITLE} · {shown}", _CHROME_PX + rows * row_px)
    fig.update_xaxes(title="candidates, best first", showticklabels=False, zeroline=False, fixedrange=True,
                     range=[-0.4, column_x(grid.width - 1, grid.width) + 0.6])
    every = -(-_LABEL_ROW_PX // row_px)  # label every step while rows are tall enough, else every few
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=[-1, *range(0, last + 1, every)],
                     ticktext=["prompt", *map(str, range(0, last + 1, every))], title="step", zeroline=False)
    fig.update_layout(legend=dict(orientation="h", x=0, y=1, yanchor="bottom", xanchor="left"),
                      hoverlabel=dict(align="left"), margin_t=80)
    return fig
