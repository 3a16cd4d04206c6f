"""How closely int8 and bf16 follow fp32 (issue 13): teacher-forced over the held-out tenth of a text.

For a checkpoint (default: the bundled model) and a text (default: tinyshakespeare, whose last 10% the
bundled model never trained on), every non-overlapping context-length window of the held-out part is run
through the fp32 model and through the same checkpoint in each other precision ("windows": each window at
once, a prompt's path), and the first ``--stepwise-tokens`` of it a token at a time through the KV cache
("decoding": the path generation takes, where int8 multiplies int8 activations on CPUs with AVX-512 VNNI);
``gpt2.quant.fidelity`` reports top-1 agreement, mean KL(fp32 || other) and both perplexities. The bar:
agreement >= 98%, KL <= 0.005 nats, perplexity within 1%.

    python benchmarks/fidelity.py --text ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from machine import cpu_model  # noqa: E402

import gpt2  # noqa: E402
from gpt2.quant import fidelity  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "checkpoints" / "shakespeare-small"))
    ap.add_argument("--text", required=True, help="a UTF-8 text file; its last --held-out share is used")
    ap.add_argument("--held-out", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stepwise-tokens", type=int, default=4096,
                    help="held-out tokens also run a token at a time through the KV cache (decoding's path)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ids = gpt2.encode(Path(args.text).read_text(encoding="utf-8"))
    held = ids[int(len(ids) * (1 - args.held_out)):]
    print(f"date: {datetime.date.today()}; machine: {cpu_model()}; torch {torch.__version__}")
    print(f"model: {args.model}; text: {args.text}, last {args.held_out:.0%} = {len(held)} tokens")
    ref = gpt2.GPT2.from_pretrained(args.model, device="cpu")
    print("| precision | tokens | top-1 agreement | mean KL (nats) | ppl fp32 | ppl | change | time (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, dtype, quantize in (("int8", None, "int8"), ("bf16", torch.bfloat16, None)):
        other = gpt2.GPT2.from_pretrained(args.model, device="cpu", dtype=dtype, quantize=quantize)
        for path, tokens, stepwise in (("windows", held, False), ("decoding", held[: args.stepwise_tokens + 1], True)):
            t0 = time.perf_counter()
            f = fidelity(ref, other, tokens, stepwise=stepwise)
            print(f"| {name}, {path} | {f.tokens} | {f.top1_agreement:.2%} | {f.mean_kl:.5f} | {f.reference_ppl:.2f} | "
                  f"{f.model_ppl:.2f} | {f.ppl_change:+.2%} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
