"""Which input tokens drove a prediction: attribution of log p(target) to the token-embedding rows.

``attribute(model, ids, target_id)`` explains the score log p(target) at the position after the last of
``ids`` (with a foil: log p(target) - log p(foil)) as one number per input token:

- ``"gradient_x_input"``: the gradient of the score times the token embedding, summed over its dimension;
- ``"integrated_gradients"``: the same with the gradient averaged along the straight line from a zero
  token embedding (positions kept) to the real one, by the midpoint rule; the numbers add up to
  score(ids) - score(baseline) as ``steps`` grows (completeness);
- ``"occlusion"``: how much the score drops when that token alone is replaced by ``<|endoftext|>``.

The embeddings reach the model through ``gpt2.Edit(embeddings=...)`` and gradients are taken with
``torch.autograd.grad`` with respect to them alone: nothing is written into the shared model (no hooks,
no parameter ``.grad``), so one model serves attribution and plain calls at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .edit import Edit
from .model import GPT2, KVCache
from .tokenizer import EOT_ID

METHODS = ("gradient_x_input", "integrated_gradients", "occlusion")
ROWS_PER_PASS = 16  # at most this many interpolation points per backward pass (bounds the graph's memory)
TOKENS_PER_PASS = 2048  # ... and at most about this many tokens (a long text gets fewer rows per pass)


def attribute(model: GPT2, ids: Sequence[int] | torch.Tensor, target_id: int, method: str = "gradient_x_input",
              foil_id: int | None = None, steps: int = 32) -> np.ndarray:
    """One attribution score per token of ``ids`` ``(T,)`` for log p(``target_id``) (minus log p(``foil_id``))
    at the position after the last token. ``method`` is one of ``METHODS``; ``steps`` (integrated gradients
    only) is the number of midpoint-rule points. Raises ``ValueError`` naming a bad argument."""
    row = _check(model, ids, target_id, method, foil_id, steps)
    target_id, foil_id = int(target_id), None if foil_id is None else int(foil_id)
    idx = torch.tensor([row], dtype=torch.long, device=model.device)
    with torch.inference_mode(False), torch.no_grad():
        emb = model.transformer.wte(idx).detach()  # (1, T, C): an ordinary tensor, not an inference one
    if method == "occlusion":
        scores = _occlusion(model, idx, target_id, foil_id)
    elif method == "gradient_x_input":
        scores = (_gradient(model, idx, emb, target_id, foil_id)[0] * emb[0]).sum(-1)
    else:
        scores = (_mean_gradient(model, idx, emb, target_id, foil_id, steps) * emb[0]).sum(-1)
    return scores.detach().to(torch.float64).cpu().numpy()


def score(model: GPT2, idx: torch.Tensor, target_id: int, foil_id: int | None = None,
          embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """The score ``(B,)`` explained: log p(target) (minus log p(foil)) after the last token of each row of
    ``idx`` ``(B, T)``, with ``embeddings`` ``(B, T, C)`` in place of the token embeddings if given."""
    edit = Edit(embeddings=embeddings) if embeddings is not None else None
    return _score(model(idx, edit=edit, last_only=True), target_id, foil_id)


def _score(logits: torch.Tensor, target_id: int, foil_id: int | None) -> torch.Tensor:
    """The score ``(B,)`` from logits ``(B, T, vocab)`` (their last position)."""
    logits = logits[:, -1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least fp32, even for a bf16 model
    logp = torch.log_softmax(logits, dim=-1)
    out = logp[:, target_id]
    return out - logp[:, foil_id] if foil_id is not None else out


def _gradient(model: GPT2, idx: torch.Tensor, emb: torch.Tensor, target_id: int,
              foil_id: int | None) -> torch.Tensor:
    """d score / d embeddings ``(B, T, C)`` for a batch of token embeddings ``emb`` of the one text ``idx``.
    ``autograd.grad`` with respect to the embeddings only: no parameter ``.grad`` is ever written, whether
    or not the parameters require gradients (``.backward()`` would race other users of the model)."""
    with torch.inference_mode(False), torch.enable_grad():
        x = emb.detach().clone().requires_grad_(True)
        s = score(model, idx.expand(x.size(0), -1), target_id, foil_id, embeddings=x)
        (grad,) = torch.autograd.grad(s.sum(), x)  # rows are independent: the sum's gradient is each row's
    return grad


def _mean_gradient(model: GPT2, idx: torch.Tensor, emb: torch.Tensor, target_id: int, foil_id: int | None,
                   steps: int) -> torch.Tensor:
    """The gradient averaged over ``steps`` midpoint-rule points alpha = (k + 0.5) / steps of the path
    alpha * emb from the zero baseline, ``(T, C)``, in batched passes of a bounded number of rows."""
    dtype = torch.promote_types(emb.dtype, torch.float32)  # sum in at least fp32
    alphas = (torch.arange(steps, dtype=dtype, device=emb.device) + 0.5) / steps
    per_pass = max(1, min(ROWS_PER_PASS, TOKENS_PER_PASS // idx.size(1)))
    total = torch.zeros(emb.shape[1:], dtype=dtype, device=emb.device)
    for chunk in alphas.split(per_pass):
        points = chunk.to(emb.dtype)[:, None, None] * emb  # (n, T, C)
        total += _gradient(model, idx, points, target_id, foil_id).to(dtype).sum(0)
    return total / steps


def _occlusion(model: GPT2, idx: torch.Tensor, target_id: int, foil_id: int | None) -> torch.Tensor:
    """score(ids) - score(ids with token i replaced), ``(T,)``: one row per token, in batched passes.
    Row i shares the tokens before i with the text, so it starts from the text's cached keys and values
    there and runs only positions i onwards: about half the work of T full passes."""
    T = idx.size(1)
    filler = EOT_ID if EOT_ID < model.config.vocab_size else model.config.vocab_size - 1
    scores = []
    with torch.inference_mode(False), torch.no_grad():
        cache = model.new_cache(1, T)
        full = _score(model(idx, cache, last_only=True), target_id, foil_id)
        start = 0
        while start < T:
            # rows of T - start tokens; the budget bounds both the pass and the copied prefix cache
            n = min(T - start, max(1, min(TOKENS_PER_PASS // (T - start), 2 * TOKENS_PER_PASS // T)))
            rows = idx[:, start:].expand(n, -1).clone()
            rows[torch.arange(n), torch.arange(n)] = filler  # row j: token start + j occluded
            logits = model(rows, _prefix(model, cache, start, n), last_only=True)
            scores.append(_score(logits, target_id, foil_id))
            start += n
    return full - torch.cat(scores)


def _prefix(model: GPT2, cache: KVCache, length: int, rows: int) -> KVCache:
    """A cache of ``rows`` rows holding the first ``length`` positions of the one-row ``cache``."""
    out = KVCache(model.config, rows, cache.max_len, cache.k.device, cache.k.dtype)
    out.k[:, :, :, :length] = cache.k[:, :, :, :length]  # broadcast over the rows
    out.v[:, :, :, :length] = cache.v[:, :, :, :length]
    out.pos = length
    return out


def _check(model: GPT2, ids: Sequence[int] | torch.Tensor, target_id: int, method: str, foil_id: int | None,
           steps: int) -> list[int]:
    """The ids as a list, after refusing every bad argument with a message naming it."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a whole number of at least 1; got {steps!r}")
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"ids must be one text's token ids (1-D); got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    row = [int(t) for t in ids]
    vocab, context = model.config.vocab_size, model.config.block_size
    if not row:
        raise ValueError("ids must hold at least one token; got none")
    if len(row) > context:
        raise ValueError(f"ids must be at most {context} tokens (this model's context); got {len(row)}")
    bad = [t for t in row if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"ids must be token ids from 0 to {vocab - 1} (this model's vocabulary); "
                         f"got {', '.join(map(str, bad[:3]))}{' …' if len(bad) > 3 else ''}")
    for name, value in (("target_id", target_id), ("foil_id", foil_id)):
        if value is None and name == "foil_id":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < vocab:
            raise ValueError(f"{name} must be a token id from 0 to {vocab - 1} (this model's vocabulary); "
                             f"got {value!r}")
    if foil_id is not None and foil_id == target_id:
        raise ValueError(f"foil_id must differ from target_id (the score would be 0); both are {target_id}")
    return row
