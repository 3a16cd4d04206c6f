"""ui.logic.attribution and its figures in ui.figures_lab: the Lab's attribution section as plain functions on the
tiny random model (no browser): the scores are the core's, a generation's step explains the token chosen
there from what the model had read, the caps hold, the HTML is escaped, the figures have their shapes."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
import torch
from conftest import drain, make_ctx

import gpt2
from gpt2.attribution import attribute
from gpt2.attribution import score as explained
from gpt2.interventions import direct_logit_attribution
from ui import figures_lab as figures
from ui.inputs import LATEST, UserError
from ui.logic import attribution as logic
from ui.logic.generate import stream
from ui.session import Session

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT, TARGET = logic.EXAMPLE, logic.EXAMPLE_TARGET
TINY = gpt2.GPTConfig.preset("tiny")


@pytest.fixture(scope="module")
def ctx(tiny_dir):
    return make_ctx(tiny_dir, max_attribution_tokens=8, max_attribution_steps=16)


@pytest.fixture()
def session(ctx) -> Session:
    return ctx.new_session()


def run(ctx, session, **changes):
    """``/attribute`` with the page's defaults, some changed: (summary, html, bars, dla)."""
    values = dict(text="The cat sat on the", target=" mat", foil="", method="gradient_x_input", steps=4,
                  record=LATEST, step=0, source="text") | changes
    return logic.attribute_tokens(ctx, session, **values)


def generated(ctx, session, prompt="Once upon a time", n=5):
    drain(stream(ctx, session, prompt, gpt2.SamplingParams(temperature=0, max_new_tokens=n)))
    return session.records[-1]


@pytest.mark.parametrize("method", logic.METHODS)
def test_the_scores_are_the_cores(ctx, session, tiny_model, method):
    ids, target, foil = gpt2.encode("The cat sat on the"), gpt2.encode(" mat")[0], gpt2.encode(" hat")[0]
    found = logic.attribution_job(tiny_model, ids, target, foil, method, 4)
    np.testing.assert_allclose(found.scores, attribute(tiny_model, ids, target, method=method, foil_id=foil, steps=4))
    dla = direct_logit_attribution(tiny_model, ids, target, foil)
    np.testing.assert_allclose(found.dla.heads, dla.heads)
    np.testing.assert_allclose(found.dla.total, dla.total)
    with torch.no_grad():
        assert found.score == pytest.approx(explained(tiny_model, torch.tensor([ids]), target, foil).item(), abs=1e-5)
    q = logic.question(ctx, session, "text", "The cat sat on the", " mat", " hat", method, 4, LATEST, 0)
    assert (q.ids, q.target, q.foil, q.method, q.steps) == (ids, target, foil, method, 4)
    summary, text, bars, dla_fig = logic.explain(ctx, q)
    np.testing.assert_allclose(bars.data[0].x, found.scores, rtol=1e-5, atol=1e-6)  # the app's run: the same scores
    assert logic.METHOD_LABELS[method] in summary and "`␣mat` (#" in summary and "foil `␣hat`" in summary


def test_a_generation_step_explains_the_token_chosen_there(ctx, session):
    rec = generated(ctx, session, "Once upon a time there was")
    q = logic.question(ctx, session, "a generation", "ignored", "ignored", None, "occlusion", 4, LATEST, 3)
    prompt = gpt2.encode("Once upon a time there was")
    assert q.ids == (prompt + rec.token_ids[:3])[-8:]  # the prompt and the tokens before, cropped to the cap
    assert q.target == rec.token_ids[3] and q.record_id == rec.id and q.step == 3
    assert any("cropped to its last 8 tokens" in n for n in q.notes)
    q0 = logic.question(ctx, session, "a generation", "", "", "", "occlusion", 4, rec.id, 0)
    assert q0.ids == prompt and q0.target == rec.token_ids[0] and not q0.notes
    summary, *_ = run(ctx, session, source="a generation", record=rec.id, step=1)
    assert f"Generation #{rec.id}**, step 1" in summary
    with pytest.raises(UserError, match=r"step must be a whole number from 0 to 4 \(generation #1 has 5"):
        run(ctx, session, source="a generation", record=rec.id, step=5)
    with pytest.raises(UserError, match="no longer kept"):
        run(ctx, session, source="a generation", record=99)
    with pytest.raises(UserError, match="foil must differ"):
        run(ctx, session, source="a generation", step=0, foil=f"#{rec.token_ids[0]}")


def test_no_generation_yet_says_what_to_do(ctx, session):
    with pytest.raises(UserError, match="generate a text in the Generate tab first"):
        run(ctx, session, source="a generation")


def test_caps_and_bad_values(ctx, session):
    long = " ".join(f"word{i}" for i in range(12))  # within the model's context, over the cap of 8
    q = logic.question(ctx, session, "text", long, " mat", "", "occlusion", 1, LATEST, 0)
    assert q.ids == gpt2.encode(long)[-8:] and q.notes == [f"Text cropped to its last 8 tokens (this server's limit "
                                                           f"for attribution): the first {len(gpt2.encode(long)) - 8} "
                                                           "are not attributed."]
    summary, text, bars, dla = run(ctx, session, text=long, method="occlusion")
    assert "> Text cropped to its last 8 tokens" in summary and len(bars.data[0].x) == 8
    bad = {"steps": [(0, r"steps must be .*1 to 16"), (17, "1 to 16"), (float("nan"), "steps"), (2.5, "steps"),
                     (True, "steps")],
           "method": [("saliency", "method must be one of 'gradient_x_input'"), (None, "method")],
           "target": [(" a cat", "target must be a single token; ' a cat' is 2 tokens"), ("", "target is required"),
                      (TINY.vocab_size, "target.*50256"), ("#-1", "target"), (None, "target is required")],
           "foil": [(" two words", "foil must be a single token"), (" mat", "foil must differ")],
           "text": [("", "text is empty")],
           "source": [("a file", "source must be one of 'text', 'a generation'")]}
    for name, cases in bad.items():
        for value, message in cases:
            with pytest.raises(UserError, match=message):
                run(ctx, session, **{name: value})


def test_the_coloured_text_escapes_every_token_and_states_each_value():
    text = "<b>x</b> & \"y\" <script>"
    ids = gpt2.encode(text)
    scores = np.linspace(-1, 2, len(ids))
    out = logic.colored_text(ids, scores, gpt2.encode("<")[0])
    assert "<b>" not in out and "<script" not in out and "</b>" not in out
    spans = re.findall(r'<span class="attr-tok" style="background: rgba\(([^)]*)\)[^"]*" title="([^"]*)">([^<]*)'
                       "</span>", out)
    assert len(spans) == len(ids) and "".join(html.unescape(t) for _, _, t in spans) == text
    assert html.unescape(spans[-1][1]).endswith("+2") and html.unescape(spans[0][1]).endswith("-1")
    assert spans[-1][0].endswith("0.500") and spans[0][0].startswith("178")  # strongest: most saturated; red
    assert 'class="attr-target"' in out and out.count("<span") == len(ids) + 3  # + the target + the legend's two
    assert "&lt;" in re.search(r'class="attr-target"[^>]*>([^<]*)<', out).group(1)
    with pytest.raises(ValueError, match="one value per token"):
        logic.colored_text(ids, scores[:-1], 0)


def test_the_dla_figure_has_a_cell_per_head_and_a_bar_per_mlp():
    heads, mlps = np.arange(12.0).reshape(3, 4) - 6, np.array([1.0, -2.0, 0.5])
    fig = figures.logit_attribution(heads, mlps, 0.25, -0.5, heads.sum() + mlps.sum() - 0.25, " York", " Paris")
    heat, bars = fig.data
    assert np.asarray(heat.z).shape == (3, 4) and list(heat.y) == ["L0", "L1", "L2"] and len(heat.x) == 4
    assert list(bars.x) == [1.0, -2.0, 0.5] and list(bars.y) == list(heat.y)
    assert fig.layout.coloraxis.cmin == -6 and fig.layout.coloraxis.cmax == 6  # symmetric: 0 is the middle
    assert "logit('␣York')" not in fig.layout.title.text and "logit(' York') − logit(' Paris')" in fig.layout.title.text
    assert "actual: -6.75" in fig.layout.title.text and "= -6.75" in fig.layout.title.text
    with pytest.raises(ValueError, match="mlps must have 3 values"):
        figures.logit_attribution(heads, mlps[:2], 0, 0, 0, "a")


def test_the_bar_chart_colours_by_sign_and_escapes_labels():
    fig = figures.attribution_bars(["<i>", "b"], np.array([0.5, -0.25]), "<t>", None, "occlusion")
    (bar,) = fig.data
    assert list(bar.marker.color) == [figures.ATTR_POSITIVE, figures.ATTR_NEGATIVE]
    assert list(bar.y) == ["0:&lt;i&gt;", "1:b"]  # escaped, one category per position
    assert "occlusion" in fig.layout.title.text and "&lt;t&gt;" in fig.layout.title.text
    assert "No tokens" in figures.attribution_bars([], np.array([]), "t").layout.annotations[0].text


def test_the_app_run_matches_the_dla_of_the_model(ctx, session, tiny_model):
    """The section's DLA figure carries the core's numbers: heads n_layer × n_head, and the true total."""
    _, _, _, fig = run(ctx, session, foil=" hat")
    ids, target, foil = gpt2.encode("The cat sat on the"), gpt2.encode(" mat")[0], gpt2.encode(" hat")[0]
    dla = direct_logit_attribution(tiny_model, ids, target, foil)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), dla.heads, rtol=1e-5, atol=1e-8)  # float rounding only
    assert np.asarray(fig.data[0].z).shape == (TINY.n_layer, TINY.n_head)
    assert f"actual: {dla.total:.4g}" in fig.layout.title.text


def test_the_step_slider_follows_the_picked_generation(ctx, session):
    assert logic.step_range(ctx, session, LATEST, 3).props == {}  # nothing picked yet: left alone
    generated(ctx, session, n=3)
    assert logic.step_range(ctx, session, LATEST, 7).props == dict(minimum=0, maximum=2, value=2, interactive=True)
    picker, step = logic.follow(ctx, session, LATEST, 1)
    assert picker["value"] == LATEST and step["maximum"] == 2 and step["value"] == 1


def test_the_summary_names_the_strongest_tokens_first_by_magnitude():
    ids = gpt2.encode(" a b c d e f")
    scores = np.array([0.1, -3.0, 2.0, np.nan, 0.0, 0.5])
    assert logic.top_tokens(ids, scores, 3) == "1:`␣b` -3, 2:`␣c` +2, 5:`␣f` +0.5"
