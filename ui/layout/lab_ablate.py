"""The Lab tab's ablate section (being built)."""

from __future__ import annotations

import gradio as gr


def build(page) -> None:
    """Lay out the section and wire it (see ``ui.layout.lab``)."""
    gr.Markdown("ablate")
