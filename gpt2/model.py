"""GPT-2 in one file: learned positions, pre-LayerNorm blocks, tanh-GELU MLP, tied output head.

Parameter names follow Hugging Face's ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn`` ...), but
projections are ``nn.Linear`` (weight ``(out, in)``); ``gpt2.weights`` transposes HF's ``Conv1D``
``(in, out)`` weights on the way in and out.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig
from .edit import Edit, ablate, patched
from .native import Linear, attention_one, decode_layers
from .quant import QUANTIZATIONS, is_quantized, load_int8
from .weights import load_checkpoint, read_checkpoint, resolve_device_dtype, save_checkpoint


class KVCache:
    """Keys and values of every layer, preallocated to ``max_len`` positions.

    Decoding writes each step's key/value in place and attends over a view of the filled prefix, so a
    step costs no copy of the past (no ``torch.cat``).
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype) -> None:
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0  # positions filled so far
        self.head_sums: dict[int, torch.Tensor] = {}  # layer -> (B, nh, 1, hs): for an Edit's mean ablation

    def reset(self) -> None:
        self.pos = 0
        self.head_sums.clear()


@dataclass
class Trace:
    """Ask one forward pass to keep internals. Pass it as ``model(idx, trace=Trace(...))``.

    Nothing is recorded, and nothing costs anything, unless a trace is passed: the model keeps no
    hooks and no state between calls, so one shared model can serve traced and plain calls at once.
    """

    attn_layers: Collection[int] = ()  # layers whose attention pattern (all heads) to keep
    attn_rows: slice | None = None  # query rows of this pass to keep (None: all; slice(-1, None): last)
    hidden: bool = False  # keep the residual stream: embeddings, then the output of every block
    # keep every layer's per-head outputs (before attn.c_proj, after any Edit) and MLP outputs, for the
    # ``attn_rows`` rows: what direct logit attribution splits a prediction into
    components: bool = False
    qk: bool = False  # keep every layer's queries and keys (all rows): attention redrawn without the model
    attn: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, nh, rows, T_keys)
    queries: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, nh, T, hs)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, nh, T_keys, hs)
    hidden_states: list[torch.Tensor] = field(default_factory=list)  # n_layer + 1 of (B, T, C)
    head_outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, nh, rows, hs)
    mlp_outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, rows, C)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv=None, pos: int = 0, trace: Trace | None = None, layer: int = 0,
                edit: Edit | None = None, sums: dict | None = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if kv is not None:
            cache_k, cache_v = kv
            cache_k[:, :, pos : pos + T] = k
            cache_v[:, :, pos : pos + T] = v
            k, v = cache_k[:, :, : pos + T], cache_v[:, :, : pos + T]  # (B, nh, pos+T, hs), views
        dropout_p = self.dropout if self.training else 0.0
        if T == 1:  # one new query may see every cached key: no mask needed
            y = attention_one(q, k, v) if not dropout_p else None  # decoding on a CPU: a native loop
            if y is None:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        elif pos == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:  # a chunk after a cached prefix: causal with an offset
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=_causal_mask(T, pos, q.device), dropout_p=dropout_p)
        if trace is not None and trace.qk:
            trace.queries[layer], trace.keys[layer] = q, k
        if trace is not None and layer in trace.attn_layers:
            trace.attn[layer] = _attention_pattern(q, k, pos, trace.attn_rows or slice(None))
        if edit is not None and layer in edit.ablate_heads:
            y = ablate(y, edit.ablate_heads[layer], edit.mode, sums, layer, pos)  # (B, nh, T, hs)
        if trace is not None and trace.components:
            trace.head_outputs[layer] = y[:, :, trace.attn_rows or slice(None)]  # (B, nh, rows, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        y = self.c_proj(y)
        return self.resid_dropout(y) if self.training else y  # eval: skip an identity call (per token)


def _causal_mask(T: int, pos: int, device) -> torch.Tensor:
    """Boolean (T, pos+T) mask: query ``pos+i`` may see keys ``0..pos+i``."""
    q_pos = torch.arange(pos, pos + T, device=device)[:, None]
    return torch.arange(pos + T, device=device)[None, :] <= q_pos


def _attention_pattern(q: torch.Tensor, k: torch.Tensor, pos: int, rows: slice) -> torch.Tensor:
    """Softmax attention weights for the chosen query rows only, in fp32: (B, nh, rows, T_keys).

    Recomputed outside SDPA (which never materialises them) and only for what was asked, so a decode
    step's pattern is one row per head.
    """
    T = q.size(2)
    idx = range(T)[rows]
    q = q[:, :, rows].float()
    scores = q @ k.float().transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, rows, T_keys)
    q_pos = torch.arange(idx.start, idx.stop, idx.step, device=q.device)[:, None] + pos
    scores = scores.masked_fill(torch.arange(k.size(2), device=q.device)[None, :] > q_pos, float("-inf"))
    return scores.softmax(dim=-1)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        # An eval-mode Dropout is an identity, but calling it still costs ~10 us of Python; decoding
        # pays that twice per layer per token, so skip it outside training.
        return self.dropout(x) if self.training else x


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, kv=None, pos: int = 0, trace: Trace | None = None, layer: int = 0,
                edit: Edit | None = None, sums: dict | None = None):
        x = x + self.attn(self.ln_1(x), kv, pos, trace, layer, edit, sums)
        m = self.mlp(self.ln_2(x))
        if trace is not None and trace.components:
            trace.mlp_outputs[layer] = m[:, trace.attn_rows or slice(None)]  # (B, rows, C)
        return x + m


class GPT2(nn.Module):
    """GPT-2 language model. ``model(idx)`` maps token ids ``(B, T)`` to logits ``(B, T, vocab)``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            )
        )
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        *,
        trace: Trace | None = None,
        last_only: bool = False,
        edit: Edit | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, T, vocab)``, or ``(B, 1, vocab)`` for the last position with ``last_only``.

        With ``cache``, ``idx`` continues the cached sequence and the cache advances by ``T``. ``edit``
        intervenes in this pass only (``gpt2.Edit``: knocked-out heads, a patched residual, embeddings).
        """
        x = self.residual(idx, cache, trace=trace, edit=edit)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.transformer.ln_f(x))

    def residual(self, idx: torch.Tensor, cache: KVCache | None = None, *, trace: Trace | None = None,
                 layers: int | None = None, edit: Edit | None = None) -> torch.Tensor:
        """The residual stream ``(B, T, C)`` after the first ``layers`` blocks (default: all of them).
        Fewer layers stop the pass early, e.g. when only an early layer's attention is wanted."""
        if edit is not None:
            edit.check(self.config.n_layer, self.config.n_head)
        if cache is not None and layers is not None:
            raise ValueError("a cached pass must run every layer: their caches advance together")
        B, T = idx.shape
        pos = cache.pos if cache is not None else 0
        limit = cache.max_len if cache is not None else self.config.block_size
        if pos + T > min(limit, self.config.block_size):
            raise ValueError(
                f"sequence of {pos + T} tokens exceeds the context of {min(limit, self.config.block_size)}"
            )
        tr = self.transformer
        tok = tr.wte(idx) if edit is None or edit.embeddings is None else edit.embeddings
        x = tr.drop(tok + tr.wpe.weight[pos : pos + T])  # (B, T, C)
        sums = cache.head_sums if cache is not None else None
        if edit is not None:
            x = patched(x, edit.patch, 0)
        if trace is not None and trace.hidden:
            trace.hidden_states.append(x)
        plain = trace is None and (edit is None or edit.changes_nothing) and not self.training
        if cache is not None and T == 1 and plain:
            y = self._native_step(x, cache)
            if y is not None:
                cache.pos += T
                return y
        for i, block in enumerate(tr.h[:layers]):
            kv = (cache.k[i], cache.v[i]) if cache is not None else None
            x = block(x, kv, pos, trace, i, edit, sums)
            if edit is not None:
                x = patched(x, edit.patch, i + 1)
            if trace is not None and trace.hidden:
                trace.hidden_states.append(x)
        if cache is not None:
            cache.pos += T
        return x

    def _native_step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor | None:
        """Every block for one cached position in one native call (``gpt2.native.decode_layers``), or None
        where it does not apply (a GPU, bf16, a batch, a LoRA update active in this context, no compiler)."""
        layers = []
        for block in self.transformer.h:
            projections = (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)
            specs = tuple(getattr(p, "native_spec", lambda: None)() for p in projections)
            layers.append((block.ln_1, specs, block.ln_2))
        return decode_layers(x, layers, cache.k, cache.v, cache.pos, self.config.layer_norm_epsilon)

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        """An empty KV cache on this model's device and dtype (``max_len`` defaults to the context)."""
        p = self.transformer.wpe.weight  # never quantized: the dtype activations and the cache are in
        return KVCache(self.config, batch_size, max_len or self.config.block_size, p.device, p.dtype)

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and output head: turns any residual-stream state into logits (logit lens)."""
        return self.lm_head(self.transformer.ln_f(hidden))

    @property
    def device(self) -> torch.device:
        return self.transformer.wpe.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of activations and the KV cache (an int8 model's weights are int8, its activations not)."""
        return self.transformer.wpe.weight.dtype

    @property
    def quantization(self) -> str | None:
        """``"int8"`` for a weight-only int8 model, else None."""
        return "int8" if is_quantized(self) else None

    def num_params(self) -> int:
        """Parameters counted once (the tied head is not counted twice; an int8 weight counts as the weight)."""
        int8 = {b.data_ptr(): b.numel() for name, b in self.named_buffers() if name.endswith("qweight")}
        return sum(p.numel() for p in self.parameters()) + sum(int8.values())

    @classmethod
    def state_shapes(cls, config: GPTConfig) -> dict[str, torch.Size]:
        """Every state-dict name of a model of ``config`` and its shape, allocating nothing."""
        with torch.device("meta"):
            return {k: v.shape for k, v in cls(config).state_dict().items()}

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, device=None, dtype=None, quantize: str | None = None) -> GPT2:
        """Load a hub id (``gpt2``, ``gpt2-medium`` ...) or an HF-layout directory (safetensors only).

        ``device`` None picks CUDA when available; ``dtype`` None picks bf16 (or fp16) on CUDA and
        fp32 on CPU. ``quantize="int8"``: weight-only int8 (``gpt2.quant``); ``dtype`` is then the
        activations' and the KV cache's.
        """
        if quantize is not None and quantize not in QUANTIZATIONS:
            raise ValueError(f"quantize must be None or one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
        device, dtype = resolve_device_dtype(device, dtype)
        if quantize == "int8" or dtype != torch.float32:
            # tensor by tensor: the whole fp32 checkpoint is never held next to the converted model (gpt2-xl in
            # 16 GB)
            config, tensors = read_checkpoint(name_or_dir, expected=cls.state_shapes)
            with torch.device("meta"):
                model = cls(config)
            if quantize == "int8":
                return load_int8(model, tensors, device, dtype)
            return model._assign_converted(tensors, device, dtype)
        config, state = load_checkpoint(name_or_dir, expected=cls.state_shapes)  # fp32 from here on
        if device.type == "cpu":
            # Keep the tied embedding/head matrix column-major: same (V, C) shape, transposed strides.
            # The head then reads it as a contiguous (C, V) matrix, which MKL's batch-1 GEMV streams
            # ~25% faster than a row-major one, and it is 154 MB of the ~500 MB that GPT-2 124M reads
            # per decoded token. (The blocks' weights already arrive so: HF's Conv1D (in, out) seen
            # through .t().) An embedding lookup then gathers a strided row: negligible.
            state["transformer.wte.weight"] = state["transformer.wte.weight"].t().contiguous().t()
        with torch.device("meta"):
            model = cls(config)  # no random init: every tensor comes from the checkpoint
        model.load_state_dict(state, assign=True)
        del state  # the model holds the only references now: ``.to`` frees each old weight as it converts
        model.lm_head.weight = model.transformer.wte.weight  # re-tie after assign
        return model.to(device=device, dtype=dtype).eval()

    @torch.no_grad()
    def _assign_converted(self, tensors, device: torch.device, dtype: torch.dtype) -> GPT2:
        """Fill this meta-device model from ``(name, tensor)`` pairs, converting each before the next is read."""
        state = {}
        for name, t in tensors:
            t = t.to(device=device, dtype=dtype)
            # bf16/fp16 matrix products on a CPU take a slow path for transposed weights (20 ms instead of
            # 0.3 ms for GPT-2's c_attn, measured): store every matrix row-major
            state[name] = t.contiguous() if device.type == "cpu" else t
            del t
        state["lm_head.weight"] = state["transformer.wte.weight"]
        self.load_state_dict(state, assign=True)
        self.lm_head.weight = self.transformer.wte.weight  # re-tie after assign
        return self.eval()

    def save_pretrained(self, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (HF layout) atomically; returns the path."""
        if is_quantized(self):
            raise ValueError("an int8 model cannot be saved (checkpoints hold fp32/fp16/bf16 weights): save the "
                             "model it was loaded from, or load that in float32 to fine-tune and save")
        return save_checkpoint(self.config, self.state_dict(), out_dir, dtype=dtype)
