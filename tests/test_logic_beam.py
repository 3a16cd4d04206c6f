"""The Beams tab's logic (``ui.logic.beam``), without a browser: real searches on the tiny random model."""

from __future__ import annotations

import html
import math
import re

import pytest
from conftest import drain, make_ctx

import gpt2
from gpt2.search import BeamParams, beam_search
from ui.inputs import UserError
from ui.logic import beam as logic
from ui.updates import KEEP

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "The cat sat"
SETTINGS = dict(prompt=PROMPT, num_beams=3, max_new_tokens=8, length_penalty=1.0, early_stopping="false",
                no_repeat_ngram_size=0, num_return_sequences=2)


@pytest.fixture()
def ctx(tiny_dir):
    return make_ctx(tiny_dir, max_new_tokens=30, max_beams=4, max_prompt_chars=2000)


def run(ctx, **changes):
    """The search's last outputs: (best, table, figure, greedy, sample, kept)."""
    return drain(logic.search(ctx, ctx.new_session(), **(SETTINGS | changes)))


@pytest.mark.parametrize("early", ["false", "true", "never", True, False, "NEVER"])
def test_the_best_text_and_scores_are_gpt2_beam_searchs(ctx, tiny_model, early):
    best, table, figure, _, _, kept = run(ctx, early_stopping=early, length_penalty=0.7)
    want = {"false": False, "true": True, "never": "never"}.get(str(early).lower(), early)
    params = BeamParams(num_beams=3, max_new_tokens=8, length_penalty=0.7, early_stopping=want,
                        num_return_sequences=2)
    expected = beam_search(tiny_model, gpt2.encode(PROMPT), params)
    ids = expected.sequences[0]
    assert best == gpt2.get_tokenizer().decode(ids[:-1] if ids[-1] == gpt2.EOT_ID else ids)
    # the same search; log-probs equal up to float rounding (the app's copy of the model keeps its head
    # column-major, which changes the GEMV's summation order on some CPUs)
    for mine, theirs in zip(kept.result.tree, expected.tree, strict=True):
        assert [(c.token_id, c.parent, c.status) for c in mine.candidates] == \
            [(c.token_id, c.parent, c.status) for c in theirs.candidates]
        for c, d in zip(mine.candidates, theirs.candidates, strict=True):
            assert (c.logprob, c.score) == (pytest.approx(d.logprob, rel=1e-5), pytest.approx(d.score, rel=1e-5))
    for score in expected.scores:  # both returned sequences, each with its normalised score
        assert f"| {score:.4f} |" in table
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "---" not in line] \
        == ["| #", "| 1", "| 2"]  # the header and the two returned sequences
    assert figure.layout.title.text.startswith("Beam search tree")


def test_greedy_and_the_sample_are_gpt2_generates_from_the_same_prompt(ctx, tiny_model):
    _, _, _, greedy, sample, _ = run(ctx, no_repeat_ngram_size=2)
    kw = dict(max_new_tokens=8, no_repeat_ngram_size=2)
    assert greedy == gpt2.generate_text(tiny_model, PROMPT, gpt2.SamplingParams(temperature=0, **kw))
    assert sample == gpt2.generate_text(tiny_model, PROMPT, gpt2.SamplingParams(
        temperature=logic.SAMPLE_TEMPERATURE, seed=logic.SAMPLE_SEED, **kw))
    assert greedy and sample and greedy != sample


def test_outputs_come_as_they_are_ready(ctx):
    outputs = list(logic.search(ctx, ctx.new_session(), **SETTINGS))
    assert outputs[0][:2] == ("", logic.SEARCHING) and outputs[0][2] is KEEP  # the old tree stays meanwhile
    assert outputs[1][0] and outputs[1][3:5] == ("…", "…")  # the search, then greedy, then the sample
    assert outputs[2][3] != "…" and outputs[2][4] == "…" and outputs[3][4] != "…"
    assert all(o[2] is outputs[1][2] for o in outputs[1:])  # the tree is in every later output (API callers)


@pytest.mark.parametrize(
    ("changes", "patterns"),
    [
        (dict(num_beams=5), ["num_beams", r"from 1 to 4 \(this server's limit"]),  # the cap, as make_ctx set it
        (dict(num_beams=0), ["num_beams", "from 1 to 4"]),
        (dict(num_beams=2.5), ["num_beams", "whole number"]),
        (dict(num_beams=True), ["num_beams", "whole number"]),
        (dict(num_return_sequences=4), ["num_return_sequences", r"num_beams \(3\)"]),
        (dict(num_return_sequences=0), ["num_return_sequences", "from 1"]),
        (dict(max_new_tokens=31), ["max_new_tokens", r"from 1 to 30 \(this server's limit"]),
        (dict(max_new_tokens=0), ["max_new_tokens", "from 1 to 30"]),
        (dict(length_penalty=math.nan), ["length_penalty", "from -10 to 10"]),
        (dict(length_penalty=1e9), ["length_penalty", "from -10 to 10"]),
        (dict(length_penalty="long"), ["length_penalty", "number"]),
        (dict(early_stopping="sometimes"), ["early_stopping", "'never'"]),
        (dict(early_stopping=None), ["early_stopping", "'true'"]),
        (dict(early_stopping=1), ["early_stopping", "'false'"]),
        (dict(no_repeat_ngram_size=-1), ["no_repeat_ngram_size", "from 0 to 16"]),
        (dict(no_repeat_ngram_size=17), ["no_repeat_ngram_size", "from 0 to 16"]),
    ],
)
def test_bad_settings_and_caps_are_refused_naming_the_parameter_before_any_work(ctx, changes, patterns):
    with pytest.raises(UserError) as err:
        next(logic.search(ctx, ctx.new_session(), **(SETTINGS | changes)))
    for pattern in patterns:
        assert re.search(pattern, str(err.value)), f"{pattern!r} not in {err.value}"


def test_the_step_slider_redraws_up_to_its_step_from_the_kept_search(ctx, monkeypatch):
    *_, kept = run(ctx)
    slider = logic.fit_steps(ctx, ctx.new_session(), kept)
    assert slider["value"] == slider["maximum"] == kept.steps - 1 and kept.steps > 2
    monkeypatch.setattr(ctx.gpu, "call", lambda *a, **k: pytest.fail("the model ran again"))
    fig = logic.show_step(ctx, ctx.new_session(), 1, kept)
    ys = {y for t in fig.data for y in (t.y or ()) if y is not None}
    assert max(ys) == 1 and f"steps 0 to 1 of {kept.steps}" in fig.layout.title.text
    hovers = " ".join(text for t in fig.data if t.name == "kept" for text in t.hovertext)
    step0 = kept.result.tree[0]
    for i in step0.kept:  # the tokens, as gpt2.token_display shows them
        token = step0.candidates[i].token_id
        assert f"token: <b>{html.escape(gpt2.token_display([token])[0], quote=False)}</b> (id {token})" in hovers
    with pytest.raises(UserError, match=rf"step must be a whole number from 0 to {kept.steps - 1}"):
        logic.show_step(ctx, ctx.new_session(), kept.steps, kept)


def test_before_any_search_the_slider_stays_and_the_tree_says_what_to_do(ctx):
    assert logic.fit_steps(ctx, ctx.new_session(), None) is KEEP
    assert "Run a search" in logic.show_step(ctx, ctx.new_session(), 3, None).layout.annotations[0].text


def test_a_long_prompt_is_cropped_to_leave_room_for_the_new_tokens(ctx, tiny_model):
    block = tiny_model.config.block_size
    text = " ".join(f"word{i}" for i in range(200))
    best, table, _, _, _, kept = run(ctx, prompt=text, max_new_tokens=20)
    assert f"cropped to its last {block + 1 - 20} tokens" in table and kept.steps == 20
    ids, _ = logic.search_prompt(text, ctx.caps, block, BeamParams(3, 20, num_return_sequences=2))
    assert best == logic.sequence_text(beam_search(tiny_model, ids, BeamParams(3, 20, num_return_sequences=2))
                                       .sequences[0])


def test_beams_times_positions_are_bounded(tiny_dir):
    """A search holds num_beams × (prompt + new tokens) positions: a long prompt is cropped to fit, and
    more beams × new tokens than the bound are refused (``GPT2_MAX_CACHE_POSITIONS``)."""
    ctx = make_ctx(tiny_dir, max_cache_positions=60)  # 3 beams: 20 positions each
    _, table, _, _, _, kept = run(ctx, prompt=" ".join(["word"] * 40))
    assert "cropped to its last 12 tokens: num_beams (3) × (prompt + 8 new tokens) must fit in this server's 60" \
        in table
    assert kept.prompt == " word" * 12
    with pytest.raises(UserError, match=r"num_beams × \(max_new_tokens \+ 1\) must be at most 60.*got 3 × 21"):
        next(logic.search(ctx, ctx.new_session(), **(SETTINGS | dict(max_new_tokens=20))))


def test_more_new_tokens_than_the_context_stop_when_it_is_full(tiny_dir, tiny_model):
    big = make_ctx(tiny_dir, max_new_tokens=100)
    _, table, _, greedy, _, kept = drain(logic.search(big, big.new_session(), **(SETTINGS | dict(max_new_tokens=100))))
    block = tiny_model.config.block_size
    assert kept.steps <= block and "context" in table
    assert len(gpt2.encode(greedy)) <= block + 2  # greedy is as long as the search could be (a re-encoding may differ)


def test_an_empty_prompt_starts_from_endoftext(ctx, tiny_model):
    best, _, _, _, _, kept = run(ctx, prompt="")
    expected = beam_search(tiny_model, [gpt2.EOT_ID], BeamParams(3, 8, num_return_sequences=2))
    assert best == logic.sequence_text(expected.sequences[0]) and "empty prompt" in kept.prompt


def test_table_cells_are_one_escaped_line():
    assert logic._cell("a|b\n<i>c</i> *d*") == r"a&#124;b↵&lt;i&gt;c&lt;/i&gt; \*d\*"
    assert logic._cell("") == "(empty)"
