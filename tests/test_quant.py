"""Weight-only int8 and bf16 on the CPU: fidelity to fp32, and every tool still working on an int8 model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gpt2
from gpt2 import cli, quant
from gpt2.lora import LoRAAdapter, install_lora, merge_lora, use_adapter
from gpt2.quant import Int8Embedding, Int8Linear, fidelity, quantize_int8, quantize_rows

pytestmark = pytest.mark.usefixtures("one_thread")
BUNDLED = Path(__file__).resolve().parent.parent / "checkpoints" / "shakespeare-small"


@pytest.fixture(scope="module")
def fp32(tiny_dir) -> gpt2.GPT2:
    return gpt2.GPT2.from_pretrained(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def int8(tiny_dir) -> gpt2.GPT2:
    return gpt2.GPT2.from_pretrained(tiny_dir, device="cpu", quantize="int8")


def ids_of(n: int, seed: int = 0, vocab: int = 1000) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    p, q = ref_logits.float().log_softmax(-1), logits.float().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1).mean().item()


def test_rows_round_trip_within_half_a_step():
    w = torch.randn(64, 48) * torch.linspace(0.01, 3, 64)[:, None]  # rows of very different ranges
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and q.is_contiguous() and q.abs().max() <= 127
    err = (q.float() * s[:, None] - w).abs()
    assert (err <= s[:, None] / 2 + 1e-6).all()  # rounding to the nearest step of each row's own scale


def test_int8_model_holds_int8_weights_once(int8, fp32):
    assert int8.quantization == "int8" and fp32.quantization is None
    assert int8.dtype == torch.float32  # activations and the cache keep the model's dtype
    assert isinstance(int8.transformer.wte, Int8Embedding) and isinstance(int8.lm_head, Int8Linear)
    assert int8.lm_head.qweight.data_ptr() == int8.transformer.wte.qweight.data_ptr()  # still tied, stored once
    linears = [m for m in int8.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 4 * int8.config.n_layer + 1
    float_bytes = sum(t.numel() * t.element_size() for t in [*int8.parameters(), *int8.buffers()]
                      if t.is_floating_point())
    int_bytes = sum(t.numel() for t in int8.buffers() if t.dtype == torch.int8)
    assert int_bytes > 5 * float_bytes  # the matrices are int8; scales, biases, LayerNorms and wpe are small
    assert int8.num_params() == fp32.num_params() == fp32.config.num_params()


def test_int8_logits_follow_fp32(int8, fp32):
    idx = ids_of(48)
    with torch.no_grad():
        a, b = fp32(idx), int8(idx)
    assert kl(a, b) < 1e-3
    assert not torch.equal(a, b)  # it really is another model


def test_int8_cached_decoding_matches_its_full_pass(int8):
    idx = ids_of(20, seed=1)
    with torch.no_grad():
        full = int8(idx)
        cache = int8.new_cache()
        steps = [int8(idx[:, :12], cache)] + [int8(idx[:, t : t + 1], cache) for t in range(12, 20)]
    assert cache.k.dtype == torch.float32
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-2, rtol=1e-3)


def test_int8_generation_edits_and_traces(int8):
    ids = ids_of(16, seed=2)[0].tolist()
    params = gpt2.SamplingParams(temperature=0.9, max_new_tokens=8, seed=5, stop_at_eos=False)
    plain = [s.token_id for s in gpt2.generate(int8, ids, params)]
    assert plain == [s.token_id for s in gpt2.generate(int8, ids, params)]
    edit = gpt2.Edit(ablate_heads={0: [0, 1], 1: [0]}, mode="zero")
    idx = torch.tensor([ids])
    with torch.no_grad():
        before, edited, after = int8(idx), int8(idx, edit=edit), int8(idx)
    assert not torch.allclose(before, edited) and torch.equal(before, after)
    trace = gpt2.Trace(attn_layers=[0], components=True)
    with torch.no_grad():
        int8(idx, trace=trace)
    assert trace.attn[0].shape[-1] == len(ids) and len(trace.head_outputs) == int8.config.n_layer


def test_int8_attribution_and_logit_attribution_follow_fp32(int8, fp32):
    ids = ids_of(24, seed=3)[0].tolist()
    a = gpt2.attribute(fp32, ids, 7, method="gradient_x_input")
    b = gpt2.attribute(int8, ids, 7, method="gradient_x_input")
    assert np.corrcoef(a, b)[0, 1] > 0.98
    da, db = gpt2.direct_logit_attribution(fp32, ids, 7, 9), gpt2.direct_logit_attribution(int8, ids, 7, 9)
    np.testing.assert_allclose(db.heads, da.heads, atol=0.05 * np.abs(da.heads).max() + 1e-3)
    # the parts use the dequantized weights, the total the model's own int8 head (bf16 inputs): close, not equal
    assert db.total == pytest.approx(db.heads.sum() + db.mlps.sum() + db.embeddings + db.biases, abs=1e-2)


def test_lora_over_int8_follows_lora_over_fp32(tiny_dir):
    base, quant = (install_lora(gpt2.GPT2.from_pretrained(tiny_dir, device="cpu", quantize=q)) for q in (None, "int8"))
    adapter = LoRAAdapter(base, seed=0)
    with torch.no_grad():
        for b in adapter.lora_B.values():
            b.normal_(std=0.2, generator=torch.Generator().manual_seed(1))
    idx = ids_of(32, seed=4)
    with torch.no_grad():
        plain = quant(idx)
        with use_adapter(adapter):
            ref, got = base(idx), quant(idx)
    assert (got - plain).abs().max() > 0.05  # the adapter changes the int8 model's output ...
    assert kl(ref, got) < 1e-3  # ... as it changes the fp32 one
    with pytest.raises(ValueError, match="int8"):
        merge_lora(quant, adapter)


def test_refusals_name_what_to_do(int8, tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="cannot be saved"):
        int8.save_pretrained(tmp_path / "x")
    with pytest.raises(ValueError, match="quantize must be None or one of int8"):
        gpt2.GPT2.from_pretrained(tiny_dir, device="cpu", quantize="int4")


def test_bf16_on_the_cpu(tiny_dir, fp32):
    bf16 = gpt2.GPT2.from_pretrained(tiny_dir, device="cpu", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.new_cache().k.dtype == torch.bfloat16
    idx = ids_of(32, seed=5)
    with torch.no_grad():
        assert kl(fp32(idx), bf16(idx)) < 1e-3
    params = gpt2.SamplingParams(temperature=0, max_new_tokens=6, stop_at_eos=False)
    assert len([s.token_id for s in gpt2.generate(bf16, idx[0].tolist(), params)]) == 6


def test_cli_generates_with_int8(capsys, tiny_dir):
    code = cli.main(["generate", "--model", tiny_dir, "--device", "cpu", "--prompt", "Hello", "--quantize", "int8",
                     "--max-new-tokens", "5", "--seed", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(json.loads(out)["token_ids"]) == 5


@pytest.mark.parametrize("quantize, dtype", [("int8", None), (None, torch.bfloat16)])
def test_fidelity_on_the_bundled_model(quantize, dtype):
    """The issue's bar (top-1 agreement >= 98%, mean KL <= 0.005 nats, perplexity within 1%), teacher-forced over
    1,024 tokens of the model's own fp32 sampling (the held-out Shakespeare figures are in RESULTS.md)."""
    ref = gpt2.GPT2.from_pretrained(BUNDLED, device="cpu")
    other = gpt2.GPT2.from_pretrained(BUNDLED, device="cpu", dtype=dtype, quantize=quantize)
    ids = []
    for seed in range(4):
        params = gpt2.SamplingParams(temperature=1.0, max_new_tokens=255, seed=seed, stop_at_eos=False)
        ids += [gpt2.EOT_ID] + [s.token_id for s in gpt2.generate(ref, [gpt2.EOT_ID], params)]
    f = fidelity(ref, other, ids)
    assert f.tokens == len(ids) - 1
    assert f.top1_agreement >= 0.98 and f.mean_kl <= 0.005 and abs(f.ppl_change) <= 0.01, f
    # decoding's path, a token at a time through the KV cache (int8: int8 activations where the CPU has VNNI)
    f = fidelity(ref, other, ids[:257], stepwise=True)
    assert f.tokens == 256
    assert f.top1_agreement >= 0.98 and f.mean_kl <= 0.005 and abs(f.ppl_change) <= 0.01, f


def test_rows_in_blocks_equal_rows_at_once(monkeypatch):
    """Quantizing a block of rows at a time gives the same bits as the whole matrix in one pass, on a
    transposed (checkpoint-layout) view too."""
    w = (torch.randn(48, 101) * torch.linspace(0.01, 3, 101)).t()  # (101, 48), rows of different ranges
    w[5] = 0  # an all-zero row
    scales = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # the one-pass formula
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    monkeypatch.setattr(quant, "_BLOCK", 7 * 48)  # 7 rows a block: 14 full blocks and a ragged one
    got_q, got_scales = quantize_rows(w)
    assert got_q.is_contiguous() and torch.equal(got_q, q) and torch.equal(got_scales, scales)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_loading_equals_quantizing_the_loaded_model(tiny_dir, dtype):
    """Loading in int8 tensor by tensor gives exactly ``quantize_int8`` of the fp model: same int8 weights,
    scales, biases and LayerNorms, the head still the embedding's table, nothing left on the meta device."""
    got = gpt2.GPT2.from_pretrained(tiny_dir, device="cpu", dtype=dtype, quantize="int8")
    ref = quantize_int8(gpt2.GPT2.from_pretrained(tiny_dir, device="cpu", dtype=dtype))
    a, b = got.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a), \
        [k for k in a if not torch.equal(a[k], b[k])]
    assert got.lm_head.qweight.data_ptr() == got.transformer.wte.qweight.data_ptr()
    tensors = [*got.parameters(), *got.buffers()]
    assert not any(t.is_meta or t.requires_grad for t in tensors) and not got.training
    assert torch.equal(got.lm_head.kernel_scales, ref.lm_head.kernel_scales)
    assert {type(m) for m in got.modules()} == {type(m) for m in ref.modules()}


def test_bf16_loading_tensor_by_tensor_equals_converting_the_fp32_model(tiny_dir):
    """bf16 on a CPU, loaded one tensor at a time: the fp32 model's values rounded to bf16, every tensor
    row-major (a transposed bf16 matrix product takes a slow path on a CPU), the head still the embedding."""
    got = gpt2.GPT2.from_pretrained(tiny_dir, device="cpu", dtype=torch.bfloat16)
    ref = gpt2.GPT2.from_pretrained(tiny_dir, device="cpu").to(torch.bfloat16)
    a, b = got.state_dict(), ref.state_dict()
    assert a.keys() == b.keys() and all(a[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)
    assert all(t.is_contiguous() for t in got.parameters())
    assert got.lm_head.weight is got.transformer.wte.weight and not got.training


@pytest.mark.parametrize(("setup", "message"), [
    ("wrong_shape", "wrong shapes"), ("missing_key", "missing"), ("not_safetensors", "not a readable safetensors"),
    ("truncated", "not a readable safetensors"), ("pickle_only", "pytorch_model.bin.*never loaded"),
])
def test_int8_loading_refuses_bad_checkpoints_as_fp32_does(tiny_dir, tmp_path, setup, message):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    weights = d / "model.safetensors"
    if setup == "wrong_shape":
        (d / "config.json").write_text(json.dumps(json.loads((d / "config.json").read_text()) | {"n_embd": 64}))
    elif setup == "missing_key":
        state = load_file(weights)
        del state["transformer.h.1.mlp.c_fc.weight"]
        save_file(state, weights)
    elif setup == "not_safetensors":
        weights.write_bytes(b"garbage" * 10)
    elif setup == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    else:
        weights.rename(d / "pytorch_model.bin")
    for quantize in (None, "int8"):
        with pytest.raises(gpt2.CheckpointError, match=message):
            gpt2.GPT2.from_pretrained(d, device="cpu", quantize=quantize)


_PEAK_CHILD = """
import json, sys, torch
import gpt2
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
torch.set_num_threads(1)
before = status("VmRSS")
quantize, dtype = (sys.argv[2], None) if sys.argv[2] == "int8" else (None, getattr(torch, sys.argv[2]))
model = gpt2.GPT2.from_pretrained(sys.argv[1], device="cpu", dtype=dtype, quantize=quantize)
print(json.dumps({"before": before, "peak": status("VmHWM"),
                  "model": sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])}))
"""


@pytest.mark.parametrize("precision", ["int8", "bfloat16"])
def test_loading_never_holds_the_fp32_checkpoint(tmp_path, precision):
    """The peak resident memory while loading a ~600 MB fp32 checkpoint in int8 or bf16 (a fresh process:
    VmHWM, which unlike ru_maxrss does not inherit the parent's) stays under the loaded model plus its largest
    fp32 matrix plus a margin, far below the checkpoint's size (issue 13: reading the whole file first peaked
    at 2x it in int8, at the fp32 plus the bf16 size in bf16)."""
    config = gpt2.GPTConfig(n_layer=8, n_head=16, n_embd=1024)
    ckpt = gpt2.GPT2(config).save_pretrained(tmp_path / "mid")  # random init: 151M parameters, 613 MB
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(ckpt), precision], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parent.parent, timeout=120)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    largest_fp32 = config.vocab_size * config.n_embd * 4
    margin = 100 * 2**20  # small fp tensors, quantize_rows' blocks, allocator slack
    assert got["peak"] - got["before"] < got["model"] + largest_fp32 + margin, got
