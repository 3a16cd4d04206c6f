"""Weight-only int8: a quarter of fp32's bytes per decoded token, read by torch's own int8 kernel.

Batch-1 decoding reads every weight once per token, so on a CPU its speed is set by bytes read, not by
arithmetic. ``quantize_int8(model)`` swaps every block projection and the tied embedding/output head for
int8 weights with one scale per output channel (symmetric: ``w ≈ q * s``, ``q`` in [-127, 127], ``s =
max|w_row| / 127``). A decoded row on a CPU (fp32, no gradient) goes through ``gpt2.native``'s int8 loop
(int8 x int8 products with AVX-512 VNNI or AVX2, each group of four inputs rounded with its own scale;
fp32 inputs elsewhere). Other products run in ``torch.ops.aten._weight_int8pack_mm``, which reads the int8 weights and
multiplies bf16 activations (measured on AVX2 and AVX-512 CPUs: its fp32-activation path is several times
slower, so inputs are rounded to bf16 there and outputs come back in the model's dtype). Everything else
(LayerNorms, attention, the residual stream, the KV cache) keeps the model's dtype.

What works on a quantized model: plain, traced, cached and edited passes (``Trace``, ``Edit``), generation,
beam search, attribution (gradients flow to the inputs through the dequantized weights; nothing trains
the int8 weights) and LoRA adapters over the frozen int8 base. What does not: saving it
(``save_pretrained`` refuses; the checkpoint format is HF's fp32/fp16 layout) and full fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .native import int8_linear, int8_spec

__all__ = ["QUANTIZATIONS", "Int8Linear", "Int8Embedding", "check_supported", "quantize_int8", "is_quantized",
           "load_int8", "Fidelity", "fidelity"]

QUANTIZATIONS = ("int8",)
_ACT = torch.bfloat16  # the kernel's fast activation dtype
# On a GPU, above this many rows (a prompt, a batch of beams) one dequantized GEMM is used instead of the int8
# kernel, a matrix-vector product at heart whose time grows with the rows (a chosen bound, not a tuned one).
# On a CPU the kernel was faster at every row count measured (GPT-2's 2304x768, 2 threads, AMD EPYC with
# AVX-512 and bf16: 0.4 vs 1.2-1.5 ms at 32 rows, 7-9 vs 11-13 ms at 512; with torch held to AVX2 by
# ATEN_CPU_CAPABILITY=avx2: 33 vs 38 ms at 512): dequantizing writes and reads the whole fp32 matrix.
GEMV_ROWS = 16
_BLOCK = 1 << 22  # elements ``quantize_rows`` does at a time: a 16 MB fp32 buffer


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``(q (out, in) int8, scales (out,) fp32)`` with ``w ≈ q * scales[:, None]``.

    Rows go a block at a time (``_BLOCK``) through one fp32 buffer: no whole-matrix fp32 temporaries (three
    of 321 MB each for gpt2-xl's embedding), and none left as holes among the int8 results in the heap.
    Every row comes out as when done all at once: max, divide and round are exact per element.
    """
    w = w.detach()
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)  # contiguous: the kernel wants rows
    scales = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    step = max(1, min(w.shape[0], _BLOCK // max(1, w.shape[1])))
    buf = torch.empty(step, w.shape[1], dtype=torch.float32, device=w.device)  # after q: freed from the top
    for i in range(0, w.shape[0], step):
        rows = w[i : i + step]
        x = buf[: len(rows)]
        s = x.copy_(rows).abs_().amax(dim=1).clamp_min_(1e-12).div_(127.0)  # an all-zero row: a harmless scale
        q[i : i + step] = x.copy_(rows).div_(s[:, None]).round_().clamp_(-127, 127)
        scales[i : i + step] = s
    return q, scales


def dequantize(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``q * scales[:, None]`` in ``dtype`` (default: the scales')."""
    dtype = dtype or scales.dtype
    return q.to(dtype) * scales.to(dtype)[:, None]


def _int8_mm(x: torch.Tensor, q: torch.Tensor, kernel_scales: torch.Tensor) -> torch.Tensor:
    """``x @ (q * s)^T`` in the kernel, back in ``x``'s dtype."""
    flat = x.reshape(-1, x.shape[-1]).to(_ACT)  # (N, in): the kernel takes 2-D inputs
    y = torch.ops.aten._weight_int8pack_mm(flat, q, kernel_scales.to(_ACT))  # (N, out); .to: a no-op unless
    # a later ``model.to(dtype)`` converted the buffer
    return y.to(x.dtype).view(*x.shape[:-1], q.shape[0])


class _Int8MatMul(torch.autograd.Function):
    """``x @ (q * s)^T`` by the int8 kernel; the backward pass (attribution's gradients) dequantizes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor, kernel_scales: torch.Tensor,
                scales: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, scales)
        return _int8_mm(x, q, kernel_scales)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, scales = ctx.saved_tensors
        return grad @ dequantize(q, scales, grad.dtype), None, None, None


class Int8Linear(nn.Module):
    """An ``nn.Linear`` whose weight is int8 with one scale per output channel (buffers, not trained)."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("qweight", q)
        self.register_buffer("scales", scales)  # the model's dtype: dequantizing
        self.register_buffer("kernel_scales", scales.to(_ACT), persistent=False)  # what the kernel takes
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scales = quantize_rows(linear.weight)
        return cls(q, scales.to(linear.weight.dtype), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > GEMV_ROWS * self.in_features and x.device.type != "cpu":  # see ``GEMV_ROWS``
            return F.linear(x, self.weight.to(x.dtype), self.bias)
        y = int8_linear(x, self.qweight, self.scales, self.bias)  # one row, fp32, no gradient: native
        if y is not None:
            return y
        if torch.is_grad_enabled() and x.requires_grad:
            y = _Int8MatMul.apply(x, self.qweight, self.kernel_scales, self.scales)
        else:  # decoding: skip autograd.Function's overhead (~10 us, 49 times a token for GPT-2 124M)
            y = _int8_mm(x, self.qweight, self.kernel_scales)
        return y + self.bias if self.bias is not None else y

    def native_spec(self) -> object | None:
        """This projection for ``gpt2.native.decode_layers``; None for a subclass, whose forward may do more."""
        return int8_spec(self.qweight, self.scales, self.bias) if type(self) is Int8Linear else None

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized ``(out, in)`` weight, built on each access (for analyses and prompts)."""
        return dequantize(self.qweight, self.scales)


class Int8Embedding(nn.Module):
    """A token embedding stored as int8 rows with a scale each: lookups dequantize only the rows read."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = q.shape
        self.register_buffer("qweight", q)
        self.register_buffer("scales", scales)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return dequantize(self.qweight[idx.flatten()], self.scales[idx.flatten()]).view(*idx.shape, -1)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized ``(vocab, C)`` table, built on each access."""
        return dequantize(self.qweight, self.scales)


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds int8 weights (``quantize_int8``)."""
    return any(isinstance(m, (Int8Linear, Int8Embedding)) for m in model.modules())


def check_supported(device: torch.device) -> None:
    """Refuse, with what to do, a device where this torch build has no int8 weight-only kernel."""
    try:
        x = torch.zeros(1, 64, device=device, dtype=_ACT)
        torch.ops.aten._weight_int8pack_mm(x, torch.zeros(8, 64, device=device, dtype=torch.int8),
                                           torch.ones(8, device=device, dtype=_ACT))
    except (RuntimeError, NotImplementedError) as e:
        raise ValueError(f"int8 weights are not supported on {device} by this torch build ({e}); "
                         "load the model with dtype='bfloat16' (or float32) instead") from None


def _tie_int8_table(model: nn.Module, q: torch.Tensor, scales: torch.Tensor) -> None:
    """The token embedding and the output head become one int8 table: still tied, stored once."""
    model.transformer.wte = Int8Embedding(q, scales)
    model.lm_head = Int8Linear(q, scales, None)


@torch.no_grad()
def quantize_int8(model: nn.Module) -> nn.Module:
    """Swap ``model``'s linear layers and its tied token embedding / output head for int8 ones, in place
    (each fp weight is freed as soon as its int8 copy exists); returns ``model``, frozen, in eval mode."""
    check_supported(model.transformer.wpe.weight.device)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name != "lm_head":
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, Int8Linear.from_linear(module))
    wte = model.transformer.wte
    q, scales = quantize_rows(wte.weight)
    _tie_int8_table(model, q, scales.to(wte.weight.dtype))
    for t in [*model.parameters(), *model.buffers()]:
        # own copies of the small tensors left (biases, LayerNorms, positions): a view into a loaded
        # checkpoint's storage would keep all of it, fp32 matrices included, resident (6 GB for gpt2-xl)
        t.data = t.data.clone()
    return model.requires_grad_(False).eval()


@torch.no_grad()
def load_int8(model: nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], device: torch.device,
              dtype: torch.dtype) -> nn.Module:
    """Fill ``model``, built on the meta device, with int8 weights from checkpoint ``tensors`` (``(name,
    tensor)`` pairs, ``gpt2.weights.read_checkpoint``), one tensor at a time: each matrix is moved to
    ``device``, converted to ``dtype``, quantized and dropped before the next is read, so the memory
    needed is the int8 model plus about one fp32 matrix, not the whole checkpoint. The result equals
    ``quantize_int8`` of the model loaded in ``dtype``, bit for bit; returns ``model``, frozen, in eval mode."""
    check_supported(device)
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "lm_head"}
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}  # biases, LayerNorms, positions: small, kept in ``dtype``
    for name, t in tensors:
        t = t.to(device=device, dtype=dtype)  # what ``model.to(device, dtype)`` does before quantize_int8
        module, _, attr = name.rpartition(".")
        if attr == "weight" and (module in linears or module == "transformer.wte"):
            q, scales = quantize_rows(t)
            quantized[module] = (q, scales.to(dtype))
        else:
            rest[name] = t
        del t  # the fp matrix goes before the next one is read
    _tie_int8_table(model, *quantized.pop("transformer.wte"))
    for module, (q, scales) in quantized.items():
        parent, _, attr = module.rpartition(".")
        setattr(model.get_submodule(parent), attr, Int8Linear(q, scales, rest.pop(f"{module}.bias")))
    model.load_state_dict(rest, strict=False, assign=True)  # the int8 buffers are already in place
    return model.requires_grad_(False).eval()


@dataclass(frozen=True)
class Fidelity:
    """How closely ``model`` follows ``reference``, teacher-forced over the same tokens."""

    tokens: int  # predictions compared
    top1_agreement: float  # share of positions where both models' most likely next token is the same
    mean_kl: float  # mean KL(reference || model) in nats
    reference_ppl: float  # perplexity of each model on the tokens
    model_ppl: float

    @property
    def ppl_change(self) -> float:
        """Relative perplexity change, ``model_ppl / reference_ppl - 1``."""
        return self.model_ppl / self.reference_ppl - 1


def _stepwise(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits ``(1, T, V)`` for ``x`` ``(1, T)`` fed one token at a time through a KV cache: decoding's path."""
    cache = model.new_cache(1, x.shape[1])
    return torch.cat([model(x[:, t : t + 1], cache) for t in range(x.shape[1])], dim=1)


@torch.no_grad()
def fidelity(reference: nn.Module, model: nn.Module, ids: Sequence[int], window: int | None = None,
             stepwise: bool = False) -> Fidelity:
    """Compare next-token distributions over ``ids`` in non-overlapping windows of ``window`` tokens
    (default: the reference's context), e.g. an int8 or bf16 model against its fp32 original. ``stepwise``
    runs ``model`` a token at a time with a KV cache, as decoding does (a window at once is a prompt's path)."""
    window = window or reference.config.block_size
    ids_t = torch.as_tensor(list(ids), dtype=torch.long)
    agree = kl = nll_ref = nll_model = 0.0
    n = 0
    for start in range(0, len(ids_t) - 1, window):
        chunk = ids_t[start : start + window + 1]
        if len(chunk) < 2:
            break
        x, y = chunk[:-1][None], chunk[1:]
        ref = reference(x.to(reference.device))[0].float().log_softmax(-1).cpu()  # (T, V)
        got = (_stepwise(model, x.to(model.device)) if stepwise else model(x.to(model.device)))[0]
        got = got.float().log_softmax(-1).cpu()  # (T, V)
        agree += (ref.argmax(-1) == got.argmax(-1)).sum().item()
        kl += (ref.exp() * (ref - got)).sum(-1).sum().item()
        nll_ref -= ref.gather(1, y[:, None]).sum().item()
        nll_model -= got.gather(1, y[:, None]).sum().item()
        n += len(y)
    if n == 0:
        raise ValueError("ids must hold at least 2 tokens")
    return Fidelity(n, agree / n, kl / n, math.exp(nll_ref / n), math.exp(nll_model / n))
