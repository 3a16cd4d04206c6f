"""Interventions on one forward pass, as a per-call object: ``model(idx, edit=Edit(...))``.

The model keeps no hooks and no state: an ``Edit`` changes only the pass it is given to, so one shared
model serves edited and plain calls at once (the way ``Trace`` records internals).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import torch

MODES = ("zero", "mean")


@dataclass(frozen=True)
class ResidualPatch:
    """Row ``b`` of the batch gets ``values[b]`` as its residual stream at position ``positions[b]``, after
    the first ``layer`` blocks (0: the embeddings, token + position)."""

    layer: int
    positions: torch.Tensor  # (B,) positions of this pass
    values: torch.Tensor  # (B, C)


@dataclass(frozen=True)
class Edit:
    """What to change in one pass.

    - ``ablate_heads``: layer -> heads whose output (their slice of the input to ``attn.c_proj``) is
      knocked out: ``mode="zero"`` sets it to zero, ``"mean"`` to its mean over the positions of the same
      input (in a cached pass: every position so far, the cached ones included).
    - ``patch``: a ``ResidualPatch`` (activation patching).
    - ``embeddings``: ``(B, T, C)`` token embeddings used instead of looking the ids up (attribution takes
      gradients through them); the position embeddings are added as usual.
    """

    ablate_heads: Mapping[int, Collection[int]] = field(default_factory=dict)
    mode: str = "zero"
    patch: ResidualPatch | None = None
    embeddings: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {self.mode!r}")
        heads = {int(layer): tuple(sorted({int(h) for h in hs})) for layer, hs in self.ablate_heads.items()}
        object.__setattr__(self, "ablate_heads", {layer: hs for layer, hs in heads.items() if hs})

    @property
    def changes_nothing(self) -> bool:
        """No heads, no patch, no embeddings: a pass may run as if no edit were given."""
        return not self.ablate_heads and self.patch is None and self.embeddings is None

    def check(self, n_layer: int, n_head: int) -> None:
        """Refuse layers and heads the model does not have, naming them."""
        for layer, heads in self.ablate_heads.items():
            if not 0 <= layer < n_layer:
                raise ValueError(f"ablate_heads: layer {layer} is not a layer of this model (0 to {n_layer - 1})")
            bad = [h for h in heads if not 0 <= h < n_head]
            if bad:
                raise ValueError(f"ablate_heads: head {bad[0]} of layer {layer} is not a head of this model "
                                 f"(0 to {n_head - 1})")
        if self.patch is not None and not 0 <= self.patch.layer <= n_layer:
            raise ValueError(f"patch.layer must be from 0 to {n_layer}; got {self.patch.layer}")


def ablate(y: torch.Tensor, heads: Collection[int], mode: str, sums: dict | None, key: int, pos: int) -> torch.Tensor:
    """Head outputs ``y`` ``(B, nh, T, hs)`` with ``heads`` knocked out (a new tensor). In a cached pass
    ``sums[key]`` keeps each head's running sum over the positions so far, for the mean."""
    idx = torch.tensor(list(heads), device=y.device)
    if mode == "zero":
        return y.index_fill(1, idx, 0.0)
    total = y.sum(dim=2, keepdim=True)  # (B, nh, 1, hs)
    if sums is not None:
        if pos > 0 and key in sums:
            total = total + sums[key]
        sums[key] = total
    mean = (total / (pos + y.size(2))).expand_as(y)  # (B, nh, T, hs)
    keep = torch.ones(y.size(1), dtype=torch.bool, device=y.device)
    keep[idx] = False
    return torch.where(keep[None, :, None, None], y, mean)


def patched(x: torch.Tensor, patch: ResidualPatch | None, layer: int) -> torch.Tensor:
    """The residual stream ``x`` ``(B, T, C)`` with ``patch`` applied if it is for ``layer``."""
    if patch is None or patch.layer != layer:
        return x
    rows = torch.arange(x.size(0), device=x.device)
    return x.index_put((rows, patch.positions.to(x.device)), patch.values.to(x.dtype))
