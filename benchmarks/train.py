"""Training throughput and model FLOPs utilisation (MFU) of ``training.Trainer``.

    python benchmarks/train.py                                   # 124M (gpt2) and the bundled shape, CPU/GPU
    python benchmarks/train.py --config gpt2 --batch-size 16 --block-size 1024 --compile   # on a GPU
    python benchmarks/train.py --config shakespeare-small --compact-vocab 11267            # as it was trained

It times full optimizer steps (forward, backward, clipping, fused AdamW) of the real trainer on random
tokens, after warm-up steps. FLOPs per token follow nanoGPT/PaLM: ``6 N + 12 L T C`` (N: parameters
without the position table; the tied head counts once). Peak: the GPU's dense bf16 rate when it is
known, ``--peak-tflops`` if given, else (CPU) a measured large matmul in the training dtype, so CPU
MFU means "share of what this machine's matmul achieves".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt2 import GPT2, GPTConfig  # noqa: E402
from training import TrainConfig, Trainer  # noqa: E402
from training.data import PreparedData, StreamSplit  # noqa: E402
from training.vocab import CompactVocabModel, VocabSubset  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "checkpoints" / "shakespeare-small"
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12}  # dense


def model_config(name: str, block_size: int | None) -> GPTConfig:
    if name == "shakespeare-small":
        if (BUNDLED / "config.json").is_file():
            cfg = GPTConfig.from_hf(json.loads((BUNDLED / "config.json").read_text()))
        else:
            cfg = GPTConfig(block_size=256, n_layer=4, n_head=4, n_embd=128)
    else:
        cfg = GPTConfig.preset(name)
    return replace(cfg, block_size=block_size or cfg.block_size, dropout=0.0)


def flops_per_token(cfg: GPTConfig, n_params: int) -> float:
    n = n_params - cfg.block_size * cfg.n_embd  # the position table is a lookup, not a matmul
    return 6 * n + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


def peak_flops(device: torch.device, dtype: torch.dtype, given_tflops: float | None) -> tuple[float, str]:
    if given_tflops:
        return given_tflops * 1e12, "given"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak, f"{name} dense bf16 spec"
        raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")
    a = torch.randn(2048, 2048, dtype=dtype)
    b = torch.randn(2048, 2048, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(8):  # best of several short trials: on a shared machine, the least disturbed one
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 3 * 2 * 2048**3 / (time.perf_counter() - t0))
    return best, f"best measured {str(dtype).removeprefix('torch.')} 2048^3 matmul"


def bench(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    cfg = model_config(name, args.block_size)
    subset = None
    if args.compact_vocab:
        subset = VocabSubset(np.arange(args.compact_vocab - 1))
        cfg = replace(cfg, vocab_size=subset.size)
    torch.manual_seed(0)
    model = GPT2(cfg).to(device)
    n_params = model.num_params()
    trainable = CompactVocabModel(model, subset) if subset is not None else model
    vocab = subset.size - 1 if subset is not None else cfg.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, 200_000).astype(np.uint16)
    data = PreparedData(StreamSplit(ids, cfg.block_size), None, "stream", len(ids), cfg.block_size)
    train = TrainConfig(steps=args.warmup + args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                        lr=1e-4, eval_interval=0, precision=args.precision, compile=args.compile)
    trainer = Trainer(trainable, data, train)
    records = list(trainer.run())
    tps = statistics.median(r.tokens_per_s for r in records[args.warmup :])
    dtype = trainer.amp_dtype or torch.float32
    peak, source = peak_flops(device, dtype, args.peak_tflops)
    fpt = flops_per_token(replace(cfg, vocab_size=subset.size if subset else cfg.vocab_size), n_params)
    return {
        "config": name + (f" (compact vocab {subset.size})" if subset else ""), "params_M": round(n_params / 1e6, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}",
        "dtype": str(dtype).removeprefix("torch."), "compile": args.compile,
        "tokens_per_step": args.batch_size * args.grad_accum * cfg.block_size, "tokens_per_s": round(tps),
        "gflops": round(tps * fpt / 1e9, 1), "peak_gflops": round(peak / 1e9, 1), "peak_source": source,
        "mfu": round(tps * fpt / peak, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", nargs="+", default=["gpt2", "shakespeare-small"],
                   help="gpt2 presets (gpt2, tiny, small ...) or shakespeare-small (the bundled shape)")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 on GPU, 1 on CPU")
    p.add_argument("--block-size", type=int, default=None, help="default: the model's context")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 GPU, 1 CPU)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compact-vocab", type=int, default=0, help="train a vocabulary of this many rows")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    args.batch_size = args.batch_size or (16 if gpu else 1)
    args.steps = args.steps or (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # for anything that runs outside autocast
    rows = [bench(name, args, device) for name in args.config]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| config | params | device | dtype | compile | tokens/step | tokens/s | GFLOP/s | MFU | peak GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['params_M']}M | {r['device']} | {r['dtype']} | {r['compile']} | "
              f"{r['tokens_per_step']} | {r['tokens_per_s']:,} | {r['gflops']:,} | {r['mfu']:.1%} | "
              f"{r['peak_gflops']:,} ({r['peak_source']}) |")


if __name__ == "__main__":
    main()
