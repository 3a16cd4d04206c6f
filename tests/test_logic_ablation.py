"""ui.logic.ablation: the Lab's "Knock out heads" as plain functions on tiny random models (no browser).

The tiny models have no induction heads, so the mechanism is tested on them against a direct computation
with ``gpt2.Edit``, and the induction effect itself (the second copy of a repeated text getting harder once
the induction heads are gone) on the bundled ``induction-demo``, which has them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_ctx, random_model

import gpt2
from gpt2.inspection import attention_maps, head_scores, repeated_probe
from ui.inputs import UserError
from ui.logic import ablation as logic
from ui.logic.attention import REPEAT_LENGTH, head_table

TEXT = "The cat sat on the mat. The cat sat on the mat."


@pytest.fixture(scope="module")
def model() -> gpt2.GPT2:
    """A tiny model with larger weights than the default init, so knocking out a head shows."""
    m = random_model(gpt2.GPTConfig.preset("tiny", n_layer=3, n_head=4), seed=3)
    with torch.no_grad():
        for block in m.transformer.h:
            block.attn.c_proj.weight.mul_(20)
    return m


@pytest.fixture(scope="module")
def ctx(model, tmp_path_factory):
    return make_ctx(model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny34"), max_attribution_tokens=40)


@pytest.fixture()
def session(ctx):
    return ctx.new_session()


def _direct_losses(model, ids, edit):
    seq = torch.tensor([[gpt2.EOT_ID, *ids]])
    with torch.no_grad():
        logp = model(seq, edit=edit)[0].float().log_softmax(-1)
    return -logp[:-1].gather(-1, seq[0, 1:, None])[:, 0].numpy(), logp[-1].exp().numpy()


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_the_loss_change_is_a_direct_computation_with_the_edit(ctx, session, model, mode):
    ids = gpt2.encode(TEXT)
    heads = {0: [1, 3], 2: [0]}
    scored = ctx.gpu.call(logic.score_job, ctx.ref(session), ids, heads, mode)
    before, next_before = _direct_losses(model, ids, None)
    after, next_after = _direct_losses(model, ids, gpt2.Edit(ablate_heads=heads, mode=mode))
    np.testing.assert_allclose(scored.loss_before, before, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scored.loss_after, after, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scored.next_after, next_after, rtol=1e-5, atol=1e-6)
    assert np.abs(scored.loss_after - scored.loss_before).max() > 1e-3  # the knock-out changed something
    plain, _ = _direct_losses(model, ids, None)  # and the shared model is unchanged afterwards
    np.testing.assert_array_equal(plain, before)


def test_ablate_reports_what_the_jobs_computed(ctx, session, model):
    summary, candidates, loss, plain, edited = logic.ablate(ctx, session, TEXT, "0.1, 2.*", "zero", 6, 5)
    ids = gpt2.encode(TEXT)
    before, _ = _direct_losses(model, ids, None)
    after, _ = _direct_losses(model, ids, gpt2.Edit(ablate_heads={0: [1], 2: [0, 1, 2, 3]}))
    assert "L0.H1, L2.H0, L2.H1, L2.H2, L2.H3" in summary
    assert f"{before.mean():.3f} → {after.mean():.3f}" in summary
    assert "seed (5)" in summary
    np.testing.assert_allclose(loss.data[1].y, before, rtol=1e-5, atol=1e-5)  # the "before" line
    np.testing.assert_allclose(loss.data[2].y, after, rtol=1e-5, atol=1e-5)
    assert {t.name for t in candidates.data} == {"before", "after"}
    params = gpt2.SamplingParams(max_new_tokens=6, seed=5)
    assert plain == gpt2.generate_text(model, TEXT, params)
    edit = gpt2.Edit(ablate_heads={0: [1], 2: [0, 1, 2, 3]})
    assert edited == "".join(s.text for s in gpt2.generate(model, ids, params, edit=edit))


def test_with_no_heads_the_regeneration_is_the_plain_one(ctx, session, model):
    summary, _, loss, plain, edited = logic.ablate(ctx, session, TEXT, "", "mean", 8, 11)
    assert plain == edited == gpt2.generate_text(model, TEXT, gpt2.SamplingParams(max_new_tokens=8, seed=11))
    assert "No heads knocked out" in summary
    np.testing.assert_array_equal(loss.data[1].y, loss.data[2].y)


def test_a_repeated_text_reports_its_second_copy(ctx, session):
    ids = gpt2.encode(" a b c d e f")
    text = gpt2.get_tokenizer().decode(ids + ids)
    summary = logic.ablate(ctx, session, text, "1.0", "zero", 1, 0)[0]
    assert "Second copy" in summary
    assert logic.repeated_half(ids + ids) == len(ids) and logic.repeated_half(ids) is None


def test_a_long_text_is_cropped_to_the_cap_with_a_notice(ctx, session):
    summary = logic.ablate(ctx, session, "the cat " * 100, "", "zero", 1, 0)[0]
    assert "last 40 tokens" in summary and "over 40 tokens" in summary


def test_presets_pick_the_top_heads_of_the_head_table(ctx, session, model):
    ids = repeated_probe(model, min(REPEAT_LENGTH, model.config.block_size // 2), logic.PROBE_SEED)
    scores = head_scores(attention_maps(model, ids))
    for preset, values in ((logic.TOP_INDUCTION, scores.induction), (logic.TOP_PREVIOUS, scores.previous_token)):
        flat = values.ravel().round(3)  # as the head table shows them: ties go to the first in the table
        best = np.argsort(-flat, kind="stable")[: logic.TOP_K]
        expected = {}
        for i in sorted(best):
            expected.setdefault(int(i) // 4, []).append(int(i) % 4)
        got = logic.preset_heads(ctx, session, preset)
        assert got == expected, preset
        assert sum(map(len, got.values())) == logic.TOP_K
    assert logic.preset_heads(ctx, session, "all heads of layer 2") == {2: [0, 1, 2, 3]}
    assert logic.preset_heads(ctx, session, "none") == {}
    assert logic.preset(ctx, session, "all heads of layer 1")["value"] == ["1.0", "1.1", "1.2", "1.3"]
    with pytest.raises(UserError, match="preset"):
        logic.preset_heads(ctx, session, "all heads of layer 3")


def test_top_heads_orders_by_the_column_with_missing_scores_last(model):
    table = head_table(model, gpt2.encode("no token repeats here"))  # induction: NaN everywhere
    table.loc[5, "previous-token"] = 9.0
    assert logic.top_heads(table, "previous-token", 1) == {1: [1]}
    assert sum(map(len, logic.top_heads(table, "induction").values())) == logic.TOP_K


def test_the_attention_link_preselects_its_head(ctx, session):
    update = logic.preselect(ctx, session, "2.3")
    assert update["value"] == ["2.3"]
    assert update["choices"][:2] == [("L0.H0", "0.0"), ("L0.H1", "0.1")] and len(update["choices"]) == 12
    with pytest.raises(UserError, match=r"layer 7 .*0 to 2"):
        logic.preselect(ctx, session, "7.0")


def test_fit_keeps_the_heads_the_model_has(ctx, session):
    toggles, presets = logic.fit(ctx, session, ["0.1", "9.9", "2.3"], "all heads of layer 5")
    assert toggles["value"] == ["0.1", "2.3"]
    assert presets["choices"][-1] == "all heads of layer 2" and presets["value"] == "none"
    toggles, presets = logic.fit(ctx, session, ["0.1"], "all heads of layer 2")
    assert "value" not in toggles.props and "value" not in presets.props  # nothing to change: nothing raced


@pytest.mark.parametrize(("value", "expected"), [
    ("", {}), (None, {}), ("1.3, 0.0", {0: [0], 1: [3]}), ("L1.H3 l1.h2;0.1", {0: [1], 1: [2, 3]}),
    ("2.*", {2: [0, 1, 2, 3]}), (["1.1", "1.1"], {1: [1]}),
])
def test_heads_are_parsed(value, expected):
    assert logic.parse_heads(value, 3, 4) == expected
    assert logic.parse_heads(logic.heads_text(expected), 3, 4) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("1-3", r"heads must be layer\.head pairs.*'1-3'"), ("1.", "not a layer.head pair"), ("a.b", "heads must"),
    ("3.0", r"layer 3 .*0 to 2"), ("0.4", r"head 4 .*0 to 3"), ("-1.0", "heads must"), (12, "heads must"),
    ([1.5], "heads must"),
])
def test_bad_heads_are_refused_by_name(value, message):
    with pytest.raises(UserError, match=message):
        logic.parse_heads(value, 3, 4)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(mode="half"), r"mode must be one of 'zero', 'mean'"), (dict(text=""), "text is empty"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(max_new_tokens=float("nan")), "max_new_tokens"),
    (dict(seed=2.5), "seed"), (dict(heads="0.9"), r"head 9"),
])
def test_bad_requests_are_refused_by_name(ctx, session, kwargs, message):
    values = dict(text=TEXT, heads="0.1", mode="zero", max_new_tokens=2, seed=0) | kwargs
    with pytest.raises(UserError, match=message):
        logic.ablate(ctx, session, **values)


def test_the_probe_fits_the_cap_and_the_context(ctx, session, model):
    for _ in range(20):  # random probes: some decode to text that encodes to more tokens
        ids = gpt2.encode(logic.repeated(ctx, session))
        assert 30 <= len(ids) <= 40  # the cap of this context (max_attribution_tokens=40)
    ref = ctx.ref(session)
    assert logic.probe_text(ctx, ref, 1) == logic.probe_text(ctx, ref, 1)


DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "induction-demo"


@pytest.fixture(scope="module")
def demo_ctx():
    return make_ctx(DEMO)


@pytest.mark.parametrize("seed", [logic.EXAMPLE_SEED, 2, 3])
def test_knocking_out_the_demo_models_induction_heads_raises_the_second_copys_loss(demo_ctx, seed):
    """The bundled induction demo on the probe the section starts with: its top induction heads (the preset)
    carry the copying, so knocking them out makes the second copy much harder and the first barely changes."""
    session = demo_ctx.new_session()
    ref = demo_ctx.ref(session)
    ids = gpt2.encode(logic.probe_text(demo_ctx, ref, seed))
    half = logic.repeated_half(ids)
    assert half is not None and half >= 20
    heads = logic.preset_heads(demo_ctx, session, logic.TOP_INDUCTION)
    scored = demo_ctx.gpu.call(logic.score_job, ref, ids, heads, "zero")
    second = float(scored.loss_before[half + 1:].mean())
    rise_second = float(scored.loss_after[half + 1:].mean()) - second
    rise_first = float(scored.loss_after[:half].mean() - scored.loss_before[:half].mean())
    assert second < float(scored.loss_before[:half].mean()) - 2.0  # it copies: the second copy is easy
    assert rise_second >= 2.0 and rise_first < rise_second / 2, (rise_second, rise_first)
