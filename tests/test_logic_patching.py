"""The Lab's activation patching (``ui.logic.patching``): the grid is the core's, the prompts are checked
(token counts, the cap, empty, identical) with messages that name them, the live token view marks the
differing tokens, target and foil are filled from the argmax, and the heatmap's hover tells the numbers."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import drain, make_ctx

import gpt2
from ui.figures_lab import patch_row_names, patching_heatmap
from ui.inputs import UserError
from ui.logic import patching

CLEAN, CORRUPTED = "The cat sat on the mat and", "The dog sat on the mat and"


@pytest.fixture()
def ctx(tiny_dir):
    return make_ctx(tiny_dir, max_patch_tokens=12)


def _ids(text: str) -> list[int]:
    return gpt2.encode(text)


def test_the_grid_is_the_cores_and_streams_row_by_row(ctx):
    model = ctx.base(ctx.default_key)
    target, foil = _ids(" the")[0], _ids(" a")[0]
    items = list(patching.patch(ctx, ctx.new_session(), CLEAN, CORRUPTED, " the", " a"))
    n_layer = model.config.n_layer
    assert len(items) == 1 + n_layer + 1  # "Patching…", then one update per row
    assert items[0] == ("Patching…", None)
    summary, fig = items[-1]
    expected = gpt2.patch_residual(model, _ids(CLEAN), _ids(CORRUPTED), target, foil)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), expected, rtol=1e-6, atol=1e-9)
    assert list(fig.data[0].y) == patch_row_names(n_layer) == ["embeddings", "after layer 0", "after layer 1"]
    # the first row alone, the others blank, while it streams
    first = np.asarray(items[1][1].data[0].z, dtype=float)
    np.testing.assert_allclose(first[0], expected[0], rtol=1e-6, atol=1e-9)
    assert np.isnan(first[1:]).all() and "1 of 3 rows" in items[1][1].layout.title.text
    assert "Patching… 1 of 3 rows" in items[1][0]
    # the LDs stated are the model's own, and the best cell is the grid's largest
    with torch.no_grad():
        lds = [(lg[0, -1, target] - lg[0, -1, foil]).item()
               for lg in (model(torch.tensor([_ids(t)])) for t in (CLEAN, CORRUPTED))]
    assert f"clean **{lds[0]:.3f}**, corrupted **{lds[1]:.3f}**" in summary
    # the best cell leaves out the last row, whose last position is always 1
    np.testing.assert_allclose(expected[-1], [0] * (len(expected[-1]) - 1) + [1], atol=1e-5)
    layer, pos = np.unravel_index(np.argmax(expected[:-1]), expected[:-1].shape)
    assert f"{patch_row_names(n_layer)[layer]}, position {pos} (" in summary
    assert f"**{expected[layer, pos]:.3f}** recovered" in summary


def test_the_diff_view_marks_the_differing_tokens(ctx):
    assert patching.differing([1, 2, 3, 4], [1, 9, 3, 8]) == [1, 3]
    view = patching.diff_view(ctx, CLEAN, CORRUPTED)
    marked = re.findall(r'class="patch-tok patch-diff"[^>]*title="position (\d+)">([^<]*)<', view)
    assert marked == [("1", "␣cat"), ("1", "␣dog")]
    assert view.count('class="patch-tok"') == 2 * (len(_ids(CLEAN)) - 1)
    assert "7 tokens each; 1 differ (position 1)" in view
    # markup in a prompt is shown as text
    assert "<b>x</b>" not in patching.diff_view(ctx, "<b>x</b>", "<i>x</i>")


def test_different_lengths_are_named_live_and_refused(ctx):
    short = "The dog sat"
    view = patching.diff_view(ctx, CLEAN, short)
    assert "clean has 7 tokens, corrupted has 3" in view
    # the tokens past the shorter prompt count as differing (clean's row, then corrupted's)
    assert re.findall(r'patch-diff"[^>]*title="position (\d+)"', view) == ["1", "3", "4", "5", "6", "1"]
    with pytest.raises(UserError, match=r"same number of tokens: clean has 7, corrupted has 3"):
        drain(patching.patch(ctx, ctx.new_session(), CLEAN, short, " the", " a"))


@pytest.mark.parametrize(("clean", "corrupted", "message"), [
    ("", CORRUPTED, r"^clean \(the clean prompt\) is empty"),
    (CLEAN, None, r"^corrupted \(the corrupted prompt\) is empty"),
    (" word" * 13, " word" * 13, r"^clean .* at most 12 tokens .*it has 13\. .*not cropped"),
    (CLEAN, " word" * 40, r"^corrupted .* at most 12 tokens .*it has 40"),
    (CLEAN, "x" * 30_000, r"^corrupted .* at most 12 tokens .*30,000 characters"),
    (CLEAN, CLEAN, r"same tokens: there is no difference"),
])
def test_bad_prompts_are_refused_by_name(ctx, clean, corrupted, message):
    with pytest.raises(UserError, match=message):
        patching.pair(ctx, clean, corrupted)
    with pytest.raises(UserError, match=message):
        drain(patching.patch(ctx, ctx.new_session(), clean, corrupted, " the", " a"))
    if corrupted is not None and len(corrupted) < 1000:
        assert "⚠" in patching.diff_view(ctx, clean, corrupted)


@pytest.mark.parametrize(("target", "foil", "message"), [
    (" the cat", " a", r"^target must be a single token; ' the cat' is 2 tokens"),
    (" the", "#50257", r"^foil must be .*0 to 50256"),
    (" the", "#nan", r"^foil must be"),
    (float("nan"), " a", r"^target must be"),
    (" the", "", r"^foil is required"),
    (" the", "#262", r"target and foil must be different tokens"),  # 262: " the"
])
def test_bad_target_and_foil(ctx, target, foil, message):
    with pytest.raises(UserError, match=message):
        drain(patching.patch(ctx, ctx.new_session(), CLEAN, CORRUPTED, target, foil))


def test_fill_from_top_takes_each_prompts_argmax(ctx):
    model = ctx.base(ctx.default_key)
    with torch.no_grad():
        tops = [model(torch.tensor([_ids(t)]))[0, -1].topk(2).indices.tolist() for t in (CLEAN, CORRUPTED)]
    target, foil, note = patching.fill_from_top(ctx, ctx.new_session(), CLEAN, CORRUPTED)
    vocab = model.config.vocab_size
    assert patching.token("target", target, vocab) == tops[0][0]
    want_foil = tops[1][0] if tops[1][0] != tops[0][0] else tops[1][1]
    assert patching.token("foil", foil, vocab) == want_foil
    assert "top prediction" in note
    with pytest.raises(UserError, match="clean has 7, corrupted has 3"):
        patching.fill_from_top(ctx, ctx.new_session(), CLEAN, "The dog sat")


def test_a_filled_token_reads_back_as_itself():
    for token_id in (262, 464, 50256, 30209, 0, 220):
        assert patching.token("target", patching._label(token_id), 50257) == token_id


def test_the_cores_refusal_becomes_a_message(ctx, monkeypatch):
    def same(*args):
        raise ValueError("the clean and corrupted prompts give the same logit difference (1.5)")
        yield

    monkeypatch.setattr(gpt2, "patch_residual_steps", same)
    with pytest.raises(UserError, match=r"^The clean and corrupted prompts give the same logit difference"):
        drain(patching.patch(ctx, ctx.new_session(), CLEAN, CORRUPTED, " the", " a"))


def test_the_heatmap_hover_tells_the_cell():
    grid = np.array([[0.0, 1.0, 0.0], [0.0, 0.25, -0.5]])
    fig = patching_heatmap(grid, ["A", "␣cat", "<b>"], ["A", "␣dog", "<b>"], 3.0, -1.0, n_layer=2)
    heat = fig.data[0]
    assert heat.zmid == 0 and heat.zmin == -1 and heat.zmax == 1 and heat.colorscale[0][1] != heat.colorscale[-1][1]
    assert heat.text[1][1] == "after layer 0 · position 1: ␣cat → ␣dog<br>recovered 0.250<br>patched LD 0.000"
    assert heat.text[1][2] == "after layer 0 · position 2: &lt;b&gt;<br>recovered -0.500<br>patched LD -3.000"
    assert heat.text[2][0].endswith("not patched yet") and "2 of 3 rows" in fig.layout.title.text
    assert list(heat.x) == ["0:A", "1:␣cat", "2:&lt;b&gt;"]
    wide = patching_heatmap(np.array([[0.0, 2.5]]), ["a", "b"], ["a", "c"], 1.0, 0.0, n_layer=0)
    assert wide.data[0].zmax == 2.5 and wide.data[0].zmin == -2.5  # symmetric, so 0 stays white
    with pytest.raises(ValueError, match="grid must be"):
        patching_heatmap(np.zeros((2, 3)), ["a", "b"], ["a", "b"], 1.0, 0.0, n_layer=1)


def test_the_models_context_bounds_the_prompts_too(tiny_dir):
    ctx = make_ctx(tiny_dir, max_patch_tokens=1000)  # the tiny model's context: 64 tokens
    with pytest.raises(UserError, match=r"^clean .* at most 64 tokens \(the model's context\); it has 65"):
        drain(patching.patch(ctx, ctx.new_session(), " word" * 65, " words" * 65, " the", " a"))
