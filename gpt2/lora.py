"""LoRA at inference: apply one of many low-rank adapters to ONE shared base model, per call.

The design keeps the base model untouched and shareable:

* ``install_lora(base)`` swaps the targeted ``nn.Linear`` projections for ``LoRALinear`` (same
  parameters, same state-dict names) once. It is idempotent and freezes the base. With no adapter
  active a ``LoRALinear`` costs one context-variable lookup.
* A ``LoRAAdapter`` is a separate small module holding ``A``/``B`` per targeted projection. Nothing
  about it is registered on the base, so creating or dropping one is just allocating or freeing it.
* ``use_adapter(adapter)`` activates an adapter through a ``contextvars.ContextVar`` for the duration
  of a ``with`` block: per thread and per context, so concurrent users never see each other's adapter.
  ``with_adapter(iterator, adapter)`` does the same around each ``next()`` of a generator (e.g.
  ``gpt2.generate``), which Gradio may resume on a different thread at every step.
* ``merge_lora(base, adapter)`` returns a new plain ``GPT2`` with ``W + scale * B @ A`` (for export).

Training adapters, and saving and loading them, is ``training.lora``'s part.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import GPT2
from .native import f32_spec, int8_spec, linear
from .quant import Int8Linear

T = TypeVar("T")
TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # every projection in a block


@dataclass(frozen=True)
class LoRAConfig:
    """Shape of an adapter: ``delta W = (alpha / rank) * B @ A`` on each targeted projection."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapter's input only; the base never runs dropout
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        bad = [t for t in targets if t not in TARGETS]
        if bad or not targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of {', '.join(TARGETS)}; got {targets}")
        object.__setattr__(self, "targets", targets)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class _Active:
    adapter: LoRAAdapter
    train: bool  # apply the adapter's dropout


_ACTIVE: contextvars.ContextVar[_Active | None] = contextvars.ContextVar("gpt2_lora_active", default=None)


def _key(module_name: str) -> str:
    """Module path -> a ParameterDict key (which may not contain dots)."""
    return module_name.replace(".", "__")


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` that adds the active adapter's low-rank update, if it has one for this module.

    It shares the wrapped layer's ``weight``/``bias`` Parameters (no copy), so state dicts, checkpoints
    and ``gpt2.weights`` see exactly the original model.
    """

    lora_key: str

    @classmethod
    def wrap(cls, linear: nn.Linear, name: str) -> LoRALinear:
        with torch.device("meta"):  # no allocation: the parameters are taken over just below
            new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        new.weight, new.bias = linear.weight, linear.bias
        new.lora_key = _key(name)
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _with_delta(self.lora_key, x, linear(x, self.weight, self.bias))

    def native_spec(self) -> object | None:
        """For ``gpt2.native.decode_layers`` while no active adapter changes this projection (in this context)."""
        return None if _adapted(self.lora_key) else f32_spec(self.weight, self.bias)


class LoRAInt8Linear(Int8Linear):
    """``LoRALinear`` over an int8 projection (``gpt2.quant``): the same buffers, the adapter in full precision."""

    lora_key: str

    @classmethod
    def wrap(cls, linear: Int8Linear, name: str) -> LoRAInt8Linear:
        new = cls.__new__(cls)
        new.__dict__.update(linear.__dict__)  # the same buffers and bias: no copy
        new.lora_key = _key(name)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _with_delta(self.lora_key, x, super().forward(x))

    def native_spec(self) -> object | None:
        """For ``gpt2.native.decode_layers`` while no active adapter changes this projection (in this context)."""
        return None if _adapted(self.lora_key) else int8_spec(self.qweight, self.scales, self.bias)


def _adapted(key: str) -> bool:
    """Whether the adapter active in this context has an update for the projection ``key``."""
    active = _ACTIVE.get()
    return active is not None and key in active.adapter.lora_A


def _with_delta(key: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` plus the active adapter's low-rank update of the projection ``key`` (if it has one)."""
    active = _ACTIVE.get()
    if active is None or key not in active.adapter.lora_A:
        return y
    ad = active.adapter
    a, b = ad.lora_A[key], ad.lora_B[key]
    h = F.dropout(x, ad.config.dropout, training=active.train) if ad.config.dropout else x
    delta = (h.to(a.dtype) @ a.t()) @ b.t()  # (..., in) -> (..., r) -> (..., out)
    return y + (ad.config.scale * delta).to(y.dtype)


def _targets(model: nn.Module, targets: Iterable[str] = TARGETS) -> Iterator[tuple[str, nn.Linear | Int8Linear]]:
    targets = tuple(targets)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, Int8Linear)) and name.endswith(targets) and ".h." in f".{name}":
            yield name, module


def install_lora(model: GPT2) -> GPT2:
    """Wrap every block projection in ``LoRALinear`` (once) and freeze the base; returns ``model``.

    Idempotent and cheap: parameters are shared, not copied. Freezing matters for a shared base:
    backward then never writes ``.grad`` into it.
    """
    for name, module in list(_targets(model)):
        if isinstance(module, (LoRALinear, LoRAInt8Linear)):
            continue
        parent_name, _, attr = name.rpartition(".")
        wrapper = LoRAInt8Linear if isinstance(module, Int8Linear) else LoRALinear
        setattr(model.get_submodule(parent_name), attr, wrapper.wrap(module, name))
    model.requires_grad_(False)
    return model


class LoRAAdapter(nn.Module):
    """The trainable part of LoRA for one base model: ``A`` (r, in) and ``B`` (out, r) per target.

    ``B`` starts at zero, so a new adapter leaves the model's outputs unchanged (as in the LoRA paper).
    """

    def __init__(self, base: GPT2, config: LoRAConfig = LoRAConfig(), *, seed: int | None = None,
                 device=None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        self.base_config = base.config
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()
        device = device or base.device
        gen = torch.Generator().manual_seed(seed) if seed is not None else None  # None: torch's global RNG
        for name, lin in _targets(base, config.targets):
            a = torch.empty(config.rank, lin.in_features, dtype=dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)  # nn.Linear's own init, as PEFT does
            self.lora_A[_key(name)] = nn.Parameter(a.to(device))
            self.lora_B[_key(name)] = nn.Parameter(torch.zeros(lin.out_features, config.rank, device=device,
                                                               dtype=dtype))

    def delta(self, name: str) -> torch.Tensor | None:
        """``scale * B @ A`` for a module path, shaped like its weight (out, in); None if not targeted."""
        key = _key(name)
        if key not in self.lora_A:
            return None
        return self.config.scale * (self.lora_B[key] @ self.lora_A[key])

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@contextlib.contextmanager
def use_adapter(adapter: LoRAAdapter | None, train: bool = False) -> Iterator[None]:
    """Apply ``adapter`` to every LoRA-installed model called inside the block (this context only).

    ``train`` turns the adapter's dropout on. ``None`` runs the plain base model. Never hold this
    across a ``yield`` that another thread may resume: use ``with_adapter`` for generators.
    """
    token = _ACTIVE.set(_Active(adapter, train) if adapter is not None else None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def with_adapter(iterable: Iterable[T], adapter: LoRAAdapter | None) -> Iterator[T]:
    """Iterate ``iterable`` with ``adapter`` active inside each ``next()`` call only.

    For streaming generation on a shared base: ``with_adapter(gpt2.generate(base, ids, p), adapter)``.
    Each step enters and leaves the adapter's context, so the consumer may resume it on any thread.
    """
    it = iter(iterable)
    try:
        while True:
            with use_adapter(adapter):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            with use_adapter(adapter):
                close()


@torch.no_grad()
def merge_lora(base: GPT2, adapter: LoRAAdapter) -> GPT2:
    """A new plain ``GPT2`` whose weights are ``W + scale * B @ A``; ``base`` is left untouched."""
    if base.quantization is not None:
        raise ValueError("cannot merge an adapter into an int8 model: load the base in float32 to merge and save")
    if adapter.base_config != base.config:
        raise ValueError("this adapter was made for a different model configuration")
    with torch.device("meta"):
        merged = GPT2(base.config)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for name, _ in _targets(base, adapter.config.targets):
        w = state[f"{name}.weight"]
        state[f"{name}.weight"] = (w.float() + adapter.delta(name).to(w.device, torch.float32)).to(w.dtype)
    merged.load_state_dict(state, assign=True)
    merged.lm_head.weight = merged.transformer.wte.weight  # re-tie after assign
    return merged.eval()
