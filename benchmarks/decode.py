"""Batch-1 greedy decode speed: this GPT-2 against ``transformers``' ``generate`` (issue 2).

Both models get the same random GPT-2 124M weights (built here, seeded, saved to a temp dir in the
Hugging Face layout and loaded by each library), the same prompt and the same job: greedy decoding
of ``--new-tokens`` tokens after a 32-token prompt, KV cache on, fp32. The two are timed alternately,
round after round, and the median of each is reported, so a burst of load from another process on
the machine hits both sides rather than one. Time to first token (TTFT) is measured the same way for
a 512-token prompt. On CUDA ours also runs in bf16.

    python benchmarks/decode.py                      # CPU, 2 threads, 5 rounds
    python benchmarks/decode.py --device cuda --rounds 10

No network: the weights are random, and ``transformers`` is only a benchmark/test dependency.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from machine import cpu_model, load_average  # noqa: E402

import gpt2  # noqa: E402

PAD_ID = 50256


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, list[int]]:
    """Seconds one call of ``fn`` takes (device work included) and the token ids it returned."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def ours_decode(model: gpt2.GPT2, prompt: list[int], new_tokens: int) -> list[int]:
    params = gpt2.SamplingParams(temperature=0, max_new_tokens=new_tokens, stop_at_eos=False)
    return [step.token_id for step in gpt2.generate(model, prompt, params)]


def ours_first_token(model: gpt2.GPT2, prompt: list[int]) -> list[int]:
    params = gpt2.SamplingParams(temperature=0, max_new_tokens=1, stop_at_eos=False)
    return [next(iter(gpt2.generate(model, prompt, params))).token_id]


def hf_decode(hf, prompt: list[int], new_tokens: int, device: torch.device) -> list[int]:
    ids = torch.tensor([prompt], device=device)
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                      min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=PAD_ID)
    return out[0, len(prompt):].tolist()


def load_pair(ckpt: Path, device: torch.device, dtype: torch.dtype):
    from transformers import GPT2LMHeadModel

    ours = gpt2.GPT2.from_pretrained(ckpt, device, dtype=dtype)
    hf = GPT2LMHeadModel.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    hf.generation_config.pad_token_id = PAD_ID
    return ours, hf


def bench(name: str, ours, hf, args, device: torch.device, prompt: list[int], long_prompt: list[int]) -> dict:
    """Warm up both, then alternate ours/HF for ``args.rounds`` rounds; medians of each."""
    n = args.new_tokens
    jobs = {
        "ours": lambda: ours_decode(ours, prompt, n),
        "hf": lambda: hf_decode(hf, prompt, n, device),
        "ours_ttft": lambda: ours_first_token(ours, long_prompt),
        "hf_ttft": lambda: hf_decode(hf, long_prompt, 1, device),
    }
    for fn in jobs.values():  # warm-up: allocator, thread pools, lazy inits, CUDA kernels
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    tokens: dict[str, list[int]] = {}
    for r in range(args.rounds):
        order = list(jobs) if r % 2 == 0 else list(jobs)[::-1]  # swap who goes first each round
        for key in order:
            t, tokens[key] = timed(jobs[key], device)
            times[key].append(t)
        print(f"  [{name}] round {r + 1}/{args.rounds}: ours {n / times['ours'][-1]:.1f} tok/s, "
              f"HF {n / times['hf'][-1]:.1f} tok/s ({times['hf'][-1] / times['ours'][-1]:.2f}x), TTFT ours "
              f"{1000 * times['ours_ttft'][-1]:.0f} ms, HF {1000 * times['hf_ttft'][-1]:.0f} ms", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "name": name,
        "ours_tps": n / med["ours"],
        "hf_tps": n / med["hf"],
        "ratio": med["hf"] / med["ours"],
        # Each round's HF time over ours in that same round: load from other processes that comes
        # and goes between rounds cancels out of this one.
        "paired_ratio": statistics.median(h / o for h, o in zip(times["hf"], times["ours"], strict=True)),
        "ours_ttft_ms": 1000 * med["ours_ttft"],
        "hf_ttft_ms": 1000 * med["hf_ttft"],
        "same_tokens": tokens["ours"] == tokens["hf"],
        "same_first_token": tokens["ours_ttft"] == tokens["hf_ttft"],
        "spread": {k: (n / max(v), n / min(v)) for k, v in times.items() if k in ("ours", "hf")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds after one warm-up")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--ttft-prompt-tokens", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the reference machine has 2 cores)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import transformers

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"date:    {datetime.date.today()}")
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}")
    print(f"load:    {load_average()} (1-min load average before the run; above ~0.5 on a small machine, "
          "other processes compete and timings get noisy)")
    print(f"job:     batch 1, greedy, {args.prompt_tokens}-token prompt + {args.new_tokens} new tokens, KV cache, "
          f"{args.rounds} alternating rounds (median); TTFT on a {args.ttft_prompt_tokens}-token prompt")

    rng = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    config = gpt2.GPTConfig.preset("gpt2")
    prompt = torch.randint(0, config.vocab_size, (args.prompt_tokens,), generator=rng).tolist()
    long_prompt = torch.randint(0, config.vocab_size, (args.ttft_prompt_tokens,), generator=rng).tolist()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = gpt2.GPT2(config).save_pretrained(Path(tmp) / "gpt2-random")  # random 124M, seeded
        dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
        for dtype in dtypes:
            ours, hf = load_pair(ckpt, device, dtype)
            name = str(dtype).removeprefix("torch.")
            results.append(bench(name, ours, hf, args, device, prompt, long_prompt))
            del ours, hf

    print(f"\nload average after the run: {load_average()}\n")
    print("| dtype | ours tok/s | HF tok/s | ours / HF | paired | ours TTFT (ms) | HF TTFT (ms) | same tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['name']} | {r['ours_tps']:.1f} | {r['hf_tps']:.1f} | {r['ratio']:.2f}x | "
              f"{r['paired_ratio']:.2f}x | {r['ours_ttft_ms']:.0f} | {r['hf_ttft_ms']:.0f} | "
              f"{r['same_tokens'] and r['same_first_token']} |")
    print("(tok/s and TTFT: medians over rounds; ours / HF: ratio of the median times; paired: median over rounds "
          "of that round's HF time / ours)")
    for r in results:
        lo, hi = r["spread"]["ours"]
        hlo, hhi = r["spread"]["hf"]
        print(f"{r['name']}: range over rounds: ours {lo:.1f}-{hi:.1f} tok/s, HF {hlo:.1f}-{hhi:.1f} tok/s")
        if not (r["same_tokens"] and r["same_first_token"]):
            level = "note" if r["name"] != "float32" else "WARNING"  # bf16 rounding may legitimately diverge
            print(f"{level}: {r['name']}: ours and transformers produced different tokens")


if __name__ == "__main__":
    main()
