"""Pretraining on the tokens a corpus uses: an exact, cheaper output layer for small corpora.

With GPT-2's 50,257-token vocabulary the output layer dominates a small model's compute (for
``n_embd=128``: ~39 of ~45 MFLOP per training token), yet a small corpus uses a fraction of the
vocabulary (tinyshakespeare: 11k tokens). ``VocabSubset`` trains a model whose vocabulary is the
used tokens plus ONE shared row that stands for every unused token, then ``expand`` writes the
ordinary 50,257-token model in which every unused token's embedding is that shared row.

This is exact, not an approximation: in the expanded model the ``V - n_used`` unused tokens have the
same logit ``h . u``, so the full softmax's normaliser is ``sum_used exp(l_i) + (V - n_used) exp(h . u)``;
``CompactVocabModel.loss_sum`` counts the shared row's softmax term ``V - n_used`` times (its logit
plus ``ln(V - n_used)``), which makes the compact normaliser equal the full one, and scores a target
among the unused tokens (validation's unseen ones; with ``from_ids(min_count > 1)`` training's rare ones
too) as one of ``V - n_used`` equally likely tokens. So training and validation losses are exactly the
expanded model's.

Accuracy (``correct_sum``) is the expanded model's too, with one convention: the argmax over the compact
logits is the expanded model's argmax whenever it is a used token (same logits), and when it is the shared
row the expanded model predicts one of ``V - n_used`` tied unused tokens (``argmax``: the lowest id). The
compact ids no longer say which unused token a target was, so such a prediction is counted wrong: it
matches the expanded model except when the target is exactly that lowest unused id (a guess among
``V - n_used`` tokens the model never saw in training, not something it learned).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn

from gpt2 import EOT_ID, GPT2

from .data import IGNORE_INDEX

FULL_VOCAB = 50257
SHARED_INIT_SCALE = 5.0  # norm of ln_f's initial bias in ``init_shared_row``


class VocabSubset:
    """The used token ids (sorted); compact id ``i < n_used`` is ``used[i]``, id ``n_used`` is the rest."""

    def __init__(self, used: np.ndarray | list[int], full_size: int = FULL_VOCAB) -> None:
        self.used = np.unique(np.asarray(used, dtype=np.int64))
        self.full_size = full_size
        if len(self.used) >= full_size:
            raise ValueError("the subset uses the whole vocabulary; train without a compact vocabulary")
        self.other = len(self.used)  # the shared row's compact id
        table = torch.full((full_size,), self.other, dtype=torch.long)
        table[torch.from_numpy(self.used)] = torch.arange(len(self.used))
        self.table = table  # (full_size,) full id -> compact id

    @classmethod
    def from_ids(cls, ids: np.ndarray, min_count: int = 1, full_size: int = FULL_VOCAB) -> VocabSubset:
        """The tokens occurring at least ``min_count`` times in ``ids``, plus ``<|endoftext|>`` (generation
        starts and stops with it); rarer tokens share the unused tokens' row."""
        counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=full_size)
        counts[EOT_ID] = max(counts[EOT_ID], min_count)
        return cls(np.flatnonzero(counts >= min_count), full_size)

    @property
    def size(self) -> int:
        """Rows of the compact model's embedding."""
        return len(self.used) + 1

    @property
    def log_other(self) -> float:
        """Logit offset of the shared row: it stands for this many tokens."""
        return math.log(self.full_size - len(self.used))

    @torch.no_grad()
    def init_shared_row(self, model: GPT2, scale: float = SHARED_INIT_SCALE) -> None:
        """Start a new compact ``model`` with the shared row's logit near ``-log_other`` instead of 0.

        At GPT-2's init every logit is about 0, so the shared row, standing for ``V - n_used`` tokens, starts
        with most of the probability (39k of 50k tokens for tinyshakespeare), and training first has to push
        it down through the tied embedding and the final LayerNorm. In a toy copying task (64 words, 2 layers,
        600 steps) that detour left the copied tokens at 3.7 nats instead of 0.6. With ``ln_f``'s bias set to
        ``scale * u`` and the shared row to ``-(log_other / scale) * u`` for a random unit ``u``, the shared
        logit starts at ``-log_other`` (give or take ``log_other / scale``) and the used tokens' logits barely
        move. On plain tinyshakespeare it cost 0.06 nats of validation loss after 400 steps, so runs use it
        only when they mix in repeated tokens (``training.repeats``)."""
        C = model.config.n_embd
        u = torch.randn(C, device=model.device)
        u /= u.norm()
        model.transformer.ln_f.bias.copy_(scale * u)
        model.transformer.wte.weight[self.other] = -(self.log_other / scale) * u

    @torch.no_grad()
    def expand(self, model: GPT2) -> GPT2:
        """The full-vocabulary ``GPT2`` equal to a compact ``model`` (unused tokens share its last row)."""
        with torch.device("meta"):
            full = GPT2(replace(model.config, vocab_size=self.full_size))
        state = dict(model.state_dict())
        wte = state["transformer.wte.weight"][self.table.to(model.device)]  # (full_size, C)
        state["transformer.wte.weight"] = state["lm_head.weight"] = wte
        full.load_state_dict(state, assign=True)
        full.lm_head.weight = full.transformer.wte.weight  # tied, as in GPT-2
        return full.eval()


class CompactVocabModel(nn.Module):
    """A compact-vocabulary ``GPT2`` whose logits, with the shared row's offset, give the full model's
    softmax (see the module docstring). Train this; export ``subset.expand(self.model)``."""

    def __init__(self, model: GPT2, subset: VocabSubset) -> None:
        super().__init__()
        if model.config.vocab_size != subset.size:
            raise ValueError(f"model has {model.config.vocab_size} tokens, the subset {subset.size}")
        self.model, self.other, self.offset = model, subset.other, subset.log_other

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Compact logits ``(B, T, n_used + 1)``; the shared row's offset is applied in ``loss_sum``."""
        return self.model(idx)

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The expanded model's summed loss. With ``b = ln(V - n_used)`` its log-normaliser is
        ``lse + log1p((e^b - 1) * softmax(logits)[other])``, and every target costs that minus its logit
        (an unused token is one of the ``V - n_used`` tokens sharing the row). Computed on per-position
        vectors: adding ``b`` to a logits column in place would make autograd copy all the logits."""
        logits, targets = logits.flatten(0, 1).float(), targets.flatten()  # (N, n), (N,)
        lse = torch.logsumexp(logits, dim=-1)  # (N,)
        lse = lse + torch.log1p(math.expm1(self.offset) * torch.exp(logits[:, self.other] - lse))
        picked = logits.gather(1, targets.clamp_min(0)[:, None])[:, 0]  # (N,)
        return ((lse - picked) * (targets != IGNORE_INDEX)).sum()

    def correct_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Supervised positions whose argmax is the target; a target among the unused tokens (the shared
        row) is never predicted exactly, so it counts as wrong (see the module docstring)."""
        hit = (logits.argmax(dim=-1) == targets) & (targets != IGNORE_INDEX) & (targets != self.other)
        return hit.sum()
