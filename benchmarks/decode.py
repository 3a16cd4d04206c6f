"""Batch-1 greedy decode speed in each precision, against ``transformers`` and llama.cpp (issues 2, 13).

Every side gets the same random GPT-2 124M weights (built here, seeded, saved to a temp dir in the Hugging
Face layout and loaded by each library), the same prompt and the same job: greedy decoding of
``--new-tokens`` tokens after a 32-token prompt, KV cache on. Ours runs in each of ``--precisions`` (fp32,
bf16, int8: weight-only int8; ``fp32-torch``, ``int8-torch``: with ``gpt2.native``'s kernels off); transformers
runs fp32, its ``generate``; llama.cpp (when ``--llama-cpp-src`` is given and built, see ``llama_ref.py``) runs the same
weights converted to F32, F16 and Q8_0. All sides are timed alternately, round after round (the order
reversed every other round), and medians are reported, so a burst of load from another process hits every
side rather than one. Time to first token (TTFT) is measured the same way for a 512-token prompt.

    python benchmarks/decode.py                                  # CPU, 2 threads, 5 rounds
    python benchmarks/decode.py --llama-cpp-src /tmp/llama/llama_cpp_python-0.3.36
    python benchmarks/decode.py --device cuda --rounds 10 --precisions fp32,bf16

No network: the weights are random, and ``transformers``/llama.cpp are only benchmark dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

import llama_ref  # noqa: E402
from machine import cpu_model, load_average  # noqa: E402

import gpt2  # noqa: E402

PAD_ID = 50256
PRECISIONS = {"fp32": (torch.float32, None), "bf16": (torch.bfloat16, None), "int8": (torch.float32, "int8")}
# "fp32-torch", "int8-torch": the same model with ``gpt2.native``'s kernels off (torch's kernels throughout)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], list[int]], device: torch.device) -> tuple[float, list[int]]:
    """Seconds one call of ``fn`` takes (device work included) and the token ids it returned."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def ours_decode(model: gpt2.GPT2, prompt: list[int], new_tokens: int, native: bool = True) -> list[int]:
    params = gpt2.SamplingParams(temperature=0, max_new_tokens=new_tokens, stop_at_eos=False)
    with contextlib.nullcontext() if native else gpt2.native.disabled():
        return [step.token_id for step in gpt2.generate(model, prompt, params)]


def hf_decode(hf, prompt: list[int], new_tokens: int, device: torch.device) -> list[int]:
    ids = torch.tensor([prompt], device=device)
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                      min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=PAD_ID)
    return out[0, len(prompt):].tolist()


def load_hf(ckpt: Path, device: torch.device):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="sdpa").to(device).eval()
    hf.generation_config.pad_token_id = PAD_ID
    return hf


def sides(args, ckpt: Path, device: torch.device, workdir: Path) -> dict[str, Callable[[list[int], int], list[int]]]:
    """name -> decode(prompt, new_tokens) for every side of the comparison ("hf fp32" first: the baseline)."""
    hf = load_hf(ckpt, device)
    out = {"hf fp32": lambda p, n: hf_decode(hf, p, n, device)}
    for name in args.precisions.split(","):
        dtype, quantize = PRECISIONS[name.removesuffix("-torch")]
        model = gpt2.GPT2.from_pretrained(ckpt, device, dtype=dtype, quantize=quantize)
        native = not name.endswith("-torch")
        out[f"ours {name}"] = lambda p, n, m=model, k=native: ours_decode(m, p, n, k)
    why_not = llama_ref.available(args.llama_cpp_src) if device.type == "cpu" else "CPU only here"
    if why_not:
        print(f"llama.cpp: not run ({why_not})")
        return out
    for outtype in llama_ref.OUTTYPES:
        runner = llama_ref.LlamaRunner(llama_ref.convert(ckpt, args.llama_cpp_src, outtype, workdir), args.threads)
        out[f"llama.cpp {outtype.upper()}"] = runner.decode
    return out


def bench(jobs: dict[str, Callable[[list[int], int], list[int]]], args, device: torch.device, prompt: list[int],
          long_prompt: list[int]) -> dict[str, dict]:
    """Warm up every side, then alternate them for ``args.rounds`` rounds; per side: the decode and TTFT times."""
    n = args.new_tokens
    tasks = {(name, kind): (lambda f=f, kind=kind: f(prompt, n) if kind == "decode" else f(long_prompt, 1))
             for name, f in jobs.items() for kind in ("decode", "ttft")}
    for fn in tasks.values():  # warm-up: allocator, thread pools, lazy inits, CUDA kernels
        fn()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in tasks}
    tokens: dict[tuple[str, str], list[int]] = {}
    for r in range(args.rounds):
        order = list(tasks) if r % 2 == 0 else list(tasks)[::-1]  # swap who goes first each round
        for key in order:
            t, tokens[key] = timed(tasks[key], device)
            times[key].append(t)
        line = ", ".join(f"{name} {n / times[(name, 'decode')][-1]:.1f}" for name in jobs)
        print(f"  round {r + 1}/{args.rounds} tok/s: {line}", flush=True)
    base = times[("hf fp32", "decode")]
    return {name: {
        "tps": n / statistics.median(times[(name, "decode")]),
        "ttft_ms": 1000 * statistics.median(times[(name, "ttft")]),
        # each round's HF time over this side's in the same round: load that comes and goes cancels out
        "vs_hf": statistics.median(h / o for h, o in zip(base, times[(name, "decode")], strict=True)),
        "range": (n / max(times[(name, "decode")]), n / min(times[(name, "decode")])),
        "same_as_hf": tokens[(name, "decode")] == tokens[("hf fp32", "decode")],
        "times": times[(name, "decode")],
    } for name in jobs}


def report(results: dict[str, dict]) -> None:
    print("| side | tok/s (median) | × HF fp32 (paired) | range over rounds | TTFT 512 (ms) | same tokens as HF |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r in results.items():
        lo, hi = r["range"]
        print(f"| {name} | {r['tps']:.1f} | {r['vs_hf']:.2f}x | {lo:.1f}-{hi:.1f} | {r['ttft_ms']:.0f} | "
              f"{r['same_as_hf']} |")
    for name, ref in (("ours int8", "llama.cpp Q8_0"), ("ours bf16", "llama.cpp F16"), ("ours fp32", "llama.cpp F32")):
        if name in results and ref in results:
            pairs = zip(results[ref]["times"], results[name]["times"], strict=True)
            paired = statistics.median(r / o for r, o in pairs)  # each round's reference time over ours
            print(f"{name} / {ref}: {results[name]['tps'] / results[ref]['tps']:.2f}x tok/s (paired by round "
                  f"{paired:.2f}x), TTFT {results[name]['ttft_ms']:.0f} vs {results[ref]['ttft_ms']:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds after one warm-up")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--ttft-prompt-tokens", type=int, default=512)
    ap.add_argument("--precisions", default="fp32,bf16,int8",
                    help="ours: comma-separated fp32, bf16, int8, fp32-torch, int8-torch (native kernels off)")
    ap.add_argument("--llama-cpp-src", default=None, help="unpacked llama-cpp-python source (see llama_ref.py)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (the reference machine has 2 cores)")
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
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = gpt2.GPT2(config).save_pretrained(Path(tmp) / "gpt2-random")  # random 124M, seeded
        results = bench(sides(args, ckpt, device, Path(tmp)), args, device, prompt, long_prompt)
    print(f"\nload average after the run: {load_average()}\n")
    report(results)


if __name__ == "__main__":
    main()
