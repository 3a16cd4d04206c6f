"""GPT-2 hyperparameters and the Hugging Face ``config.json`` mapping."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT-2 model. Field names follow nanoGPT; ``to_hf``/``from_hf`` map to HF's."""

    block_size: int = 1024  # context length (HF: n_positions)
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.0  # one rate for embedding, attention and residual dropout

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def num_params(self) -> int:
        """Parameter count with the output head tied to ``wte`` (counted once)."""
        C, L = self.n_embd, self.n_layer
        per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
        return self.vocab_size * C + self.block_size * C + L * per_block + 2 * C

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` that ``transformers.GPT2LMHeadModel`` reads."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.block_size,
            "n_ctx": self.block_size,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": None,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
            "tie_word_embeddings": True,
        }

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> GPTConfig:
        """Read an HF GPT-2 ``config.json`` dict; refuse variants this model does not implement."""
        if cfg.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"config.json has model_type {cfg.get('model_type')!r}, expected 'gpt2'")
        unsupported = {
            "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
            "scale_attn_by_inverse_layer_idx": (False,),
            "reorder_and_upcast_attn": (False,),
            "scale_attn_weights": (True,),
            "tie_word_embeddings": (True,),
        }
        unsupported["n_inner"] = (None, 4 * cfg.get("n_embd", 0))  # both mean a 4x MLP
        for key, allowed in unsupported.items():
            if key in cfg and cfg[key] not in allowed:
                raise ValueError(f"config.json sets {key}={cfg[key]!r}; this GPT-2 supports only {allowed}")
        try:
            return cls(
                block_size=int(cfg["n_positions"]),
                vocab_size=int(cfg["vocab_size"]),
                n_layer=int(cfg["n_layer"]),
                n_head=int(cfg["n_head"]),
                n_embd=int(cfg["n_embd"]),
                layer_norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)),
                dropout=float(cfg.get("resid_pdrop", 0.0)),
            )
        except KeyError as e:
            raise ValueError(f"config.json is missing the key {e.args[0]!r}") from None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named configuration (``gpt2``, ``gpt2-medium``, ..., ``tiny``), optionally changed."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)


PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "distilgpt2": GPTConfig(n_layer=6, n_head=12, n_embd=768),  # 82M
    # Small shapes for tests and quick experiments (full GPT-2 vocabulary, so the tokenizer works).
    "tiny": GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32),
    "small": GPTConfig(block_size=256, n_layer=4, n_head=4, n_embd=128),
}
