"""The Generate tab's handlers and the shared model store, without a browser."""

from __future__ import annotations

import math
import threading

import gradio as gr
import pytest

import gpt2
from ui.context import AppContext, Caps
from ui.generate_tab import parse_params, prepare_prompt, stream
from ui.models import ModelStore, catalog
from ui.session import LOGIT_RECORDS, Session


@pytest.fixture()
def ctx(tiny_dir):
    entries = catalog(extra=tiny_dir)
    return AppContext(ModelStore(entries), default_key=tiny_dir, caps=Caps(max_new_tokens=50, max_prompt_chars=500))


def run(ctx, session, prompt, **kw):
    params = gpt2.SamplingParams(**({"max_new_tokens": 12, "seed": 0, "stop_at_eos": False} | kw))
    return list(stream(ctx, session, prompt, params))[-1]


def test_catalog_offers_hub_sizes_and_the_operator_model(tiny_dir):
    entries = catalog(extra=tiny_dir)
    assert {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"} <= set(entries)
    assert entries[tiny_dir].source == tiny_dir


def test_store_refuses_keys_outside_the_catalog_and_loads_once(ctx, tiny_dir):
    with pytest.raises(KeyError, match="not one of the offered models"):
        ctx.store.get("/etc")
    models = []
    threads = [threading.Thread(target=lambda: models.append(ctx.store.get(tiny_dir))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(m is models[0] for m in models) and not any(p.requires_grad for p in models[0].parameters())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((10, -1, 40, 1, 1, 0), "temperature"),
        ((10, math.nan, 40, 1, 1, 0), "temperature"),
        ((10, 1, 2.5, 1, 1, 0), "top_k"),
        ((10, 1, 40, 2, 1, 0), "top_p"),
        ((10, 1, 40, 1, 0, 0), "repetition_penalty"),
        ((51, 1, 40, 1, 1, 0), "at most 50"),
        ((0, 1, 40, 1, 1, 0), "max_new_tokens"),
        ((10, 1, 40, 1, 1, 1.5), "seed"),
        ((10, "hot", 40, 1, 1, 0), "temperature must be a number"),
    ],
)
def test_bad_parameters_give_clear_errors(ctx, values, message):
    with pytest.raises(gr.Error, match=message):
        parse_params(ctx.caps, *values)


def test_widget_values_are_converted():
    p = parse_params(Caps(), 20.0, 0.7, 40.0, 0.9, 1.1, -1, "END\n\\n\\n")
    assert (p.max_new_tokens, p.top_k, p.seed, p.stop) == (20, 40, None, ("END", "\n\n"))
    assert parse_params(Caps(), 20, 0, 0, 1, 1, None).seed is None


def test_prompts_are_cleaned_and_cropped():
    caps = Caps(max_prompt_chars=100)
    ids, notice = prepare_prompt("x" * 1000, caps, block_size=1024)
    assert "100 characters" in notice and gpt2.get_tokenizer().decode(ids) == "x" * 100
    ids, notice = prepare_prompt("hello " * 15, caps, block_size=8)
    assert len(ids) == 8 and "8 tokens" in notice
    ids, notice = prepare_prompt("bad \ud800 surrogate", caps, block_size=64)
    assert notice is None and "\ufffd" in gpt2.get_tokenizer().decode(ids)
    assert prepare_prompt(None, caps, 64) == ([], None)


def test_stream_keeps_a_record_with_step_details(ctx, tiny_model):
    session = ctx.new_session()
    last = run(ctx, session, "Hello", temperature=0)
    record = session.record(None)
    assert record is last.record and len(record.token_ids) == 12
    expected = [s.token_id for s in gpt2.generate(tiny_model, gpt2.encode("Hello"), record.params)]
    assert record.token_ids == expected
    assert record.text == gpt2.get_tokenizer().decode(expected)
    assert all(d.logits is not None and d.logits.dtype.name == "float16" for d in record.steps)
    assert "12 tokens" in last.stats() and "finished: length" in last.stats()


def test_only_the_latest_records_keep_logits(ctx):
    session = ctx.new_session()
    for i in range(LOGIT_RECORDS + 2):
        run(ctx, session, f"text {i}")
    kept = [all(d.logits is not None for d in r.steps) for r in session.records]
    assert kept == [False, False] + [True] * LOGIT_RECORDS


def test_sessions_are_independent_and_seeds_reproduce(ctx):
    a, b = ctx.new_session(), ctx.new_session()
    ra = run(ctx, a, "Once", temperature=1.0).record
    rb = run(ctx, b, "Once", temperature=1.0).record
    assert ra.token_ids == rb.token_ids and len(a.records) == len(b.records) == 1


def test_session_close_stops_work_and_frees_records(ctx):
    session = ctx.new_session()
    run(ctx, session, "Hi")
    session.close()
    assert session.stop.is_set() and not session.records


def test_stop_mid_stream_keeps_the_partial_record(ctx):
    session = Session(model_key=ctx.default_key)
    params = gpt2.SamplingParams(max_new_tokens=40, seed=0, stop_at_eos=False)
    it = stream(ctx, session, "Hi", params)
    for _ in range(5):
        next(it)
    it.close()  # what Gradio does when the user leaves or the stream is cancelled
    assert len(session.record(None).token_ids) == 5
