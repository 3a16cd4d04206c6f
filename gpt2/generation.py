"""Streaming generation: prefill once, then one cached decode step per token.

``generate`` is a plain generator of ``Step`` records, so a terminal, a web UI or a test can drive it.
It never holds a grad-mode context across a ``yield``: each model call runs in its own ``no_grad``
scope, so the generator may be resumed on another thread (as Gradio does) and stays correct.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import GPTConfig
from .edit import Edit
from .model import GPT2, KVCache, Trace
from .native import logit_stats
from .sampling import (
    Candidates,
    SamplingParams,
    apply_no_repeat_ngram,
    apply_repetition_penalty,
    make_generator,
    process_logits,
    sample,
    sample_candidates,
    top_k_candidates,
    topk,
)
from .tokenizer import EOT_ID, encode, get_tokenizer

log = logging.getLogger(__name__)


@dataclass
class StepDetails:
    """What the visualisations need about one step (only computed on request)."""

    top_ids: np.ndarray  # (k,) most likely next tokens under the raw distribution
    raw_probs: np.ndarray  # (k,) their raw probabilities
    probs: np.ndarray  # (k,) their probabilities after the sampler stages
    chosen_raw_prob: float
    chosen_prob: float
    entropy: float  # of the raw distribution, in nats
    window_start: int  # index (in prompt + generated ids) of the first token the model could see
    attn: np.ndarray | None = None  # (n_layer, n_head, T_keys): the predicting query's attention row
    logits: np.ndarray | None = None  # (vocab,) raw logits, to re-run the sampler stages later


@dataclass
class Step:
    """One generated token."""

    index: int  # 0 for the first new token
    token_id: int
    text: str  # newly visible text; may be "" while a character or a possible stop string is pending
    finish_reason: str | None = None  # on the last step: "length", "eos" or "stop"
    notice: str | None = None  # e.g. the prompt was cropped, or the context window slid
    details: StepDetails | None = None


class _StopFilter:
    """Decodes token bytes incrementally and holds back text that could start a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""
        self.tok = get_tokenizer()

    def push(self, raw: bytes, final: bool = False) -> tuple[str, bool]:
        """Feed a token's bytes; returns (text safe to show, whether a stop string was hit)."""
        self.pending += self.decoder.decode(raw, final=final)
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            return self.pending[: min(hits)], True
        hold = 0 if final else max((_overlap(self.pending, s) for s in self.stops), default=0)
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return out, False

    def push_token(self, token: int, eos: bool, last: bool) -> tuple[str, str | None]:
        """Feed a new token; returns the text to show and the finish reason if the run ends here:
        ``"stop"`` (a stop string, cut off the text), ``"eos"`` (shows nothing) or ``"length"`` (``last``)."""
        text, hit_stop = self.push(b"" if eos else self.tok.decode_single_token_bytes(token), final=eos or last)
        return text, "stop" if hit_stop else "eos" if eos else "length" if last else None


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def stepwise(fn):
    """Run ``fn`` without autograd and outside inference mode. The generator keeps tensors (KV cache,
    ids) across yields and may resume on a thread whose modes differ from the caller's, so they must
    be ordinary tensors, never inference tensors."""
    return torch.inference_mode(False)(torch.no_grad()(fn))


def crop_prompt(prompt_ids: Sequence[int], config: GPTConfig) -> tuple[list[int], str | None]:
    """The ids the model starts from, and a notice if the prompt had to be cropped to the context."""
    ids = list(prompt_ids) or [EOT_ID]  # an empty prompt starts from <|endoftext|>, like GPT-2's samples
    check_ids(ids, config.vocab_size)
    if len(ids) <= config.block_size:
        return ids, None
    notice = f"Prompt of {len(ids)} tokens cropped to its last {config.block_size} (the model's context)."
    log.info(notice)
    return ids[-config.block_size :], notice


def check_ids(ids: list[int], vocab_size: int, name: str = "prompt_ids") -> None:
    """Refuse ids the embedding cannot look up, naming them (instead of an IndexError deep in the model)."""
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{name} must be token ids from 0 to {vocab_size - 1} (this model's vocabulary); "
                         f"got {', '.join(map(str, bad[:3]))}{' …' if len(bad) > 3 else ''}")


@stepwise
def _start(model: GPT2, ids: list[int], max_new_tokens: int) -> tuple[torch.Tensor, KVCache]:
    """Room for the prompt and the first new tokens (``_append`` grows it), and an empty cache for the window."""
    # Not prompt + max_new_tokens at once: a caller may ask for an absurd number of tokens (and stop the
    # generator early); allocating them all up front would fail or take gigabytes before the first token.
    all_ids = torch.empty(len(ids) + min(max_new_tokens, model.config.block_size), dtype=torch.long,
                          device=model.device)
    all_ids[: len(ids)] = torch.tensor(ids, device=model.device)
    # The cache holds only the positions this run can fill (the window slides at the context): a
    # full-context cache is 75 MB for GPT-2 124M in fp32, and zeroing it adds tens of ms before the
    # first token of a short run.
    return all_ids, model.new_cache(1, min(model.config.block_size, len(ids) + max_new_tokens))


@stepwise
def prefill_rows(model: GPT2, ids: list[int], rows: int, max_len: int) -> tuple[torch.Tensor, KVCache]:
    """Logits ``(1, V)`` in fp32 after the prompt ``ids``, computed once at batch 1, and a ``rows``-row
    cache of ``max_len`` positions holding the prompt in every row (beams, samples)."""
    prompt = model.new_cache(1, max_len if rows == 1 else len(ids))
    logits = model(torch.tensor([ids], device=model.device), prompt, last_only=True)[:, -1].float()  # (1, V)
    if rows == 1:
        return logits, prompt
    cache = model.new_cache(rows, max_len)
    cache.k[:, :, :, : len(ids)] = prompt.k  # (L, 1, nh, P, hs) broadcast to (L, rows, nh, P, hs)
    cache.v[:, :, :, : len(ids)] = prompt.v
    cache.pos = len(ids)
    return logits, cache


@stepwise
def _grown(all_ids: torch.Tensor) -> torch.Tensor:
    """A copy of the full ``all_ids`` with as much room again after it."""
    grown = torch.empty(2 * all_ids.numel(), dtype=all_ids.dtype, device=all_ids.device)
    grown[: all_ids.numel()] = all_ids
    return grown


def _append(all_ids: torch.Tensor, n: int, token: int) -> torch.Tensor:
    """``all_ids`` (grown when full) with ``token`` written at position ``n``."""
    if n == all_ids.numel():  # checked here, not in the decorated ``_grown``: a decorated call costs µs
        all_ids = _grown(all_ids)
    all_ids[n] = token
    return all_ids


@stepwise
def _forward(model: GPT2, ids: torch.Tensor, cache: KVCache, want_attn: bool,
             edit: Edit | None = None) -> tuple[torch.Tensor, Trace | None]:
    """Logits for the last position only, in fp32, plus that position's attention rows if asked."""
    trace = Trace(attn_layers=range(model.config.n_layer), attn_rows=slice(-1, None)) if want_attn else None
    logits = model(ids[None], cache, trace=trace, last_only=True, edit=edit)[0, -1].float()
    return logits, trace


def _top_and_stats(x: torch.Tensor, k: int) -> tuple[np.ndarray, float, float]:
    """The indices of the ``k`` largest of the CPU row ``x`` (largest first), then the log of its softmax's
    normaliser and that softmax's entropy in nats: one native pass (``native.logit_stats``), else torch."""
    stats = logit_stats(x, k)
    if stats is not None:
        return stats[3], stats[1], stats[2]
    entropy = torch.special.entr(x.softmax(-1)).sum()  # -p log p, 0 where p is 0 (a -inf logit)
    return topk(x, k)[1].numpy(), float(x.logsumexp(-1)), float(entropy)


def _sampler_probs(processed: torch.Tensor | Candidates, ids: np.ndarray) -> np.ndarray:
    """The processed distribution's probabilities at ``ids``."""
    if isinstance(processed, Candidates):
        probs = dict(zip(processed.ids.tolist(), processed.logits.float().softmax(-1).tolist(), strict=True))
        return np.array([probs.get(i, 0.0) for i in ids.tolist()], np.float32)
    p = processed.cpu()
    stats = logit_stats(p)
    return np.exp(p.numpy()[ids] - (stats[1] if stats is not None else float(p.logsumexp(-1))))


@stepwise
def _details(logits, processed, token, trace, k, keep_logits, window_start, greedy: bool) -> StepDetails:
    """What the tabs show about one step. Only vocabulary-wide work that is needed: the top ``k``, the raw
    distribution's normaliser and entropy; probabilities only at the shown ids (greedy: the sampler puts all
    on the arg-max, as temperature 0 leaves it). On the CPU, in numpy: a few ids cost µs there, tens of µs
    each as torch ops."""
    x = logits.cpu()
    top, lse, entropy = _top_and_stats(x, min(k, x.numel()))
    ids = np.append(top, token)
    raw = np.exp(x.numpy()[ids] - lse)
    if greedy:  # the pick is the arg-max of ``processed``: ``logits`` itself but for a penalty or a ban
        best = top[0] if processed is logits and len(top) else int(processed.argmax())
        probs = (ids == best).astype(np.float32)
    else:
        probs = _sampler_probs(processed, ids)
    attn = None
    if trace is not None:
        attn = torch.stack([trace.attn[i][0, :, 0] for i in sorted(trace.attn)]).cpu().numpy()  # (L, nh, Tk)
    return StepDetails(
        top_ids=top,
        raw_probs=raw[:-1],
        probs=probs[:-1],
        chosen_raw_prob=float(raw[-1]),
        chosen_prob=float(probs[-1]),
        entropy=entropy,
        window_start=window_start,
        attn=attn,
        logits=x.numpy() if keep_logits else None,
    )


def _pick(logits: torch.Tensor, prev_ids: torch.Tensor, params: SamplingParams,
          gen: torch.Generator) -> tuple[torch.Tensor | Candidates, int]:
    """The processed distribution (logits, or a top-k's ``Candidates``) and the next token (its ``int`` is
    a device sync; a top-k's check for a tie at its boundary is another).

    Greedy only needs the arg-max: temperature 0 keeps just the
    arg-max token and every later filter keeps the top one, so only the repetition penalty and the n-gram
    ban can change the pick. Skipping the other stages saves masked vocabulary-sized copies per token; with
    a top-k, so does drawing from its candidates alone.
    """
    if params.greedy:  # the details know temperature 0 puts all probability on the arg-max
        processed = apply_repetition_penalty(logits, prev_ids, params.repetition_penalty)
        processed = apply_no_repeat_ngram(processed, prev_ids, params.no_repeat_ngram_size)
        return processed, int(sample(processed, params, gen))
    candidates = top_k_candidates(logits, prev_ids, params)
    if candidates is not None:
        return candidates, sample_candidates(candidates, gen)
    processed = process_logits(logits, prev_ids, params)
    return processed, int(sample(processed, params, gen))


def _decode_next(model: GPT2, all_ids: torch.Tensor, n: int, start: int, cache: KVCache,
                 want_attn: bool, edit: Edit | None = None) -> tuple[torch.Tensor, Trace | None, int, str | None]:
    """Logits after the newest of the ``n`` tokens, the window's start and a notice if it moved.

    Normally one cached step. With the context full, the window slides instead: the last three quarters
    are prefilled again into the emptied cache.
    """
    block = model.config.block_size
    if cache.pos != block:
        return *_forward(model, all_ids[n - 1 : n], cache, want_attn, edit), start, None
    keep = block - block // 4
    cache.reset()
    logits, trace = _forward(model, all_ids[n - keep : n], cache, want_attn, edit)
    return logits, trace, n - keep, f"Context full ({block} tokens): the model now sees only the last {keep}."


def generate(
    model: GPT2,
    prompt_ids: Sequence[int],
    params: SamplingParams = SamplingParams(),
    *,
    top_candidates: int = 0,
    attention: bool = False,
    keep_logits: bool = False,
    forced_ids: Sequence[int] = (),
    edit: Edit | None = None,
) -> Iterator[Step]:
    """Yield one ``Step`` per new token until ``max_new_tokens``, ``<|endoftext|>`` or a stop string.

    ``top_candidates``/``attention``/``keep_logits`` ask for per-step ``StepDetails``. A prompt longer
    than the context is cropped from the left; past the context the window slides (re-prefilling the
    last three quarters), with a notice on the step where either happens. Ids outside the model's
    vocabulary are refused with a ``ValueError``.

    ``forced_ids`` are taken as the first new tokens instead of the picks (a branch from a candidate): each
    step still draws, so what follows uses the same random numbers as an unforced run with the same seed.
    ``edit`` (``gpt2.Edit``) intervenes in every pass of this generation only; with the same seed the run
    is comparable token by token with a plain one.
    """
    ids, notice = crop_prompt(prompt_ids, model.config)
    check_ids(list(forced_ids), model.config.vocab_size, "forced_ids")
    all_ids, cache = _start(model, ids, params.max_new_tokens)
    n, start = len(ids), 0  # tokens so far (prompt + generated) in all_ids; first token inside the window
    gen = make_generator(params.seed, model.device)
    stops = _StopFilter(params.stop)
    want_details = top_candidates > 0 or attention or keep_logits
    logits, trace = _forward(model, all_ids[:n], cache, attention, edit)  # prefill
    for i in range(params.max_new_tokens):
        processed, token = _pick(logits, all_ids[:n], params, gen)
        token = forced_ids[i] if i < len(forced_ids) else token
        all_ids = _append(all_ids, n, token)
        n += 1
        details = (
            _details(logits, processed, token, trace, top_candidates or 10, keep_logits, start, params.greedy)
            if want_details else None
        )
        eos = token == EOT_ID and params.stop_at_eos
        text, reason = stops.push_token(token, eos, last=i == params.max_new_tokens - 1)
        yield Step(i, token, text, reason, notice, details)
        if reason:
            return
        logits, trace, start, notice = _decode_next(model, all_ids, n, start, cache, attention, edit)


def generate_text(model: GPT2, prompt: str, params: SamplingParams = SamplingParams()) -> str:
    """Convenience: the text generated after ``prompt`` (the prompt itself not included)."""
    return "".join(step.text for step in generate(model, encode(prompt), params))
