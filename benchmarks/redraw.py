"""Instant redraws in the Attention tab (issue 13): the first drawing of a text against redraws after it.

A random GPT-2 124M (seeded, saved to a temp dir, loaded by the app's model store; fp32, CPU), a
1,024-token text and a kept 1,024-token generation (1,000 prompt tokens and 24 generated; other tokens than
the text's), driven through the tab's own logic functions (``ui.logic.attention``: ``show``, ``redraw``,
``replay``) with a real ``AppContext``, as the page calls them. Each round, on a fresh session:

- first draw: ``show`` of the text (the page's defaults: layer 0, head 0, one head, the last token; the
  least favourable layer for keeping: before, a first draw of layer 0 ran one block), which keeps the
  text's queries and keys (one pass through every layer);
- redraws: the layer moved, the head moved, the query token moved, the view changed to all heads of the
  layer, then to the token focus;
- a generation: ``show`` of it, then ``replay`` of two earlier steps.

The same events also run with the per-session cap at 0 (``GPT2_MAX_REDRAW_MB=0``: nothing kept, every
view runs the model, as before this cache), alternating which side goes first each round; medians are
reported, the ratio redraw / first draw (target: at most 0.25) and the bytes a session holds.

    python benchmarks/redraw.py                 # 2 threads, 3 rounds
    python benchmarks/redraw.py --rounds 5 --no-baseline
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from machine import cpu_model, load_average  # noqa: E402

import gpt2  # noqa: E402
from ui import budget  # noqa: E402
from ui.context import AppContext, Caps  # noqa: E402
from ui.logic import attention  # noqa: E402
from ui.models import ModelStore, catalog, key_for  # noqa: E402
from ui.session import GenerationRecord  # noqa: E402

TOKENS, GENERATED = 1024, 24
PAGE = dict(source="text", record="latest", layer=0, head=0, view="one head", query=None, step=0,
            scale=attention.FITTED, width=1280)
# name -> (logic function, changes to PAGE): the events of one round, in order
EVENTS = {
    "first draw (text)": (attention.show, {}),
    "layer moved": (attention.redraw, dict(layer=8)),
    "head moved": (attention.redraw, dict(layer=8, head=7)),
    "query moved": (attention.redraw, dict(layer=8, head=7, query=600)),
    "view: all heads": (attention.redraw, dict(layer=8, head=7, query=600, view=attention.VIEWS[1])),
    "view: token focus": (attention.redraw, dict(layer=8, head=7, query=600, view=attention.VIEWS[2])),
    "first draw (generation)": (attention.show, dict(source="a generation", step=None)),
    "replay step 10": (attention.replay, dict(source="a generation", step=10)),
    "replay step 3": (attention.replay, dict(source="a generation", step=3)),
}
FIRST = {"first draw (text)", "first draw (generation)"}


def long_text(ids_wanted: int) -> tuple[str, list[int]]:
    """An English-ish text of at least ``ids_wanted`` tokens and its first ``ids_wanted`` tokens."""
    names, verbs = ["ROMEO", "JULIET", "NURSE", "FRIAR"], ["loves", "fears", "greets", "follows", "leaves"]
    text = "".join(f"{names[i % 4]}:\nThe {i}th night {verbs[i % 5]} the moon and {i * 7 % 13} stars.\n\n"
                   for i in range(ids_wanted // 10))
    ids = gpt2.encode(text)[:ids_wanted]
    assert len(ids) == ids_wanted, "the text is too short"
    return gpt2.get_tokenizer().decode(ids), ids


def contexts(model_dir: str) -> dict[str, AppContext]:
    """The app's context with its default caps ("kept") and one keeping nothing ("model per view"), on one store."""
    entries = catalog(extra=model_dir)
    key = key_for(entries, model_dir) or model_dir
    store = ModelStore(entries)
    return {"kept": AppContext(store, key), "model per view": AppContext(store, key, caps=Caps(max_redraw_mb=0))}


def one_round(ctx: AppContext, text: str, ids: list[int]) -> tuple[dict[str, float], int, np.ndarray]:
    """Every event once on a fresh session: seconds per event, bytes the session holds after the text's
    redraws, and the token focus drawn (to compare the two sides)."""
    session = ctx.new_session()
    other = ids[7:] + ids[:7]  # another sequence than the text's (the text's kept entry would serve it)
    session.add_record(GenerationRecord(other[: TOKENS - GENERATED], gpt2.SamplingParams(), ctx.default_key, False,
                                        token_ids=other[TOKENS - GENERATED:]))
    times, held, focus = {}, 0, None
    for name, (fn, changes) in EVENTS.items():
        values = dict(PAGE, text=text) | changes
        if fn is attention.replay:
            values.pop("query")
        t0 = time.perf_counter()
        out = fn(ctx, session, **values)
        times[name] = time.perf_counter() - t0
        if name == "view: token focus":
            held, focus = session.redraw.nbytes, np.asarray(out[0].data[0].z)
    session.close()
    return times, held, focus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true", help="skip the side that keeps nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_dir = tempfile.mkdtemp(prefix="redraw-bench-")
    gpt2.GPT2(gpt2.GPTConfig.preset("gpt2")).save_pretrained(Path(model_dir) / "gpt2-random")
    sides = contexts(str(Path(model_dir) / "gpt2-random"))
    if args.no_baseline:
        del sides["model per view"]
    text, ids = long_text(TOKENS)
    print(f"# {datetime.date.today()}  {cpu_model()}  {args.threads} threads  torch {torch.__version__}  "
          f"python {platform.python_version()}  load at start {load_average()}")
    for ctx in sides.values():  # warm-up: the store loads the model, thread pools, plotly
        one_round(ctx, text, ids)
    times = {side: {name: [] for name in EVENTS} for side in sides}
    held, drawn = {}, {}
    for r in range(args.rounds):
        for side in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            t, held[side], drawn[side] = one_round(sides[side], text, ids)
            for name, seconds in t.items():
                times[side][name].append(seconds)
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
            f"{side} first {times[side]['first draw (text)'][-1]:.2f} s" for side in sides), flush=True)
    report(times, held, drawn)
    print(f"# load at end {load_average()}; server budget in use after the rounds: {budget.REDRAW.used_bytes} B")


def report(times: dict, held: dict, drawn: dict) -> None:
    """A Markdown table: median seconds of each event per side, and each redraw / the first draw."""
    med = {side: {name: statistics.median(v) for name, v in t.items()} for side, t in times.items()}
    sides = list(med)
    print("| event | " + " | ".join(f"{s} (median)" for s in sides) + " | kept: / its first draw |")
    print("|---|" + "---:|" * (len(sides) + 1))
    def ratio(name: str) -> float:
        first = "first draw (generation)" if name.startswith("replay") else "first draw (text)"
        return med["kept"][name] / med["kept"][first]

    for name in EVENTS:
        shown = "" if name in FIRST else f"{ratio(name):.3f}"
        print(f"| {name} | " + " | ".join(f"{med[s][name] * 1000:.0f} ms" for s in sides) + f" | {shown} |")
    worst = max(ratio(name) for name in EVENTS if name not in FIRST)
    print(f"# worst redraw / first draw (kept): {worst:.3f} (target <= 0.25)")
    if len(sides) == 2:
        for first in sorted(FIRST):  # each round's two sides, so that load that comes and goes cancels
            paired = statistics.median(k / b for k, b in zip(times["kept"][first], times["model per view"][first],
                                                              strict=True))
            print(f"# {first}: kept / model per view, median of the rounds' ratios: {paired:.2f}")
        worst_before = max(med["kept"][n] / med["model per view"]["first draw (text)"] for n in EVENTS
                           if n not in FIRST)
        print(f"# worst redraw (kept) / first draw (model per view): {worst_before:.3f}")
    print(f"# bytes one session holds: kept {held['kept']:,} B ({held['kept'] / 1e6:.1f} MB)"
          + (f", model per view {held['model per view']:,} B" if "model per view" in held else ""))
    if len(drawn) == 2:
        same = np.allclose(drawn["kept"], drawn["model per view"], atol=1e-5)
        print(f"# token focus drawn the same by both sides (atol 1e-5): {same}")


if __name__ == "__main__":
    main()
