"""Shared fixtures: tiny random models (never a download) and their saved checkpoints."""

from __future__ import annotations

import logging

import pytest
import torch

import gpt2

# Random configurations for parity tests: different depths, head counts, widths and vocabularies.
CONFIGS = {
    "tiny": gpt2.GPTConfig.preset("tiny"),
    "deep-narrow": gpt2.GPTConfig(block_size=32, vocab_size=1000, n_layer=4, n_head=4, n_embd=16),
    "one-head": gpt2.GPTConfig(block_size=48, vocab_size=3000, n_layer=1, n_head=1, n_embd=24),
    "wide": gpt2.GPTConfig(block_size=40, vocab_size=50257, n_layer=3, n_head=6, n_embd=96),
}


def random_model(config: gpt2.GPTConfig, seed: int = 0) -> gpt2.GPT2:
    """A GPT-2 with random weights, non-zero biases and LayerNorms so every parameter matters."""
    torch.manual_seed(seed)
    model = gpt2.GPT2(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model() -> gpt2.GPT2:
    return random_model(CONFIGS["tiny"])


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_model) -> str:
    """The tiny model saved in the HF layout."""
    return str(tiny_model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny"))


@pytest.fixture(scope="session")
def hf_tiny(tiny_dir):
    """The same weights loaded by transformers (the reference implementation)."""
    transformers = pytest.importorskip("transformers")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return transformers.GPT2LMHeadModel.from_pretrained(tiny_dir, attn_implementation="eager").eval()
