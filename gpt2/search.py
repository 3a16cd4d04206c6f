"""Beam search with transformers' semantics (v5 ``_beam_search``), recording the whole search as a tree.

Each step, every live beam's next-token log-probabilities (log-softmax, then the no-repeat n-gram ban, as
transformers' processors run on log-probs) are added to its cumulative log-prob, and the best
``2 * num_beams`` (beam, token) pairs become the step's candidates (at the first step only beam 0, the
prompt, exists). A candidate that ends (``<|endoftext|>``, or the length limit at the last step) and ranks
within the top ``num_beams`` becomes a finished hypothesis scored ``logprob / new_tokens ** length_penalty``
(``new_tokens`` counts the generated ids, the ``<|endoftext|>`` included, prompt excluded: transformers 5).
The best ``num_beams`` that did not end are the next beams. The search stops at the length limit, when
``early_stopping=True`` and ``num_beams`` hypotheses are finished, or when (``False``/``"never"``) no live beam
can beat the worst of ``num_beams`` finished ones any more by transformers' heuristic. At the last step the
top candidates finish without ``<|endoftext|>``, which is how transformers fills up missing hypotheses.

The prompt is prefilled once (batch 1) and its keys/values copied to every beam's cache row. Then each
beam's prefix stays in its cache row: a new beam takes over its parent's row, and only a parent's second,
third... child gets a row copied (from its parent's, into a row whose beam died; the prompt part, the same
in every row, is skipped), in place. No prefix is recomputed, nothing is concatenated, and rows that did
not change are not touched (transformers gathers every row, prompt included, each step).
A prompt longer than the context is cropped from the left (as ``gpt2.generate``); the search stops when the
context is full (the model never sees more than ``block_size`` tokens; the last new token is not fed back).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .generation import crop_prompt, prefill_rows, stepwise
from .model import GPT2, KVCache
from .sampling import apply_no_repeat_ngram, check_float, check_int
from .tokenizer import EOT_ID


@dataclass(frozen=True)
class BeamParams:
    """How to search. ``early_stopping``: True, False or ``"never"`` (as transformers)."""

    num_beams: int = 4
    max_new_tokens: int = 40
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    num_return_sequences: int = 1

    def __post_init__(self) -> None:
        check_int("num_beams", self.num_beams, 1, "an integer >= 1")
        check_int("max_new_tokens", self.max_new_tokens, 1, "an integer >= 1")
        check_float("length_penalty", self.length_penalty, -math.inf, math.inf, "a finite number")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ValueError(f'early_stopping must be True, False or "never"; got {self.early_stopping!r}')
        check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, 0, "an integer >= 0 (0 = off)")
        n = self.num_beams
        check_int("num_return_sequences", self.num_return_sequences, 1, f"an integer from 1 to num_beams ({n})",
                   high=n)


@dataclass
class Candidate:
    """One token considered at a step: a beam of the previous step extended by ``token_id``."""

    token_id: int
    parent: int  # index into the previous step's ``kept`` (0 at step 0: the prompt)
    token_logprob: float  # log-probability of this token given its beam
    logprob: float  # cumulative log-probability of the sequence ending with this token
    # "kept" (a live beam), "finished" (a hypothesis: it ended with <|endoftext|>, or at the length limit on the
    # last step) or "pruned" (not kept; an ended one that did not make the best num_beams hypotheses too)
    status: str
    score: float | None = None  # length-normalised score, for an ended one that was scored (finished ones)


@dataclass
class BeamStep:
    """One step of the search."""

    candidates: list[Candidate]  # every candidate considered, best cumulative log-prob first
    kept: list[int]  # indices into ``candidates`` of the live beams after this step, in beam order (best
    # first, as transformers); empty at a step that reached the length limit (nothing continues)
    finished: list[int] = field(default_factory=list)  # indices into ``candidates`` that became hypotheses


@dataclass
class BeamResult:
    sequences: list[list[int]]  # generated ids (prompt excluded), best first; a finished one ends with EOT
    scores: list[float]  # their length-normalised scores (transformers' ``sequences_scores``)
    tree: list[BeamStep]  # per step
    paths: list[list[int]]  # per returned sequence: its candidate index at each step (to highlight it)
    notice: str | None = None  # e.g. the prompt was cropped to the context


@dataclass
class _Hypothesis:
    score: float
    tokens: list[int]
    path: list[int]  # candidate index at each step


@dataclass
class _State:
    """Where the search stands between steps."""

    tokens: list[list[int]]  # per live beam: its generated ids
    paths: list[list[int]]  # per live beam: its candidate index at each step
    scores: torch.Tensor  # (B,) fp32 cumulative log-probs of the live beams, on the model's device
    rows: list[int]  # per live beam: the cache row holding its prefix
    finished: list[_Hypothesis] = field(default_factory=list)  # best first, at most num_beams
    improvable: bool = True  # transformers' "early stop heuristic unsatisfied" (sticky once False)


def _f32_div(value: float, divisor: float) -> float:
    """``value / divisor`` rounded as transformers computes it (an fp32 tensor over a Python float)."""
    return float(torch.tensor(value, dtype=torch.float32) / divisor)


@stepwise
def _prefill(model: GPT2, ids: list[int], num_beams: int, max_len: int) -> tuple[torch.Tensor, KVCache]:
    """Log-probs ``(1, V)`` after the prompt (beam 0, the only one at the first step), and a ``num_beams``-row
    cache holding the prompt in every row."""
    logits, cache = prefill_rows(model, ids, num_beams, max_len)
    return logits.log_softmax(-1), cache


def _assign_rows(prev_rows: list[int], parents: list[int], n_rows: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Cache rows for the new beams (parent = index into the previous beams, whose rows are ``prev_rows``),
    and the ``(source, destination)`` row copies that needs. A beam takes its parent's row if no earlier
    sibling did, else a row no new beam inherits; such a row is never a copy's source, so any order works."""
    rows, claimed = [-1] * len(parents), set()
    for j, p in enumerate(parents):
        if prev_rows[p] not in claimed:
            rows[j] = prev_rows[p]
            claimed.add(rows[j])
    free = iter([r for r in range(n_rows) if r not in claimed])
    copies = []
    for j, p in enumerate(parents):
        if rows[j] < 0:
            rows[j] = next(free)
            copies.append((prev_rows[p], rows[j]))
    return rows, copies


@stepwise
def _advance(model: GPT2, cache: KVCache, copies: list[tuple[int, int]], rows: list[int], tokens: list[int],
             start: int) -> torch.Tensor:
    """Copy cache rows (from ``start``: the prompt is the same in every row), feed each beam's new token in
    its row; log-probs ``(B, V)`` in beam order."""
    pos = cache.pos
    for src, dst in copies:  # views of distinct rows: a plain in-place copy, no temporary
        cache.k[:, dst, :, start:pos] = cache.k[:, src, :, start:pos]  # (L, nh, pos - start, hs)
        cache.v[:, dst, :, start:pos] = cache.v[:, src, :, start:pos]
    by_row = [0] * cache.k.size(1)  # rows no beam uses (none, normally) compute a throwaway token
    for row, token in zip(rows, tokens, strict=True):
        by_row[row] = token
    x = torch.tensor(by_row, device=cache.k.device)[:, None]  # (rows, 1)
    logits = model(x, cache, last_only=True)[:, -1]  # (rows, V)
    return logits[torch.tensor(rows, device=x.device)].float().log_softmax(-1)  # (B, V), beam order


@stepwise
def _top(logp: torch.Tensor, state: _State, ids: list[int], params: BeamParams) -> tuple[list, list[float]]:
    """The step's candidates as ``(beam, token, token_logprob, logprob)``, best first, and their fp32 logprobs."""
    n = params.no_repeat_ngram_size
    if n:  # contexts (B, P + t): the prompt and each beam's ids, as transformers' processor sees them
        ctx = torch.tensor([ids + toks for toks in state.tokens], device=logp.device)
        logp = apply_no_repeat_ngram(logp, ctx, n)
    B, V = logp.shape
    k = min(2 * params.num_beams, B * V)
    total = logp.add_(state.scores[:, None])  # (B, V): cumulative log-prob of each (beam, token), in place
    # The top k of all B * V, found as the top k among each row's top k: the same set, and a row-wise topk
    # is several times faster than one over the flattened (B * V,) on CPU.
    row_vals, row_ids = total.topk(min(k, V), dim=-1)  # (B, k)
    values, j = row_vals.view(-1).topk(k)  # (k,): best first
    beams = torch.div(j, row_ids.size(1), rounding_mode="floor")  # (k,)
    flat = (beams * V + row_ids.view(-1)[j]).tolist()  # indices into the flattened (B * V,)
    cum, tok = torch.stack([values, values - state.scores[beams]]).tolist()  # token log-prob = cum - parent's
    return [(i // V, i % V, t, c) for i, t, c in zip(flat, tok, cum, strict=True)], cum


def _finish(state: _State, step: BeamStep, ended: list[int], t: int, params: BeamParams) -> None:
    """Score the ended candidates within the top ``num_beams`` and merge them into the finished hypotheses."""
    full = len(state.finished) >= params.num_beams
    if not state.improvable or (full and params.early_stopping is True):
        return  # transformers adds no hypothesis then
    new = []
    for i in ended:
        c = step.candidates[i]
        c.score = _f32_div(c.logprob, (t + 1) ** params.length_penalty)
        new.append((i, _Hypothesis(c.score, [], [])))
    merged = sorted([(None, h) for h in state.finished] + new, key=lambda p: -p[1].score)[: params.num_beams]
    state.finished = [h for _, h in merged]
    for i, h in merged:
        if i is not None:  # a new one that made it: its ids and path come from its parent beam
            c = step.candidates[i]
            h.tokens, h.path = state.tokens[c.parent] + [c.token_id], state.paths[c.parent] + [i]
            c.status = "finished"
            step.finished.append(i)
    step.finished.sort()


def _step(state: _State, cands: list, cum: list[float], t: int, steps: int, params: BeamParams) -> BeamStep:
    """Classify one step's candidates (kept / finished / pruned), update ``state``; the step's record."""
    step = BeamStep([Candidate(tok, beam, tlp, c, "pruned") for beam, tok, tlp, c in cands], [])
    last = t == steps - 1
    ends = [last or c.token_id == EOT_ID for c in step.candidates]
    _finish(state, step, [i for i in range(min(params.num_beams, len(ends))) if ends[i]], t, params)
    if not last:  # at the last step every candidate ends: nothing lives on
        step.kept = [i for i, e in enumerate(ends) if not e][: params.num_beams]
    for i in step.kept:
        step.candidates[i].status = "kept"
    live = [step.candidates[i] for i in step.kept]
    state.tokens = [state.tokens[c.parent] + [c.token_id] for c in live]
    state.paths = [state.paths[c.parent] + [i] for c, i in zip(live, step.kept, strict=True)]
    state.scores = torch.tensor([cum[i] for i in step.kept], dtype=torch.float32, device=state.scores.device)
    if state.improvable and live and len(state.finished) >= params.num_beams:
        lp = params.length_penalty
        length = steps if params.early_stopping == "never" and lp > 0 else t + 1  # best hypothetical length
        best = _f32_div(cum[step.kept[0]], length**lp)
        state.improvable = best > min(h.score for h in state.finished)
    return step


def _done(state: _State, params: BeamParams) -> bool:
    """Transformers' stopping rule for the search as a whole (the length limit aside)."""
    full = len(state.finished) >= params.num_beams
    return not state.improvable or (full and params.early_stopping is True)


def beam_search(model: GPT2, prompt_ids: Sequence[int], params: BeamParams = BeamParams()) -> BeamResult:
    """The ``num_return_sequences`` best continuations of ``prompt_ids`` under beam search (see the module)."""
    if 2 * params.num_beams > model.config.vocab_size:
        raise ValueError(f"num_beams must be at most half the vocabulary ({model.config.vocab_size // 2})")
    ids, notice = crop_prompt(prompt_ids, model.config)
    steps = min(params.max_new_tokens, model.config.block_size + 1 - len(ids))  # >= 1: the prompt fits
    logp, cache = _prefill(model, ids, params.num_beams, len(ids) + steps - 1)
    state = _State([[]], [[]], torch.zeros(1, device=model.device), rows=[0])
    tree: list[BeamStep] = []
    for t in range(steps):
        if t:
            live = [tree[-1].candidates[i] for i in tree[-1].kept]
            state.rows, copies = _assign_rows(state.rows, [c.parent for c in live], params.num_beams)
            copies = copies if t > 1 else []  # after the first step every row holds the prompt already
            logp = _advance(model, cache, copies, state.rows, [c.token_id for c in live], len(ids))
        cands, cum = _top(logp, state, ids, params)
        tree.append(_step(state, cands, cum, t, steps, params))
        if _done(state, params):
            break
    best = state.finished[: params.num_return_sequences]
    return BeamResult([h.tokens for h in best], [h.score for h in best], tree, [h.path for h in best], notice)
