"""ui.logic.attention: the Attention tab's events as plain functions on tiny random models (no browser),
plus one gradio_client round trip through the launched app."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from conftest import drain, make_ctx, random_model

import gpt2
from gpt2.inspection import attention_maps, head_scores
from gpt2.lora import LoRAAdapter, LoRAConfig, install_lora, use_adapter
from ui import redraw
from ui.inputs import LATEST, UserError
from ui.logic import attention as logic
from ui.logic import records
from ui.logic.generate import stream
from ui.models import Entry
from ui.session import Session
from ui.updates import KEEP

TEXT = "The cat sat on the mat. The cat sat on the mat."
FITTED, FIXED = logic.SCALES
GRID, FOCUS = logic.VIEWS[1], logic.VIEWS[2]
DRAWING = ["text", "source", "record", "layer", "head", "view", "query", "step"]  # /attention's parameters before


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory) -> str:
    """A second model with another shape (3 layers x 4 heads), for model switches."""
    model = random_model(gpt2.GPTConfig.preset("tiny", n_layer=3, n_head=4), seed=1)
    return str(model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "other"))


@pytest.fixture(scope="module")
def ctx(tiny_dir, other_dir):
    """The app's context on the tiny model (2 layers x 2 heads), also offering ``other``."""
    ctx = make_ctx(tiny_dir)
    ctx.store.entries["other"] = Entry("other", "other", other_dir)
    return ctx


def generated(ctx, session: Session, prompt: str = "Once upon a time", n: int = 6):
    """A real (greedy, tiny) generation through the Generate tab's stream: the session keeps it."""
    drain(stream(ctx, session, prompt, gpt2.SamplingParams(temperature=0, max_new_tokens=n)))
    return session.records[-1]


def show(ctx, session, **changes):
    """``/attention`` with the page's defaults, some changed: (figure, table, note)."""
    values = dict(text=TEXT, source="text", record=None, layer=0, head=0, view="one head", query=None, step=0)
    return logic.attention(ctx, session, **(values | changes))


def page(ctx, session, fn=logic.redraw, **changes):
    """A drawing event of the page (``redraw`` by default) with the page's defaults, some changed."""
    values = dict(text=TEXT, source="text", record=LATEST, layer=0, head=0, view="one head", query=None, step=0,
                  scale=FITTED, width=None) | changes
    names = list(inspect.signature(fn).parameters)[2:]  # after ctx and session
    return fn(ctx, session, **{name: values[name] for name in names})


def z(fig) -> np.ndarray:
    return np.asarray(fig.data[0].z)


def test_heatmap_is_the_layers_attention_with_token_labels(ctx):
    session = ctx.new_session()
    fig, table, note = show(ctx, session, layer=1, head=1)
    model = ctx.store.get(session.model_key)
    ids = gpt2.encode(TEXT)
    want = attention_maps(model, ids, [1]).patterns[0, 1]
    np.testing.assert_allclose(z(fig), want, atol=1e-6)
    assert list(fig.data[0].y[:2]) == ["0:The", "1:␣cat"]  # query rows top to bottom, position-numbered
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.title.text == "Layer 1, head 1"
    (shape,) = fig.layout.shapes  # the query row (default: the last token) is outlined
    assert (shape.y0, shape.y1) == (len(ids) - 1.5, len(ids) - 0.5)
    assert f"{len(ids)} tokens" in note and len(table) == 4
    fig2, note2, *_ = page(ctx, session, layer=1, head=1)  # a slider moved: the figure and note only
    np.testing.assert_allclose(z(fig2), want, atol=1e-6)
    assert note2 == note


def test_grid_draws_every_head_capped_to_a_window_around_the_query(ctx, monkeypatch):
    monkeypatch.setattr(logic, "GRID_TOKENS", 8)
    model = ctx.store.get(ctx.default_key)
    full = attention_maps(model, gpt2.encode(TEXT), [0]).patterns[0]
    fig, _, note = show(ctx, ctx.new_session(), view=GRID, query=11)
    assert len(fig.data) == model.config.n_head
    for h, trace in enumerate(fig.data):  # the last 8 tokens up to the query 11: positions 4..11
        np.testing.assert_allclose(np.asarray(trace.z), full[h, 4:12, 4:12], atol=1e-6)
        assert trace.y[0].startswith("4:") and trace.y[-1].startswith("11:")
    assert "Drawing tokens 4–11" in note and "one head" in note
    fig, _, _ = show(ctx, ctx.new_session(), view=GRID, query=2)
    assert fig.data[0].y[0].startswith("0:") and len(fig.data[0].y) == 8  # early query: the first 8


def test_window():
    assert logic.window(30, 29, 64) == (0, 30)
    assert logic.window(1000, 10, 64) == (0, 64)
    assert logic.window(1000, 500, 64) == (437, 501)
    assert logic.window(1000, 999, 256) == (744, 1000)


def test_token_focus_is_one_query_row_of_every_layer(ctx):
    model = ctx.store.get(ctx.default_key)
    ids = gpt2.encode(TEXT)
    q = 7
    full = attention_maps(model, ids).patterns  # (L, nh, T, T)
    fig, _, _ = show(ctx, ctx.new_session(), view=FOCUS, query=q)
    np.testing.assert_allclose(z(fig), full[:, :, q, : q + 1].reshape(-1, q + 1), atol=1e-5)
    assert list(fig.data[0].y) == ["L0 H0", "L0 H1", "L1 H0", "L1 H1"]
    assert fig.layout.title.text.startswith(f"What {q}:")
    np.testing.assert_allclose(redraw.focus_rows(model, ids[: q + 1]), full[:, :, q, : q + 1], atol=1e-5)


def test_token_focus_rests_the_layer_and_head_sliders(ctx):
    session = ctx.new_session()
    for view, active in ((FOCUS, False), ("one head", True), (GRID, True)):
        _, _, step, layer, head, query = page(ctx, session, view=view)
        assert layer["interactive"] is head["interactive"] is active
        assert query["interactive"] and not step["interactive"]  # a text has no steps


def test_step_replays_a_generation(ctx):
    session = ctx.new_session()
    record = generated(ctx, session)
    model = ctx.store.get(record.model_key)
    full = attention_maps(model, record.prompt_ids + record.token_ids).patterns
    p, step = len(record.prompt_ids), 2
    fig, table, note = show(ctx, session, source="a generation", layer=1, step=step)
    end = p + step + 1  # the prompt and generated tokens 0..step
    np.testing.assert_allclose(z(fig), full[1, 0, :end, :end], atol=1e-5)
    (shape,) = fig.layout.shapes  # the newest token's row is outlined
    assert shape.y0 == end - 1.5 and fig.layout.title.text == "Layer 1, head 0 · step 2"
    assert f"Generation #{record.id}**, step {step}" in note
    assert len(table) == model.config.n_layer * model.config.n_head  # the table covers the whole generation
    # a query past the text at this step: its newest token; token focus of an earlier one works too
    fig, _, _ = show(ctx, session, source="a generation", record=record.id, view=FOCUS, query=10_000, step=step)
    np.testing.assert_allclose(z(fig), full[:, :, end - 1, :end].reshape(-1, end), atol=1e-5)
    fig, _, _ = show(ctx, session, source="a generation", record=float(record.id), view=FOCUS, query=p, step=step)
    np.testing.assert_allclose(z(fig), full[:, :, p, : p + 1].reshape(-1, p + 1), atol=1e-5)


def test_the_query_slider_shows_the_token_drawn(ctx):
    session = ctx.new_session()
    record = generated(ctx, session, n=6)
    p = len(record.prompt_ids)
    # replaying step 2 (the query slider still at the last token): the newest token at step 2 is drawn
    fig, note, step, _, _, query = page(ctx, session, logic.replay, source="a generation", step=2)
    assert fig.layout.shapes[0].y0 == p + 2 - 0.5
    assert query["value"] == p + 2 and query["maximum"] == p + 2 and "value" not in step.props
    # a query past the end (e.g. sent before the slider was refitted) is drawn on the last token: the slider too
    *_, query = page(ctx, session, source="a generation", step=2, query=p + 5)
    assert query["value"] == p + 2
    *_, query = page(ctx, session, query=10_000)
    assert query["value"] == len(gpt2.encode(TEXT)) - 1
    *_, query = page(ctx, session, query=3)  # in range: left alone (the user may be dragging it)
    assert "value" not in query.props and query["maximum"] == len(gpt2.encode(TEXT)) - 1
    *_, query = page(ctx, session, logic.show, query=10_000)  # the Show button too
    assert query["value"] == len(gpt2.encode(TEXT)) - 1


def test_on_a_phone_the_plot_is_square_ish_not_a_strip(ctx):
    session = ctx.new_session()
    text = " ".join(f"word{i}" for i in range(60))
    for view in ("one head", FOCUS):
        tall = page(ctx, session, text=text, view=view)[0].layout.height
        for width in (390, 600):
            fig = page(ctx, session, text=text, view=view, width=width)[0]
            assert fig.layout.height == min(tall, width + logic.SQUARE_PX)
        assert page(ctx, session, text=text, view=view, width=1280)[0].layout.height == tall  # room for every label
    assert page(ctx, session, text=text, width=390)[0].layout.height < page(ctx, session, text=text)[0].layout.height
    session.model_key = "other"  # 4 heads: a row of 4 panels, on a phone 2 rows of 2 square ones (not thin strips)
    assert page(ctx, session, text=text, view=GRID)[0].layout.height == 140 + 260
    grid = page(ctx, session, text=text, view=GRID, width=390)[0]
    assert grid.layout.xaxis3.domain == grid.layout.xaxis.domain and grid.layout.height == 140 + 2 * (330 // 2)


def test_editing_the_text_redraws_everything_and_an_empty_text_is_not_an_error(ctx):
    session = ctx.new_session()
    edited = "A new text, edited."
    fig, table, note, step, layer, head, query = page(ctx, session, logic.refresh, text=edited, query=2)
    n = len(gpt2.encode(edited))
    assert len(fig.data[0].y) == n and f"{n} tokens" in note and len(table) == 4
    assert query["value"] == n - 1 and query["maximum"] == n - 1  # the new text, at its last token
    fig, table, note, *sliders = page(ctx, session, logic.refresh, text="")
    assert not fig.data and "text is empty" in note and table.empty  # said in place, no error
    with pytest.raises(UserError, match="text is empty"):  # while the API refuses it
        show(ctx, session, text="")


def test_colour_scale_fitted_by_default_or_zero_to_one(ctx):
    session = ctx.new_session()
    for view in ("one head", GRID, FOCUS):
        fig, _, _ = show(ctx, session, view=view)
        weights = np.concatenate([np.ravel(t.z) for t in fig.data])
        top = np.quantile(weights[weights > 0], 0.99)  # the first query's weight of 1 does not set the scale
        assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == pytest.approx(top)
        assert "fitted" in fig.layout.coloraxis.colorbar.title.text
        fig, _, _ = show(ctx, session, view=view, scale="0 to 1")
        assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0, 1)
    with pytest.raises(UserError, match="scale must be one of 'fitted to the data', '0 to 1'"):
        show(ctx, session, scale="log")


def test_a_generation_past_the_context_shows_the_models_window(ctx):
    session = ctx.new_session()
    model = ctx.store.get(session.model_key)
    block = model.config.block_size
    record = generated(ctx, session, prompt=TEXT * 5, n=4)  # the prompt is cropped to the context
    assert len(record.prompt_ids) == block
    fig, _, note = show(ctx, session, source="a generation", step=3)
    shown = (record.prompt_ids + record.token_ids)[4:]  # tokens 4..67: the last `block`
    np.testing.assert_allclose(z(fig), attention_maps(model, shown, [0]).patterns[0, 0], atol=1e-5)
    assert fig.data[0].y[0].startswith("4:") and fig.data[0].y[-1].startswith(f"{block + 3}:")
    assert "longer than the model's context" in note
    _, note = page(ctx, session, source="a generation", step=3, query=2)[:2]  # before the window: its first
    assert "outside the model's context" in note


def test_head_table_scores_every_head_with_induction_on_repeated_tokens(ctx):
    session = ctx.new_session()
    model = ctx.store.get(ctx.default_key)
    text = logic.repeated(ctx, session, seed=3)
    assert text == logic.repeated(ctx, session, seed=3) != logic.repeated(ctx, session)
    ids = gpt2.encode(text)
    assert len(ids) <= model.config.block_size
    _, table, note = show(ctx, session, text=text)
    cfg = model.config
    assert list(table.columns) == logic.TABLE_COLUMNS and len(table) == cfg.n_layer * cfg.n_head
    assert table[["layer", "head"]].values.tolist() == [[l, h] for l in range(cfg.n_layer) for h in range(cfg.n_head)]
    scores = head_scores(attention_maps(model, ids))
    assert not np.isnan(scores.induction).any()  # the text repeats, so every head has an induction score
    np.testing.assert_allclose(table["induction"], scores.induction.ravel(), atol=6e-4)
    np.testing.assert_allclose(table["previous-token"], scores.previous_token.ravel(), atol=6e-4)
    assert f"first {len(ids)} tokens" in note and "⋮ menu" in note  # how Gradio 6's table sorts


def test_head_table_reads_at_most_the_first_tokens(ctx, monkeypatch):
    monkeypatch.setattr(logic, "TABLE_TOKENS", 5)
    model = ctx.store.get(ctx.default_key)
    _, table, note = show(ctx, ctx.new_session())
    want = head_scores(attention_maps(model, gpt2.encode(TEXT)[:5]))
    np.testing.assert_allclose(table["entropy"], want.entropy.ravel(), atol=6e-4)
    assert "first 5 tokens" in note


@pytest.mark.parametrize("args, message", [
    (dict(text=""), "text is empty"),
    (dict(source="a generation"), "No generation yet: generate a text in the Generate tab"),
    (dict(layer=2), r"layer must be a whole number from 0 to 1 \(this model has 2 layers\); got 2"),
    (dict(head=-1), "head must be a whole number from 0 to 1"),
    (dict(layer=0.5), "layer must be a whole number"),
    (dict(view="every head"), "view must be one of"),
    (dict(source="file"), "source must be one of"),
    (dict(query=-3), "query must be a token position, 0 or more"),
])
def test_bad_input_says_what_to_do(ctx, args, message):
    with pytest.raises(UserError, match=message):
        show(ctx, ctx.new_session(), **args)


def test_bad_generation_choices(ctx):
    session = ctx.new_session()
    record = generated(ctx, session, n=3)
    with pytest.raises(UserError, match=r"step must be a whole number from 0 to 2"):
        show(ctx, session, source="a generation", step=3)
    with pytest.raises(UserError, match=r"Generation #999999 is no longer kept"):
        show(ctx, session, source="a generation", record=999999)
    newer = generated(ctx, session, n=2)
    assert [rid for _, rid in records.choices(session)] == [LATEST, newer.id, record.id]  # newest first


def tuned_session(ctx, key: str) -> tuple[Session, LoRAAdapter, gpt2.GPT2]:
    base = install_lora(ctx.store.get(key))
    adapter = LoRAAdapter(base, LoRAConfig(rank=4), seed=0)
    with torch.no_grad():
        for b in adapter.lora_B.values():
            b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    return Session(model_key=key, adapter=adapter, adapter_base=key, use_finetuned=True), adapter, base


def test_adapter_changes_the_patterns_and_the_base_session_is_unaffected(tiny_dir):
    ctx = make_ctx(tiny_dir)  # its own store: installing LoRA wraps this base model's projections
    tuned, adapter, base = tuned_session(ctx, ctx.default_key)
    plain = ctx.new_session()
    want = attention_maps(base, gpt2.encode(TEXT), [1]).patterns[0, 0]
    tuned_fig, tuned_table, _ = show(ctx, tuned, layer=1)
    assert not np.allclose(z(tuned_fig), want, atol=1e-3)
    plain_fig, plain_table, _ = show(ctx, plain, layer=1)  # after the adapter ran: the base session sees the base
    np.testing.assert_allclose(z(plain_fig), want, atol=1e-6)
    assert not np.allclose(tuned_table["entropy"], plain_table["entropy"])
    assert not np.allclose(z(show(ctx, tuned, view=FOCUS)[0]), z(show(ctx, plain, view=FOCUS)[0]), atol=1e-3)
    tuned.use_finetuned = False  # toggled to the base: a text is read by the base model
    np.testing.assert_allclose(z(show(ctx, tuned, layer=1)[0]), want, atol=1e-6)
    # a generation made by the fine-tuned model is still read with its adapter after the toggle
    tuned.use_finetuned = True
    record = generated(ctx, tuned)
    assert record.finetuned
    tuned.use_finetuned = False
    fig, _, note = show(ctx, tuned, source="a generation", layer=1, step=None)  # None: the last step
    with use_adapter(adapter):
        np.testing.assert_allclose(z(fig), attention_maps(base, record.prompt_ids + record.token_ids, [1])
                                   .patterns[0, 0], atol=1e-5)
    tuned.adapter = tuned.adapter_base = None  # the fine-tuned model is gone: the base reads it, and says so
    fig, _, note = show(ctx, tuned, source="a generation", layer=1, step=None)  # None: the last step
    np.testing.assert_allclose(z(fig), attention_maps(base, record.prompt_ids + record.token_ids, [1])
                               .patterns[0, 0], atol=1e-5)
    assert "no longer has" in note


def test_sliders_follow_the_source_and_the_model_that_made_a_generation(ctx):
    session = ctx.new_session()
    n_text = len(gpt2.encode(TEXT))

    def maxima(source, record=LATEST, step=0):
        _, *sliders = logic.fit(ctx, session, TEXT, source, record, "one head", 0, 0, 0, step)
        return [s["maximum"] for s in sliders]  # step, layer, head, query

    assert maxima("text") == [1, 1, 1, n_text - 1]  # 0 steps, 2 layers, 2 heads (a slider shows 0..1 at least)
    assert maxima("a generation") == [1, 1, 1, 1]  # none yet: no error
    record = generated(ctx, session, n=5)
    p = len(record.prompt_ids)
    assert maxima("a generation", record.id, step=2) == [4, 1, 1, p + 2]  # the query covers the tokens shown
    session.model_key = "other"  # switched model: a text is read by it, the generation by its own model
    assert maxima("text") == [1, 2, 3, n_text - 1]
    assert maxima("a generation", step=4) == [4, 1, 1, p + 4]
    fig, _, _ = show(ctx, session, view=GRID, layer=2, head=3)
    assert len(fig.data) == 4
    with pytest.raises(UserError, match="layer must be a whole number from 0 to 1"):
        show(ctx, session, source="a generation", layer=2)


def test_fit_moves_only_values_out_of_range(ctx):
    session = ctx.new_session()
    n = len(gpt2.encode(TEXT))
    picker, step, layer, head, query = logic.fit(ctx, session, TEXT, "text", LATEST, "one head", 1, 1, 5, 0)
    assert picker["value"] == LATEST and picker["choices"] == records.choices(session)
    assert not any("value" in s.props for s in (step, layer, head, query))  # a user may be dragging them
    picker, _, layer, head, query = logic.fit(ctx, session, TEXT, "text", 123, FOCUS, 7, 1, 500, 0)
    assert (layer["value"], query["value"]) == (1, n - 1)  # clamped into the model and the text
    assert not layer["interactive"] and not head["interactive"]  # token focus
    assert picker["value"] == LATEST  # a generation that is not kept: the latest


def test_new_generations_are_followed_while_the_latest_is_shown(ctx):
    session = ctx.new_session()
    first = generated(ctx, session, n=4)
    values = dict(text=TEXT, layer=0, head=0, view="one head", query=0, step=0, scale=FITTED, width=None)
    picker, step, _, _, query, fig, table, note = logic.generated(ctx, session, source="a generation",
                                                                  record=LATEST, **values)
    assert picker["choices"] == records.choices(session) and picker["value"] == LATEST
    assert step["value"] == 3 and query["value"] == len(first.prompt_ids) + 3  # at the newest token
    assert f"Generation #{first.id}**, step 3" in note and len(table) == 4 and fig.data
    newer = generated(ctx, session, n=2)
    *_, fig, table, note = logic.generated(ctx, session, source="a generation", record=first.id, **values)
    assert (fig, table, note) == (KEEP, KEEP, KEEP)  # a generation the user chose stays drawn
    picker, *_, fig, _, _ = logic.generated(ctx, session, source="text", record=LATEST, **values)
    assert fig is KEEP and picker["choices"][1][1] == newer.id  # a text stays; the list is fresh


def test_inspect_opens_the_newest_generation(ctx):
    session = ctx.new_session()
    with pytest.raises(UserError, match="No generation yet"):
        logic.open_latest(ctx, session, 0, 0, "one head", FITTED, None)
    record = generated(ctx, session, n=5)
    opened = logic.open_latest(ctx, session, 1, 0, FOCUS, FITTED, 390)  # on a phone
    source, picker, step, layer, head, query, fig, table, note = opened
    assert source == "a generation" and picker["value"] == LATEST
    assert step["value"] == 4 and query["value"] == len(record.prompt_ids) + 4
    assert not layer["interactive"] and f"Generation #{record.id}**, step 4" in note and len(table) == 4
    assert fig.layout.title.text.endswith("· step 4") and fig.layout.height <= 390 + logic.SQUARE_PX


@pytest.mark.slow
def test_attention_endpoint_with_gradio_client(served):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(served.url, verbose=False)
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/attention"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == [*DRAWING, "scale"]  # `scale` added last
    assert [r["label"] for r in endpoint["returns"]] == ["attention", "heads", "note"]
    _, table, note = client.predict(TEXT, "text", None, 0, 1, "one head", 5, 0, api_name="/attention")
    assert len(table["data"]) == 4 and table["headers"] == logic.TABLE_COLUMNS  # `scale` left out: its default
    assert f"{len(gpt2.encode(TEXT))} tokens" in note
    plot, _, _ = client.predict(TEXT, "text", None, 0, 1, "one head", 5, 0, "0 to 1", api_name="/attention")
    assert '"cmax":1' in plot["plot"].replace(" ", "")
    client.predict("Hello there", 4, 0, 0, 1, 1, 0, "", api_name="/generate")
    _, _, note = client.predict("", "a generation", LATEST, 1, 0, "token focus", 1000, 3, api_name="/attention")
    assert "step 3" in note  # the client's session kept its generation
