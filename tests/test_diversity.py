"""Batched sampling and the diversity metrics (``gpt2.diversity``): metrics on hand-made samples, self-BLEU
against sacrebleu itself, batched rows against ``gpt2.generate`` and against the sampler's distribution."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from conftest import CONFIGS, random_model

import gpt2
from gpt2 import diversity as div

pytestmark = pytest.mark.usefixtures("one_thread")
sacrebleu = pytest.importorskip("sacrebleu")

PROMPT = gpt2.encode("The cat sat on the mat.")


# ---------------------------------------------------------------- metrics, by hand


def test_distinct_n_counts_distinct_ngrams_over_all_samples_pooled():
    samples = [[1, 2, 1, 2], [1, 2, 3]]
    assert div.distinct_n(samples, 1) == 3 / 7  # tokens 1, 2, 3 among 7
    assert div.distinct_n(samples, 2) == 3 / 5  # (1,2) (2,1) (2,3) among (1,2) (2,1) (1,2) (1,2) (2,3)
    assert div.distinct_n(samples, 3) == 1.0  # (1,2,1) (2,1,2) (1,2,3)
    assert div.distinct_n([[5, 5, 5]], 1) == 1 / 3
    assert div.distinct_n([[1], [2]], 2) is None  # no bigram at all
    assert div.distinct_n([], 1) is None


def test_repetition_rate_is_seq_rep_4_averaged_over_samples():
    looped = [1, 2, 3, 4, 1, 2, 3, 4]  # 4-grams 1234 2341 3412 4123 1234: one of five repeats
    assert div.repetition_rate([looped]) == pytest.approx(1 / 5)
    assert div.repetition_rate([[7] * 6]) == pytest.approx(2 / 3)  # 7777 three times: two repeat
    assert div.repetition_rate([looped, [1, 2, 3, 4, 5]]) == pytest.approx((1 / 5 + 0) / 2)
    assert div.repetition_rate([looped, [1, 2]]) == pytest.approx(1 / 5)  # too short: left out of the mean
    assert div.repetition_rate([[1, 2, 3]]) is None
    assert div.repetition_rate([[1, 2, 1, 2]], n=2) == pytest.approx(1 / 3)  # (1,2) again among 3 bigrams


def test_mean_logprob_is_per_token_over_all_samples():
    assert div.mean_logprob([[-1.0, -2.0, -3.0], [-6.0]]) == -3.0  # not the mean of sample means (-4.5)
    assert div.mean_logprob([[], []]) is None


def test_self_bleu_by_hand():
    # "1 2 3 4" against "1 2 3 5": precisions 3/4, 2/3, 1/2 and, smoothed, (1/2) / 1: BLEU = (1/8) ** (1/4)
    assert div.self_bleu([[1, 2, 3, 4], [1, 2, 3, 5]]) == pytest.approx(0.125 ** 0.25)
    assert div.self_bleu([[1, 2, 3, 4, 5]] * 3) == pytest.approx(1.0)  # all alike
    assert div.self_bleu([[1, 2, 3, 4], [5, 6, 7, 8]]) == 0.0  # nothing shared
    assert div.self_bleu([[1, 2, 3, 4]]) is None  # no other sample to compare with


def test_self_bleu_is_sacrebleus_sentence_bleu_against_the_other_samples():
    rng = random.Random(0)
    for _ in range(5):
        samples = [[rng.randrange(8) for _ in range(rng.randrange(0, 15))] for _ in range(rng.randrange(2, 7))]
        texts = [" ".join(map(str, s)) for s in samples]
        expected = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1 :], tokenize="none").score
                    for i, t in enumerate(texts)]
        assert div.self_bleu(samples) == pytest.approx(sum(expected) / len(expected) / 100)


def test_metrics_leave_a_final_end_of_text_out_of_the_ngrams():
    eot = gpt2.EOT_ID
    samples = [div.Sample([1, 2, eot], "", [-1.0, -1.0, -4.0], "eos"), div.Sample([1, 2, 3], "", [-2.0] * 3, "length")]
    m = div.metrics(samples)
    assert m.distinct_1 == 3 / 5 and m.distinct_2 == 2 / 3  # unigrams 1 2 | 1 2 3; bigrams (1,2) | (1,2) (2,3)
    assert m.mean_logprob == pytest.approx(-12 / 6)  # the end-of-text token's log-probability counts
    assert (m.num_samples, m.num_tokens) == (2, 6)
    assert m.repetition_rate is None and m.self_bleu == div.self_bleu([[1, 2], [1, 2, 3]])


# ---------------------------------------------------------------- batched sampling


@pytest.fixture(scope="module")
def model() -> gpt2.GPT2:
    return random_model(CONFIGS["tiny"])


def greedy_text(model, ids, **kw) -> list[int]:
    params = gpt2.SamplingParams(temperature=0, **kw)
    return [s.token_id for s in gpt2.generate(model, ids, params)]


@pytest.mark.parametrize("kw", [dict(max_new_tokens=12), dict(max_new_tokens=12, repetition_penalty=1.3,
                                                                   no_repeat_ngram_size=2),
                                dict(max_new_tokens=90)])  # past the context of 64: the window slides
def test_greedy_rows_all_equal_the_greedy_generation(model, kw):
    batch = div.sample_batch(model, PROMPT, gpt2.SamplingParams(temperature=0, **kw), num_samples=5)
    expected = greedy_text(model, PROMPT, **kw)
    assert [s.token_ids for s in batch.samples] == [expected] * 5
    assert batch.samples[0].text == gpt2.get_tokenizer().decode(expected)
    assert ("Context full" in (batch.notice or "")) == (kw["max_new_tokens"] == 90)


def test_one_sample_with_top_k_1_is_the_greedy_text(model):
    params = gpt2.SamplingParams(temperature=1.3, top_k=1, max_new_tokens=20, seed=5)
    (sample,) = div.sample_batch(model, PROMPT, params, num_samples=1).samples
    assert sample.token_ids == greedy_text(model, PROMPT, max_new_tokens=20)


def test_same_seed_same_samples_and_a_none_seed_is_recorded(model):
    params = gpt2.SamplingParams(max_new_tokens=10, seed=3)
    a, b = (div.sample_batch(model, PROMPT, params, 4) for _ in range(2))
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]
    assert len({tuple(s.token_ids) for s in a.samples}) == 4  # the rows are different draws
    other = div.sample_batch(model, PROMPT, gpt2.SamplingParams(max_new_tokens=10, seed=4), 4)
    assert [s.token_ids for s in other.samples] != [s.token_ids for s in a.samples]
    drawn = div.sample_batch(model, PROMPT, gpt2.SamplingParams(max_new_tokens=10), 2)
    again = div.sample_batch(model, PROMPT, drawn.params, 2)
    assert drawn.params.seed is not None and again.samples == drawn.samples


def test_logprobs_are_the_raw_models_before_the_sampler_stages(model):
    params = gpt2.SamplingParams(temperature=0.5, top_k=5, repetition_penalty=1.5, max_new_tokens=8, seed=0)
    batch = div.sample_batch(model, PROMPT, params, 3)
    for s in batch.samples:
        with torch.no_grad():
            logits = model(torch.tensor([PROMPT + s.token_ids]))[0, len(PROMPT) - 1 : -1]
        expected = logits.log_softmax(-1).gather(1, torch.tensor(s.token_ids)[:, None])[:, 0]
        assert s.logprobs == pytest.approx(expected.tolist(), abs=1e-4)
        assert s.finish_reason == "length" and len(s.token_ids) == 8


def test_rows_follow_the_samplers_distribution_step_by_step():
    """2,000 rows of two tokens from a small-vocabulary model: the first token's frequencies are the
    processed probabilities after the prompt, and the second's after the prompt and the first (the
    repetition penalty reads each row's own context)."""
    model = random_model(CONFIGS["deep-narrow"])  # 1,000 tokens
    prompt, n = [3, 1, 4, 1, 5], 2000
    params = gpt2.SamplingParams(temperature=1.5, top_k=4, repetition_penalty=3.0, max_new_tokens=2, seed=0,
                                 stop_at_eos=False)
    rows = [s.token_ids for s in div.sample_batch(model, prompt, params, n).samples]

    def expected(context):
        with torch.no_grad():
            logits = model(torch.tensor([context]))[0, -1]
        return gpt2.process_logits(logits, torch.tensor(context), params).softmax(-1)

    def close(observed, probs, count):
        for token in set(observed) | set(probs.nonzero()[:, 0].tolist()):
            p, f = float(probs[token]), observed.count(token) / count
            assert abs(f - p) <= 4.5 * math.sqrt(p * (1 - p) / count) + 1e-9, (token, f, p)

    firsts = [r[0] for r in rows]
    close(firsts, expected(prompt), n)
    common = max(set(firsts), key=firsts.count)
    close([r[1] for r in rows if r[0] == common], expected(prompt + [common]), firsts.count(common))


def test_a_row_ends_at_end_of_text_and_the_others_go_on(model):
    # Swap the embedding rows of the greedy first token and <|endoftext|>: the same model with the two
    # renamed, so that <|endoftext|> becomes the likeliest first token.
    first = greedy_text(model, PROMPT, max_new_tokens=1)[0]
    assert first not in PROMPT and gpt2.EOT_ID not in PROMPT
    swapped = copy.deepcopy(model)
    with torch.no_grad():
        wte = swapped.transformer.wte.weight
        wte[[first, gpt2.EOT_ID]] = wte[[gpt2.EOT_ID, first]]
    params = gpt2.SamplingParams(top_k=2, max_new_tokens=6, seed=0)
    samples = div.sample_batch(swapped, PROMPT, params, 12).samples
    ended = [s for s in samples if s.finish_reason == "eos"]
    assert ended and len(ended) < len(samples)
    for s in ended:
        assert s.token_ids[-1] == gpt2.EOT_ID and gpt2.EOT_ID not in s.token_ids[:-1]
        assert s.text == gpt2.get_tokenizer().decode(s.content_ids) and len(s.logprobs) == len(s.token_ids)
    assert any(len(s.token_ids) == 1 and s.text == "" for s in ended)
    for s in samples:
        if s.finish_reason == "length":
            assert len(s.token_ids) == 6 and gpt2.EOT_ID not in s.token_ids


def test_every_row_ended_stops_early(model):
    swapped = copy.deepcopy(model)
    first = greedy_text(model, PROMPT, max_new_tokens=1)[0]
    with torch.no_grad():
        wte = swapped.transformer.wte.weight
        wte[[first, gpt2.EOT_ID]] = wte[[gpt2.EOT_ID, first]]
    samples = div.sample_batch(swapped, PROMPT, gpt2.SamplingParams(temperature=0, max_new_tokens=50), 3).samples
    assert [s.token_ids for s in samples] == [[gpt2.EOT_ID]] * 3
    assert div.metrics(samples).distinct_1 is None


def test_sweeps_share_the_seed_and_change_one_setting(model):
    params = gpt2.SamplingParams(temperature=0.7, top_k=40, max_new_tokens=3)
    batches = list(div.sample_sweep(model, PROMPT, params, 2, "top_p"))
    assert len(batches) == 1 + len(div.SWEEPS["top_p"][1])
    assert [b.params.top_p for b in batches] == [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert len({b.params.seed for b in batches}) == 1 and batches[0].params.seed is not None
    assert {(b.params.temperature, b.params.top_k) for b in batches} == {(0.7, 40)}
    assert batches[-1].samples == batches[0].samples  # top-p 1 is the current setting: the same draws
    temps = [p.temperature for p in div.sweep_settings(params, "temperature")]
    assert temps == [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6] and div.sweep_settings(params, "none") == []
    with pytest.raises(ValueError, match="sweep must be one of"):
        div.sweep_settings(params, "top_k")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_num_samples_must_be_a_positive_integer(model, bad):
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        div.sample_batch(model, PROMPT, gpt2.SamplingParams(max_new_tokens=2), bad)
