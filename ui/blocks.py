"""Assemble the page: header with the model picker, then one tab per builder."""

from __future__ import annotations

import gradio as gr

import gpt2

from . import attention_tab, finetune_tab, generate_tab, memory, probabilities_tab, widgets
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
        memory.trim()


def build_demo(ctx: AppContext) -> gr.Blocks:
    """The whole app. Every tab gets the same context and session state."""
    default_model = ctx.store.get(ctx.default_key)
    with gr.Blocks(title="GPT-2 Playground", delete_cache=(600, 3600)) as demo:  # drop old served files
        state = gr.State(None, time_to_live=ctx.caps.session_ttl_s, delete_callback=_close)
        gr.Markdown(INTRO)
        with gr.Row(equal_height=True):
            picker = widgets.dropdown([(e.label, e.key) for e in ctx.store.entries.values()], value=ctx.default_key,
                                 label="Model", scale=2)
            use_finetuned = gr.Checkbox(False, label="use my fine-tuned model",
                                        info="after fine-tuning; off = the base model", scale=1)
            info = gr.Markdown(model_info(ctx.default_key, default_model))
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                gen = generate_tab.build(ctx, state)
            with gr.Tab("Attention", id="attention") as attention_page:
                attention = attention_tab.build(ctx, state)
            with gr.Tab("Probabilities", id="probabilities"):
                probs = probabilities_tab.build(ctx, state)
            with gr.Tab("Fine-tune", id="finetune"):
                finetune_tab.build(ctx, state, use_finetuned)
        for event in gen.done:  # new generations appear in the other tabs' pickers
            event.then(probabilities_tab.refresh_picker, [probs.record_picker, state], [probs.record_picker],
                       api_visibility="private")
        (gen.inspect_probabilities.click(probabilities_tab.select_latest, [state], [probs.record_picker],
                                         api_visibility="private")
         .then(lambda: gr.Tabs(selected="probabilities"), None, [tabs], api_visibility="private"))

        def switch_model(key, session):
            """Load one of the offered models for this session (others are unaffected)."""
            session = ctx.session(session)
            yield f"Loading **{key}**…", session, gr.update()
            try:
                model = ctx.store.get(key)
            except (KeyError, gpt2.CheckpointError) as e:
                current = ctx.store.get(session.model_key)
                yield model_info(session.model_key, current), session, gr.update(value=session.model_key)
                raise gr.Error(f"{e} The current model, {session.model_key}, stays loaded.") from None
            session.model_key = key
            session.use_finetuned = session.use_finetuned and session.has_finetuned()
            yield model_info(key, model), session, gr.update()

        loaded = picker.change(switch_model, [picker, state], [info, state, picker], api_name="load_model",
                               concurrency_limit=1, concurrency_id="load")
        loaded.then(lambda s: s.use_finetuned, [state], [use_finetuned], api_visibility="private")
        attention_tab.connect(ctx, attention, state, gen, tabs, attention_page, model_events=[loaded])

        def page_closed(request: gr.Request) -> None:
            """The page went away: stop its work and free its session now. (Gradio keeps a closed page's
            state for an hour, in case it comes back; the fine-tuned model and records are the big part.)"""
            session_state = demo.state_holder.session_data.get(request.session_hash)
            if session_state is not None:
                _close(session_state.state_data.get(state._id))

        demo.unload(page_closed)
    return demo
