"""Streaming generation: parity with transformers' greedy generate, stops, windows, threads."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import CONFIGS, random_model

import gpt2

GREEDY = gpt2.SamplingParams(temperature=0, max_new_tokens=40, stop_at_eos=False)


def ids_of(model, prompt, params, **kw):
    return [s.token_id for s in gpt2.generate(model, prompt, params, **kw)]


@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_greedy_matches_transformers_generate(tiny_model, hf_tiny, penalty):
    prompt = [464, 3290, 286, 1204, 318]
    params = gpt2.SamplingParams(temperature=0, repetition_penalty=penalty, max_new_tokens=40, stop_at_eos=False)
    ref = hf_tiny.generate(torch.tensor([prompt]), max_new_tokens=40, min_new_tokens=40, do_sample=False,
                           repetition_penalty=penalty, pad_token_id=gpt2.EOT_ID)[0, len(prompt):]
    assert ids_of(tiny_model, prompt, params) == ref.tolist()


def test_streamed_text_is_the_decoded_tokens(tiny_model):
    tok = gpt2.get_tokenizer()
    params = gpt2.SamplingParams(temperature=1.5, max_new_tokens=60, seed=3, stop_at_eos=False)
    steps = list(gpt2.generate(tiny_model, gpt2.encode("Hello"), params))
    assert [s.index for s in steps] == list(range(60))
    assert "".join(s.text for s in steps) == tok.decode([s.token_id for s in steps])
    assert steps[-1].finish_reason == "length" and all(s.finish_reason is None for s in steps[:-1])


def test_multibyte_characters_are_never_split():
    """Tokens that are partial UTF-8 bytes yield '' until the character completes."""
    filt = gpt2.generation._StopFilter(())
    tok = gpt2.get_tokenizer()
    ids = gpt2.encode("🤖é")
    pieces = [filt.push(tok.decode_single_token_bytes(t), final=i == len(ids) - 1)[0] for i, t in enumerate(ids)]
    assert "".join(pieces) == "🤖é" and "\ufffd" not in "".join(pieces)


def test_same_seed_same_text(tiny_model):
    params = gpt2.SamplingParams(temperature=1.0, top_k=50, max_new_tokens=30, seed=42, stop_at_eos=False)
    assert ids_of(tiny_model, [1, 2], params) == ids_of(tiny_model, [1, 2], params)
    other = gpt2.SamplingParams(temperature=1.0, top_k=50, max_new_tokens=30, seed=43, stop_at_eos=False)
    assert ids_of(tiny_model, [1, 2], params) != ids_of(tiny_model, [1, 2], other)


def test_stop_string_ends_generation_and_is_not_shown(tiny_model):
    steps = list(gpt2.generate(tiny_model, [1, 2, 3], GREEDY))
    full = "".join(s.text for s in steps)
    stop = full[10:14]  # a string the model will produce
    cut = full.index(stop)
    params = gpt2.SamplingParams(temperature=0, max_new_tokens=40, stop=[stop, "never-seen"], stop_at_eos=False)
    stopped = list(gpt2.generate(tiny_model, [1, 2, 3], params))
    assert "".join(s.text for s in stopped) == full[:cut]
    assert stopped[-1].finish_reason == "stop"


def eos_loving_model():
    """A tiny model whose every prediction is <|endoftext|>."""
    model = random_model(CONFIGS["tiny"])
    with torch.no_grad():
        v = torch.randn(model.config.n_embd)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(v)
        model.transformer.wte.weight[gpt2.EOT_ID] = 10 * v
    return model


def test_eos_stops_unless_told_otherwise():
    model = eos_loving_model()
    steps = list(gpt2.generate(model, [5, 6], gpt2.SamplingParams(temperature=0)))
    assert [(s.token_id, s.text, s.finish_reason) for s in steps] == [(gpt2.EOT_ID, "", "eos")]
    steps = list(gpt2.generate(model, [5, 6], gpt2.SamplingParams(temperature=0, max_new_tokens=5,
                                                                   stop_at_eos=False)))
    assert [s.token_id for s in steps] == [gpt2.EOT_ID] * 5


def test_empty_prompt_starts_from_endoftext(tiny_model):
    assert ids_of(tiny_model, [], GREEDY) == ids_of(tiny_model, [gpt2.EOT_ID], GREEDY)


def test_long_prompt_is_cropped_from_the_left_with_a_notice(tiny_model):
    block = tiny_model.config.block_size
    prompt = torch.randint(0, 50257, (block + 30,)).tolist()
    steps = list(gpt2.generate(tiny_model, prompt, gpt2.SamplingParams(temperature=0, max_new_tokens=3)))
    assert "cropped" in steps[0].notice
    assert [s.token_id for s in steps] == ids_of(tiny_model, prompt[-block:], GREEDY)[:3]


def test_generation_past_the_context_slides_the_window(tiny_model):
    block = tiny_model.config.block_size
    prompt = [1, 2, 3]
    params = gpt2.SamplingParams(temperature=0, max_new_tokens=2 * block, stop_at_eos=False)
    steps = list(gpt2.generate(tiny_model, prompt, params, top_candidates=3))
    assert len(steps) == 2 * block
    slid = [s.index for s in steps if s.notice]
    assert slid, "the window never slid"
    s = slid[0]  # the first step produced from the slid window
    all_ids = prompt + [st.token_id for st in steps]
    start = len(prompt) + s - (block - block // 4)
    assert steps[s].details.window_start == start and steps[s - 1].details.window_start == 0
    # After sliding, the model continues exactly as if the window were a fresh prompt.
    window = all_ids[start : len(prompt) + s]
    fresh = ids_of(tiny_model, window, gpt2.SamplingParams(temperature=0, max_new_tokens=5, stop_at_eos=False))
    assert [st.token_id for st in steps[s : s + 5]] == fresh


def test_step_details(tiny_model):
    params = gpt2.SamplingParams(temperature=0.9, top_k=5, max_new_tokens=4, seed=0, stop_at_eos=False)
    steps = list(gpt2.generate(tiny_model, [10, 11, 12], params, top_candidates=8, attention=True,
                               keep_logits=True))
    for s in steps:
        d = s.details
        assert d.top_ids.shape == d.raw_probs.shape == d.probs.shape == (8,)
        assert (d.raw_probs[:-1] >= d.raw_probs[1:]).all()
        assert (d.probs > 0).sum() <= 5  # top-k 5 removed the rest
        assert d.chosen_prob > 0 and 0 < d.chosen_raw_prob <= 1 and d.entropy > 0
        assert d.attn.shape == (2, 2, 3 + s.index)  # (layers, heads, keys seen)
        assert abs(d.attn.sum(-1) - 1).max() < 1e-5
        assert d.logits.shape == (50257,)
        raw = torch.tensor(d.logits).softmax(-1)
        assert abs(float(raw[s.token_id]) - d.chosen_raw_prob) < 1e-6
    assert steps[0].details.attn is not None and steps[1].details.window_start == 0


@pytest.mark.parametrize("native_on", [True, False])
@pytest.mark.parametrize("params", [
    gpt2.SamplingParams(temperature=0.9, top_k=7, top_p=0.9, repetition_penalty=1.3, max_new_tokens=6, seed=3),
    gpt2.SamplingParams(temperature=0, repetition_penalty=1.5, max_new_tokens=6),  # the penalty moves the arg-max
    gpt2.SamplingParams(temperature=0, max_new_tokens=6),
], ids=["sampled", "greedy-penalty", "greedy"])
def test_step_details_are_the_distributions_at_the_shown_ids(tiny_model, params, native_on):
    """Every number of a step's details against torch's softmax of the step's logits, raw and after the
    sampler, on the native path and on torch's; forced tokens too (a branch: the pick is not the top)."""
    prompt, forced = [10, 11, 12], [400, 401]
    with contextlib.nullcontext() if native_on else gpt2.native.disabled():
        steps = list(gpt2.generate(tiny_model, prompt, dataclasses.replace(params, stop_at_eos=False),
                                   top_candidates=12, keep_logits=True, forced_ids=forced))
    seen = list(prompt)
    for s in steps:
        d, logits = s.details, torch.tensor(s.details.logits)
        raw = logits.softmax(-1)
        processed = gpt2.process_logits(logits, torch.tensor(seen), params).softmax(-1)
        top = torch.topk(logits, 12).indices
        assert d.top_ids.tolist() == top.tolist()
        np.testing.assert_allclose(d.raw_probs, raw[top], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(d.probs, processed[top], rtol=1e-5, atol=1e-7)
        assert d.chosen_raw_prob == pytest.approx(raw[s.token_id].item(), rel=1e-5, abs=1e-7)
        assert d.chosen_prob == pytest.approx(processed[s.token_id].item(), rel=1e-5, abs=1e-7)
        assert d.entropy == pytest.approx(torch.special.entr(raw).sum().item(), rel=1e-5)
        seen.append(s.token_id)
    assert [s.token_id for s in steps[:2]] == forced


def test_generate_text_returns_only_the_continuation(tiny_model):
    params = gpt2.SamplingParams(temperature=0, max_new_tokens=10, stop_at_eos=False)
    expected = gpt2.get_tokenizer().decode(ids_of(tiny_model, gpt2.encode("Once upon"), params))
    assert gpt2.generate_text(tiny_model, "Once upon", params) == expected


def test_generator_resumed_on_other_threads(tiny_model):
    """Gradio resumes a streaming generator on any worker thread: results must not change and no
    thread may be left with grad mode switched off."""
    params = gpt2.SamplingParams(temperature=1.0, max_new_tokens=12, seed=7, stop_at_eos=False)
    expected = ids_of(tiny_model, [4, 5], params)
    it = gpt2.generate(tiny_model, [4, 5], params)
    got, grad_modes = [], []

    def resume():
        got.append(next(it).token_id)
        grad_modes.append(torch.is_grad_enabled())

    for _ in range(12):
        t = threading.Thread(target=resume)
        t.start()
        t.join()
    assert got == expected and all(grad_modes)
    with torch.inference_mode():  # a caller in inference mode, resumed outside it, still works
        it = gpt2.generate(tiny_model, [4, 5], params)
        first = next(it).token_id
    assert [first, *[s.token_id for s in it]] == expected


def test_concurrent_clients_each_get_their_own_result(tiny_model):
    prompts = {seed: [seed, seed + 1] for seed in range(6)}
    params = {s: gpt2.SamplingParams(temperature=1.0, max_new_tokens=15, seed=s, stop_at_eos=False)
              for s in prompts}
    alone = {s: ids_of(tiny_model, prompts[s], params[s]) for s in prompts}
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = pool.map(lambda s: ids_of(tiny_model, prompts[s], params[s]), prompts)
        together = dict(zip(prompts, results, strict=True))
    assert together == alone


def test_forced_tokens_branch_and_keep_the_random_stream(tiny_model):
    """A branch forces its first tokens; the draws after them are the parent run's (same seed): forcing the
    token the parent picked anyway gives the parent's text, forcing another gives a different run."""
    params = gpt2.SamplingParams(max_new_tokens=12, seed=7, temperature=1.2)
    parent = [s.token_id for s in gpt2.generate(tiny_model, [1, 2, 3], params)]
    same = [s.token_id for s in gpt2.generate(tiny_model, [1, 2, 3], params, forced_ids=parent[:4])]
    assert same == parent
    other = (parent[3] + 1) % tiny_model.config.vocab_size
    branch = [s.token_id for s in gpt2.generate(tiny_model, [1, 2, 3], params, forced_ids=[*parent[:3], other])]
    assert branch[:4] == [*parent[:3], other] and len(branch) == 12


def test_forced_ids_outside_the_vocabulary_are_refused(tiny_model):
    with pytest.raises(ValueError, match="forced_ids"):
        next(gpt2.generate(tiny_model, [1], gpt2.SamplingParams(max_new_tokens=2), forced_ids=[10**9]))


def test_greedy_no_repeat_ngram_matches_transformers(tiny_model, hf_tiny):
    """The n-gram ban in a greedy run, against transformers' generate on the same weights."""
    hf = hf_tiny
    prompt = [5, 6, 7, 5, 6]
    params = gpt2.SamplingParams(temperature=0, max_new_tokens=20, no_repeat_ngram_size=2, stop_at_eos=False)
    ours = [s.token_id for s in gpt2.generate(tiny_model, prompt, params)]
    ref = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20, no_repeat_ngram_size=2,
                      min_new_tokens=20, pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == ref
