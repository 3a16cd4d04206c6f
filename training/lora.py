"""LoRA for training: an adapter plus its frozen base as one trainable module, and adapters on disk.

Applying an adapter (``LoRAConfig``, ``LoRAAdapter``, ``install_lora``, ``use_adapter``, ``with_adapter``,
``merge_lora``) is inference and lives in ``gpt2.lora``; those names are importable from here too.
``LoRAAdapter(base, config, seed=...)`` makes a new adapter (seeded ``A``, zero ``B``); ``LoRAModel`` is
what the trainer optimizes; ``save_adapter``/``load_adapter`` write and read an adapter alone
(safetensors + json, PEFT-style names).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from gpt2 import GPT2
from gpt2.files import write_file_atomically
from gpt2.lora import (
    TARGETS,
    LoRAAdapter,
    LoRAConfig,
    LoRALinear,
    install_lora,
    merge_lora,
    use_adapter,
    with_adapter,
)

__all__ = [  # the inference names are gpt2.lora's, re-exported for training code
    "TARGETS", "ADAPTER_WEIGHTS", "ADAPTER_CONFIG", "LoRAAdapter", "LoRAConfig", "LoRALinear", "LoRAModel",
    "install_lora", "merge_lora", "use_adapter", "with_adapter", "save_adapter", "load_adapter",
]
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"


class LoRAModel(nn.Module):
    """A base model plus an adapter, as one module whose only parameters are the adapter's.

    The base is held outside the module tree on purpose: ``train()``/``eval()``, ``parameters()``,
    DDP and optimizers all see only the adapter, so a shared base keeps its eval mode and weights.
    """

    def __init__(self, base: GPT2, adapter: LoRAAdapter) -> None:
        super().__init__()
        if adapter.base_config != base.config:
            raise ValueError("this adapter was made for a different model configuration")
        install_lora(base)
        object.__setattr__(self, "base", base)  # not a submodule (see the class docstring)
        self.adapter = adapter

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        with use_adapter(self.adapter, train=self.training):
            return self.base(idx)


def save_adapter(adapter: LoRAAdapter, out_dir: str | Path, base_model: str = "") -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` (a few MB at most)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, a in adapter.lora_A.items():
        name = key.replace("__", ".")
        tensors[f"{name}.lora_A.weight"] = a.detach().cpu().contiguous()
        tensors[f"{name}.lora_B.weight"] = adapter.lora_B[key].detach().cpu().contiguous()
    write_file_atomically(out / ADAPTER_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    cfg = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": adapter.config.rank, "lora_alpha": adapter.config.alpha, "lora_dropout": adapter.config.dropout,
        "target_modules": list(adapter.config.targets), "fan_in_fan_out": True, "bias": "none",
        "base_config": adapter.base_config.to_hf(), "lora_config": asdict(adapter.config),
    }
    write_file_atomically(out / ADAPTER_CONFIG, json.dumps(cfg, indent=2) + "\n")
    return out


def load_adapter(path: str | Path, base: GPT2) -> LoRAAdapter:
    """Read an adapter written by ``save_adapter`` for ``base`` (on the base's device, fp32)."""
    path = Path(path)
    cfg = json.loads((path / ADAPTER_CONFIG).read_text())
    lc = cfg["lora_config"]
    config = LoRAConfig(rank=lc["rank"], alpha=lc["alpha"], dropout=lc["dropout"], targets=tuple(lc["targets"]))
    adapter = LoRAAdapter(base, config, seed=0)  # every value is overwritten below
    tensors = load_file(path / ADAPTER_WEIGHTS)
    with torch.no_grad():
        for key in adapter.lora_A:
            name = key.replace("__", ".")
            adapter.lora_A[key].copy_(tensors[f"{name}.lora_A.weight"])
            adapter.lora_B[key].copy_(tensors[f"{name}.lora_B.weight"])
    return adapter
