"""Plain-record inspection: scores, attention maps, logit lens, head scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpt2
from gpt2 import inspection
from gpt2.inspection import AttentionMaps, attention_maps, head_scores, logit_lens, repeated_tokens, score


def full_logprobs(model, ids):
    with torch.no_grad():
        lp = model(torch.tensor([[gpt2.EOT_ID, *ids]]))[0].log_softmax(-1)
    return lp[:-1].gather(-1, torch.tensor(ids)[:, None])[:, 0], lp[:-1]


def test_score_matches_a_direct_forward(tiny_model):
    ids = torch.randint(0, 50257, (40,)).tolist()
    s = score(tiny_model, ids)
    ref, lp = full_logprobs(tiny_model, ids)
    np.testing.assert_allclose(s.logprobs, ref.numpy(), atol=1e-5)
    assert s.ranks.tolist() == ((lp > ref[:, None]).sum(-1) + 1).tolist()
    np.testing.assert_allclose(s.entropies, -(lp.exp() * lp).sum(-1).numpy(), atol=1e-4)
    assert s.top_ids[:, 0].tolist() == lp.argmax(-1).tolist()
    assert math.isclose(s.perplexity, math.exp(-ref.mean().item()), rel_tol=1e-5)
    assert s.labels == gpt2.token_display(ids)


def test_long_texts_are_scored_in_windows_with_history(tiny_model):
    block = tiny_model.config.block_size
    ids = torch.randint(0, 50257, (3 * block,)).tolist()
    s = score(tiny_model, ids)
    assert len(s.logprobs) == 3 * block and np.isfinite(s.logprobs).all()
    np.testing.assert_allclose(s.logprobs[:block], score(tiny_model, ids[:block]).logprobs, atol=1e-5)
    # The first token of the second window is predicted from the half-context just before it.
    seq, j = [gpt2.EOT_ID, *ids], block
    start = j + 1 - block // 2
    with torch.no_grad():
        lp = tiny_model(torch.tensor([seq[start : start + block]]))[0, j - start].log_softmax(-1)
    assert abs(s.logprobs[j] - lp[ids[j]].item()) < 1e-5


def test_attention_maps_are_causal_distributions(tiny_model):
    ids = torch.randint(0, 50257, (12,)).tolist()
    maps = attention_maps(tiny_model, ids, layers=[1])
    assert maps.patterns.shape == (1, 2, 12, 12) and maps.layers == [1]
    np.testing.assert_allclose(maps.patterns.sum(-1), 1, atol=1e-5)
    assert np.triu(maps.patterns[0, 0], k=1).max() == 0
    with pytest.raises(ValueError, match="layers must be in"):
        attention_maps(tiny_model, ids, layers=[5])


def test_attention_of_an_early_layer_stops_the_pass_there(tiny_model, monkeypatch):
    ids = gpt2.encode("The cat sat on the mat. The cat")
    full = attention_maps(tiny_model, ids).patterns
    with torch.no_grad():
        trace = gpt2.Trace(hidden=True)
        tiny_model(torch.tensor([ids]), trace=trace)
        torch.testing.assert_close(tiny_model.residual(torch.tensor([ids]), layers=1), trace.hidden_states[1])
    monkeypatch.setattr(tiny_model.transformer.h[1], "forward", lambda *a, **k: pytest.fail("layer 1 ran"))
    np.testing.assert_array_equal(attention_maps(tiny_model, ids, [0]).patterns[0], full[0])
    with pytest.raises(ValueError, match="cached pass must run every layer"):
        tiny_model.residual(torch.tensor([ids]), tiny_model.new_cache(), layers=1)


def test_logit_lens_last_layer_is_the_model_prediction(tiny_model):
    ids = torch.randint(0, 50257, (9,)).tolist()
    lens = logit_lens(tiny_model, ids)
    assert lens.top_ids.shape == lens.top_probs.shape == (tiny_model.config.n_layer + 1, 9)
    with torch.no_grad():
        probs = tiny_model(torch.tensor([ids]))[0].softmax(-1)
    assert lens.top_ids[-1].tolist() == probs.argmax(-1).tolist()
    np.testing.assert_allclose(lens.top_probs[-1], probs.max(-1).values.numpy(), atol=1e-5)
    assert lens.top_labels[-1] == gpt2.token_display(lens.top_ids[-1].tolist())


def test_logits_are_read_in_chunks_with_the_same_results(tiny_model, monkeypatch):
    """A request's peak memory is (CHUNK, vocab) logits, not (tokens, vocab): no read-out through the head
    has more than CHUNK rows, and the results are those of one read-out of everything."""
    n = 2 * tiny_model.config.block_size + 22  # several windows
    ids = torch.randint(0, 50257, (n,), generator=torch.Generator().manual_seed(0)).tolist()
    monkeypatch.setattr(inspection, "CHUNK", 10**6)
    whole, whole_lens = score(tiny_model, ids), logit_lens(tiny_model, ids)
    monkeypatch.setattr(inspection, "CHUNK", 7)
    rows = []
    hook = tiny_model.lm_head.register_forward_hook(lambda module, args, out: rows.append(out.shape[-2]))
    try:
        chunked, lens = score(tiny_model, ids), logit_lens(tiny_model, ids)
    finally:
        hook.remove()
    assert rows and max(rows) <= 7
    np.testing.assert_allclose(chunked.logprobs, whole.logprobs, atol=1e-5)
    np.testing.assert_allclose(chunked.entropies, whole.entropies, rtol=1e-5)
    # a random model's logits are nearly tied, so a last-digit difference may swap neighbouring ranks
    assert np.abs(chunked.ranks - whole.ranks).max() <= 1
    np.testing.assert_array_equal(chunked.top_ids, whole.top_ids)
    np.testing.assert_array_equal(lens.top_ids, whole_lens.top_ids)
    np.testing.assert_allclose(lens.top_probs, whole_lens.top_probs, atol=1e-6)
    assert lens.top_labels == whole_lens.top_labels


def synthetic_maps(ids):
    """Head 0 looks at the previous token, head 1 is a perfect induction head, head 2 is uniform."""
    T = len(ids)
    prev, ind = np.eye(T, k=-1), np.zeros((T, T))
    prev[0, 0] = 1
    for i in range(T):
        earlier = [j for j in range(i - 1) if ids[j] == ids[i]]
        ind[i, earlier[0] + 1 if earlier else i] = 1
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    return AttentionMaps(list(ids), [], [0], np.stack([prev, ind, uniform])[None])


def test_head_scores_find_previous_token_and_induction_heads():
    ids = repeated_tokens(20, seed=1)
    s = head_scores(synthetic_maps(ids))
    assert s.previous_token[0, 0] == 1 and s.previous_token[0, 1] < 0.1
    assert s.induction[0, 1] == 1 and s.induction[0, 0] < 0.1
    assert s.entropy[0, 2] > s.entropy[0, 0] == 0


def test_head_scores_without_repeats_have_no_induction():
    s = head_scores(synthetic_maps([1, 2, 3, 4]))
    assert np.isnan(s.induction).all() and s.previous_token.shape == (1, 3)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_the_probe_draws_only_tokens_with_their_own_embedding_row(tiny_model, quantize):
    import copy
    model = copy.deepcopy(tiny_model)
    shared = torch.arange(5000, 50257)  # a compact-vocabulary model: the tokens it never saw share one row
    with torch.no_grad():
        model.transformer.wte.weight[shared] = model.transformer.wte.weight[shared[0]].clone()
    if quantize:
        model = gpt2.quant.quantize_int8(model)
    pool = inspection.probe_pool(model)
    words = inspection.word_ids()
    assert pool.tolist() == words[words < 5000].tolist()
    ids = inspection.repeated_probe(model, 30, seed=3)
    assert ids[:30] == ids[30:] and set(ids) <= set(pool.tolist())
    assert inspection.repeated_probe(model, 30, seed=3) == ids  # the seed decides
    assert len(inspection.probe_pool(tiny_model)) == len(words)  # every row distinct: every word token


def test_a_probe_of_word_tokens_reads_back_as_the_same_tokens():
    """Shown as text and typed back (or sent to the API), the probe is still the tokens drawn."""
    words = inspection.word_ids()
    assert 10_000 < len(words) < 19_000 and all(gpt2.get_tokenizer().decode([i])[0] == " " for i in words[:: 500])
    for seed in range(50):
        ids = inspection.repeated_tokens(50, seed, pool=words)
        assert gpt2.encode(gpt2.get_tokenizer().decode(ids)) == ids
