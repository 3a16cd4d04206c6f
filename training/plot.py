"""The loss curve of a run as a plotly figure, written as HTML."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt2.files import write_file_atomically

_HOVER = "step %{x}: %{y:.4f}"


def loss_figure(records: Sequence[dict[str, Any]], title: str = "Training loss"):
    """Train loss per step and validation loss at each evaluation (nats per token, left axis; perplexity
    in the hover), validation accuracy on the right axis, and the best model's test loss and accuracy
    (with a test split) as single markers at the step they were measured."""
    import plotly.graph_objects as go  # plotly is needed only when a plot is drawn

    train = [r for r in records if r.get("train_loss") is not None]
    val = [r for r in records if r.get("val_loss") is not None]
    acc = [r for r in val if r.get("val_accuracy") is not None]
    test = [r for r in records if r.get("test_loss") is not None]
    fig = go.Figure()
    fig.add_scatter(x=[r["step"] for r in train], y=[r["train_loss"] for r in train], mode="lines", name="train",
                    line={"width": 1}, hovertemplate=_HOVER)
    fig.add_scatter(x=[r["step"] for r in val], y=[r["val_loss"] for r in val], mode="lines+markers",
                    name="validation", customdata=[r.get("val_perplexity") for r in val],
                    hovertemplate=_HOVER + "<br>perplexity %{customdata:.2f}")
    fig.add_scatter(x=[r["step"] for r in acc], y=[r["val_accuracy"] for r in acc], mode="lines+markers",
                    name="validation accuracy", yaxis="y2", line={"dash": "dot"},
                    hovertemplate="step %{x}: %{y:.2%}")
    if test:
        fig.add_scatter(x=[r["step"] for r in test], y=[r["test_loss"] for r in test], mode="markers",
                        name="test (best model)", marker={"symbol": "star", "size": 12},
                        customdata=[r.get("test_perplexity") for r in test],
                        hovertemplate=_HOVER + "<br>perplexity %{customdata:.2f}")
        fig.add_scatter(x=[r["step"] for r in test], y=[r["test_accuracy"] for r in test], mode="markers",
                        name="test accuracy", yaxis="y2", marker={"symbol": "star-open", "size": 12},
                        hovertemplate="step %{x}: %{y:.2%}")
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="loss (nats/token)", template="plotly_white",
                      yaxis2={"title": "accuracy (top-1 next token)", "overlaying": "y", "side": "right",
                              "range": [0, 1], "tickformat": ".0%", "showgrid": False})
    return fig


def write_loss_plot(records: Sequence[dict[str, Any]], path: str | Path, plotly_js: str = "inline",
                    title: str = "Training loss") -> Path:
    """Write ``path`` (HTML). ``plotly_js``: ``"inline"`` embeds plotly.js (about 4.7 MB, works
    offline); ``"cdn"`` links it (a few KB, needs a connection to view). Atomic: a reader never sees
    half a file."""
    fig = loss_figure(records, title)
    include = True if plotly_js == "inline" else "cdn"
    return write_file_atomically(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=include))
