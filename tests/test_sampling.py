"""Sampler stages against transformers' logits processors, greedy, seeds and parameter checks."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch

import gpt2
from gpt2.sampling import Candidates, sample_candidates, top_k_candidates, topk

lp = pytest.importorskip("transformers.generation.logits_process")


def hf_process(logits, context, params):
    """transformers' processors in the order its generate() applies them."""
    scores = logits[None].clone()
    ids = context[None]
    if params.repetition_penalty != 1.0:
        scores = lp.RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(ids, scores)
    if params.no_repeat_ngram_size:
        scores = lp.NoRepeatNGramLogitsProcessor(params.no_repeat_ngram_size)(ids, scores)
    if params.temperature != 1.0:
        scores = lp.TemperatureLogitsWarper(params.temperature)(ids, scores)
    if params.top_k:
        scores = lp.TopKLogitsWarper(params.top_k)(ids, scores)
    if params.top_p < 1.0:
        scores = lp.TopPLogitsWarper(params.top_p)(ids, scores)
    if params.min_p:
        scores = lp.MinPLogitsWarper(params.min_p)(ids, scores)
    if params.typical_p < 1.0:
        scores = lp.TypicalLogitsWarper(params.typical_p)(ids, scores)
    if params.epsilon_cutoff:
        scores = lp.EpsilonLogitsWarper(params.epsilon_cutoff)(ids, scores)
    if params.eta_cutoff:
        scores = lp.EtaLogitsWarper(params.eta_cutoff)(ids, scores)
    return scores[0]


CASES = [
    dict(repetition_penalty=1.3),
    dict(repetition_penalty=0.7),
    dict(temperature=0.5),
    dict(temperature=1.7, top_k=40),
    dict(top_k=1),
    dict(top_p=0.9),
    dict(top_p=0.0),
    dict(temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.2),
    dict(temperature=1.3, top_p=0.5, repetition_penalty=1.05),
    dict(min_p=0.05), dict(min_p=1.0), dict(temperature=1.5, min_p=0.1),
    dict(typical_p=0.9), dict(typical_p=0.2), dict(typical_p=1e-6), dict(top_k=100, typical_p=0.5),
    dict(epsilon_cutoff=3e-4), dict(epsilon_cutoff=0.5), dict(temperature=2.0, epsilon_cutoff=1e-3),
    dict(eta_cutoff=3e-4), dict(eta_cutoff=0.2), dict(top_p=0.9, eta_cutoff=2e-3),
    dict(no_repeat_ngram_size=1), dict(no_repeat_ngram_size=2), dict(no_repeat_ngram_size=3),
    dict(temperature=0.9, top_k=60, top_p=0.95, min_p=0.02, typical_p=0.95, epsilon_cutoff=1e-4,
         eta_cutoff=1e-3, repetition_penalty=1.1, no_repeat_ngram_size=2),
]


@pytest.mark.parametrize("case", CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CASES])
@pytest.mark.parametrize("seed", range(3))
def test_process_logits_matches_transformers(case, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2000, generator=g) * 3
    context = torch.randint(0, 30, (60,), generator=g)  # many repeats, so n-grams recur as in real text
    params = gpt2.SamplingParams(**case)
    ours = gpt2.process_logits(logits, context, params)
    ref = hf_process(logits, context, params)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])
    assert torch.equal(logits, logits.clone())  # input untouched (pure function)


def test_process_logits_accepts_a_list_context_and_does_not_mutate():
    logits = torch.randn(50)
    before = logits.clone()
    out = gpt2.process_logits(logits, [1, 2, 2, 7], gpt2.SamplingParams(repetition_penalty=2.0, top_k=5))
    assert torch.equal(logits, before)
    assert torch.isfinite(out).sum() == 5


def test_temperature_zero_is_greedy():
    logits = torch.randn(100)
    params = gpt2.SamplingParams(temperature=0, top_k=7, top_p=0.5)
    out = gpt2.process_logits(logits, [], params)
    assert torch.isfinite(out).sum() == 1 and out.argmax() == logits.argmax()
    assert int(gpt2.sample(out, params, None)) == int(logits.argmax())


def test_greedy_with_penalty_picks_the_penalised_argmax():
    logits = torch.tensor([5.0, 4.0, -1.0])
    params = gpt2.SamplingParams(temperature=0, repetition_penalty=2.0)
    assert int(gpt2.sample(gpt2.process_logits(logits, [0], params), params, None)) == 1


def test_sampler_stages_are_in_order_and_end_with_process_logits():
    logits, ctx = torch.randn(300), torch.tensor([3, 4])
    params = gpt2.SamplingParams(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.4)
    stages = gpt2.sampler_stages(logits, ctx, params)
    assert [name for name, _ in stages] == ["raw", "repetition penalty", "no-repeat n-gram", "temperature",
                                            "top-k", "top-p", "min-p", "typical", "epsilon", "eta"]
    assert torch.equal(stages[-1][1], gpt2.process_logits(logits, ctx, params))
    kept = [int(torch.isfinite(x).sum()) for _, x in stages]
    assert kept[:4] == [300] * 4 and kept[4] == 20 and kept[5] <= 20 and kept[5:] == [kept[5]] * 5


def test_each_new_stage_filters_in_its_place():
    logits, ctx = torch.randn(300) * 2, torch.tensor([3, 4, 3])
    params = gpt2.SamplingParams(no_repeat_ngram_size=2, min_p=0.2, typical_p=0.6, epsilon_cutoff=0.01,
                                 eta_cutoff=0.05)
    stages = dict(gpt2.sampler_stages(logits, ctx, params))
    assert torch.isinf(stages["no-repeat n-gram"][4]) and torch.isfinite(stages["raw"][4])  # "3 4" seen
    kept = [int(torch.isfinite(stages[n]).sum()) for n in ("temperature", "min-p", "typical")]
    assert kept[0] > kept[1] > kept[2] >= 1


def test_batched_no_repeat_ngram_bans_per_row():
    logits = torch.zeros(2, 10)
    ctx = torch.tensor([[1, 2, 1], [5, 6, 5]])
    out = gpt2.apply_no_repeat_ngram(logits, ctx, 2)
    assert torch.isinf(out[0, 2]) and torch.isinf(out[1, 6]) and int(torch.isinf(out).sum()) == 2


def test_same_seed_same_draws_different_seed_different():
    logits = torch.zeros(1000)  # uniform: every draw is pure randomness
    params = gpt2.SamplingParams(seed=123)

    def draws(seed):
        gen = torch.Generator().manual_seed(seed)
        return [int(gpt2.sample(logits, params, gen)) for _ in range(20)]

    assert draws(123) == draws(123)
    assert draws(123) != draws(124)


def test_sampling_follows_the_distribution():
    processed = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(
        torch.stack([gpt2.sample(processed, gpt2.SamplingParams(), gen) for _ in range(4000)]), minlength=3
    )
    assert torch.allclose(counts / 4000, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)


TOP_K_CASES = [c for c in CASES if c.get("top_k")] + [
    dict(temperature=0.8, top_k=40), dict(top_k=1024, top_p=0.8), dict(temperature=0.3, top_k=7, min_p=0.2),
    dict(top_k=30, repetition_penalty=1.4, no_repeat_ngram_size=2, epsilon_cutoff=3e-3, eta_cutoff=1e-3),
]


@pytest.mark.parametrize("case", TOP_K_CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in TOP_K_CASES])
@pytest.mark.parametrize("seed", range(3))
def test_top_k_candidates_are_the_processed_distribution(case, seed):
    """The stages after a top-k run on its candidates alone: the same tokens kept with the same logits as
    transformers' processors over the whole vocabulary."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(50257, generator=g) * 3
    context = torch.randint(0, 30, (60,), generator=g)
    params = gpt2.SamplingParams(**case)
    candidates = top_k_candidates(logits, context, params)
    ref = hf_process(logits, context, params)
    kept = candidates.logits > float("-inf")
    assert sorted(candidates.ids[kept].tolist()) == torch.nonzero(ref > float("-inf")).flatten().tolist()
    torch.testing.assert_close(candidates.logits[kept], ref[candidates.ids[kept]])


def test_top_k_candidates_leave_what_they_cannot_do_to_the_full_path():
    logits = torch.arange(100.0)
    assert top_k_candidates(logits, [], gpt2.SamplingParams(top_k=5)) is not None
    logits[94] = logits[95]  # the 5th and 6th largest tie: top-k keeps both
    assert top_k_candidates(logits, [], gpt2.SamplingParams(top_k=5)) is None
    for params, vocab in ((gpt2.SamplingParams(top_k=0), 2000), (gpt2.SamplingParams(temperature=0, top_k=5), 2000),
                          (gpt2.SamplingParams(top_k=100), 100), (gpt2.SamplingParams(top_k=1025), 2000)):
        assert top_k_candidates(torch.randn(vocab), [], params) is None
    assert top_k_candidates(torch.randn(2, 100), [], gpt2.SamplingParams(top_k=5)) is None  # one row only


def test_candidates_sampling_follows_their_distribution():
    candidates = Candidates(torch.tensor([7, 3, 900]), torch.log(torch.tensor([0.7, 0.2, 0.1])))
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_candidates(candidates, gen) for _ in range(4000)])
    freq = torch.stack([(draws == t).float().mean() for t in (7, 3, 900)])
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)


BAD = [
    ("temperature", -0.1), ("temperature", math.nan), ("temperature", math.inf), ("temperature", "hot"),
    ("top_k", -1), ("top_k", 2.5), ("top_k", True),
    ("top_p", -0.01), ("top_p", 1.01), ("top_p", math.nan),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_penalty", math.inf),
    ("max_new_tokens", 0), ("max_new_tokens", 3.0), ("max_new_tokens", -5),
    ("seed", -1), ("seed", 1.5), ("seed", 2**64),
    ("stop", [""]), ("stop", [3]),
    ("min_p", -0.1), ("min_p", 1.5), ("typical_p", 0.0), ("typical_p", 1.2), ("epsilon_cutoff", 1.0),
    ("epsilon_cutoff", -1e-3), ("eta_cutoff", 1.0), ("eta_cutoff", math.nan), ("no_repeat_ngram_size", -1),
    ("no_repeat_ngram_size", 2.0),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_invalid_values_name_the_parameter_and_range(name, value):
    with pytest.raises(ValueError, match=name) as err:
        gpt2.SamplingParams(**{name: value})
    assert "must be" in str(err.value)


def test_off_values_and_a_single_stop_string():
    p = gpt2.SamplingParams(top_k=0, top_p=1.0, repetition_penalty=1.0, stop="END", min_p=0.0, typical_p=1.0,
                            epsilon_cutoff=0.0, eta_cutoff=0.0, no_repeat_ngram_size=0)
    assert p.stop == ("END",)
    logits = torch.randn(10)
    assert torch.equal(gpt2.process_logits(logits, [1, 2], p), logits)


BUNDLED = Path(__file__).resolve().parent.parent / "checkpoints" / "shakespeare-small"


@pytest.mark.parametrize("case", CASES[-12:], ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CASES[-12:]])
def test_process_logits_matches_transformers_on_the_bundled_model(case):
    """The same check on real next-token logits: the bundled checkpoint after a Shakespeare prompt."""
    model = _bundled()
    context = torch.tensor(gpt2.encode("ROMEO:\nBut soft, what light through yonder window breaks? It is the east"))
    with torch.no_grad():
        logits = model(context[None])[0, -1].float()
    params = gpt2.SamplingParams(**case)
    ours, ref = gpt2.process_logits(logits, context, params), hf_process(logits, context, params)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


@functools.cache
def _bundled() -> gpt2.GPT2:
    return gpt2.GPT2.from_pretrained(BUNDLED, device="cpu", dtype=torch.float32).eval()


@pytest.mark.parametrize("shape, k", [((50257,), 20), ((3, 50257), 40), ((100,), 5), ((4100,), 2048),
                                      ((6144,), 1), ((2, 2049), 7), ((5000,), 4096)])
def test_two_stage_topk_equals_torchs(shape, k):
    """``gpt2.sampling.topk`` (rows of 2,048, then the best of theirs) returns exactly ``torch.topk``'s answer."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(k))
    x[..., ::7] = float("-inf")  # masked tokens, as a compact vocabulary or an earlier stage leaves them
    values, idx = topk(x, k)
    want = torch.topk(x, k, dim=-1)
    assert torch.equal(values, want.values)
    assert torch.equal(x.gather(-1, idx), want.values)  # indices of those values, each once
    assert all(len(set(row)) == k for row in idx.reshape(-1, k).tolist())
