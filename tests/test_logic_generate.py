"""The Generate tab's logic (``ui.logic.generate``), without a browser."""

from __future__ import annotations

import math

import pytest
from conftest import drain, make_ctx

import gpt2
from ui.inputs import UserError
from ui.logic import generate as logic
from ui.logic.generate import stream
from ui.session import LOGIT_RECORDS, Session


@pytest.fixture()
def ctx(tiny_dir):
    return make_ctx(tiny_dir, max_new_tokens=50, max_prompt_chars=500)


def run(ctx, session, prompt, **kw):
    params = gpt2.SamplingParams(**({"max_new_tokens": 12, "seed": 0, "stop_at_eos": False} | kw))
    return drain(stream(ctx, session, prompt, params))


SETTINGS = dict(prompt="Hello", max_new_tokens=10, temperature=0.8, top_k=40, top_p=1.0, repetition_penalty=1.0,
                seed=0, stop="")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((10, -1, 40, 1, 1, 0), "temperature"),
        ((10, math.nan, 40, 1, 1, 0), "temperature"),
        ((10, 1, 2.5, 1, 1, 0), "top_k"),
        ((10, 1, 40, 2, 1, 0), "top_p"),
        ((10, 1, 40, 1, 0, 0), "repetition_penalty"),
        ((51, 1, 40, 1, 1, 0), "from 1 to 50"),
        ((0, 1, 40, 1, 1, 0), "max_new_tokens"),
        ((10, 1, 40, 1, 1, 1.5), "seed"),
        ((10, "hot", 40, 1, 1, 0), "temperature must be a number"),
    ],
)
def test_bad_settings_are_refused_before_anything_changes(ctx, values, message):
    session = ctx.new_session()
    drain(logic.generate(ctx, session, **SETTINGS))
    settings = dict(zip(("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed"), values,
                        strict=True))
    with pytest.raises(UserError, match=message):
        next(logic.generate(ctx, session, **(SETTINGS | settings)))
    assert len(session.records) == 1  # nothing started, the last generation is still the latest


def test_generate_streams_the_text_the_prompt_view_and_stats(ctx, tiny_model):
    session = ctx.new_session()
    outputs = list(logic.generate(ctx, session, **(SETTINGS | {"temperature": 0})))
    text, stats, view = outputs[-1]
    expected = gpt2.generate_text(tiny_model, "Hello", gpt2.SamplingParams(temperature=0, max_new_tokens=10))
    assert text == expected and "10 tokens" in stats
    assert view == logic.view_html("Hello", text)  # the prompt shown, told apart from the generated text
    assert logic.view_html("<b>", "&") == ('<div class="generation"><span class="prompt">&lt;b&gt;</span>'
                                           '<span class="generated">&amp;</span></div>')
    assert session.record(None).text == text


def test_stop_ends_the_stream_and_says_so(ctx):
    session = ctx.new_session()
    steps = logic.generate(ctx, session, **(SETTINGS | {"max_new_tokens": 40, "stop": ""}))
    next(steps)
    logic.stop(ctx, session)
    *_, (text, stats, _) = steps
    assert "finished: stopped" in stats and len(session.record(None).token_ids) < 40


def test_compare_names_the_b_settings_and_shares_the_seed(ctx):
    session = ctx.new_session()
    a = dict(temperature_a=1.0, top_k_a=0, top_p_a=1.0, repetition_penalty_a=1.0)
    with pytest.raises(UserError, match="top_k_b"):
        next(logic.compare(ctx, session, prompt="Hi", max_new_tokens=5, **a, temperature_b=1.0, top_k_b=2.5,
                           top_p_b=1.0, repetition_penalty_b=1.0, seed=0, stop=""))
    text_a, text_b, stats = drain(logic.compare(ctx, session, prompt="Hi", max_new_tokens=5, **a,
                                                **{k.replace("_a", "_b"): v for k, v in a.items()}, seed=3, stop=""))
    assert text_a == text_b and stats.startswith("A:") and "B:" in stats  # same settings and seed: same text
    assert len(session.records) == 2


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
    assert ra.id == rb.id == 1  # each session numbers its own generations: no id is shared, none guessable
    assert [run(ctx, b, "Twice").record.id for _ in range(2)] == [2, 3] and a.record(None).id == 1


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
