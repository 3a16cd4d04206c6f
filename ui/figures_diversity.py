"""The Diversity tab's figure: the quality/diversity trade-off of a sweep, as a pure function of metric
records (``gpt2.diversity.Metrics``) to a plotly figure, in the shared look of ``ui.figures``.

Quality is the mean log-probability per token under the raw model (x, higher: text the model finds more
likely); diversity is distinct-2 (y: distinct token pairs / token pairs over all samples). Each sweep
point is labelled with its setting; the current setting is a star of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from gpt2.diversity import Metrics

from .figures import _escape, _layout, _message

TITLE = "Quality and diversity"
X_TITLE = "mean log-probability per token (raw model, nats)"
Y_TITLE = "distinct-2 (distinct token pairs / pairs)"
CURRENT = "current setting"
_STAR = "#d62728"  # red: apart from plotly's first colour (the sweep's line), seen on either theme
_HEIGHT = 460


def _value(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _hover(label: str, m: Metrics) -> str:
    """Every metric of a point, for its hover box (a plotly template: literal ``%`` doubled as needed)."""
    rows = [("distinct-1", m.distinct_1), ("distinct-2", m.distinct_2), ("distinct-3", m.distinct_3),
            ("self-BLEU", m.self_bleu), ("repetition rate", m.repetition_rate)]
    lines = [f"<b>{_escape(label)}</b>", *(f"{name}: {_value(v)}" for name, v in rows),
             f"mean log-prob: {_value(m.mean_logprob)}", f"{m.num_samples} samples, {m.num_tokens} tokens"]
    return "<br>".join(lines) + "<extra></extra>"


def _plotted(m: Metrics) -> bool:
    return m.mean_logprob is not None and m.distinct_2 is not None


def tradeoff(current: Metrics, current_label: str, swept: str | None = None,
             points: Sequence[tuple[float, Metrics]] = (), total: int = 0) -> go.Figure:
    """Diversity (distinct-2) against quality (mean log-probability) for each setting of a sweep of
    ``swept`` (``points``: its value and metrics, ``total`` points planned) and the current setting,
    marked with a star (``current_label`` names it, e.g. "temperature 0.8")."""
    title = TITLE if swept is None else f"{TITLE}: sweep of {swept}"
    if len(points) < total:
        title += f" ({len(points)} of {total} points)"
    shown = [(v, m) for v, m in points if _plotted(m)]
    if not shown and not _plotted(current):
        return _message(title, "The samples are too short to measure (fewer than two tokens each).")
    fig = go.Figure()
    if shown:
        labels = [f"{swept} {v:g}" for v, _ in shown]
        fig.add_trace(go.Scatter(
            x=[m.mean_logprob for _, m in shown], y=[m.distinct_2 for _, m in shown], mode="lines+markers+text",
            name=f"sweep of {swept}", text=[f"{v:g}" for v, _ in shown], textposition="top center",
            hovertemplate=[_hover(label, m) for label, (_, m) in zip(labels, shown, strict=True)],
            marker=dict(size=9)))
    if _plotted(current):
        fig.add_trace(go.Scatter(
            x=[current.mean_logprob], y=[current.distinct_2], mode="markers", name=f"{CURRENT} ({current_label})",
            hovertemplate=[_hover(f"{CURRENT}: {current_label}", current)],
            marker=dict(symbol="star", size=18, color=_STAR, line=dict(width=1, color="white"))))
    fig.update_xaxes(title=X_TITLE)
    fig.update_yaxes(title=Y_TITLE, rangemode="tozero")
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
    if swept is None:
        fig.add_annotation(text="Choose a sweep to see the trade-off.", x=0.5, y=1.06, xref="paper",
                           yref="paper", showarrow=False)
    return _layout(fig, title, _HEIGHT)
