"""Assemble the page: header with the model picker, then one tab per builder."""

from __future__ import annotations

import gradio as gr

import gpt2

from . import generate_tab
from .context import AppContext
from .session import Session

INTRO = """# GPT-2 Playground
See how a GPT-2 language model thinks: **generate** text, look at where each token **attends**, see the
**probabilities** behind every choice, and **fine-tune** it on your own text, all in the browser."""


def model_info(key: str, model: gpt2.GPT2) -> str:
    c = model.config
    return (f"**{key}** · {model.num_params() / 1e6:.1f}M parameters · {c.n_layer} layers × {c.n_head} heads · "
            f"context {c.block_size} · {model.device.type.upper()} · {str(model.dtype).removeprefix('torch.')}")


def _close(session: Session | None) -> None:
    if isinstance(session, Session):
        session.close()


def build_demo(ctx: AppContext) -> gr.Blocks:
    """The whole app. Every tab gets the same context and session state."""
    default_model = ctx.store.get(ctx.default_key)
    with gr.Blocks(title="GPT-2 Playground") as demo:
        state = gr.State(None, time_to_live=ctx.caps.session_ttl_s, delete_callback=_close)
        gr.Markdown(INTRO)
        with gr.Row(equal_height=True):
            picker = gr.Dropdown([(e.label, e.key) for e in ctx.store.entries.values()], value=ctx.default_key,
                                 label="Model", scale=2)
            info = gr.Markdown(model_info(ctx.default_key, default_model))
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                generate_tab.build(ctx, state)

        def switch_model(key, session):
            """Load one of the offered models for this session (others are unaffected)."""
            session = ctx.session(session)
            yield f"Loading **{key}**…", session, gr.update()
            try:
                model = ctx.store.get(key)
            except (KeyError, gpt2.CheckpointError) as e:
                gr.Warning(str(e))
                current = ctx.store.get(session.model_key)
                yield model_info(session.model_key, current), session, gr.update(value=session.model_key)
                return
            session.model_key = key
            yield model_info(key, model), session, gr.update()

        picker.change(switch_model, [picker, state], [info, state, picker], api_name="load_model",
                      concurrency_limit=1, concurrency_id="load")
    return demo
