"""CPU decoding at the memory's speed: native loops for batch-1 steps, oneDNN's GEMM for fp32 prompts.

A decoded token multiplies one row of activations by every weight matrix, so its time is the time the
weights take to stream from memory. On the CPUs measured (``benchmarks/RESULTS.md``), torch's fp32 GEMV
(MKL) streams about half of what two cores can read, its int8 kernel takes bf16 inputs (two casts around
each product), and the Python and small ops around the products cost ~2 ms per GPT-2 124M token. ``native.c``
holds loops that stream at the memory's speed (fp32 rows in either layout; int8 rows, with int8 x int8
products on AVX-512 VNNI or AVX2), one-query attention over the KV cache, ``decode_layers``: one decoding
step through every block in one call, and ``logit_stats``: what a step's details need from the vocabulary's
logits. It is compiled on first use with the machine's C compiler (``-O3 -march=native``, well under a second)
into a cache directory, and linked to the OpenMP runtime torch itself loaded, so the loops share torch's
threads.

They apply only where the arithmetic is the model's: fp32 activations on a CPU, no gradient wanted; one row
for the loops (``linear``, ``int8_linear``, ``attention_one``), and for ``decode_layers`` also batch 1, no
``Trace``, no ``Edit``, no active LoRA update (``GPT2._native_step`` checks). fp32 products of more rows go to
oneDNN (``torch.ops.mkldnn._linear_pointwise``). Everything else (training, attribution, GPUs, bf16) runs in
torch as before, as does everything where no compiler is found, torch's OpenMP is not GNU's (``libgomp``) or
``GPT2_NATIVE=0`` is set, with one log line saying why.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Linear", "linear", "int8_linear", "attention_one", "logit_stats", "top_k", "available",
           "int8_activations", "disabled"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("native.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
_lock = threading.Lock()
_loaded: list[ctypes.CDLL | None] = []  # empty until the first attempt; then [library] or [None]
_local = threading.local()  # ``disabled()``: per thread, so one request never switches another's path
# oneDNN's GEMM for fp32 rows the native loops do not take (GPT2_NATIVE=0: torch's default kernels only)
_ONEDNN = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
           and os.environ.get("GPT2_NATIVE", "1") != "0")


def _torch_uses_libgomp() -> bool:
    """Whether torch loaded GNU's OpenMP (``libgomp.so.1``): the library then links the same runtime (the loader
    reuses a loaded soname), so its loops share torch's threads. Another runtime would bring a second pool."""
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _cache_dir() -> Path:
    root = os.environ.get("GPT2_NATIVE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gpt2-playground")
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def _machine() -> bytes:
    """What ``-march=native`` depends on: the CPU's model and flags (a cache shared across hosts stays right)."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        info = ""
    keep = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return ("\n".join(keep) + platform.machine()).encode()


def _compile(compiler: str) -> Path:
    """Build ``native.c`` into the cache (once per source, flags and CPU) and return the library's path."""
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(_FLAGS).encode() + _machine()).hexdigest()[:16]
    out = _cache_dir() / f"gpt2_native_{key}.so"
    if out.exists():
        return out
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:  # a temporary file, then a rename: another process never loads a half-written library
        command = [compiler, *_FLAGS, str(_SOURCE), "-o", tmp, "-lm"]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("compiled %s with %s", out, compiler)
    return out


def _load() -> ctypes.CDLL | None:
    """The compiled library, or None with the reason logged once."""
    if os.environ.get("GPT2_NATIVE", "1") == "0":
        log.info("native kernels off (GPT2_NATIVE=0): torch's kernels throughout")
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler or not _torch_uses_libgomp():
        log.warning("native kernels unavailable (%s): decoding uses torch's kernels",
                    "no C compiler" if not compiler else "torch's OpenMP runtime is not libgomp")
        return None
    try:
        lib = ctypes.CDLL(str(_compile(compiler)))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        log.warning("native kernels unavailable (%s %s): decoding uses torch's kernels", err,
                    detail.decode(errors="replace")[-500:])
        return None
    vp, i = ctypes.c_void_p, ctypes.c_int
    for name in ("gemv_kn_f32", "gemv_nk_f32", "gemv_q8"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [vp] * (5 if name == "gemv_q8" else 4) + [i, i, i]
    lib.attn_one.restype = None
    lib.attn_one.argtypes = [vp] * 4 + [i] * 4 + [ctypes.c_long] * 3 + [i]
    lib.decode_layers.restype = None
    lib.decode_layers.argtypes = [vp, vp, i, i, i, i, ctypes.c_long, ctypes.c_float, i]
    for name in ("logit_stats", "top_k"):
        getattr(lib, name).restype = None
        getattr(lib, name).argtypes = [vp, ctypes.c_long, i, vp, vp]
    lib.q8_native_products.restype = i
    lib.q8_native_products.argtypes = []
    return lib


def _lib() -> ctypes.CDLL | None:
    if not _loaded:
        with _lock:
            if not _loaded:
                _loaded.append(_load())
    return _loaded[0]


def available() -> bool:
    """Whether the native kernels are compiled and in use (compiling them on the first call)."""
    return _lib() is not None


def int8_activations() -> bool:
    """Whether int8 rows multiply int8 activations (AVX-512 VNNI or AVX2; for ``in_features % 64 == 0``): each
    group of four inputs rounded to int8 with its own scale. Otherwise the activations stay fp32."""
    lib = _lib()
    return bool(lib is not None and lib.q8_native_products())


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Torch's kernels only, in this thread, inside the block (benchmarks and tests compare the two)."""
    before = getattr(_local, "off", False)
    _local.off = True
    try:
        yield
    finally:
        _local.off = before


def _fast_ok(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether ``x`` (fp32, CPU) may skip torch's default kernels: no gradient wanted, not ``disabled()``."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.numel() or getattr(_local, "off", False):
        return False
    return not (torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in (x, *params)))


def _one_row(x: torch.Tensor) -> bool:
    return x.shape[-1] == x.numel() and x.is_contiguous()


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _bias_ok(bias: torch.Tensor | None, n: int) -> bool:
    return bias is None or (bias.dtype == torch.float32 and bias.is_contiguous() and bias.numel() == n)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; with fp32 on a CPU and no gradient wanted, one row goes through a native
    loop and more rows (a prompt) through oneDNN's GEMM, 2.2x faster than the default (MKL) on the AMD EPYC
    measured (a 512 x 768 x 2304 product: 4.9 vs 10.9 ms; ``benchmarks/RESULTS.md``)."""
    if not (_fast_ok(x, weight, bias) and weight.dtype == torch.float32 and _bias_ok(bias, weight.shape[0])):
        return F.linear(x, weight, bias)
    spec = f32_spec(weight, bias) if _one_row(x) else None  # None: a layout the loops do not read
    lib = _lib() if spec is not None else None
    if lib is not None:
        kernel = lib.gemv_kn_f32 if spec.kind == 0 else lib.gemv_nk_f32
        y = torch.empty(*x.shape[:-1], spec.N, dtype=torch.float32)
        kernel(x.data_ptr(), spec.w, spec.b, y.data_ptr(), spec.K, spec.N, torch.get_num_threads())
        return y
    if _ONEDNN:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor | None:
    """``x @ (q * scales[:, None])^T + bias`` for one fp32 CPU row with no gradient wanted; else None."""
    spec = int8_spec(q, scales, bias) if _fast_ok(x, bias) and _one_row(x) else None
    lib = _lib() if spec is not None else None
    if lib is None:
        return None
    y = torch.empty(*x.shape[:-1], spec.N, dtype=torch.float32)
    lib.gemv_q8(x.data_ptr(), spec.w, spec.s, spec.b, y.data_ptr(), spec.K, spec.N, torch.get_num_threads())
    return y


_MAX_KEYS = 8192  # the native loop keeps a row of scores on its thread's stack


def attention_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """``F.scaled_dot_product_attention(q, k, v)`` for one new query ``(B, nh, 1, hs)`` over cached keys and
    values ``(B, nh, L, hs)`` (views of a ``KVCache``), fp32 on a CPU with no gradient wanted; else None."""
    B, nh, T, hs = q.shape
    L = k.shape[2]
    if not (T == 1 and _fast_ok(q, k, v) and k.dtype == v.dtype == torch.float32 and 0 < L <= _MAX_KEYS):
        return None
    if q.stride(1) != hs or q.stride(3) != 1 or k.stride() != v.stride() or k.stride()[2:] != (hs, 1):
        return None  # the loop reads each head's query, keys and values as contiguous rows of hs
    lib = _lib()
    if lib is None:
        return None
    y = torch.empty(B, nh, 1, hs, dtype=torch.float32)
    lib.attn_one(q.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(), B, nh, hs, L, q.stride(0), k.stride(0),
                 k.stride(1), torch.get_num_threads())
    return y


_MAX_TOP = 64  # native.c's top_k keeps its candidates on the stack


def _row_ok(x: torch.Tensor, k: int, low: int) -> bool:
    """Whether ``x`` is one contiguous fp32 CPU row for the native loops, with ``low <= k <= 64``."""
    return _fast_ok(x) and x.dim() == 1 and x.is_contiguous() and low <= k <= min(_MAX_TOP, x.numel())


def logit_stats(x: torch.Tensor, k: int = 0) -> tuple[float, float, float, np.ndarray] | None:
    """``(max, logsumexp, entropy of the softmax in nats, indices of the k largest, largest first)`` of one
    row of fp32 logits on a CPU (``0 <= k <= 64``), read twice in one thread: what a decoding step's details
    need, without the vocabulary-sized temporaries and the OpenMP wake-ups of eight torch ops. None
    elsewhere, or with a gradient wanted (then use torch)."""
    if not _row_ok(x, k, low=0):
        return None
    lib = _lib()
    if lib is None:
        return None
    top, out = np.empty(k, np.int64), (ctypes.c_float * 3)()
    lib.logit_stats(x.data_ptr(), x.numel(), k, top.ctypes.data, out)
    return out[0], out[1], out[2], top


def top_k(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``torch.topk(x, k)`` (values, indices; largest first, ties by the lower index) of one fp32 row on a CPU
    with no gradient wanted, ``1 <= k <= 64``, in one pass: 0.1 ms for GPT-2's vocabulary just after a
    decoding step, where torch's takes 0.5. None elsewhere (then use torch)."""
    if not _row_ok(x, k, low=1):
        return None
    lib = _lib()
    if lib is None:
        return None
    values, ids = torch.empty(k), torch.empty(k, dtype=torch.long)
    lib.top_k(x.data_ptr(), x.numel(), k, ids.data_ptr(), values.data_ptr())
    return values, ids


class _Lin(ctypes.Structure):  # native.c's lin_t
    _fields_ = [("kind", ctypes.c_int), ("K", ctypes.c_int), ("N", ctypes.c_int), ("w", ctypes.c_void_p),
                ("s", ctypes.c_void_p), ("b", ctypes.c_void_p)]


class _Layer(ctypes.Structure):  # native.c's layer_t
    _fields_ = [(name, ctypes.c_void_p) for name in ("ln1_w", "ln1_b", "ln2_w", "ln2_b")] + [
        (name, _Lin) for name in ("attn", "proj", "fc", "out")] + [("k", ctypes.c_void_p), ("v", ctypes.c_void_p)]


def f32_spec(weight: torch.Tensor, bias: torch.Tensor | None) -> _Lin | None:
    """An fp32 projection as the fused decoding step takes it, or None (another dtype or layout)."""
    n, k = weight.shape
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or not _bias_ok(bias, n):
        return None
    kind = 0 if weight.stride() == (1, n) else 1 if weight.stride() == (k, 1) else None
    return None if kind is None else _Lin(kind, k, n, weight.data_ptr(), None, _ptr(bias))


def int8_spec(q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> _Lin | None:
    """An int8 projection (``gpt2.quant.Int8Linear``'s buffers) as the fused decoding step takes it, or None."""
    n, k = q.shape
    if q.device.type != "cpu" or not q.is_contiguous() or scales.dtype != torch.float32 or not _bias_ok(bias, n):
        return None
    return _Lin(2, k, n, q.data_ptr(), scales.data_ptr(), _ptr(bias))


def decode_layers(x: torch.Tensor, layers: list[tuple], k_cache: torch.Tensor, v_cache: torch.Tensor, pos: int,
                  eps: float) -> torch.Tensor | None:
    """One cached decoding step of batch 1 through every block in one native call, or None where it cannot.

    ``x`` ``(1, 1, C)``: the new position's embedding; ``layers``: per block ``(ln_1, specs, ln_2)`` with
    ``specs`` the four projections' ``f32_spec``/``int8_spec`` (c_attn, attn.c_proj, c_fc, mlp.c_proj);
    ``k_cache``/``v_cache``: a ``KVCache``'s ``(n_layer, 1, nh, max_len, hs)`` tensors, written at ``pos``.
    The same arithmetic as the blocks' forward, each step in a native loop: what it saves is the ~1.9 ms per
    token (GPT-2 124M) of Python and small torch ops around the matrix products.
    """
    n_layer, B, nh, max_len, hs = k_cache.shape
    C = nh * hs
    if torch.is_grad_enabled():  # no autograd through the native step, whichever parameters want gradients
        return None
    if not (B == 1 and x.shape == (1, 1, C) and x.is_contiguous() and _fast_ok(x) and pos < min(max_len, _MAX_KEYS)):
        return None
    if k_cache.dtype != torch.float32 or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        return None
    lib = _lib()
    if lib is None or len(layers) != n_layer:
        return None
    table = (_Layer * n_layer)()
    for i, (ln_1, specs, ln_2) in enumerate(layers):
        norms = (ln_1.weight, ln_1.bias, ln_2.weight, ln_2.bias)
        if any(s is None for s in specs) or not all(t is not None and _bias_ok(t, C) for t in norms):
            return None
        table[i] = _Layer(*(t.data_ptr() for t in norms), *specs, k_cache[i].data_ptr(), v_cache[i].data_ptr())
    y = x.clone()
    lib.decode_layers(y.data_ptr(), table, n_layer, C, nh, pos, max_len * hs, eps, torch.get_num_threads())
    return y


class Linear(nn.Linear):
    """``nn.Linear`` whose batch-1 inference goes through ``linear`` (the same parameters and results)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def native_spec(self) -> _Lin | None:
        """This projection for ``decode_layers``; None for a subclass, whose forward may do more than the product."""
        return f32_spec(self.weight, self.bias) if type(self) is Linear else None
