"""The scratch model against Hugging Face's GPT2LMHeadModel, and its KV cache and traces."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, random_model

import gpt2

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(name, tmp_path):
    model = random_model(CONFIGS[name], seed=len(name))
    model.save_pretrained(tmp_path / "m")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "m").eval()
    idx = torch.randint(0, model.config.vocab_size, (3, model.config.block_size))
    with torch.no_grad():
        ours, ref = model(idx), hf(idx).logits
    assert ours.shape == (3, model.config.block_size, model.config.vocab_size)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_output_head_is_tied(tiny_model):
    assert tiny_model.lm_head.weight is tiny_model.transformer.wte.weight
    assert tiny_model.num_params() == tiny_model.config.num_params()


def test_kv_cache_matches_full_forward(tiny_model):
    idx = torch.randint(0, 50257, (2, 40))
    with torch.no_grad():
        full = tiny_model(idx)
        cache = tiny_model.new_cache(batch_size=2)
        parts = [tiny_model(idx[:, :17], cache)]  # prefill
        parts += [tiny_model(idx[:, t : t + 1], cache) for t in range(17, 30)]  # one token at a time
        parts.append(tiny_model(idx[:, 30:], cache))  # a chunk after a cached prefix (masked path)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)
    assert cache.pos == 40


def test_last_only_returns_the_last_position(tiny_model):
    idx = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(idx, last_only=True), tiny_model(idx)[:, -1:])


def test_context_overflow_is_refused(tiny_model):
    with pytest.raises(ValueError, match="exceeds the context"):
        tiny_model(torch.zeros(1, tiny_model.config.block_size + 1, dtype=torch.long))


def test_trace_matches_transformers_attentions_and_hidden_states(tiny_model, hf_tiny):
    idx = torch.randint(0, 50257, (1, 25))
    trace = gpt2.Trace(attn_layers=[0, 1], hidden=True)
    with torch.no_grad():
        logits = tiny_model(idx, trace=trace)
        ref = hf_tiny(idx, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(logits, tiny_model(idx))  # tracing does not change the result
    for layer in (0, 1):
        torch.testing.assert_close(trace.attn[layer], ref.attentions[layer], atol=1e-5, rtol=0)
    # HF's last hidden state is after ln_f; ours is the raw residual stream (for the logit lens).
    n = tiny_model.config.n_layer
    assert len(trace.hidden_states) == n + 1
    for i in range(n):
        torch.testing.assert_close(trace.hidden_states[i], ref.hidden_states[i], atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(tiny_model.transformer.ln_f(trace.hidden_states[n]), ref.hidden_states[n],
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(tiny_model.unembed(trace.hidden_states[n]), logits, atol=1e-5, rtol=0)


def test_trace_rows_during_cached_decoding(tiny_model):
    """A decode step's pattern is one row per head and equals the full pattern's row."""
    idx = torch.randint(0, 50257, (1, 20))
    full = gpt2.Trace(attn_layers=[1])
    with torch.no_grad():
        tiny_model(idx, trace=full)
        cache = tiny_model.new_cache()
        tiny_model(idx[:, :19], cache)
        step = gpt2.Trace(attn_layers=[1], attn_rows=slice(-1, None))
        tiny_model(idx[:, 19:], cache, trace=step)
    assert step.attn[1].shape == (1, 2, 1, 20)
    torch.testing.assert_close(step.attn[1][0, :, 0], full.attn[1][0, :, 19])


def test_untraced_calls_record_nothing_and_leave_no_hooks(tiny_model):
    trace = gpt2.Trace(attn_layers=[0], hidden=True)
    with torch.no_grad():
        tiny_model(torch.zeros(1, 4, dtype=torch.long), trace=trace)
        tiny_model(torch.zeros(1, 6, dtype=torch.long))  # a plain call afterwards
    assert trace.attn[0].shape[-1] == 4 and trace.hidden_states[0].shape[1] == 4
    for m in tiny_model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        gpt2.GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="preset"):
        gpt2.GPTConfig.preset("gpt5")
    assert gpt2.GPTConfig.preset("gpt2").num_params() == 124_439_808  # GPT-2 small, as published by HF
