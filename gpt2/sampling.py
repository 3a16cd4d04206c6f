"""Sampling as pure ``logits -> logits`` stages plus one draw, with Hugging Face's semantics.

Stages run in this order: repetition penalty, temperature, top-k, top-p. Each takes logits ``(..., V)``
and returns new logits (``-inf`` for removed tokens); none changes its input.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. ``0`` (top-k) and ``1.0`` (top-p, penalty) switch a stage off;
    ``temperature=0`` means greedy. ``seed`` fixes the random draws (same seed, same text)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings: generation ends before the first one (not included)
    stop_at_eos: bool = True  # end at <|endoftext|>

    def __post_init__(self) -> None:
        _check_float("temperature", self.temperature, 0.0, math.inf, "a number >= 0 (0 = greedy)")
        _check_int("top_k", self.top_k, 0, "an integer >= 0 (0 = off)")
        _check_float("top_p", self.top_p, 0.0, 1.0, "a number in [0, 1] (1 = off)")
        _check_float("repetition_penalty", self.repetition_penalty, 0.0, math.inf, "a number > 0 (1 = off)",
                     open_low=True)
        _check_int("max_new_tokens", self.max_new_tokens, 1, "an integer >= 1")
        if self.seed is not None:
            _check_int("seed", self.seed, 0, "an integer in [0, 2**63) or None", high=2**63 - 1)
        if isinstance(self.stop, str):  # a lone string is one stop string, not a tuple of characters
            object.__setattr__(self, "stop", (self.stop,))
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings; got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_float(name, value, low, high, allowed, open_low=False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        raise ValueError(f"{name} must be {allowed}; got {value!r}")


def _check_int(name, value, low, allowed, high=None) -> None:
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


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits (ties at the boundary are kept, as in HF)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
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


STAGES = ("raw", "repetition penalty", "temperature", "top-k", "top-p")


def sampler_stages(
    logits: torch.Tensor, context_ids: torch.Tensor, params: SamplingParams
) -> list[tuple[str, torch.Tensor]]:
    """The logits after each stage, in order, starting with the raw ones (for visualisation)."""
    out = [("raw", logits)]
    out.append(("repetition penalty", apply_repetition_penalty(out[-1][1], context_ids, params.repetition_penalty)))
    out.append(("temperature", apply_temperature(out[-1][1], params.temperature)))
    out.append(("top-k", apply_top_k(out[-1][1], params.top_k)))
    out.append(("top-p", apply_top_p(out[-1][1], params.top_p)))
    return out


def process_logits(logits: torch.Tensor, context_ids, params: SamplingParams) -> torch.Tensor:
    """What the sampler draws from: every stage applied to ``logits`` (``(V,)`` or ``(B, V)``)."""
    if not torch.is_tensor(context_ids):
        context_ids = torch.as_tensor(list(context_ids), dtype=torch.long)
    return sampler_stages(logits, context_ids, params)[-1][1]


def sample(processed: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Draw token ids from processed logits ``(..., V)``; greedy takes the arg-max. Shape ``(...)``."""
    if params.greedy:
        return processed.argmax(dim=-1)
    probs = processed.float().softmax(dim=-1)
    flat = probs.reshape(-1, probs.size(-1))
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def make_generator(seed: int | None, device) -> torch.Generator:
    """A generator on ``device``, seeded by ``seed`` (a fresh random seed when None)."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
