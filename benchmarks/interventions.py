"""Speed of the causal tools (issue 12) on a GPT-2 124M-sized model, CPU, in plain forward passes.

Random weights with the 124M configuration (seeded; no download), fp32. Each tool runs on a 128-token
text (64 for patching) and is timed alternately with one plain forward pass of the same length, round
after round (who goes first swaps each round); the report gives each one's median time and its cost:
median(tool) / median(plain forward), plus the median of the per-round ratios (which cancels load that
comes and goes between rounds) and best(tool) / best(plain) (the least disturbed run of each).

- ablation: an edited forward (3 heads knocked out, mean mode) plus a plain one (the before/after);
- attribution: ``gpt2.attribute`` with gradient_x_input, integrated_gradients (``--steps``) and occlusion
  (skipped with a note if ``gpt2.attribute`` does not exist yet);
- patching: ``gpt2.patch_residual`` on two 64-token prompts differing at their first token (the worst
  case: every position of every layer runs) and at the middle one (half of the positions);
- DLA: ``gpt2.direct_logit_attribution``.

    python benchmarks/interventions.py                 # 2 threads, 5 rounds (3 for the slow tools)
    python benchmarks/interventions.py --only dla ablation --rounds 9
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from machine import cpu_model, load_average  # noqa: E402

import gpt2  # noqa: E402

SLOW = {"integrated_gradients", "occlusion", "patching (first token differs)", "patching (middle token differs)"}


def plain_forward(model: gpt2.GPT2, ids: torch.Tensor) -> None:
    with torch.no_grad():
        model(ids[None])


def tools(model: gpt2.GPT2, text: torch.Tensor, short: torch.Tensor, steps: int) -> dict:
    """name -> (the job, the length of its plain forward) for every tool available here."""
    target, foil = 262, 290
    edit = gpt2.Edit(ablate_heads={5: [1, 5], 9: [6]}, mode="mean")

    def ablation() -> None:
        with torch.no_grad():
            model(text[None], edit=edit)
            model(text[None])

    jobs = {"ablation (edited + plain)": (ablation, len(text)),
            "DLA": (lambda: gpt2.direct_logit_attribution(model, text.tolist(), target, foil), len(text))}
    if hasattr(gpt2, "attribute"):
        for method in ("gradient_x_input", "integrated_gradients", "occlusion"):
            jobs[method] = (lambda m=method: gpt2.attribute(model, text.tolist(), target, m, foil, steps), len(text))
    for where, pos in (("first", 0), ("middle", len(short) // 2)):
        corrupt = short.clone()
        corrupt[pos] = (corrupt[pos] + 1) % model.config.vocab_size
        jobs[f"patching ({where} token differs)"] = (
            lambda c=corrupt: gpt2.patch_residual(model, short.tolist(), c.tolist(), target, foil), len(short))
    return jobs


def bench(job, ids: torch.Tensor, model: gpt2.GPT2, rounds: int) -> dict:
    job()  # warm-up
    plain_forward(model, ids)
    tool_t, plain_t = [], []
    for r in range(rounds):
        order = [("tool", job), ("plain", lambda: plain_forward(model, ids))]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn()
            (tool_t if name == "tool" else plain_t).append(time.perf_counter() - t0)
    return {"tool": statistics.median(tool_t), "plain": statistics.median(plain_t),
            "best": min(tool_t) / min(plain_t),
            "paired": statistics.median(a / b for a, b in zip(tool_t, plain_t, strict=True))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--slow-rounds", type=int, default=3, help="rounds for IG, occlusion and patching")
    ap.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")
    ap.add_argument("--only", nargs="*", default=None, help="tools whose name starts with one of these")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = gpt2.GPT2(gpt2.GPTConfig.preset("gpt2")).eval()
    gen = torch.Generator().manual_seed(1)
    text = torch.randint(0, model.config.vocab_size, (128,), generator=gen)
    short = text[:64].clone()
    print(f"# {datetime.date.today()}  {cpu_model()}  {args.threads} threads  torch {torch.__version__}  "
          f"python {platform.python_version()}  load at start {load_average()}")
    if not hasattr(gpt2, "attribute"):
        print("# gpt2.attribute not available: attribution rows skipped")
    print("| tool | tokens | tool time | plain forward | cost (median times) | cost (paired) | cost (best times) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (job, n) in tools(model, text, short, args.steps).items():
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        r = bench(job, text[:n], model, args.slow_rounds if name in SLOW else args.rounds)
        print(f"| {name} | {n} | {r['tool'] * 1000:.0f} ms | {r['plain'] * 1000:.1f} ms | "
              f"{r['tool'] / r['plain']:.1f} | {r['paired']:.1f} | {r['best']:.1f} |", flush=True)
    print(f"# load at end {load_average()}")


if __name__ == "__main__":
    main()
