"""Streaming through the app costs little (issue 13): ``/generate`` against the core generator.

A random GPT-2 124M (built here, seeded, saved to a temp dir in the Hugging Face layout) is served by the
app as ``python app.py --model DIR`` would serve it (``app.make_context`` + ``build_demo``, launched in this
process on a free local port). For the same prompt, settings, seed and token count, three sides are timed:

- **core**: ``gpt2.generate(model, prompt_ids, SamplingParams(...))`` consumed in a loop (no per-step
  details), on the very model object the app's store holds;
- **handler**: the generator function ``/generate`` is wired to (``ui.layout.wiring``'s wrapper around
  ``ui.logic.generate.generate``, taken from the built demo), with a real session, every update iterated
  as Gradio iterates them: the per-step details the other tabs need (top candidates, logits kept for the
  Probabilities tab), the record, the HTML view and the throttled updates all included;
- **http**: the launched app over HTTP as its page calls it (Gradio's ``sse_v3``): the values POSTed to
  ``queue/join``, then the event's server-sent messages read from ``queue/data`` until it completes, on one
  kept-alive connection: the queue, every streamed update and its encoding included. Not ``gradio_client``:
  it polls its message queue every 50 ms (~25 ms added to each request's end) and builds a TLS context for
  every request (~20 ms of CPU, even for ``http://``), costs of that client a page does not have.

Each decoding (greedy; sampling at temperature 0.8, top-k 40) is warmed up once, then the sides alternate
round by round (the order reverses every round); tokens/s is generated tokens over the whole call (prefill
included), medians over rounds; ``paired`` is the median over rounds of that round's core time over the
app's; ``CPU`` the same ratio of this process's CPU time (all threads: the server's and the client's too),
which load from other processes disturbs less than wall time. The verdict is on ``paired``: pairing each
round's sides cancels the host's drift (on the shared 2-core machine a side's speed moves by 10-25% between
rounds), which a ratio of medians does not. Every side must produce the same tokens (checked: ids for the
handler, text and count over HTTP).

    python benchmarks/stream.py                       # CPU, 2 threads, 9 rounds
    python benchmarks/stream.py --rounds 9 --no-http

By default the allocator is tuned as ``python app.py`` tunes it (``ui.memory``; ``--allocator default``:
glibc's defaults), for all three sides: they share this process. The model runs where the app puts it
(``ui.models.ModelStore``'s default: CUDA in bf16 when there is a GPU, else the CPU in fp32), so a GPU
machine benchmarks the GPU with no option.

No network: the weights are random.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from machine import cpu_model, load_average  # noqa: E402

import gpt2  # noqa: E402

TARGET = 0.90  # the bar: the app at >= 90% of the core generator's tokens/s
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light")
# name -> (temperature, top_k, the /generate "decoding" value)
DECODINGS = {"greedy": (0.0, 0, "greedy"), "sampled (T 0.8, top-k 40)": (0.8, 40, "sampling")}


def prompt_of(n_tokens: int) -> tuple[str, list[int]]:
    """A prompt text of exactly ``n_tokens`` tokens that the app's tokenizing gives back unchanged."""
    ids = gpt2.encode(TEXT * (1 + n_tokens // 40))[:n_tokens]
    text = gpt2.get_tokenizer().decode(ids)
    assert gpt2.encode(text) == ids, "the prompt does not round-trip through the tokenizer"
    return text, ids


def api_values(text: str, new_tokens: int, temperature: float, top_k: int, decoding: str, seed: int) -> dict:
    """All 17 ``/generate`` values by name (README "API"), the advanced samplers and beams at their defaults."""
    return {"prompt": text, "max_new_tokens": new_tokens, "temperature": temperature, "top_k": top_k,
            "top_p": 1.0, "repetition_penalty": 1.0, "seed": seed, "stop": "", "min_p": 0.0, "typical_p": 1.0,
            "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "no_repeat_ngram_size": 0, "decoding": decoding,
            "num_beams": 4, "length_penalty": 1.0, "early_stopping": "false"}


def wired_generate(demo) -> Callable:
    """The function Gradio calls for ``/generate`` (the wiring's wrapper around the tab logic)."""
    return next(f.fn for f in demo.fns.values() if f.api_name == "generate")


class Page:
    """One page of the app calling an endpoint as the browser does (Gradio's ``sse_v3`` protocol), on one
    kept-alive connection: ``call`` POSTs the values to ``queue/join`` and reads the event's server-sent
    messages from ``queue/data`` until it completes; its final output values."""

    def __init__(self, demo, url: str, api_name: str) -> None:
        import httpx

        self.fn_index, fn = next((i, f) for i, f in demo.fns.items() if f.api_name == api_name)
        self.states = [i for i, block in enumerate(fn.inputs) if getattr(block, "stateful", False)]
        self.http = httpx.Client(base_url=f"{url}gradio_api/", timeout=None)
        self.session_hash = uuid.uuid4().hex  # one page: the app keeps one session for it

    def call(self, values: list) -> list:
        data = list(values)
        for i in self.states:  # a page sends null for its state; the server has the value
            data.insert(i, None)
        joined = self.http.post("queue/join", json={"data": data, "fn_index": self.fn_index, "event_data": None,
                                                    "session_hash": self.session_hash, "trigger_id": None})
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        with self.http.stream("GET", "queue/data", params={"session_hash": self.session_hash}) as stream:
            for line in stream.iter_lines():
                msg = json.loads(line[5:]) if line.startswith("data:") else {}
                if msg.get("event_id") == event_id and msg["msg"] == "process_completed":
                    if not msg.get("success"):
                        raise RuntimeError(f"the app failed: {msg.get('output')}")
                    return msg["output"]["data"]
        raise RuntimeError("the app closed the stream before the event completed")


def sides(ctx, demo, url: str, ids: list[int], values: dict, seed: int) -> dict[str, Callable]:
    """One callable per side, each returning (tokens made, something to compare across sides)."""
    temperature, top_k, n = values["temperature"], values["top_k"], values["max_new_tokens"]
    params = gpt2.SamplingParams(temperature=temperature, top_k=top_k, max_new_tokens=n, seed=seed)
    model = ctx.store.get(ctx.default_key)  # the app's own shared model: the same weights, the same memory
    session, run = ctx.new_session(), wired_generate(demo)
    page = Page(demo, url, "generate") if url else None

    def core():
        steps = list(gpt2.generate(model, ids, params))
        return len(steps), ("".join(s.text for s in steps), [s.token_id for s in steps])

    def handler():
        last = None
        for last in run(**values, session=session):  # noqa: B007 - every update, as Gradio iterates them
            pass
        return len(session.records[-1].token_ids), (last[0], session.records[-1].token_ids)

    def http():
        text, stats, _view, *_state = page.call(list(values.values()))
        count = int(re.search(r"\*\*(\d+) tokens\*\*", stats).group(1))
        return count, (text, None)

    return {"core": core, "handler": handler, "http": http} if url else {"core": core, "handler": handler}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, jobs: dict[str, Callable], rounds: int, device: torch.device) -> dict:
    """Warm every side up, then alternate them for ``rounds`` rounds; medians and paired ratios."""
    for fn in jobs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    cpu: dict[str, list[float]] = {k: [] for k in jobs}  # this process's CPU seconds, all threads
    counts: dict[str, int] = {}
    same = True
    for r in range(rounds):
        order = list(jobs) if r % 2 == 0 else list(jobs)[::-1]
        made = {}
        for key in order:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            counts[key], made[key] = jobs[key]()
            sync(device)
            times[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
        text, token_ids = made["core"]
        same &= all(m[0] == text and m[1] in (None, token_ids) for m in made.values())
        same &= len({*counts.values()}) == 1
        print(f"  [{name}] round {r + 1}/{rounds}: "
              + ", ".join(f"{k} {counts[k] / times[k][-1]:.1f} tok/s" for k in jobs)
              + "".join(f", {k}/core {times['core'][-1] / times[k][-1]:.3f}" for k in jobs if k != "core"),
              flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = counts["core"]
    return {"name": name, "tokens": n, "tps": {k: n / med[k] for k in jobs},
            "ratio": {k: med["core"] / med[k] for k in jobs if k != "core"},
            "paired": {k: statistics.median(c / a for c, a in zip(times["core"], times[k], strict=True))
                       for k in jobs if k != "core"},
            "cpu": {k: statistics.median(cpu["core"]) / statistics.median(cpu[k]) for k in jobs if k != "core"},
            "spread": {k: (n / max(v), n / min(v)) for k, v in times.items()}, "same": same}


def report(results: list[dict]) -> None:
    apps = [k for k in results[0]["ratio"]]
    print("| decoding | tokens | core tok/s | " + " | ".join(f"{k} tok/s | {k} / core | paired" for k in apps)
          + " | same tokens |")
    print("|---|---:|---:|" + "---:|---:|---:|" * len(apps) + "---|")
    for r in results:
        cells = " | ".join(f"{r['tps'][k]:.1f} | {r['ratio'][k]:.3f} | {r['paired'][k]:.3f}" for k in apps)
        print(f"| {r['name']} | {r['tokens']} | {r['tps']['core']:.1f} | {cells} | {r['same']} |")
    print("(tok/s: medians over rounds, prefill included; app / core: ratio of the median times; paired: median "
          "over rounds of that round's core time / app time)")
    for r in results:
        print(f"{r['name']}: range over rounds: "
              + ", ".join(f"{k} {lo:.1f}-{hi:.1f}" for k, (lo, hi) in r["spread"].items()) + " tok/s")
        print("  CPU seconds (this process, all threads), core / app: "
              + ", ".join(f"{k} {r['cpu'][k]:.3f}" for k in apps))
        for k in apps:
            verdict = "meets" if r["paired"][k] >= TARGET else "MISSES"
            print(f"  {k}: {r['paired'][k]:.3f} of the core's tokens/s (paired): {verdict} the {TARGET:.2f} target")
        if not r["same"]:
            print(f"WARNING: {r['name']}: the sides produced different tokens")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9, help="alternating timed rounds after one warm-up")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the reference machine has 2 cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-http", action="store_true", help="time the core and the handler only")
    ap.add_argument("--allocator", choices=("app", "default"), default="app",
                    help="app: glibc tuned as app.main tunes it (ui.memory: mmap from 64 kB), for every side")
    args = ap.parse_args()
    if args.allocator == "app":
        from ui import memory

        memory.tune_allocator()  # first, as app.main does: before threads allocate

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no network
    torch.set_num_threads(args.threads)
    import gradio

    print(f"date:    {datetime.date.today()}")
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"torch {torch.__version__}, gradio {gradio.__version__}, python {platform.python_version()}")
    print(f"load:    {load_average()} (1-min load average before the run); allocator: {args.allocator}")
    print(f"job:     batch 1, {args.prompt_tokens}-token prompt + {args.new_tokens} new tokens, seed {args.seed}, "
          f"{args.rounds} alternating rounds (median)")
    text, ids = prompt_of(args.prompt_tokens)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = gpt2.GPT2(gpt2.GPTConfig.preset("gpt2")).save_pretrained(Path(tmp) / "gpt2-random")
        results = run_all(args, ckpt, text, ids)
    print(f"\nload average after the run: {load_average()}\n")
    report(results)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(args, ckpt: Path, text: str, ids: list[int]) -> list[dict]:
    """The app on ``ckpt`` (launched unless ``--no-http``), and every decoding benchmarked against it."""
    import app
    from ui.context import Caps
    from ui.layout.page import build_demo

    ctx = app.make_context(str(ckpt), Caps(max_new_tokens=max(args.new_tokens, 256)))
    model = ctx.store.get(ctx.default_key)
    device = model.device
    print(f"model:   random GPT-2 124M, {device}, {next(model.parameters()).dtype}")
    demo = build_demo(ctx)
    url = ""
    if not args.no_http:
        port = free_port()
        app.launch(demo, ctx, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
        url = f"http://127.0.0.1:{port}/"
    try:
        results = []
        for name, (temperature, top_k, decoding) in DECODINGS.items():
            values = api_values(text, args.new_tokens, temperature, top_k, decoding, args.seed)
            results.append(bench(name, sides(ctx, demo, url, ids, values, args.seed), args.rounds, device))
        return results
    finally:
        if url:
            demo.close()


if __name__ == "__main__":
    main()
