"""The Diversity tab's logic (``ui.logic.diversity``) and its figure (``ui.figures_diversity``), without a
browser."""

from __future__ import annotations

import math
import re

import pytest
from conftest import drain, make_ctx

import gpt2
from gpt2 import diversity as div
from ui.figures_diversity import CURRENT, tradeoff
from ui.inputs import UserError
from ui.logic import diversity as logic

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("sacrebleu")

SETTINGS = dict(prompt="The cat", num_samples=3, max_new_tokens=4, temperature=0.8, top_k=40, top_p=1.0,
                repetition_penalty=1.0, min_p=None, typical_p=None, epsilon_cutoff=None, eta_cutoff=None,
                no_repeat_ngram_size=None, seed=0, sweep="none")


@pytest.fixture()
def ctx(tiny_dir):
    return make_ctx(tiny_dir, max_new_tokens=50, max_diversity_samples=6, max_diversity_tokens=200)


def run(ctx, **changes):
    return list(logic.diversity(ctx, ctx.new_session(), **(SETTINGS | changes)))


def table(markdown: str) -> dict[str, str]:
    """The metrics table's values by metric name."""
    return dict(re.findall(r"^\| ([\w -]+) \| (-?[\d.]+|n/a) \|", markdown, re.M))


def test_the_metrics_are_the_cores_on_the_same_samples(ctx, tiny_model):
    outputs = run(ctx, num_samples=4)
    metrics, samples, figure = outputs[-1]
    batch = div.sample_batch(tiny_model, gpt2.encode("The cat"),
                             gpt2.SamplingParams(temperature=0.8, top_k=40, max_new_tokens=4, seed=0), 4)
    m = div.metrics(batch.samples)
    values = table(metrics)
    assert list(values) == ["distinct-1", "distinct-2", "distinct-3", "self-BLEU", "repetition rate",
                            "mean log-prob"]
    assert float(values["distinct-2"]) == pytest.approx(m.distinct_2, abs=5e-4)
    assert float(values["self-BLEU"]) == pytest.approx(m.self_bleu, abs=5e-4)
    assert float(values["mean log-prob"]) == pytest.approx(m.mean_logprob, abs=5e-4)
    assert values["repetition rate"] == "0.000"  # 4 tokens: one 4-gram each, so nothing repeats
    assert "4 samples, 16 tokens" in metrics and "temperature 0.8, top-k 40" in metrics and "seed 0" in metrics
    for s in batch.samples:
        assert s.text in samples
    assert samples.count("**Sample ") == 4
    assert [t.name for t in figure.data] == [f"{CURRENT} (temperature 0.8, top-k 40)"]


def test_a_sweep_streams_one_update_per_setting(ctx):
    outputs = run(ctx, num_samples=2, max_new_tokens=5, sweep="top_p")
    points = len(div.SWEEPS["top_p"][1])
    assert len(outputs) == 1 + 1 + points  # cleared at once, the current setting, then each point
    assert outputs[0] == ("Drawing the samples…", "", None)
    for done, (metrics, _, figure) in enumerate(outputs[1:]):
        rows = re.findall(r"^\| (0\.\d|1) \| ", metrics, re.M)
        assert len(rows) == done
        assert (f"({done} of {points} points" in metrics) == (done < points)
        assert (f"({done} of {points} points)" in figure.layout.title.text) == (done < points)
    sweep = outputs[-1][2].data[0]
    assert list(sweep.text) == ["0.5", "0.6", "0.7", "0.8", "0.9", "1"]


def test_the_figure_marks_the_current_setting():
    def metrics(d2: float, lp: float) -> div.Metrics:
        return div.Metrics(0.5, d2, 0.9, 0.1, 0.0, lp, 8, 320)

    points = [(0.2, metrics(0.3, -1.0)), (1.0, metrics(0.7, -3.0)), (1.6, metrics(0.9, -5.0))]
    fig = tradeoff(metrics(0.6, -2.5), "temperature 0.8", "temperature", points, total=3)
    sweep, star = fig.data
    assert list(sweep.x) == [-1.0, -3.0, -5.0] and list(sweep.y) == [0.3, 0.7, 0.9]
    assert list(sweep.text) == ["0.2", "1", "1.6"]
    assert star.name == "current setting (temperature 0.8)" and star.marker.symbol == "star"
    assert (list(star.x), list(star.y)) == ([-2.5], [0.6])
    assert "distinct-2" in fig.layout.yaxis.title.text and "log-prob" in fig.layout.xaxis.title.text
    assert "1 of 3" in tradeoff(metrics(0.6, -2.5), "t", "temperature", points[:1], total=3).layout.title.text
    empty = div.Metrics(None, None, None, None, None, None, 2, 2)
    assert not tradeoff(empty, "t").data  # nothing measurable: a message instead of a plot


def test_greedy_samples_are_all_alike(ctx, tiny_model):
    metrics, samples, _ = run(ctx, temperature=0, num_samples=4, max_new_tokens=8)[-1]
    values = table(metrics)
    assert float(values["self-BLEU"]) == pytest.approx(1.0) and "greedy" in metrics
    expected = gpt2.generate_text(tiny_model, "The cat", gpt2.SamplingParams(temperature=0, max_new_tokens=8))
    assert samples.count(expected) == 4


def test_a_random_seed_is_shown_and_reproduces_the_samples(ctx):
    first = run(ctx, seed=-1)[-1]
    seed = int(re.search(r"seed (\d+)", first[0])[1])
    assert run(ctx, seed=seed)[-1][1] == first[1]


def test_advanced_samplers_reach_the_samples(ctx):
    metrics, samples, _ = run(ctx, min_p=0.5, no_repeat_ngram_size=1, max_new_tokens=8)[-1]
    assert "min-p 0.5" in metrics and "no-repeat n-gram 1" in metrics
    assert float(table(metrics)["distinct-1"]) > 0


@pytest.mark.parametrize(("changes", "patterns"), [
    (dict(num_samples=0), ("num_samples", "from 1 to 6")),
    (dict(num_samples=7), ("num_samples", "from 1 to 6")),
    (dict(num_samples=math.nan), ("num_samples",)),
    (dict(num_samples=2.5), ("num_samples", "whole")),
    (dict(sweep="top_k"), ("sweep", "'temperature'")),
    (dict(min_p=2), ("min_p",)),
    (dict(typical_p=0), ("typical_p",)),
    (dict(epsilon_cutoff=1), ("epsilon_cutoff",)),
    (dict(no_repeat_ngram_size=-1), ("no_repeat_ngram_size",)),
    (dict(temperature=-1), ("temperature",)),
    (dict(max_new_tokens=51), ("max_new_tokens", "50")),
    (dict(seed=1.5), ("seed",)),
    # 5 x 41 = 205 tokens: over the server's 200 without a sweep; 2 x 12 x 9 = 216 with one
    (dict(num_samples=5, max_new_tokens=41), ("num_samples", "max_new_tokens", "200", "up to 40 fits")),
    (dict(num_samples=2, max_new_tokens=12, sweep="temperature"), ("num_samples", "9 runs", "up to 11 fits")),
])
def test_bad_settings_are_refused_before_any_work(ctx, changes, patterns):
    with pytest.raises(UserError) as err:
        run(ctx, **changes)
    for pattern in patterns:
        assert pattern in str(err.value)


def test_at_the_cap_is_allowed(ctx):
    metrics, _, _ = run(ctx, num_samples=5, max_new_tokens=40)[-1]
    assert "5 samples" in metrics


def test_an_empty_prompt_starts_from_end_of_text(ctx):
    assert "3 samples" in run(ctx, prompt="")[-1][0]


def test_samples_with_backticks_stay_in_their_code_block():
    text = "a ``` b ```` c"
    block = logic._fenced(text)
    assert block.startswith("`````text\n") and block.endswith("\n`````") and text in block


def test_samples_times_positions_are_bounded(tiny_dir):
    """Each sample's cache row holds the prompt and its new tokens: a long prompt is cropped so that all the
    rows fit in ``GPT2_MAX_CACHE_POSITIONS``, with a notice; a batch that cannot fit is refused by name."""
    ctx = make_ctx(tiny_dir, max_cache_positions=80)
    args = dict(prompt=" ".join(["word"] * 40), num_samples=4, max_new_tokens=8, temperature=1.0, top_k=0,
                top_p=1.0, repetition_penalty=1.0, min_p=None, typical_p=None, epsilon_cutoff=None, eta_cutoff=None,
                no_repeat_ngram_size=None, seed=0, sweep="none")
    table, samples, _ = drain(logic.diversity(ctx, ctx.new_session(), **args))
    assert "cropped to its last 12 tokens: num_samples (4) × (prompt + 8 new tokens)" in table
    with pytest.raises(UserError, match=r"num_samples × \(max_new_tokens \+ 1\) must be at most 80"):
        next(logic.diversity(ctx, ctx.new_session(), **(args | dict(num_samples=10))))
