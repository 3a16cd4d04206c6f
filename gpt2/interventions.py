"""Causal tools built on per-call edits: activation patching of the residual stream and direct logit
attribution (what each head and MLP writes towards a prediction).

Both run ordinary forward passes with an ``Edit`` or a ``Trace``: nothing is installed on the model, so
one shared model serves these and plain calls at once. Model calls run under ``no_grad`` and outside
inference mode (like ``gpt2.generation``), so a generator variant may resume on any thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .edit import Edit
from .generation import check_ids, stepwise
from .model import GPT2, KVCache, Trace


def _check_token(name: str, token: int | None, vocab_size: int) -> None:
    if token is not None and not 0 <= int(token) < vocab_size:
        raise ValueError(f"{name} must be a token id from 0 to {vocab_size - 1}; got {token}")


def _check_ids(name: str, ids: Sequence[int], model: GPT2) -> list[int]:
    ids = [int(t) for t in ids]
    if not ids:
        raise ValueError(f"{name} is empty: give at least one token")
    if len(ids) > model.config.block_size:
        raise ValueError(f"{name} has {len(ids)} tokens; the model's context is {model.config.block_size}")
    check_ids(ids, model.config.vocab_size, name)
    return ids


def _logit_diff(logits: torch.Tensor, target_id: int, foil_id: int | None) -> torch.Tensor:
    """``(B, V)`` last-position logits -> ``(B,)`` logit(target) − logit(foil) (or logit(target)), fp64."""
    ld = logits[:, target_id].double()
    return ld if foil_id is None else ld - logits[:, foil_id].double()


# ---------------------------------------------------------------- activation patching


@dataclass(frozen=True)
class PatchStep:
    """One row of the patching grid: ``layer`` (0 = embeddings) and its values over the positions."""

    layer: int
    row: np.ndarray  # (T,)
    ld_clean: float
    ld_corrupt: float


@stepwise
def _runs(model: GPT2, ids: torch.Tensor, target_id: int, foil_id: int) -> tuple[list[torch.Tensor], float, KVCache]:
    """The residual stream of one run (embeddings, then after each block; each ``(T, C)``), its LD and
    its keys and values."""
    trace, cache = Trace(hidden=True), model.new_cache(1, len(ids))
    ld = _logit_diff(model(ids[None], cache, trace=trace, last_only=True)[:, -1], target_id, foil_id).item()
    return [h[0] for h in trace.hidden_states], ld, cache


@stepwise
def _patched_lds(model: GPT2, corrupt: list[torch.Tensor], cache: KVCache, layer: int, start: int,
                 positions: torch.Tensor, values: torch.Tensor, target_id: int, foil_id: int) -> torch.Tensor:
    """LD of the corrupted run with its residual after ``layer`` blocks at each of ``positions`` (one
    batch row each) set to ``values``: ``(B,)``.

    The same as ``model(ids, edit=Edit(patch=ResidualPatch(layer, positions, values)))`` (tested), with
    the work that would only recompute the corrupted run left out: the pass starts after ``layer``
    blocks from the corrupted residual, and at position ``start`` (no patched position is earlier) with
    the corrupted run's keys and values before it."""
    B = len(positions)
    x = corrupt[layer][start:].expand(B, -1, -1).clone()  # (B, T - start, C)
    x[torch.arange(B, device=x.device), positions - start] = values.to(x.dtype)
    for i in range(layer, model.config.n_layer):
        kv = None
        if start > 0:  # one layer's buffers at a time: (B, nh, T, hs), the prefix from the corrupted run
            kv = (cache.k.new_empty((B, *cache.k.shape[2:])), cache.v.new_empty((B, *cache.v.shape[2:])))
            kv[0][:, :, :start], kv[1][:, :, :start] = cache.k[i, :, :, :start], cache.v[i, :, :, :start]
        x = model.transformer.h[i](x, kv, start)
    return _logit_diff(model.unembed(x[:, -1]), target_id, foil_id)


def patch_residual_steps(model: GPT2, clean_ids: Sequence[int], corrupt_ids: Sequence[int], target_id: int,
                         foil_id: int) -> Iterator[PatchStep]:
    """``patch_residual`` one layer at a time (0 = embeddings, then after each block), for progress."""
    clean_ids, corrupt_ids = _check_ids("clean_ids", clean_ids, model), _check_ids("corrupt_ids", corrupt_ids, model)
    if len(clean_ids) != len(corrupt_ids):
        raise ValueError(f"the clean and corrupted prompts must have the same number of tokens; got "
                         f"{len(clean_ids)} (clean) and {len(corrupt_ids)} (corrupted)")
    _check_token("target_id", target_id, model.config.vocab_size)
    _check_token("foil_id", foil_id, model.config.vocab_size)
    T, n_layer = len(clean_ids), model.config.n_layer
    clean, ld_clean, _ = _runs(model, torch.tensor(clean_ids, device=model.device), target_id, foil_id)
    corrupt, ld_corrupt, cache = _runs(model, torch.tensor(corrupt_ids, device=model.device), target_id, foil_id)
    # Below a few ulps of the logits the ratio is rounding noise: refuse rather than show noise as signal.
    if abs(ld_clean - ld_corrupt) <= 64 * torch.finfo(model.dtype).eps * max(1.0, abs(ld_clean), abs(ld_corrupt)):
        raise ValueError(f"the clean and corrupted prompts give the same logit difference ({ld_clean:.6g}) for "
                         f"this target and foil: nothing to recover; pick another target or foil")
    differs = [p for p in range(T) if clean_ids[p] != corrupt_ids[p]]
    first = differs[0] if differs else T  # identical prompts would give equal LDs: refused above
    for layer in range(n_layer + 1):
        row = np.zeros(T)
        if layer == n_layer:  # after every block only the last position reaches the logits: the clean LD
            row[T - 1] = 1.0
            yield PatchStep(layer, row, ld_clean, ld_corrupt)
            break
        # Before the first difference the two runs' residuals are equal: patching changes nothing. At
        # layer 0 so are the embeddings of every position whose token is the same.
        positions = differs if layer == 0 else list(range(first, T))
        pos = torch.tensor(positions, device=model.device)
        lds = _patched_lds(model, corrupt, cache, layer, positions[0], pos, clean[layer][pos], target_id, foil_id)
        row[positions] = ((lds - ld_corrupt) / (ld_clean - ld_corrupt)).cpu().numpy()
        yield PatchStep(layer, row, ld_clean, ld_corrupt)


def patch_residual(model: GPT2, clean_ids: Sequence[int], corrupt_ids: Sequence[int], target_id: int,
                   foil_id: int) -> np.ndarray:
    """Activation patching of the residual stream: ``(n_layer + 1, T)`` recovered fractions.

    Row 0 is the embeddings (token + position), row ``l`` the residual after the first ``l`` blocks.
    Cell ``(l, p)``: the corrupted run with its residual at ``(l, p)`` replaced by the clean run's gives
    ``LD_patched``; the cell is ``(LD_patched − LD_corrupt) / (LD_clean − LD_corrupt)`` with LD =
    logit(target) − logit(foil) at the last position (1: the clean behaviour fully restored, 0: no
    effect). The positions of a layer run as one batch, from that layer and that position on (earlier
    ones come from the corrupted run); positions before the first differing token are 0 without
    running anything, and so is the last row but its last cell (1).
    A ``ValueError`` if the prompts' token counts differ, or if both give the same LD (the fraction is
    undefined: pick another target or foil).
    """
    steps = list(patch_residual_steps(model, clean_ids, corrupt_ids, target_id, foil_id))
    return np.stack([s.row for s in steps])


# ---------------------------------------------------------------- direct logit attribution


@dataclass(frozen=True)
class LogitAttribution:
    """Direct logit attribution of logit(target) − logit(foil) (or logit(target)) at the last position.

    The final LayerNorm's scale comes from the full residual (frozen, as in TransformerLens), so every
    part is linear and ``heads.sum() + mlps.sum() + embeddings + biases == total``, the actual LD.
    """

    heads: np.ndarray  # (n_layer, n_head): each head's output through its slice of attn.c_proj
    mlps: np.ndarray  # (n_layer,): each MLP's output (its output bias included)
    embeddings: float  # token + position embedding of the last position
    biases: float  # the attention output biases of every layer, plus the final LayerNorm's bias
    total: float  # the actual logit difference
    target_id: int
    foil_id: int | None


@stepwise
def _components(model: GPT2, ids: torch.Tensor, edit: Edit | None):
    trace = Trace(components=True, attn_rows=slice(-1, None), hidden=True)
    x = model.residual(ids, trace=trace, edit=edit)
    return x[0, -1].float(), trace


@stepwise
def direct_logit_attribution(model: GPT2, ids: Sequence[int], target_id: int, foil_id: int | None = None,
                             edit: Edit | None = None) -> LogitAttribution:
    """Split the last position's logit(target) − logit(foil) (logit(target) without a foil) into what
    each head, each MLP, the embeddings and the biases write to the residual stream, from one traced
    pass (with ``edit`` applied, e.g. knocked-out heads, whose part is then 0)."""
    ids = _check_ids("ids", ids, model)
    _check_token("target_id", target_id, model.config.vocab_size)
    _check_token("foil_id", foil_id, model.config.vocab_size)
    x, trace = _components(model, torch.tensor([ids], device=model.device), edit)
    ln_f = model.transformer.ln_f
    # the head is tied to the token embedding: its rows are embedding lookups (on an int8 model only these
    # two rows are dequantized)
    rows = model.transformer.wte(torch.tensor([target_id, foil_id if foil_id is not None else target_id],
                                              device=model.device)).float()  # (2, C)
    direction = rows[0] - (rows[1] if foil_id is not None else 0.0)  # (C,)
    std = math.sqrt(x.var(unbiased=False).item() + ln_f.eps)
    # ln_f(x) . d = sum over parts c of (c - mean(c)) . (g * d / std) + b . d, and centring moves onto w
    w = ln_f.weight.float() * direction / std
    w = w - w.mean()
    n_head, hs = model.config.n_head, model.config.head_size
    heads, mlps, attn_bias = [], [], 0.0
    for layer, block in enumerate(model.transformer.h):
        proj = block.attn.c_proj
        per_head = (proj.weight.float().T @ w).view(n_head, hs)  # (nh, hs): W_O,h^T w
        y = trace.head_outputs[layer][0, :, -1].float()  # (nh, hs)
        heads.append((y * per_head).sum(-1))
        attn_bias += (proj.bias.float() @ w).item() if proj.bias is not None else 0.0
        mlps.append(trace.mlp_outputs[layer][0, -1].float() @ w)
    embeddings = (trace.hidden_states[0][0, -1].float() @ w).item()
    biases = attn_bias + (ln_f.bias.float() @ direction).item()
    logits = model.lm_head(ln_f(x.to(model.dtype)))
    total = _logit_diff(logits[None], target_id, foil_id).item()
    return LogitAttribution(torch.stack(heads).double().cpu().numpy(), torch.stack(mlps).double().cpu().numpy(),
                            embeddings, biases, total, int(target_id), None if foil_id is None else int(foil_id))
