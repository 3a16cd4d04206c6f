"""Instant redraws in the Attention tab: each layer's queries and keys of the text last drawn, kept per session.

Moving the layer, head, query token or view, or replaying an earlier step of a generation, changes only
which rows of softmax(q kᵀ / √d) are drawn. With every layer's queries and keys of the text kept
(2 × n_layer × T × n_embd fp32: 75 MB for 1,024 tokens of GPT-2 124M), a redraw computes those rows here,
in milliseconds, instead of running the model again (seconds). One ``ui.gpu`` job computes them on the
first draw and returns them as plain arrays: a pass through every layer, plus each layer's ``c_attn`` run
again on its traced input (about 1.3 forward passes; a first draw of an early layer used to run only the
blocks up to it, see ``benchmarks/redraw.py``).

A kept entry is named by the weights that read the text (the loaded base model, the session's adapter or
full fine-tuned copy: by identity, so another model, a new fine-tune or a reloaded base never matches)
and by its token ids. Any prefix of the ids is served too: attention is causal, so the first n positions'
queries and keys do not depend on later tokens (a generation's earlier steps replay from its last one).

Memory: a session keeps one entry, at most ``Caps.max_redraw_mb`` (a longer text is drawn as before:
the model runs for each view), and all sessions' entries share ``ui.budget.REDRAW`` (least recently used
out). A closed session frees its entry (``Session.close``).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

import gpt2
from gpt2.inspection import AttentionMaps, HeadScores, attention_maps, head_scores

from . import budget
from .gpu import ModelRef

if TYPE_CHECKING:  # both import this module (a session owns a ``RedrawCache``)
    from .context import AppContext
    from .session import Session

FLOAT_BYTES = 4  # kept in fp32: a bf16 or fp16 model's values convert exactly, a fp32 model's are kept whole


@dataclass(frozen=True)
class QK:
    """Every layer's attention queries and keys for one token sequence."""

    q: np.ndarray  # (n_layer, T, n_embd), fp32: the heads side by side, as ``c_attn`` makes them
    k: np.ndarray  # (n_layer, T, n_embd)
    n_head: int

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.k.nbytes


def qk_bytes(config: gpt2.GPTConfig, n_tokens: int) -> int:
    """Bytes a ``QK`` of ``n_tokens`` takes for a model of ``config``."""
    return 2 * config.n_layer * n_tokens * config.n_embd * FLOAT_BYTES


# ---------------------------------------------------------------- ``ui.gpu`` jobs (the model, maybe in a worker)


@torch.no_grad()
def queries_keys(model: gpt2.GPT2, ids: Sequence[int]) -> QK:
    """Every layer's queries and keys on ``ids`` (the active adapter included), kept by one traced pass."""
    trace = gpt2.Trace(qk=True)
    model.residual(torch.tensor([list(ids)], device=model.device), trace=trace)

    def rows(kept: dict[int, torch.Tensor]) -> np.ndarray:  # layer -> (1, nh, T, hs) to (L, T, C)
        return np.stack([kept[i][0].transpose(0, 1).flatten(1).float().cpu().numpy() for i in sorted(kept)])

    return QK(rows(trace.queries), rows(trace.keys), model.config.n_head)


def layer_patterns(model: gpt2.GPT2, ids: Sequence[int], layer: int) -> np.ndarray:
    """Every head's (T, T) attention in one layer: (n_head, T, T)."""
    return attention_maps(model, ids, [layer]).patterns[0]


@torch.no_grad()
def focus_rows(model: gpt2.GPT2, ids: Sequence[int]) -> np.ndarray:
    """What the last token of ``ids`` attends to, in every layer and head: (n_layer, n_head, len(ids)).
    Attention is causal: the prefix up to the query suffices, and the trace keeps one row per head."""
    n_layer = model.config.n_layer
    trace = gpt2.Trace(attn_layers=range(n_layer), attn_rows=slice(-1, None))
    model(torch.tensor([list(ids)], device=model.device), trace=trace, last_only=True)
    return torch.stack([trace.attn[i][0, :, 0] for i in range(n_layer)]).float().cpu().numpy()


def all_head_scores(model: gpt2.GPT2, ids: Sequence[int]) -> HeadScores:
    """Entropy, previous-token and induction score of every head on ``ids``."""
    return head_scores(attention_maps(model, list(ids)))


# ---------------------------------------------------------------- attention from kept queries and keys


def patterns(qk: QK, layers: slice, rows: range, keys: int) -> torch.Tensor:
    """Attention of query positions ``rows`` over the first ``keys`` positions in ``layers``, causal, in
    fp32 as the model's own trace computes it: (layers, n_head, len(rows), keys)."""
    q = torch.from_numpy(qk.q[layers, rows.start : rows.stop])  # views of the kept arrays: no copy
    k = torch.from_numpy(qk.k[layers, :keys])
    n_layer, n, width = q.shape
    size = width // qk.n_head
    q = q.view(n_layer, n, qk.n_head, size).transpose(1, 2)  # (L, nh, n, hs)
    k = k.view(n_layer, keys, qk.n_head, size).transpose(1, 2)  # (L, nh, keys, hs)
    scores = q @ k.transpose(-2, -1) / math.sqrt(size)
    later = torch.arange(keys)[None, :] > torch.arange(rows.start, rows.stop)[:, None]
    return scores.masked_fill(later, float("-inf")).softmax(dim=-1)


# ---------------------------------------------------------------- one session's kept entry


@dataclass(frozen=True)
class _Entry:
    weights: tuple  # weak references to the objects that name the weights (see ``weights``), or None
    ids: tuple[int, ...]
    qk: QK
    token: object  # tells this entry from a later one, for the server's budget


def weights(ctx: AppContext, ref: ModelRef) -> tuple:
    """The objects whose identity names the weights ``ref`` runs: a full fine-tuned copy, or the loaded
    base model and the session's adapter (None: no adapter)."""
    return (ref.model, None) if ref.model is not None else (ctx.base(ref.key), ref.adapter)


def _same(kept: tuple, objects: tuple) -> bool:
    """Whether weak references ``kept`` still point at ``objects`` (a freed object never matches)."""
    return all((w is None and o is None) or (w is not None and o is not None and w() is o)
               for w, o in zip(kept, objects, strict=True))


class RedrawCache:
    """One session's kept queries and keys: of the text it drew last, or none. Thread-safe: a session's
    events may run at once, and the server's budget drops entries from other sessions' threads."""

    def __init__(self) -> None:
        self._entry: _Entry | None = None
        self._lock = threading.Lock()  # only around reading or replacing the entry, never around model work
        self.building = threading.Lock()  # one computation at a time: a second event waits, then finds it

    def get(self, objects: tuple, ids: Sequence[int]) -> QK | None:
        """The kept ``QK`` when the same weights read ``ids`` or a text that starts with them."""
        with self._lock:
            entry = self._entry
        ids = tuple(ids)
        if entry is None or not _same(entry.weights, objects) or entry.ids[: len(ids)] != ids:
            return None
        budget.REDRAW.touch(self)
        return entry.qk

    def put(self, objects: tuple, ids: Sequence[int], qk: QK) -> None:
        """Keep ``qk`` (replacing what was kept); it counts against the server's budget, which may drop
        other sessions' least recently used entries."""
        kept = tuple(None if o is None else weakref.ref(o) for o in objects)
        entry = _Entry(kept, tuple(ids), qk, object())
        with self._lock:
            self._entry = entry
        budget.REDRAW.add(self, qk.nbytes, entry.token)

    def drop(self, token: object | None = None) -> None:
        """Free the kept arrays (with ``token``: only if they are still those the budget counted)."""
        with self._lock:
            if self._entry is not None and (token is None or self._entry.token is token):
                self._entry = None

    def close(self) -> None:
        """The session closed: free its entry and its share of the budget now."""
        self.drop()
        budget.REDRAW.remove(self)

    @property
    def nbytes(self) -> int:
        """Bytes this session keeps."""
        entry = self._entry
        return 0 if entry is None else entry.qk.nbytes


# ---------------------------------------------------------------- what a drawing reads


class Views:
    """The attention one drawing reads: computed from the session's kept queries and keys of ``ids`` (the
    text, or the longest window of a generation that later steps replay from), else by the model, view
    by view, when they would not fit the caps. Nothing runs until a view asks (bad input fails first)."""

    def __init__(self, ctx: AppContext, session: Session, ref: ModelRef, ids: Sequence[int]) -> None:
        self.ctx, self.session, self.ref, self.ids = ctx, session, ref, tuple(ids)
        self._qk: QK | None = None
        self._looked = False

    def kept(self) -> QK | None:
        """The session's ``QK`` of ``ids``: kept, or computed now and kept; None when over the caps."""
        if not self._looked:
            self._qk, self._looked = lookup(self.ctx, self.session, self.ref, self.ids), True
        return self._qk

    def _served(self, ids: Sequence[int]) -> QK | None:
        qk = self.kept()
        return qk if qk is not None and self.ids[: len(ids)] == tuple(ids) else None

    def layer(self, ids: Sequence[int], layer: int, start: int) -> np.ndarray:
        """Every head of ``layer`` on ``ids``, query rows and keys from ``start`` on: (n_head, n, n)."""
        qk, end = self._served(ids), len(ids)
        if qk is None:
            return self.ctx.gpu.call(layer_patterns, self.ref, list(ids), layer)[:, start:, start:]
        return patterns(qk, slice(layer, layer + 1), range(start, end), end)[0, :, :, start:].numpy()

    def focus(self, ids: Sequence[int]) -> np.ndarray:
        """What the last token of ``ids`` attends to in every layer and head: (n_layer, n_head, len(ids))."""
        qk, n = self._served(ids), len(ids)
        if qk is None:
            return self.ctx.gpu.call(focus_rows, self.ref, list(ids))
        return patterns(qk, slice(None), range(n - 1, n), n)[:, :, 0].numpy()

    def scores(self, ids: Sequence[int]) -> HeadScores:
        """``all_head_scores`` on ``ids`` (every layer's full patterns: keep ``ids`` short)."""
        qk, n = self._served(ids), len(ids)
        if qk is None:
            return self.ctx.gpu.call(all_head_scores, self.ref, list(ids))
        maps = patterns(qk, slice(None), range(n), n).numpy()
        return head_scores(AttentionMaps(list(ids), gpt2.token_display(list(ids)), list(range(len(maps))), maps))


def lookup(ctx: AppContext, session: Session, ref: ModelRef, ids: Sequence[int]) -> QK | None:
    """The session's kept queries and keys of ``ids`` read by ``ref``, computed by one job and kept when
    missing; None when they would be over the session's cap or the server's whole budget."""
    objects, cache = weights(ctx, ref), session.redraw
    found = cache.get(objects, ids)
    if found is not None:
        return found
    size = qk_bytes(ctx.config(ref), len(ids))
    if size > min(ctx.caps.max_redraw_mb * 1_000_000, budget.REDRAW.limit_bytes):
        return None
    with cache.building:
        found = cache.get(objects, ids)  # another event of the session may have computed it meanwhile
        if found is None:
            found = ctx.gpu.call(queries_keys, ref, list(ids))
            cache.put(objects, ids, found)
    return found
