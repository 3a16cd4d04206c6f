"""Repeated random tokens mixed into pretraining: the copying signal that induction heads learn from.

An induction head continues a pattern seen earlier in the context ("... A B ... A" -> "B"). Natural text
teaches it slowly: the bundled model (half an hour on tinyshakespeare, 1.8M tokens) has none to speak of.
``RepeatSplit`` replaces a share of every training batch with windows of random tokens that repeat with a
random period (``x1 .. xP x1 .. xP x1 ..``): after the first period every token can be predicted only by
copying from the context, so those windows carry that signal at almost every position.

Measured (issue 12's notes): short periods, many windows per step and a small vocabulary make copying form
fast (a 2-layer model on 64 words: within 600 steps of 32 windows, ``tests/test_training_repeats.py``); with
periods over 100 in 256-token windows nothing was learned in the same steps, and with the default bundled
model's 11k-token vocabulary 2,000 CPU steps of 4 text + 4 repeated windows were not enough. Over the 716
token types tinyshakespeare uses 50 times or more, with periods 16 to 64 (short ones can be copied by
position alone) and 8 text + 8 repeated windows a step, a 2-layer model formed induction heads between steps
4,000 and 5,500: ``checkpoints/induction-demo``. A compact-vocabulary run with repeats starts its shared row
low (``VocabSubset.init_shared_row``), which made copying form several times faster in the toy. Validation
and test splits stay the plain text, so their losses mean what they meant before; the training loss mixes
both kinds of window.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .data import Batch, MappedSplit, StreamSplit

PERIODS = (4, 64)  # default shortest and longest period, drawn log-uniformly


def check_periods(periods: tuple[int, int] | list[int]) -> tuple[int, int]:
    """``periods`` as a (shortest, longest) pair, refused unless 1 <= shortest <= longest."""
    lo, hi = (int(p) for p in periods)
    if not 1 <= lo <= hi:
        raise ValueError(f"repeat periods must be 1 <= shortest <= longest, got {lo} {hi}")
    return lo, hi


def periods(block_size: int, wanted: tuple[int, int] = PERIODS) -> tuple[int, int]:
    """The period range for windows of ``block_size`` tokens: ``wanted``, the longest at most a quarter of
    the window (so that every window repeats its tokens at least three times)."""
    lo, hi = wanted
    return min(lo, max(1, block_size // 4)), max(1, min(hi, block_size // 4))


class RepeatSplit:
    """A stream split whose batches have ``round(fraction * batch_size)`` windows of repeated random tokens
    (drawn from ``vocab``, the ids the model trains on) after the split's own windows."""

    def __init__(self, split: StreamSplit | MappedSplit, vocab: np.ndarray, fraction: float, block_size: int,
                 wanted: tuple[int, int] = PERIODS) -> None:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"the repeated-token fraction must be in (0, 1), got {fraction}")
        self.split, self.fraction, self.block_size = split, fraction, block_size
        self.periods = periods(block_size, check_periods(wanted))
        self.vocab = torch.as_tensor(np.asarray(vocab, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.split)

    def repeats(self, n: int, gen: torch.Generator) -> Batch:
        """``n`` windows of ``block_size`` tokens (and their next tokens), each repeating its own random
        tokens with its own period."""
        lo, hi = self.periods
        span = torch.rand(n, generator=gen) * math.log((hi + 1) / lo)
        period = (lo * span.exp()).long().clamp(lo, hi)  # (n,) log-uniform over lo..hi
        tokens = self.vocab[torch.randint(len(self.vocab), (n, hi), generator=gen)]  # (n, hi): each uses its first p
        w = tokens.gather(1, torch.arange(self.block_size + 1) % period[:, None])  # (n, block_size + 1)
        return w[:, :-1], w[:, 1:]

    def sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        n = round(batch_size * self.fraction)
        parts = [self.split.sample(batch_size - n, gen)] if n < batch_size else []
        if n:
            parts.append(self.repeats(n, gen))
        x, y = zip(*parts, strict=True)
        return torch.cat(x), torch.cat(y)

    def eval_batches(self, batch_size: int, max_batches: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """The split's own windows: evaluation never sees the repeats."""
        return self.split.eval_batches(batch_size, max_batches, rank, world)
