"""Beam search speed: ``gpt2.beam_search`` against ``transformers``' ``generate(num_beams=...)`` (issue 11).

Both models get the same random GPT-2 124M weights (built here, seeded, saved to a temp dir in the
Hugging Face layout and loaded by each library: no download, so the weights are random, not OpenAI's),
the same prompt and the same job: beam search with ``--beams`` beams for ``--new-tokens`` new tokens
(length penalty 1, ``early_stopping=False``), KV cache on, fp32. The two are timed alternately, round
after round (who goes first swaps each round), and the median of each is reported, plus the paired ratio
(each round's HF time over ours in that same round), so load from other processes hits both sides.
The returned sequences and scores are compared too.

    python benchmarks/beam.py                      # CPU, 2 threads, 4 beams, 64 tokens, 5 rounds
    python benchmarks/beam.py --rounds 9 --prompt-tokens 128
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


def timed(fn) -> tuple[float, tuple[list[int], float]]:
    """Seconds one call of ``fn`` takes and what it returned."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def ours_beam(model: gpt2.GPT2, prompt: list[int], args) -> tuple[list[int], float]:
    res = gpt2.beam_search(model, prompt, gpt2.BeamParams(args.beams, args.new_tokens, 1.0, False))
    return res.sequences[0], res.scores[0]


def hf_beam(hf, prompt: list[int], args) -> tuple[list[int], float]:
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=args.beams,
                      max_new_tokens=args.new_tokens, length_penalty=1.0, early_stopping=False, use_cache=True,
                      pad_token_id=PAD_ID, output_scores=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt):].tolist(), float(out.sequences_scores[0])


def bench(ours, hf, prompt: list[int], args) -> dict:
    """Warm up both, then alternate ours/HF for ``args.rounds`` rounds; medians of each."""
    jobs = {"ours": lambda: ours_beam(ours, prompt, args), "hf": lambda: hf_beam(hf, prompt, args)}
    for fn in jobs.values():  # warm-up: allocator, thread pools, lazy inits
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    outs: dict[str, tuple[list[int], float]] = {}
    for r in range(args.rounds):
        for key in list(jobs) if r % 2 == 0 else list(jobs)[::-1]:
            t, outs[key] = timed(jobs[key])
            times[key].append(t)
        print(f"  round {r + 1}/{args.rounds}: ours {times['ours'][-1]:.2f} s, HF {times['hf'][-1]:.2f} s "
              f"({times['hf'][-1] / times['ours'][-1]:.2f}x)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "ours_s": med["ours"],
        "hf_s": med["hf"],
        "ratio": med["hf"] / med["ours"],
        "paired_ratio": statistics.median(h / o for h, o in zip(times["hf"], times["ours"], strict=True)),
        # The fastest round of each side: on a busy machine, the rounds least disturbed by other processes.
        "best_ratio": min(times["hf"]) / min(times["ours"]),
        "same_sequence": outs["ours"][0] == outs["hf"][0],
        "score_diff": abs(outs["ours"][1] - outs["hf"][1]),
        "new_tokens": len(outs["ours"][0]),
        "spread": {k: (min(v), max(v)) for k, v in times.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds after one warm-up")
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the reference machine has 2 cores)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import transformers
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    print(f"date:    {datetime.date.today()}")
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}")
    print(f"load:    {load_average()} (1-min load average before the run; above ~0.5 on a small machine, "
          "other processes compete and timings get noisy)")
    print(f"job:     beam search, {args.beams} beams, {args.prompt_tokens}-token prompt + {args.new_tokens} new "
          f"tokens, random GPT-2 124M fp32 on CPU, {args.rounds} alternating rounds (median)")

    rng = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    config = gpt2.GPTConfig.preset("gpt2")
    prompt = torch.randint(0, config.vocab_size, (args.prompt_tokens,), generator=rng).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = gpt2.GPT2(config).save_pretrained(Path(tmp) / "gpt2-random")  # random 124M, seeded
        ours = gpt2.GPT2.from_pretrained(ckpt, "cpu", dtype=torch.float32)
        hf = GPT2LMHeadModel.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="sdpa").eval()
        r = bench(ours, hf, prompt, args)

    print(f"\nload average after the run: {load_average()}\n")
    print("| ours (s) | HF (s) | ours / HF | paired | fastest rounds | new tokens | same best sequence | score diff |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|")
    print(f"| {r['ours_s']:.2f} | {r['hf_s']:.2f} | {r['ratio']:.2f}x | {r['paired_ratio']:.2f}x | "
          f"{r['best_ratio']:.2f}x | {r['new_tokens']} | {r['same_sequence']} | {r['score_diff']:.1e} |")
    print("(seconds per search: medians over rounds; ours / HF: ratio of the median times; paired: median over "
          "rounds of that round's HF time / ours; fastest rounds: HF's fastest round / ours)")
    (lo, hi), (hlo, hhi) = r["spread"]["ours"], r["spread"]["hf"]
    print(f"range over rounds: ours {lo:.2f}-{hi:.2f} s, HF {hlo:.2f}-{hhi:.2f} s")
    if not r["same_sequence"]:
        print("WARNING: ours and transformers returned different best sequences")


if __name__ == "__main__":
    main()
