"""Beam search against transformers' ``generate(num_beams=...)``: same sequences, scores within 1e-4, on
random models (one of them biased towards <|endoftext|> so hypotheses finish early) and on the bundled
checkpoint; the recorded tree's invariants; the cache work (one prefill); invalid parameters."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, random_model

import gpt2
from gpt2 import BeamParams, beam_search

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "shakespeare-small"
PROMPTS = ([1, 2, 3, 4, 5], [100, 2000, 300], [7])


@pytest.fixture(scope="module")
def eos_pair(tmp_path_factory):
    """A tiny random model whose <|endoftext|> logit leans up (its tied embedding row along the final
    LayerNorm's bias): hypotheses then finish at various steps, which is where the early-stopping modes
    differ. Ours and transformers' copy of the same weights."""
    model = random_model(CONFIGS["tiny"])
    with torch.no_grad():
        bias = model.transformer.ln_f.bias
        model.transformer.wte.weight[gpt2.EOT_ID] = 0.2 * bias / bias.norm() ** 2
    path = model.save_pretrained(tmp_path_factory.mktemp("eos") / "tiny-eos")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return model, transformers.GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()


def hf_beam(hf, prompt: list[int], p: BeamParams) -> tuple[list[list[int]], list[float]]:
    """transformers' beam search: the generated ids (its EOS padding cut after the first EOS) and scores."""
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=p.num_beams,
                      max_new_tokens=p.max_new_tokens, length_penalty=p.length_penalty,
                      early_stopping=p.early_stopping, no_repeat_ngram_size=p.no_repeat_ngram_size,
                      num_return_sequences=p.num_return_sequences, output_scores=True,
                      return_dict_in_generate=True, pad_token_id=gpt2.EOT_ID, eos_token_id=gpt2.EOT_ID)
    seqs = [s[len(prompt):].tolist() for s in out.sequences]
    seqs = [s[: s.index(gpt2.EOT_ID) + 1] if gpt2.EOT_ID in s else s for s in seqs]
    return seqs, out.sequences_scores.tolist()


def assert_same(model, hf, prompt: list[int], p: BeamParams) -> gpt2.BeamResult:
    res = beam_search(model, prompt, p)
    seqs, scores = hf_beam(hf, prompt, p)
    assert res.sequences == seqs, (p, prompt)
    assert res.scores == pytest.approx(scores, abs=1e-4), (p, prompt)
    return res


@pytest.mark.parametrize("num_beams", [2, 3, 5])
@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_matches_transformers_with_eos(eos_pair, num_beams, early_stopping):
    model, hf = eos_pair
    ended = 0
    for lp, ngram, ret, prompt in itertools.product([0.5, 1.0, 2.0], [0, 2], [1, 2], PROMPTS[:2]):
        p = BeamParams(num_beams, 12, lp, early_stopping, ngram, min(ret, num_beams))
        res = assert_same(model, hf, prompt, p)
        ended += any(s[-1] == gpt2.EOT_ID and len(s) < 12 for s in res.sequences)
    assert ended >= 6  # the EOS paths were exercised, not only the length limit


@pytest.mark.parametrize("num_beams", [2, 4])
def test_matches_transformers_plain(tiny_model, hf_tiny, num_beams):
    for lp, es, prompt in itertools.product([0.5, 2.0], [True, "never"], PROMPTS):
        assert_same(tiny_model, hf_tiny, prompt, BeamParams(num_beams, 8, lp, es, 3, num_beams))


def test_one_beam_is_transformers_beam_search(eos_pair, monkeypatch):
    """``generate(num_beams=1)`` is greedy in transformers, so route it to ``_beam_search`` to compare: one
    beam still keeps two candidates and may continue past a finished hypothesis."""
    from transformers.generation.configuration_utils import GenerationConfig, GenerationMode

    mode = GenerationConfig.get_generation_mode
    monkeypatch.setattr(GenerationConfig, "get_generation_mode", lambda self, *a, **k: (
        GenerationMode.BEAM_SEARCH if self.num_beams == 1 and not self.do_sample else mode(self, *a, **k)))
    model, hf = eos_pair
    for es, prompt in itertools.product([True, False, "never"], PROMPTS):
        assert_same(model, hf, prompt, BeamParams(1, 10, 1.0, es))


@pytest.mark.skipif(not CHECKPOINT.is_dir(), reason="no bundled checkpoint")
def test_matches_transformers_on_bundled_checkpoint():
    model = gpt2.GPT2.from_pretrained(CHECKPOINT, "cpu", torch.float32)
    hf = transformers.GPT2LMHeadModel.from_pretrained(CHECKPOINT, dtype=torch.float32,
                                                      attn_implementation="eager").eval()
    for text, p in [("ROMEO:\nI", BeamParams(4, 16, 1.0, False, 0, 2)),
                    ("First Citizen:\nWe are", BeamParams(3, 12, 2.0, "never", 2, 3))]:
        res = assert_same(model, hf, gpt2.encode(text), p)
        assert len(res.sequences[0]) == p.max_new_tokens


def test_stops_when_the_context_is_full(eos_pair, tiny_model, hf_tiny):
    """The new tokens stop where the context ends (the last one is never fed back): the same search as
    transformers asked for only that many; a longer prompt is cropped from the left, with a notice."""
    block = tiny_model.config.block_size
    prompt = [(7 * i) % 1000 for i in range(block - 4)]
    res = beam_search(tiny_model, prompt, BeamParams(3, 20, early_stopping="never"))
    assert len(res.tree) == 5
    assert res.sequences == hf_beam(hf_tiny, prompt, BeamParams(3, 5, early_stopping="never"))[0]
    longer = [1, 2] + prompt + [5, 6, 7, 8]  # block + 2 tokens: cropped to the last block, room for one more
    cropped = beam_search(tiny_model, longer, BeamParams(2, 9))
    assert cropped.notice and "cropped" in cropped.notice
    same = beam_search(tiny_model, longer[-block:], BeamParams(2, 9))
    assert same.notice is None and cropped.sequences == same.sequences and len(same.sequences[0]) == 1


def check_tree(res: gpt2.BeamResult, p: BeamParams) -> None:
    for s, step in enumerate(res.tree):
        cands = step.candidates
        assert len(cands) == 2 * p.num_beams
        assert [c.logprob for c in cands] == sorted((c.logprob for c in cands), reverse=True)
        prev_kept = res.tree[s - 1].kept if s else [0]
        for c in cands:
            assert 0 <= c.parent < len(prev_kept)
            before = res.tree[s - 1].candidates[prev_kept[c.parent]].logprob if s else 0.0
            assert c.logprob == pytest.approx(before + c.token_logprob, abs=1e-4)
        assert [cands[i].status for i in step.kept] == ["kept"] * len(step.kept)
        assert all(cands[i].status == "finished" and cands[i].score is not None for i in step.finished)
        assert {i for i, c in enumerate(cands) if c.status != "pruned"} == set(step.kept) | set(step.finished)
        last = s == len(res.tree) - 1
        assert len(step.kept) == (0 if last and s == p.max_new_tokens - 1 else p.num_beams)
        assert not any(cands[i].token_id == gpt2.EOT_ID for i in step.kept)


def test_tree_invariants_and_paths(eos_pair):
    model, _ = eos_pair
    for p in [BeamParams(3, 12, 1.0, False, 0, 3), BeamParams(4, 6, 2.0, "never", 2, 2), BeamParams(2, 12, 0.5, True)]:
        res = beam_search(model, PROMPTS[0], p)
        check_tree(res, p)
        assert len(res.sequences) == len(res.scores) == len(res.paths) == p.num_return_sequences
        assert res.scores == sorted(res.scores, reverse=True)
        for seq, score, path in zip(res.sequences, res.scores, res.paths, strict=True):
            assert len(path) == len(seq)
            steps = [res.tree[s].candidates[i] for s, i in enumerate(path)]
            assert [c.token_id for c in steps] == seq  # the path spells the sequence
            for s in range(1, len(path)):  # each link goes through the previous step's kept beam
                assert res.tree[s - 1].kept[steps[s].parent] == path[s - 1]
            assert path[-1] in res.tree[len(path) - 1].finished
            assert steps[-1].score == pytest.approx(score)
            assert score == pytest.approx(steps[-1].logprob / len(seq) ** p.length_penalty, abs=1e-5)


def test_prefills_once_then_one_token_per_beam(tiny_model):
    """The prompt runs once with batch 1; every later call feeds one token per beam (no prefix recomputed)."""
    shapes = []
    handle = tiny_model.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape)))
    try:
        res = beam_search(tiny_model, PROMPTS[0], BeamParams(4, 7, early_stopping="never"))
    finally:
        handle.remove()
    assert shapes == [(1, 5)] + [(4, 1)] * (len(res.tree) - 1)
    with torch.inference_mode():  # a caller in inference mode gets the same search
        assert beam_search(tiny_model, PROMPTS[0], BeamParams(4, 7, early_stopping="never")).sequences == res.sequences


@pytest.mark.parametrize("kwargs, name", [
    ({"num_beams": 0}, "num_beams"), ({"num_beams": 2.0}, "num_beams"), ({"num_beams": True}, "num_beams"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"length_penalty": float("nan")}, "length_penalty"),
    ({"length_penalty": "1"}, "length_penalty"), ({"early_stopping": "always"}, "early_stopping"),
    ({"early_stopping": 1}, "early_stopping"), ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ({"num_return_sequences": 0}, "num_return_sequences"), ({"num_beams": 2, "num_return_sequences": 3},
                                                             "num_return_sequences"),
])
def test_invalid_params_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BeamParams(**kwargs)


def test_invalid_prompt_ids(tiny_model):
    with pytest.raises(ValueError, match="prompt_ids"):
        beam_search(tiny_model, [tiny_model.config.vocab_size], BeamParams(2, 3))


def test_cache_rows_are_inherited_and_only_extra_children_copied():
    from gpt2.search import _assign_rows

    # previous beams live in rows 2, 0, 1, 3; the new beams' parents are beams 1, 1, 0, 3
    rows, copies = _assign_rows([2, 0, 1, 3], [1, 1, 0, 3], 4)
    assert rows == [0, 1, 2, 3] and copies == [(0, 1)]  # beam 1's second child gets the dead beam 2's row
    rows, copies = _assign_rows([0, 1, 2], [2, 2, 2], 3)
    assert rows == [2, 0, 1] and copies == [(2, 0), (2, 1)]
    assert _assign_rows([1, 0], [1, 0], 2) == ([0, 1], [])  # a reordering alone copies nothing
