"""The loss curve of a run as a plotly figure, written as HTML."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt2.files import write_file_atomically


def loss_figure(records: Sequence[dict[str, Any]], title: str = "Training loss"):
    """Train loss per step and validation loss at each evaluation (nats per token)."""
    import plotly.graph_objects as go  # plotly is needed only when a plot is drawn

    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    fig = go.Figure()
    fig.add_scatter(x=[s for s, _ in train], y=[v for _, v in train], mode="lines", name="train",
                    line={"width": 1})
    fig.add_scatter(x=[s for s, _ in val], y=[v for _, v in val], mode="lines+markers", name="validation")
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="loss (nats/token)", template="plotly_white")
    return fig


def write_loss_plot(records: Sequence[dict[str, Any]], path: str | Path, plotly_js: str = "inline",
                    title: str = "Training loss") -> Path:
    """Write ``path`` (HTML). ``plotly_js``: ``"inline"`` embeds plotly.js (about 4.7 MB, works
    offline); ``"cdn"`` links it (a few KB, needs a connection to view). Atomic: a reader never sees
    half a file."""
    fig = loss_figure(records, title)
    include = True if plotly_js == "inline" else "cdn"
    return write_file_atomically(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=include))
