"""The native batch-1 products (gpt2/native.py) against torch's, and the fallbacks around them."""

from __future__ import annotations

import copy
import ctypes
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpt2
from gpt2 import native
from gpt2.config import GPTConfig
from gpt2.quant import dequantize, quantize_int8, quantize_rows

ROOT = Path(__file__).resolve().parent.parent
needs_compiler = pytest.mark.skipif(not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")),
                                    reason="no C compiler: the native kernels fall back to torch (tested below)")
SHAPES = [(1, 1), (5, 7), (17, 33), (64, 48), (130, 96), (2304, 768), (768, 3072), (50257, 32)]


def _weight(n: int, k: int, layout: str, gen: torch.Generator) -> torch.Tensor:
    """An (n, k) weight stored row-major ("nk") or as HF's Conv1D transposed ("kn")."""
    return torch.randn(n, k, generator=gen) if layout == "nk" else torch.randn(k, n, generator=gen).t()


@needs_compiler
@pytest.mark.parametrize("layout", ["nk", "kn"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_rows_match_torch(shape, layout):
    gen = torch.Generator().manual_seed(sum(shape))
    n, k = shape
    w = _weight(n, k, layout, gen)
    for bias in (None, torch.randn(n, generator=gen)):
        x = torch.randn(1, 1, k, generator=gen)
        with torch.no_grad():
            y = native.linear(x, w, bias)
            with native.disabled():
                ref = native.linear(x, w, bias)
        assert y.shape == ref.shape == (1, 1, n)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * k**0.5)
        torch.testing.assert_close(ref, F.linear(x, w, bias))  # ``disabled`` is torch's own


@pytest.mark.parametrize("layout", ["nk", "kn"])
@pytest.mark.parametrize("rows", [(2,), (1, 7), (3, 33)])
def test_prompts_match_torch(rows, layout):
    """More than one row goes to oneDNN's GEMM (where torch has it), not to the native loops."""
    gen = torch.Generator().manual_seed(len(rows))
    w = _weight(96, 80, layout, gen)
    bias = torch.randn(96, generator=gen)
    x = torch.randn(*rows, 80, generator=gen)
    with torch.no_grad():
        y = native.linear(x, w, bias)
    assert y.shape == (*rows, 96)
    torch.testing.assert_close(y, F.linear(x, w, bias), rtol=1e-5, atol=1e-5)


def _as_kernel_sees(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the int8 kernel reads it: fp32, or (``native.int8_activations()``, in_features % 64 == 0) each
    group of four values rounded to int8 steps of ``max|group| / 127`` (the rounding done here in torch)."""
    if not (native.int8_activations() and x.shape[-1] % 64 == 0):
        return x
    groups = x.reshape(-1, 4)
    step = groups.abs().amax(dim=1, keepdim=True) / 127
    return (groups / step.clamp_min(1e-30)).round().mul(step).reshape(x.shape)


@needs_compiler
@pytest.mark.parametrize("shape", SHAPES + [(40, 64), (300, 192), (24, 3072)])
def test_int8_rows_match_the_dequantized_product(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    n, k = shape
    q, s = quantize_rows(torch.randn(n, k, generator=gen))
    for bias in (None, torch.randn(n, generator=gen)):
        x = torch.randn(1, k, generator=gen)
        x[0, k // 3] = 40.0  # an outlier, as GPT-2's residual stream has
        y = native.int8_linear(x, q, s, bias)
        assert y is not None
        exact = F.linear(x, dequantize(q, s), bias)
        torch.testing.assert_close(y, F.linear(_as_kernel_sees(x), dequantize(q, s), bias), rtol=1e-5,
                                   atol=1e-5 * k**0.5)
        assert (y - exact).norm() <= 0.01 * exact.norm()  # int8 activations: within 1% of the exact product


@needs_compiler
@pytest.mark.skipif("avx2" not in Path("/proc/cpuinfo").read_text(), reason="an x86 CPU with AVX2 only")
def test_the_avx2_build_matches_too(tmp_path):
    """On an AVX-512 machine the library uses the VNNI loop; the AVX2 one (older x86 hosts) is built and
    checked here too, with AVX-512 turned off."""
    out = tmp_path / "avx2.so"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    subprocess.run([cc, *native._FLAGS, "-mno-avx512f", str(native._SOURCE), "-o", str(out), "-lm"], check=True)
    lib = ctypes.CDLL(str(out))
    assert lib.q8_native_products() == 1
    gen = torch.Generator().manual_seed(5)
    for n, k in [(300, 192), (768, 3072), (7, 33)]:
        q, s = quantize_rows(torch.randn(n, k, generator=gen))
        bias, x, y = torch.randn(n, generator=gen), torch.randn(k, generator=gen), torch.empty(n)
        x[k // 3] = 40.0
        lib.gemv_q8(*(ctypes.c_void_p(t.data_ptr()) for t in (x, q, s, bias, y)), k, n, 2)
        torch.testing.assert_close(y, F.linear(_as_kernel_sees(x), dequantize(q, s), bias), rtol=1e-5,
                                   atol=1e-5 * k**0.5)


def _logit_rows(gen: torch.Generator) -> list[torch.Tensor]:
    """Rows a step's details meet: GPT-2-sized and ragged sizes, model-like spreads, a sampler's -inf."""
    rows = [torch.randn(v, generator=gen) * scale - 40 for v in (1, 15, 257, 50257) for scale in (1, 8)]
    filtered = torch.randn(50257, generator=gen) * 3
    filtered[torch.randperm(50257, generator=gen)[40:]] = float("-inf")  # top-k 40
    wide = torch.randn(5000, generator=gen)
    wide[::7] -= 200.0  # exp() of these is 0 in fp32
    return [*rows, filtered, wide]


@needs_compiler
@pytest.mark.parametrize("k", [0, 1, 20, 64])
def test_logit_stats_match_torch(k):
    gen = torch.Generator().manual_seed(k)
    for x in _logit_rows(gen):
        kk = min(k, x.numel())
        m, lse, entropy, top = native.logit_stats(x, kk)
        assert m == x.max().item()
        assert lse == pytest.approx(x.logsumexp(-1).item(), abs=2e-6 * max(1.0, abs(m)))
        assert entropy == pytest.approx(torch.special.entr(x.softmax(-1)).sum().item(), abs=1e-5, rel=1e-5)
        ref = torch.topk(x, kk)
        assert top.dtype == np.int64 and len(set(top.tolist())) == kk
        assert x[top].tolist() == ref.values.tolist()  # the same values, largest first
        finite = ref.values > float("-inf")  # which of the -inf ties come first is torch's choice
        assert top[finite.numpy()].tolist() == ref.indices[finite].tolist()


@needs_compiler
@pytest.mark.parametrize("k", [1, 20, 41, 64])
def test_top_k_matches_torch(k):
    gen = torch.Generator().manual_seed(k)
    for x in _logit_rows(gen)[:-2]:  # rows without ties
        values, ids = native.top_k(x, min(k, x.numel()))
        ref = torch.topk(x, min(k, x.numel()))
        assert torch.equal(values, ref.values) and torch.equal(ids, ref.indices)
    assert native.top_k(torch.randn(10, requires_grad=True), 2) is None  # a gradient wanted: torch's


@needs_compiler
def test_logit_stats_order_ties_by_index_and_refuse_what_they_cannot_take():
    x = torch.zeros(100)
    x[[70, 3, 50]] = 1.0
    assert native.logit_stats(x, 4)[3].tolist() == [3, 50, 70, 0]
    assert native.logit_stats(x, 65) is None  # more than the loop keeps: the caller uses torch
    assert native.logit_stats(torch.zeros(10, 2)[:, 0], 1) is None  # not contiguous
    assert native.logit_stats(torch.zeros(5, dtype=torch.float64), 1) is None
    with native.disabled():
        assert native.logit_stats(x, 1) is None


@needs_compiler
def test_only_single_fp32_rows_without_gradients_take_the_native_path():
    gen = torch.Generator().manual_seed(0)
    q, s = quantize_rows(torch.randn(8, 16, generator=gen))
    row = torch.randn(1, 16, generator=gen)
    assert native.int8_linear(row, q, s, None) is not None
    assert native.int8_linear(torch.randn(2, 16), q, s, None) is None  # a prompt or a batch
    assert native.int8_linear(row.bfloat16(), q, s, None) is None
    assert native.int8_linear(row.requires_grad_(), q, s, None) is None  # attribution wants gradients
    with torch.no_grad():
        assert native.int8_linear(row, q, s, None) is not None
    with native.disabled():
        assert native.int8_linear(row.detach(), q, s, None) is None


@needs_compiler
def test_gradients_still_flow_through_linear():
    gen = torch.Generator().manual_seed(1)
    w = _weight(12, 20, "kn", gen).requires_grad_()
    x = torch.randn(1, 20, generator=gen, requires_grad=True)
    native.linear(x, w).sum().backward()
    torch.testing.assert_close(x.grad, w.detach().sum(0, keepdim=True))
    torch.testing.assert_close(w.grad, x.detach().expand(12, 20))


@needs_compiler
@pytest.mark.parametrize("batch, keys", [(1, 1), (1, 37), (2, 300)])
def test_one_query_attention_matches_torch(batch, keys):
    gen = torch.Generator().manual_seed(keys)
    nh, hs = 4, 16
    cache_k, cache_v = (torch.randn(batch, nh, 400, hs, generator=gen) for _ in range(2))  # a KVCache's layout
    qkv = torch.randn(batch, 1, 3 * nh * hs, generator=gen)  # c_attn's output: q is a strided view of it
    q = qkv[..., : nh * hs].view(batch, 1, nh, hs).transpose(1, 2)
    k, v = cache_k[:, :, :keys], cache_v[:, :, :keys]
    with torch.no_grad():
        y = native.attention_one(q, k, v)
    assert y is not None
    torch.testing.assert_close(y, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)
    assert native.attention_one(q, k.transpose(2, 3).contiguous().transpose(2, 3), v) is None  # keys by column
    assert native.attention_one(torch.cat([q, q], dim=2), k, v) is None  # two queries: torch's masked path
    assert native.attention_one(q.requires_grad_(), k, v) is None


def _tiny(seed: int = 0) -> gpt2.GPT2:
    torch.manual_seed(seed)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=300)
    return gpt2.GPT2(cfg).eval()


def _decode(model: gpt2.GPT2, n: int = 12, fused: bool = True) -> tuple[list[int], torch.Tensor]:
    """Greedy ids and each step's logits, one cached row at a time (the batch-1 path). ``fused=False`` passes an
    empty ``Trace``, which keeps the step in Python: each block, each projection on its own."""
    cache, ids, logits = model.new_cache(), [5, 6, 7, 8], []
    trace = None if fused else gpt2.Trace()
    with torch.inference_mode():
        for i in ids:  # the prompt a token at a time too: a longer prompt goes to torch's kernels
            out = model(torch.tensor([[i]]), cache, last_only=True, trace=trace)
        for _ in range(n):
            logits.append(out[0, -1])
            ids.append(int(out[0, -1].argmax()))
            out = model(torch.tensor([ids[-1:]]), cache, last_only=True, trace=trace)
    return ids, torch.stack(logits)


def _counting(fn, *args, **kwargs) -> tuple[object, list[str]]:
    """``fn(*args, **kwargs)`` and the names of the native functions it called, in order."""
    calls: list[str] = []
    lib = native._lib()
    names = ("gemv_kn_f32", "gemv_nk_f32", "gemv_q8", "attn_one", "decode_layers")
    kernels = {name: getattr(lib, name) for name in names}
    for name, kernel in kernels.items():  # count the calls, then the kernels themselves again
        setattr(lib, name, lambda *a, k=kernel, name=name: (calls.append(name), k(*a))[1])
    try:
        return fn(*args, **kwargs), calls
    finally:
        for name, kernel in kernels.items():
            setattr(lib, name, kernel)


@needs_compiler
@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("layout", ["nk", "kn"])
def test_decoding_is_unchanged(quantize, layout):
    model = _tiny()
    if layout == "kn":  # the layout a Hugging Face checkpoint loads into
        for m in model.modules():
            if isinstance(m, native.Linear):
                m.weight.data = m.weight.data.t().contiguous().t()
    reference = copy.deepcopy(model)
    if quantize:
        quantize_int8(model)
        with torch.no_grad():  # torch's int8 kernel rounds inputs to bf16: compare with exact int8 weights
            for m in [reference.transformer.wte, *reference.transformer.h.modules()]:  # the head is wte
                if isinstance(m, (native.Linear, torch.nn.Embedding)):
                    m.weight.copy_(dequantize(*quantize_rows(m.weight)))
    (ids, logits), calls = _counting(_decode, model)
    (step_ids, step_logits), step_calls = _counting(_decode, model, fused=False)
    with native.disabled():
        ref_ids, ref_logits = _decode(reference)
    if quantize and native.int8_activations():  # the activations' int8 rounding: close, not equal
        assert (logits - ref_logits).norm() <= 0.02 * ref_logits.norm()
        assert (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean() >= 0.9
    else:
        assert ids == ref_ids
        torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert step_ids == ids  # one native call per step, or a call per projection: the same arithmetic
    torch.testing.assert_close(step_logits, logits, rtol=1e-4, atol=1e-5)
    used = "gemv_q8" if quantize else "gemv_kn_f32" if layout == "kn" else "gemv_nk_f32"
    assert calls == ["decode_layers", used] * 16  # every cached step: all blocks in one call, then the head
    assert step_calls.count("attn_one") == 16 * 2 and step_calls.count(used) >= 16 * 8


@needs_compiler
@pytest.mark.parametrize("quantize", [False, True])
def test_an_active_adapter_keeps_its_update_and_an_idle_one_the_fused_step(quantize):
    """The app installs LoRA on the shared model: a request with no adapter still takes the one-call step; one
    with an adapter takes the per-projection path, which adds the update (as the merged model does)."""
    model = _tiny()
    if quantize:
        quantize_int8(model)
    gpt2.install_lora(model)
    adapter = gpt2.LoRAAdapter(model, gpt2.LoRAConfig(rank=4, alpha=8, targets=("attn.c_attn",)), seed=1)
    with torch.no_grad():
        for b in adapter.lora_B.values():
            b.normal_(0, 0.2, generator=torch.Generator().manual_seed(2))
    (plain, _), calls = _counting(_decode, model, 4)
    assert calls.count("decode_layers") == 8
    with gpt2.use_adapter(adapter):
        (adapted, logits), calls = _counting(_decode, model, 4)
    assert "decode_layers" not in calls
    _, plain_logits = _decode(model, 4)
    assert (logits - plain_logits).abs().max() > 1e-3  # the update is there
    if not quantize:  # the merged fp32 model (a plain GPT2: the one-call step) gives the same logits
        (_, merged), calls = _counting(_decode, gpt2.merge_lora(model, adapter), 4)
        assert calls.count("decode_layers") == 8
        torch.testing.assert_close(logits, merged, rtol=1e-4, atol=1e-5)


@needs_compiler
def test_with_gradients_enabled_the_step_stays_in_torch():
    """Autograd cannot see through the one-call step: with gradients on it is never taken, even on a frozen
    int8 model whose inputs want none (the per-projection loops still check each call's tensors)."""
    model = quantize_int8(_tiny())
    cache = model.new_cache()
    _, calls = _counting(model, torch.tensor([[5]]), cache, last_only=True)
    assert torch.is_grad_enabled() and "decode_layers" not in calls and "gemv_q8" in calls
    with torch.no_grad():
        _, calls = _counting(model, torch.tensor([[6]]), cache, last_only=True)
    assert calls == ["decode_layers", "gemv_q8"]


@needs_compiler
def test_threads_get_their_own_results():
    gen = torch.Generator().manual_seed(2)
    w = _weight(3072, 768, "kn", gen)
    xs = [torch.randn(1, 768, generator=gen) for _ in range(8)]
    refs = [F.linear(x, w) for x in xs]
    errors: list[str] = []

    def work(i: int) -> None:
        for _ in range(30):
            with torch.no_grad():
                if not torch.allclose(native.linear(xs[i], w), refs[i], rtol=1e-4, atol=1e-3):
                    errors.append(f"thread {i}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@needs_compiler
def test_concurrent_decodes_on_one_model_match_a_lone_one():
    model = _tiny(3)
    _, alone = _decode(model)
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        results[i] = _decode(model)[1]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and all(torch.equal(r, alone) for r in results.values())


@needs_compiler
def test_the_library_shares_torchs_openmp_runtime():
    assert native.available()
    maps = Path("/proc/self/maps").read_text()
    assert len({line.split()[-1] for line in maps.splitlines() if "libgomp" in line}) == 1


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = ("import logging, torch; logging.basicConfig(level=logging.INFO)\n"
            "from gpt2 import native\n"
            "torch.manual_seed(0); w = torch.randn(6, 4); x = torch.randn(1, 4)\n"
            "with torch.no_grad(): y = native.linear(x, w)\n"
            "assert torch.allclose(y, torch.nn.functional.linear(x, w), atol=1e-6)\n"
            "print('available', native.available())\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


@pytest.mark.parametrize("env, reason", [({"CC": "/nonexistent/cc"}, "No such file"),
                                         ({"CC": "false"}, "returned non-zero"),
                                         ({"GPT2_NATIVE": "0"}, "GPT2_NATIVE=0")])
def test_without_the_kernels_torch_does_the_work_and_the_log_says_why(tmp_path, env, reason):
    out = _run({**env, "GPT2_NATIVE_CACHE": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "available False" in out.stdout
    assert reason in out.stderr


@needs_compiler
def test_the_library_is_compiled_once_into_the_cache(tmp_path):
    first = _run({"GPT2_NATIVE_CACHE": str(tmp_path)})
    assert "available True" in first.stdout and "compiled" in first.stderr
    built = list(tmp_path.glob("gpt2_native_*.so"))
    assert len(built) == 1 and not list(tmp_path.glob("tmp*"))
    second = _run({"GPT2_NATIVE_CACHE": str(tmp_path)})
    assert "available True" in second.stdout and "compiled" not in second.stderr
