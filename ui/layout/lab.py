"""The Lab tab's layout: an introduction, then one inner tab per tool. Each tool's section is its own
module (``lab_ablate``, ``lab_attribute``, ``lab_patch``) with a ``build(page)`` like a tab's."""

from __future__ import annotations

import gradio as gr

from ..logic import lab as logic
from . import lab_ablate, lab_attribute, lab_patch

SECTIONS = (("Knock out heads", "lab-ablate", lab_ablate.build), ("Attribution", "lab-attribute", lab_attribute.build),
            ("Patching", "lab-patch", lab_patch.build))


def build(page) -> None:
    """Lay out the tab and wire it (see ``ui.layout.page``)."""
    gr.Markdown(logic.INTRO)
    with gr.Tabs(elem_id="lab-tools"):
        for title, tab_id, build_section in SECTIONS:
            with gr.Tab(title, id=tab_id):
                build_section(page)
