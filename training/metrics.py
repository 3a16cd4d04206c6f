"""Evaluation metrics: mean loss, top-1 next-token accuracy and perplexity, from one forward pass per batch.

Accuracy is the share of supervised positions (label not -100) whose most likely next token (the argmax
of the logits) is the label; perplexity is ``exp`` of the mean loss per supervised token. Both come from
the same logits as the loss, so an evaluation costs no extra forward pass. A model may define its own
``loss_sum(logits, targets)`` and ``correct_sum(logits, targets)`` (``training.vocab.CompactVocabModel``
does); otherwise plain cross-entropy and argmax are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed as dist
from .data import IGNORE_INDEX, Batch

Count = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> a summed count


def perplexity(loss: float) -> float:
    """``exp(loss)``: the number of equally likely tokens that would be as surprising (inf past float range)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class Metrics:
    """One evaluation over a split."""

    loss: float  # mean loss per supervised token (nats)
    accuracy: float  # share of supervised positions whose argmax is the target
    labels: int  # supervised positions counted (all processes)

    @property
    def perplexity(self) -> float:
        return perplexity(self.loss)


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss over the supervised positions (targets -100 are skipped)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def correct_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Supervised positions whose most likely token is the target (ties: the lowest id, as ``argmax``)."""
    return ((logits.argmax(dim=-1) == targets) & (targets != IGNORE_INDEX)).sum()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], device: torch.device, loss_fn: Count | None = None,
             correct_fn: Count | None = None) -> Metrics:
    """Loss, accuracy and perplexity of ``model`` over ``batches``, summed over every process (under
    ``torchrun`` each rank passes its own share). ``loss_fn``/``correct_fn`` default to the model's own
    ``loss_sum``/``correct_sum``, else cross-entropy and argmax. Leaves ``model`` in eval mode; the caller
    chooses autocast."""
    loss_fn = loss_fn or getattr(model, "loss_sum", cross_entropy_sum)
    correct_fn = correct_fn or getattr(model, "correct_sum", correct_sum)
    total = torch.zeros(3, dtype=torch.float64, device=device)  # [loss sum, labels, correct]
    model.eval()
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)  # one forward pass serves the loss and the accuracy
        total[0] += loss_fn(logits, y).double()
        total[1] += (y != IGNORE_INDEX).sum()
        total[2] += correct_fn(logits, y).double()
    dist.all_reduce_sum(total)
    labels = total[1].clamp_min(1)
    return Metrics(loss=float(total[0] / labels), accuracy=float(total[2] / labels), labels=int(total[1]))
