"""Sampled decoding: our generator with a top-k against transformers' sampled ``generate``.

The app's default decoding samples (temperature 0.8, top-k 40). ``gpt2.generate`` draws such a token from the
top-k's candidates (``gpt2.sampling.top_k_candidates``): every stage after the top-k runs on k values, not on the
vocabulary. Sides, on one random GPT-2 124M (seeded, fp32, the machine's CPU or ``--device``):

- **hf**: ``transformers``' ``generate(do_sample=True, temperature, top_k)``, the reference;
- **ours**: ``gpt2.generate`` with the same settings;
- **ours, whole vocabulary**: the same with the candidates turned off (``top_k_candidates`` -> None): every
  stage and the draw over all 50,257 logits (the top-k stage itself still takes the native top-k).

Each side is warmed up once, then the sides alternate round by round (order reversed every round); tok/s is
new tokens over the whole call (prefill included), medians over rounds; ``x hf`` is the median over rounds of
hf's time over the side's in the same round. The draws differ between sides (each its own random stream);
every side makes exactly ``--new-tokens`` tokens (no stop at <|endoftext|>). By default glibc's allocator is
tuned as ``python app.py`` tunes it (``ui.memory``: blocks from 64 kB are mapped, so a vocabulary-sized
temporary costs its page faults); ``--allocator default`` keeps glibc's defaults.

    python benchmarks/sampling.py                 # 9 rounds, T 0.8, top-k 40
    python benchmarks/sampling.py --top-k 200 --top-p 0.95
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from decode import PAD_ID, load_hf, sync  # noqa: E402
from machine import cpu_model, load_average  # noqa: E402

import gpt2  # noqa: E402
from gpt2 import generation  # noqa: E402


def sides(model: gpt2.GPT2, hf, prompt: list[int], params: gpt2.SamplingParams,
          device: torch.device) -> dict[str, Callable[[], int]]:
    """name -> one sampled decoding, returning the number of new tokens ("hf" first: the baseline)."""
    ids = torch.tensor([prompt], device=device)

    def hf_side() -> int:
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=params.max_new_tokens,
                          min_new_tokens=params.max_new_tokens, do_sample=True, temperature=params.temperature,
                          top_k=params.top_k, top_p=params.top_p, use_cache=True, pad_token_id=PAD_ID)
        return out.shape[1] - len(prompt)

    def ours() -> int:
        return len(list(gpt2.generate(model, prompt, params)))

    def whole_vocabulary() -> int:
        with mock.patch.object(generation, "top_k_candidates", lambda *a: None):
            return ours()

    return {"hf": hf_side, "ours": ours, "ours, whole vocabulary": whole_vocabulary}


def bench(jobs: dict[str, Callable[[], int]], rounds: int, device: torch.device) -> dict[str, dict]:
    for fn in jobs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    counts: dict[str, int] = {}
    for r in range(rounds):
        for name in list(jobs) if r % 2 == 0 else list(jobs)[::-1]:
            sync(device)
            t0 = time.perf_counter()
            counts[name] = jobs[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {counts[k] / v[-1]:.1f} tok/s" for k, v in times.items()),
              flush=True)
    return {k: {"tps": counts[k] / statistics.median(v), "range": (counts[k] / max(v), counts[k] / min(v)),
                "vs_hf": statistics.median(h / t for h, t in zip(times["hf"], v, strict=True))}
            for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9, help="alternating timed rounds after one warm-up")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (the reference machine has 2 cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allocator", choices=("app", "default"), default="app",
                    help="app: glibc tuned as app.main tunes it (ui.memory: mmap from 64 kB)")
    args = ap.parse_args()
    if args.allocator == "app":
        from ui import memory

        memory.tune_allocator()  # first, as app.main does
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = gpt2.SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                 max_new_tokens=args.new_tokens, seed=args.seed, stop_at_eos=False)
    print(f"date:    {datetime.date.today()}")
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads, device {device}")
    print(f"torch {torch.__version__}, python {platform.python_version()}; load {load_average()} before the run; "
          f"allocator: {args.allocator}")
    print(f"job:     random GPT-2 124M fp32, {args.prompt_tokens}-token prompt + {args.new_tokens} sampled tokens "
          f"(T {args.temperature}, top-k {args.top_k}, top-p {args.top_p}), {args.rounds} alternating rounds")
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = gpt2.GPT2(gpt2.GPTConfig.preset("gpt2")).save_pretrained(Path(tmp) / "gpt2-random")
        model = gpt2.GPT2.from_pretrained(ckpt, device=device).eval()
        hf = load_hf(ckpt, device)
        prompt = torch.randint(0, 50257, (args.prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
        results = bench(sides(model, hf, prompt, params, device), args.rounds, device)
    print(f"load average after the run: {load_average()}\n")
    print("| side | tok/s (median) | x hf (paired) | range over rounds |")
    print("|---|---:|---:|---|")
    for name, r in results.items():
        print(f"| {name} | {r['tps']:.1f} | {r['vs_hf']:.2f}x | {r['range'][0]:.1f}-{r['range'][1]:.1f} |")


if __name__ == "__main__":
    main()
