"""A gpt2-xl-shaped model (1.56B parameters, random weights) on the CPU: resident memory and decode speed,
int8 against fp32 (issue 13: a free CPU Space has 2 vCPUs and 16 GB; the target is <= 2.2 GB in int8).

Each precision loads in a fresh process with the app's allocator settings (resident memory is the
process's, read from /proc after loading and after decoding; the peak while loading (VmHWM) too),
then decodes ``--new-tokens`` greedy tokens
after a 32-token prompt, alternately over ``--rounds`` rounds, and reports the median tokens/s of the
decoding after the first token (that one, the prompt's prefill, is reported apart).

    python benchmarks/big.py                 # writes a 6.2 GB random checkpoint to a temp dir first
    python benchmarks/big.py --config gpt2-large --rounds 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from machine import cpu_model, load_average  # noqa: E402

import gpt2  # noqa: E402
from ui.memory import tune_allocator  # noqa: E402


def rss_mb(key: str = "VmRSS") -> float:
    """This process's resident memory now (VmRSS) or its peak so far (VmHWM), in MB. (Not ru_maxrss: under
    subprocess's vfork + exec it starts from the parent's peak, here the 12 GB of writing the checkpoint.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(ckpt: str, quantize: str | None, new_tokens: int, threads: int) -> None:
    """Load, decode once, print a JSON line: resident memory (loaded, peak while loading, after decoding) and
    tokens/s."""
    tune_allocator()  # as the app does at start-up: freed big blocks go back to the OS at once
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = gpt2.GPT2.from_pretrained(ckpt, device="cpu", quantize=quantize)
    load_s, loaded, peak = time.perf_counter() - t0, rss_mb(), rss_mb("VmHWM")
    prompt = torch.randint(0, model.config.vocab_size, (32,), generator=torch.Generator().manual_seed(0)).tolist()
    params = gpt2.SamplingParams(temperature=0, max_new_tokens=new_tokens, stop_at_eos=False)
    list(gpt2.generate(model, prompt, gpt2.SamplingParams(temperature=0, max_new_tokens=2, stop_at_eos=False)))
    t0 = time.perf_counter()
    steps = gpt2.generate(model, prompt, params)
    tokens = [next(steps).token_id]
    first = time.perf_counter()
    tokens += [s.token_id for s in steps]
    seconds = time.perf_counter() - first
    print(json.dumps({"load_s": load_s, "rss_loaded_mb": loaded, "rss_after_mb": rss_mb(), "peak_mb": peak,
                      "tps": (len(tokens) - 1) / seconds, "ttft_s": first - t0, "tokens": tokens}))


def run_child(ckpt: Path, quantize: str | None, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(ckpt), "--new-tokens", str(args.new_tokens),
           "--threads", str(args.threads)] + (["--quantize", quantize] if quantize else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="gpt2-xl")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quantize", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.quantize, args.new_tokens, args.threads)
    print(f"date: {datetime.date.today()}; machine: {cpu_model()}, {args.threads} torch threads; torch "
          f"{torch.__version__}; load {load_average()} (1-min average before the run)")
    config = gpt2.GPTConfig.preset(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        ckpt = gpt2.GPT2(config).save_pretrained(Path(tmp) / args.config)
        print(f"{args.config}: {config.n_layer} layers, {config.n_embd} wide; random checkpoint written in "
              f"{time.perf_counter() - t0:.0f} s")
        runs: dict[str, list[dict]] = {"fp32": [], "int8": []}
        for r in range(args.rounds):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                runs[name].append(run_child(ckpt, "int8" if name == "int8" else None, args))
                print(f"  round {r + 1} {name}: {runs[name][-1]['tps']:.2f} tok/s, "
                      f"{runs[name][-1]['rss_after_mb']:.0f} MB resident", flush=True)
    print(f"\nload average after the run: {load_average()}\n")
    print("| precision | decode tok/s | first token (s) | resident loaded (MB) | after decoding (MB) | "
          "peak loading (MB) | load (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs)
               for k in ("tps", "ttft_s", "rss_loaded_mb", "rss_after_mb", "peak_mb", "load_s")}
        print(f"| {name} | {med['tps']:.2f} | {med['ttft_s']:.1f} | {med['rss_loaded_mb']:.0f} | "
              f"{med['rss_after_mb']:.0f} | {med['peak_mb']:.0f} | {med['load_s']:.1f} |")
    same = runs["fp32"][0]["tokens"] == runs["int8"][0]["tokens"]
    tps = {name: statistics.median(r["tps"] for r in rs) for name, rs in runs.items()}
    print(f"int8 / fp32 tok/s: {tps['int8'] / tps['fp32']:.2f}x; same greedy tokens: {same}")


if __name__ == "__main__":
    main()
