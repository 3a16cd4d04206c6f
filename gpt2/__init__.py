"""GPT-2 from scratch in PyTorch: model, weights I/O, tokenizer, sampling, generation, inspection, LoRA."""

from .attribution import METHODS as ATTRIBUTION_METHODS
from .attribution import attribute
from .config import PRESETS, GPTConfig
from .edit import Edit, ResidualPatch
from .generation import Step, StepDetails, generate, generate_text
from .interventions import LogitAttribution, PatchStep, direct_logit_attribution, patch_residual, patch_residual_steps
from .lora import LoRAAdapter, LoRAConfig, LoRALinear, install_lora, merge_lora, use_adapter, with_adapter
from .model import GPT2, KVCache, Trace
from .quant import QUANTIZATIONS, quantize_int8
from .sampling import (
    SamplingParams,
    apply_epsilon,
    apply_eta,
    apply_min_p,
    apply_no_repeat_ngram,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    apply_typical,
    process_logits,
    sample,
    sampler_stages,
)
from .search import BeamParams, BeamResult, BeamStep, Candidate, beam_search
from .tokenizer import EOT_ID, EOT_TOKEN, encode, get_tokenizer, token_display
from .weights import HUB_MODELS, CheckpointError

__all__ = [
    "Edit", "ResidualPatch", "attribute", "ATTRIBUTION_METHODS",
    "patch_residual", "patch_residual_steps", "PatchStep", "direct_logit_attribution", "LogitAttribution",
    "GPT2", "GPTConfig", "PRESETS", "KVCache", "Trace", "SamplingParams", "process_logits", "sampler_stages",
    "apply_repetition_penalty", "apply_temperature", "apply_top_k", "apply_top_p", "sample",
    "apply_no_repeat_ngram", "apply_min_p", "apply_typical", "apply_epsilon", "apply_eta",
    "generate", "generate_text", "Step", "StepDetails",
    "BeamParams", "BeamResult", "BeamStep", "Candidate", "beam_search", "get_tokenizer", "encode", "token_display",
    "EOT_ID", "EOT_TOKEN", "HUB_MODELS", "CheckpointError",
    "LoRAAdapter", "LoRAConfig", "LoRALinear", "install_lora", "merge_lora", "use_adapter", "with_adapter",
    "QUANTIZATIONS", "quantize_int8",
]
