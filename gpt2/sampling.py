"""Sampling as pure ``logits -> logits`` stages plus one draw, with Hugging Face's semantics.

Stages run in transformers' order: repetition penalty, no-repeat n-gram, temperature, top-k, top-p, min-p,
typical, epsilon, eta. Each takes logits ``(..., V)`` and returns new logits (``-inf`` for removed tokens);
none changes its input, and every filter keeps at least the most likely token (``min_tokens_to_keep=1``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .native import top_k as _native_top_k


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. Every stage's default switches it off: ``0`` (top-k, min-p, epsilon,
    eta, n-gram size) or ``1.0`` (top-p, typical-p, penalty). ``temperature=0`` means greedy. ``seed``
    fixes the random draws (same seed, same text)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings: generation ends before the first one (not included)
    stop_at_eos: bool = True  # end at <|endoftext|>
    min_p: float = 0.0
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        check_float("temperature", self.temperature, 0.0, math.inf, "a number >= 0 (0 = greedy)")
        check_int("top_k", self.top_k, 0, "an integer >= 0 (0 = off)")
        check_float("top_p", self.top_p, 0.0, 1.0, "a number in [0, 1] (1 = off)")
        check_float("repetition_penalty", self.repetition_penalty, 0.0, math.inf, "a number > 0 (1 = off)",
                     open_low=True)
        check_int("max_new_tokens", self.max_new_tokens, 1, "an integer >= 1")
        check_float("min_p", self.min_p, 0.0, 1.0, "a number in [0, 1] (0 = off)")
        check_float("typical_p", self.typical_p, 0.0, 1.0, "a number in (0, 1] (1 = off)", open_low=True)
        check_float("epsilon_cutoff", self.epsilon_cutoff, 0.0, 1.0, "a number in [0, 1) (0 = off)", open_high=True)
        check_float("eta_cutoff", self.eta_cutoff, 0.0, 1.0, "a number in [0, 1) (0 = off)", open_high=True)
        check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, 0, "an integer >= 0 (0 = off)")
        if self.seed is not None:
            check_int("seed", self.seed, 0, "an integer in [0, 2**63) or None", high=2**63 - 1)
        if isinstance(self.stop, str):  # a lone string is one stop string, not a tuple of characters
            object.__setattr__(self, "stop", (self.stop,))
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings; got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def check_float(name, value, low, high, allowed, open_low=False, open_high=False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        raise ValueError(f"{name} must be {allowed}; got {value!r}")


def check_int(name, value, low, allowed, high=None) -> None:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")


def apply_repetition_penalty(logits: torch.Tensor, context_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style: every token id seen in the context has its logit divided by ``penalty`` if
    positive, multiplied if negative (as HF's ``RepetitionPenaltyLogitsProcessor``)."""
    if penalty == 1.0 or context_ids.numel() == 0:
        return logits
    ids = context_ids.to(logits.device).expand(*logits.shape[:-1], -1)
    score = logits.gather(-1, ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(-1, ids, score)


# Logits of any real model stay far below this in magnitude; with a temperature under
# _LOGIT_BOUND / (the dtype's largest float), logits / temperature could overflow to +inf.
_LOGIT_BOUND = 1e6


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by the temperature; temperature 0 keeps only the arg-max token (greedy). A temperature so
    small that the division overflows (e.g. 1e-300) acts as 0, its limit, instead of making NaNs."""
    if temperature == 0:
        keep = logits.argmax(dim=-1, keepdim=True)
        return torch.full_like(logits, float("-inf")).scatter(-1, keep, logits.gather(-1, keep))
    if temperature == 1.0:
        return logits
    scaled = logits / temperature
    if temperature * torch.finfo(logits.dtype).max < _LOGIT_BOUND:  # only then can it overflow (no sync otherwise)
        # +inf logits would give NaN probabilities (inf - inf in the softmax): rows that overflowed go greedy.
        overflowed = torch.isposinf(scaled).any(dim=-1, keepdim=True)
        scaled = torch.where(overflowed, apply_temperature(logits, 0), scaled)
    return scaled


_TOPK_ROW = 2048  # elements per row of ``topk``'s first stage: torch's work array for a row stays under 64 kB


def topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(x, k, dim=-1)`` (values, indices; largest first). One fp32 row on a CPU with k <= 64 (a
    decoding step's): one native pass (``native.top_k``). Else on a CPU in two stages: the top ``k`` of each
    row of ``_TOPK_ROW``, then of those. torch's CPU top-k takes a 16-byte work entry per element, 800 kB for
    GPT-2's vocabulary: under the app's allocator (``ui.memory``: blocks over 64 kB are mapped from the OS)
    each call maps and faults it in, 0.40 ms instead of 0.06 ms; a row's stays in the heap."""
    found = _native_top_k(x, k) if x.dim() == 1 else None
    if found is not None:
        return found
    V = x.size(-1)
    if x.device.type != "cpu" or V <= _TOPK_ROW or k > _TOPK_ROW:
        return tuple(torch.topk(x, k, dim=-1))
    head = V // _TOPK_ROW * _TOPK_ROW
    values, idx = torch.topk(x[..., :head].reshape(*x.shape[:-1], -1, _TOPK_ROW), k, dim=-1)  # (..., rows, k)
    values, idx = values.flatten(-2), (idx + torch.arange(0, head, _TOPK_ROW)[:, None]).flatten(-2)
    if head < V:  # the last, partial row
        tail_values, tail_idx = torch.topk(x[..., head:], min(k, V - head), dim=-1)
        values, idx = torch.cat([values, tail_values], dim=-1), torch.cat([idx, tail_idx + head], dim=-1)
    values, pick = torch.topk(values, k, dim=-1)
    return values, idx.gather(-1, pick)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits (ties at the boundary are kept, as in HF)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = topk(logits, k)[0][..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of top tokens whose probability reaches ``p`` (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - p)
    remove_sorted[..., -1:] = False  # always keep the most likely token
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def apply_no_repeat_ngram(logits: torch.Tensor, context_ids: torch.Tensor, n: int) -> torch.Tensor:
    """Ban every token that would complete an ``n``-gram already in the context (prompt included), as
    HF's ``NoRepeatNGramLogitsProcessor``. ``context_ids`` is ``(T,)`` for ``(V,)`` logits, else ``(B, T)``."""
    T = context_ids.size(-1)
    if n <= 0 or T < n:
        return logits
    ids = context_ids.to(logits.device).reshape(-1, T)  # (B, T)
    windows = ids.unfold(1, n, 1)  # (B, T-n+1, n): every n-gram so far
    matches = (windows[..., :-1] == ids[:, None, T - n + 1 :]).all(dim=-1)  # (B, T-n+1): same n-1 as the end
    V = logits.size(-1)
    banned = torch.zeros(ids.size(0), V + 1, dtype=torch.bool, device=logits.device)  # column V: "none"
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=V), V), True)
    mask = banned[:, :V] if logits.dim() > 1 else banned[0, :V]
    return logits.masked_fill(mask, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least ``min_p`` times the top token's."""
    if min_p <= 0:
        return logits
    probs = logits.softmax(dim=-1)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    remove.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(remove, float("-inf"))


def apply_typical(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling: keep the tokens whose surprisal is closest to the entropy, until their
    probability reaches ``mass``."""
    if mass >= 1.0:
        return logits
    logp = logits.log_softmax(dim=-1)
    entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)
    shifted = (-logp - entropy).abs()
    sorted_shift, order = torch.sort(shifted, descending=False)
    cum = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cum < mass).sum(dim=-1, keepdim=True).clamp_(max=logits.size(-1) - 1)
    remove_sorted = sorted_shift > sorted_shift.gather(-1, last)
    remove_sorted[..., :1] = False
    return logits.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), float("-inf"))


def _cut_below(logits: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Remove tokens with probability under ``threshold``, always keeping the top one."""
    remove = logits.softmax(dim=-1) < threshold
    remove &= logits < logits.amax(dim=-1, keepdim=True)
    return logits.masked_fill(remove, float("-inf"))


def apply_epsilon(logits: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Epsilon sampling: keep tokens with probability at least ``epsilon``."""
    return logits if epsilon <= 0 else _cut_below(logits, epsilon)


def apply_eta(logits: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Eta sampling: an entropy-dependent cut-off ``min(epsilon, sqrt(epsilon) * exp(-entropy))``."""
    if epsilon <= 0:
        return logits
    logp = logits.log_softmax(dim=-1)
    entropy = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1, keepdim=True)
    eps = torch.tensor(epsilon, dtype=logits.dtype, device=logits.device)
    return _cut_below(logits, torch.minimum(eps, eps.sqrt() * torch.exp(-entropy)))


# Each stage after the raw logits, in order: (name, fn(logits, context_ids, params) -> logits).
_STAGES = (
    ("repetition penalty", lambda x, c, p: apply_repetition_penalty(x, c, p.repetition_penalty)),
    ("no-repeat n-gram", lambda x, c, p: apply_no_repeat_ngram(x, c, p.no_repeat_ngram_size)),
    ("temperature", lambda x, c, p: apply_temperature(x, p.temperature)),
    ("top-k", lambda x, c, p: apply_top_k(x, p.top_k)),
    ("top-p", lambda x, c, p: apply_top_p(x, p.top_p)),
    ("min-p", lambda x, c, p: apply_min_p(x, p.min_p)),
    ("typical", lambda x, c, p: apply_typical(x, p.typical_p)),
    ("epsilon", lambda x, c, p: apply_epsilon(x, p.epsilon_cutoff)),
    ("eta", lambda x, c, p: apply_eta(x, p.eta_cutoff)),
)
STAGES = ("raw", *(name for name, _ in _STAGES))


def sampler_stages(
    logits: torch.Tensor, context_ids: torch.Tensor, params: SamplingParams
) -> list[tuple[str, torch.Tensor]]:
    """The logits after each stage, in order, starting with the raw ones (for visualisation)."""
    context_ids = _as_ids(context_ids)
    out = [("raw", logits)]
    for name, fn in _STAGES:
        out.append((name, fn(out[-1][1], context_ids, params)))
    return out


def _as_ids(context_ids) -> torch.Tensor:
    if torch.is_tensor(context_ids):
        return context_ids
    return torch.as_tensor(list(context_ids), dtype=torch.long)


def process_logits(logits: torch.Tensor, context_ids, params: SamplingParams) -> torch.Tensor:
    """What the sampler draws from: every stage applied to ``logits`` (``(V,)`` or ``(B, V)``)."""
    x, context_ids = logits, _as_ids(context_ids)
    for _, fn in _STAGES:
        x = fn(x, context_ids, params)
    return x


def sample(processed: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Draw token ids from processed logits ``(..., V)``; greedy takes the arg-max. Shape ``(...)``."""
    if params.greedy:
        return processed.argmax(dim=-1)
    probs = processed.float().softmax(dim=-1)
    flat = probs.reshape(-1, probs.size(-1))
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


TOP_K_CANDIDATES = 1024  # a top-k at most this large samples from its candidates alone (``top_k_candidates``)
_AFTER_TOP_K = _STAGES[[name for name, _ in _STAGES].index("top-k") + 1 :]


@dataclass(frozen=True)
class Candidates:
    """A processed distribution whose tokens outside ``ids`` are all -inf: the ids a top-k kept and their
    processed logits, ``(k,)`` each. Drawing from it costs k, not the vocabulary."""

    ids: torch.Tensor
    logits: torch.Tensor


def top_k_candidates(logits: torch.Tensor, context_ids, params: SamplingParams) -> Candidates | None:
    """``process_logits`` for one row ``(V,)`` whose top-k is on, with every stage after the top-k run on its
    k candidates: the same distribution, without the vocabulary-wide ops (on a CPU ~0.1-0.3 ms each, per
    token). None where that does not hold: greedy, k over ``TOP_K_CANDIDATES``, or a tie at the k-th value
    after the temperature (the top-k stage then keeps every tied token)."""
    k = params.top_k
    if logits.dim() != 1 or params.greedy or not 0 < k <= TOP_K_CANDIDATES or k >= logits.size(-1):
        return None
    context_ids = _as_ids(context_ids)
    x = apply_repetition_penalty(logits, context_ids, params.repetition_penalty)
    x = apply_no_repeat_ngram(x, context_ids, params.no_repeat_ngram_size)
    # Dividing by a positive temperature keeps the order, so the top k + 1 of x are those of x / T.
    values, ids = topk(x, k + 1)
    values = apply_temperature(values, params.temperature)
    if not values[k - 1] > values[k]:
        return None
    x = values[:k]
    for _, fn in _AFTER_TOP_K:
        x = fn(x, context_ids, params)
    return Candidates(ids[:k], x)


def sample_candidates(candidates: Candidates, generator: torch.Generator | None) -> int:
    """Draw one token id from ``candidates``' distribution."""
    probs = candidates.logits.float().softmax(dim=-1)
    return int(candidates.ids[torch.multinomial(probs, 1, generator=generator)])


def make_generator(seed: int | None, device) -> torch.Generator:
    """A generator on ``device``, seeded by ``seed`` (a fresh random seed when None)."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
