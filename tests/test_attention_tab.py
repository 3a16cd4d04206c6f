"""ui.attention_tab: the plain functions and the handlers on a tiny random model (no browser), plus one
gradio_client round trip through a launched app."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import free_port, random_model

import gpt2
from gpt2.inspection import attention_maps, head_scores
from training import LoRAAdapter, LoRAConfig, install_lora, use_adapter
from ui import attention_tab as at
from ui.context import AppContext
from ui.generate_tab import stream
from ui.models import Entry, ModelStore, catalog
from ui.session import Session

TEXT = "The cat sat on the mat. The cat sat on the mat."


def make_ctx(model_dir: str, **extra: str) -> tuple[AppContext, str]:
    """An AppContext built like ``app.make_context``, offering the tiny model (plus ``extra`` dirs)."""
    entries = catalog(extra=model_dir)
    key = next(k for k, e in entries.items() if e.source == model_dir)
    for name, path in extra.items():
        entries[name] = Entry(name, name, path)
    return AppContext(ModelStore(entries), default_key=key), key


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory) -> str:
    """A second model with another shape (3 layers x 4 heads), for model switches."""
    model = random_model(gpt2.GPTConfig.preset("tiny", n_layer=3, n_head=4), seed=1)
    return str(model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "other"))


@pytest.fixture(scope="module")
def ctx(tiny_dir, other_dir) -> AppContext:
    return make_ctx(tiny_dir, other=other_dir)[0]


@pytest.fixture(scope="module")
def handlers(ctx):
    return at.make_handlers(ctx)


def generated(ctx: AppContext, session: Session, prompt: str = "Once upon a time", n: int = 6):
    """Run a real (greedy, tiny) generation through the Generate tab's stream: the session keeps it."""
    for _ in stream(ctx, session, prompt, gpt2.SamplingParams(temperature=0, max_new_tokens=n)):
        pass
    return session.records[-1]


def test_heatmap_is_the_layers_attention_with_token_labels(ctx, handlers):
    attention, redraw = handlers
    fig, table, note, session = attention(TEXT, "text", None, 1, 1, "one head", None, 0, None)
    model = ctx.store.get(session.model_key)
    ids = gpt2.encode(TEXT)
    want = attention_maps(model, ids, [1]).patterns[0, 1]
    np.testing.assert_allclose(np.asarray(fig.data[0].z), want, atol=1e-6)
    assert list(fig.data[0].y[:2]) == ["0:The", "1:␣cat"]  # query rows top to bottom, position-numbered
    assert fig.layout.yaxis.autorange == "reversed"
    (shape,) = fig.layout.shapes  # the query row (default: the last token) is outlined
    assert (shape.y0, shape.y1) == (len(ids) - 1.5, len(ids) - 0.5)
    assert isinstance(session, Session) and f"{len(ids)} tokens" in note
    fig2, note2, _ = redraw(TEXT, "text", None, 1, 1, "one head", None, 0, session)  # sliders: figure only
    np.testing.assert_allclose(np.asarray(fig2.data[0].z), want, atol=1e-6)


def test_grid_draws_every_head_capped_to_a_window_around_the_query(ctx, handlers, monkeypatch):
    monkeypatch.setattr(at, "GRID_TOKENS", 8)
    attention, _ = handlers
    model = ctx.store.get(ctx.default_key)
    ids = gpt2.encode(TEXT)
    full = attention_maps(model, ids, [0]).patterns[0]
    fig, _, note, _ = attention(TEXT, "text", None, 0, 0, "all heads of the layer", 11, 0, None)
    assert len(fig.data) == model.config.n_head
    for h, trace in enumerate(fig.data):  # the last 8 tokens up to the query 11: positions 4..11
        np.testing.assert_allclose(np.asarray(trace.z), full[h, 4:12, 4:12], atol=1e-6)
        assert trace.y[0].startswith("4:") and trace.y[-1].startswith("11:")
    assert "Drawing tokens 4–11" in note and "one head" in note
    fig, _, _, _ = attention(TEXT, "text", None, 0, 0, "all heads of the layer", 2, 0, None)
    assert fig.data[0].y[0].startswith("0:") and len(fig.data[0].y) == 8  # early query: the first 8


def test_window():
    assert at.window(30, 29, 64) == (0, 30)
    assert at.window(1000, 10, 64) == (0, 64)
    assert at.window(1000, 500, 64) == (437, 501)
    assert at.window(1000, 999, 256) == (744, 1000)


def test_token_focus_is_one_query_row_of_every_layer(ctx, handlers):
    attention, _ = handlers
    model = ctx.store.get(ctx.default_key)
    ids = gpt2.encode(TEXT)
    q = 7
    full = attention_maps(model, ids).patterns  # (L, nh, T, T)
    fig, _, _, _ = attention(TEXT, "text", None, 0, 0, "token focus", q, 0, None)
    want = full[:, :, q, : q + 1].reshape(-1, q + 1)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), want, atol=1e-5)
    assert list(fig.data[0].y) == ["L0 H0", "L0 H1", "L1 H0", "L1 H1"]
    assert fig.layout.title.text.startswith(f"What {q}:")
    np.testing.assert_allclose(at.focus_rows(model, ids[: q + 1]), full[:, :, q, : q + 1], atol=1e-5)


def test_step_replays_a_generation(ctx, handlers):
    attention, _ = handlers
    session = ctx.new_session()
    record = generated(ctx, session)
    model = ctx.store.get(record.model_key)
    full_ids = record.prompt_ids + record.token_ids
    full = attention_maps(model, full_ids).patterns
    p, step = len(record.prompt_ids), 2
    fig, table, note, _ = attention("", "a generation", None, 1, 0, "one head", None, step, session)
    end = p + step + 1  # the prompt and generated tokens 0..step
    np.testing.assert_allclose(np.asarray(fig.data[0].z), full[1, 0, :end, :end], atol=1e-5)
    (shape,) = fig.layout.shapes  # the newest token's row is outlined
    assert shape.y0 == end - 1.5
    assert f"Generation #{record.id}**, step {step}" in note
    assert len(table) == model.config.n_layer * model.config.n_head  # the table covers the whole generation
    # the query slider past the shown text follows the newest token; token focus of an earlier one works
    fig, _, _, _ = attention("", "a generation", record.id, 0, 0, "token focus", 10_000, step, session)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), full[:, :, end - 1, :end].reshape(-1, end), atol=1e-5)
    fig, _, _, _ = attention("", "a generation", float(record.id), 0, 0, "token focus", p, step, session)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), full[:, :, p, : p + 1].reshape(-1, p + 1), atol=1e-5)


def test_a_generation_past_the_context_shows_the_models_window(ctx, handlers):
    attention, _ = handlers
    session = ctx.new_session()
    model = ctx.store.get(session.model_key)
    block = model.config.block_size
    record = generated(ctx, session, prompt=TEXT * 5, n=4)  # the prompt is cropped to the context
    assert len(record.prompt_ids) == block
    fig, _, note, _ = attention("", "a generation", None, 0, 0, "one head", None, 3, session)
    shown = (record.prompt_ids + record.token_ids)[4:]  # tokens 4..67: the last `block`
    np.testing.assert_allclose(np.asarray(fig.data[0].z), attention_maps(model, shown, [0]).patterns[0, 0],
                               atol=1e-5)
    assert fig.data[0].y[0].startswith("4:") and fig.data[0].y[-1].startswith(f"{block + 3}:")
    assert "longer than the model's context" in note


def test_head_table_scores_every_head_with_induction_on_repeated_tokens(ctx, handlers):
    attention, _ = handlers
    model = ctx.store.get(ctx.default_key)
    text = at.repeated_text(model.config, seed=3)
    ids = gpt2.encode(text)
    assert len(ids) <= model.config.block_size
    _, table, note, _ = attention(text, "text", None, 0, 0, "one head", None, 0, None)
    cfg = model.config
    assert list(table.columns) == at.TABLE_COLUMNS and len(table) == cfg.n_layer * cfg.n_head
    assert table[["layer", "head"]].values.tolist() == [[l, h] for l in range(cfg.n_layer) for h in range(cfg.n_head)]
    scores = head_scores(attention_maps(model, ids))
    assert not np.isnan(scores.induction).any()  # the text repeats, so every head has an induction score
    np.testing.assert_allclose(table["induction"], scores.induction.ravel(), atol=6e-4)
    np.testing.assert_allclose(table["previous-token"], scores.previous_token.ravel(), atol=6e-4)
    assert f"first {len(ids)} tokens" in note


def test_head_table_reads_at_most_the_first_tokens(ctx, monkeypatch):
    monkeypatch.setattr(at, "TABLE_TOKENS", 5)
    model = ctx.store.get(ctx.default_key)
    ids = gpt2.encode(TEXT)
    table = at.head_table(at.head_score_job(model, at.text_source(ctx, ctx.new_session(), TEXT).table_ids))
    want = head_scores(attention_maps(model, ids[:5]))
    np.testing.assert_allclose(table["entropy"], want.entropy.ravel(), atol=6e-4)


@pytest.mark.parametrize("args, message", [
    (dict(text=""), "Enter a text"),
    (dict(source="a generation"), "No generation yet: generate a text on the Generate tab"),
    (dict(layer=2), r"layer must be between 0 and 1 \(this model has 2 layers\); got 2"),
    (dict(head=-1), "head must be between 0 and 1"),
    (dict(layer=0.5), "layer must be a whole number"),
    (dict(view="every head"), "view must be one of"),
    (dict(source="file"), "source must be one of"),
    (dict(query=-3), "query must be a token position"),
])
def test_bad_input_says_what_to_do(handlers, args, message):
    attention, _ = handlers
    values = dict(text=TEXT, source="text", record=None, layer=0, head=0, view="one head", query=None, step=0,
                  session=None) | args
    with pytest.raises(gr.Error, match=message):
        attention(*values.values())


def test_bad_generation_choices(ctx, handlers):
    attention, _ = handlers
    session = ctx.new_session()
    record = generated(ctx, session, n=3)
    with pytest.raises(gr.Error, match=r"step must be between 0 and 2"):
        attention("", "a generation", None, 0, 0, "one head", None, 3, session)
    with pytest.raises(gr.Error, match=r"Generation #999999 is no longer kept"):
        attention("", "a generation", 999999, 0, 0, "one head", None, 0, session)
    assert at.record_choices(session) == [(record.label, record.id)]
    newer = generated(ctx, session, n=2)
    assert [rid for _, rid in at.record_choices(session)] == [newer.id, record.id]  # newest first


def test_adapter_changes_the_patterns_and_the_base_session_is_unaffected(tiny_dir):
    ctx, key = make_ctx(tiny_dir)  # its own store: installing LoRA wraps this base model's projections
    base = install_lora(ctx.store.get(key))
    adapter = LoRAAdapter(base, LoRAConfig(rank=4), seed=0)
    with torch.no_grad():
        for b in adapter.lora_B.values():
            b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    tuned = Session(model_key=key, adapter=adapter, adapter_base=key, use_finetuned=True)
    plain = ctx.new_session()
    attention, _ = at.make_handlers(ctx)
    want = attention_maps(base, gpt2.encode(TEXT), [1]).patterns[0, 0]

    def z(session, view="one head", **kw):
        fig, table, _, _ = attention(TEXT, kw.get("source", "text"), None, 1, 0, view, None, kw.get("step", 0),
                                     session)
        return np.asarray(fig.data[0].z), table

    tuned_z, tuned_table = z(tuned)
    assert not np.allclose(tuned_z, want, atol=1e-3)
    plain_z, plain_table = z(plain)  # after the adapter ran: the base session still sees the base
    np.testing.assert_allclose(plain_z, want, atol=1e-6)
    assert not np.allclose(tuned_table["entropy"], plain_table["entropy"])
    assert not np.allclose(z(tuned, "token focus")[0], z(plain, "token focus")[0], atol=1e-3)
    tuned.use_finetuned = False  # toggled to the base: a text is read by the base model
    np.testing.assert_allclose(z(tuned)[0], want, atol=1e-6)
    # a generation made by the fine-tuned model is still read with its adapter after the toggle
    tuned.use_finetuned = True
    generated(ctx, tuned)
    assert tuned.records[-1].finetuned
    tuned.use_finetuned = False
    gen_z = z(tuned, source="a generation", step=0)[0]
    record = tuned.records[-1]
    ids = record.prompt_ids + record.token_ids[:1]
    with use_adapter(adapter):
        np.testing.assert_allclose(gen_z, attention_maps(base, ids, [1]).patterns[0, 0], atol=1e-5)


def test_limits_follow_the_source_and_the_model_that_made_a_generation(ctx, handlers):
    attention, _ = handlers
    session = ctx.new_session()
    n_text = len(gpt2.encode(TEXT))
    assert at.limits(ctx, session, "text", TEXT, None) == at.Limits(2, 2, n_text, 0)
    assert at.limits(ctx, session, "a generation", TEXT, None) == at.Limits(2, 2, 0, 0)  # none yet: no error
    record = generated(ctx, session, n=5)
    total = len(record.prompt_ids) + 5
    assert at.limits(ctx, session, "a generation", "", record.id) == at.Limits(2, 2, total, 5)
    session.model_key = "other"  # switched model: a text is read by it, the generation by its own model
    assert at.limits(ctx, session, "text", TEXT, None) == at.Limits(3, 4, n_text, 0)
    assert at.limits(ctx, session, "a generation", "", None) == at.Limits(2, 2, total, 5)
    fig, _, _, _ = attention(TEXT, "text", None, 2, 3, "all heads of the layer", None, 0, session)
    assert len(fig.data) == 4
    with pytest.raises(gr.Error, match="layer must be between 0 and 1"):
        attention("", "a generation", None, 2, 0, "one head", None, 0, session)


@pytest.mark.slow
def test_attention_endpoint_with_gradio_client(tiny_dir):
    gradio_client = pytest.importorskip("gradio_client")
    from ui import generate_tab

    ctx, _ = make_ctx(tiny_dir)
    with gr.Blocks() as demo:
        state = gr.State(None)
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                generate = generate_tab.build(ctx, state)
            with gr.Tab("Attention", id="attention") as page:
                tab = at.build(ctx, state)
        at.connect(ctx, tab, state, generate, tabs, page)
    demo.queue()
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        _, table, note = client.predict(TEXT, "text", None, 0, 1, "one head", 5, 0, api_name="/attention")
        assert len(table["data"]) == 4 and table["headers"] == at.TABLE_COLUMNS
        assert f"{len(gpt2.encode(TEXT))} tokens" in note
        client.predict("Hello there", 4, 0, 0, 1, 1, 0, "", api_name="/generate")
        _, _, note = client.predict("", "a generation", None, 1, 0, "token focus", 1000, 3, api_name="/attention")
        assert "step 3" in note  # the client's session kept its generation
    finally:
        demo.close()
