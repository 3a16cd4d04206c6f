"""``python -m training {pretrain,finetune,resume}``: the run API with a tqdm progress bar.

Under ``torchrun --nproc_per_node N -m training ...`` the same commands train data-parallel; only
rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from gpt2 import GPTConfig
from gpt2.weights import CheckpointError

from . import distributed as dist
from .data import DataError
from .lora import TARGETS, LoRAConfig
from .repeats import PERIODS
from .run import RunArgs, run
from .run import resume as resume_run
from .runlog import eval_line, format_time, summary
from .trainer import StepRecord, TrainConfig


def parse_duration(text: str) -> float:
    """``"90"``/``"90s"``, ``"30m"``, ``"1.5h"`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90, 90s, 30m or 1.5h)")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]


def _add_common(p: argparse.ArgumentParser, steps: int, batch: int, lr: float | None, block: str) -> None:
    p.add_argument("--data", required=True, help="training text: .txt, .csv/.tsv (see --column) or .jsonl")
    p.add_argument("--out", required=True, help="run directory (the best model, last/ state, log, plot)")
    p.add_argument("--block-size", type=int, default=None, help=f"tokens per training window (default {block})")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    g.add_argument("--batch-size", type=int, default=batch, help=f"sequences per micro-batch (default {batch})")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (default 1)")
    g.add_argument("--lr", type=float, default=lr,
                   help=f"peak learning rate (default {lr or '1e-4; 1e-3 with --lora-rank'})")
    g.add_argument("--min-lr", type=float, default=None, help="end of the cosine (default lr/10)")
    g.add_argument("--warmup", type=int, default=None, help="warmup steps (default min(100, steps/10))")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0 = off")
    g.add_argument("--seed", type=int, default=1337)
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--max-time", type=parse_duration, default=None,
                   help="wall-clock budget, e.g. 600, 30m, 1.5h: stop in time, keep the best")
    g.add_argument("--time-schedule", action="store_true",
                   help="decay the learning rate over --max-time (or --steps, whichever ends first)")
    e = p.add_argument_group("evaluation and data")
    e.add_argument("--eval-interval", type=int, default=None, help="evaluate every N steps (default steps/10)")
    e.add_argument("--eval-batches", type=int, default=20, help="batches per evaluation; 0 = all (default 20)")
    e.add_argument("--val-fraction", type=float, default=0.1, help="held-out share (default 0.1: the last 10%%)")
    e.add_argument("--test-split", type=float, default=0.0, metavar="FRACTION",
                   help="share held out for one test of the best model at the end, never trained or validated on "
                        "(default 0: none); of a text, its very end, with the validation share just before it")
    e.add_argument("--column", default=None, help="CSV column holding the text (default: 'text')")
    e.add_argument("--cache-dir", default=None, help="token cache (default ~/.cache/gpt2-playground/data)")
    o = p.add_argument_group("output")
    o.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    o.add_argument("--save-dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="best model's dtype")
    o.add_argument("--plot", choices=("inline", "cdn", "none"), default="inline",
                   help="loss.html with plotly.js inline (offline, ~4.7 MB), from a CDN (small), or none")
    o.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    o.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="train a new model from scratch")
    _add_common(pre, steps=1000, batch=16, lr=1e-3, block="256")
    m = pre.add_argument_group("model shape (GPT-2 tokenizer and vocabulary)")
    m.add_argument("--n-layer", type=int, default=4)
    m.add_argument("--n-head", type=int, default=4)
    m.add_argument("--n-embd", type=int, default=128)
    m.add_argument("--dropout", type=float, default=0.0)
    m.add_argument("--compact-vocab", action="store_true",
                   help="train only the tokens the training split uses (the rest share one row); exact for the "
                        "saved full-vocabulary model and several times cheaper on small corpora")
    m.add_argument("--compact-min-count", type=int, default=1, metavar="N",
                   help="with --compact-vocab: tokens seen fewer than N times in the training split share the "
                        "unused tokens' row too (default 1: every token seen keeps its own)")
    m.add_argument("--repeat-fraction", type=float, default=0.0, metavar="FRACTION",
                   help="share of each training batch made of random tokens repeating with a random period "
                        "(--repeat-periods, at most a quarter of the block): the copying signal induction heads "
                        "learn from; validation stays the text (default 0)")
    m.add_argument("--repeat-periods", type=int, nargs=2, default=list(PERIODS), metavar=("SHORTEST", "LONGEST"),
                   help=f"the repeated windows' period range (default {PERIODS[0]} {PERIODS[1]}); short periods "
                        "can be copied by position alone, long ones only by content (induction)")
    fin = sub.add_parser("finetune", help="fine-tune a pretrained model (fully, or LoRA with --lora-rank)")
    fin.add_argument("--model", default="gpt2", help="hub name (gpt2, distilgpt2 ...) or checkpoint directory")
    _add_common(fin, steps=300, batch=4, lr=None, block="the model's context, at most 256")
    lo = fin.add_argument_group("LoRA (only the adapters train; the model stays frozen)")
    lo.add_argument("--lora-rank", type=int, default=0, help="adapter rank; 0 = full fine-tuning (default)")
    lo.add_argument("--lora-alpha", type=float, default=None, help="scale numerator (default 2 * rank)")
    lo.add_argument("--lora-dropout", type=float, default=0.0)
    lo.add_argument("--lora-targets", default=",".join(TARGETS), help="comma-separated projections")
    res = sub.add_parser("resume", help="continue a run directory from its last/ state")
    res.add_argument("out", help="the run directory")
    res.add_argument("--steps", type=int, default=None, help="new total steps (default: as before)")
    res.add_argument("--max-time", type=parse_duration, default=None, help="budget for this session")
    res.add_argument("--quiet", action="store_true")
    return parser


def run_args(a: argparse.Namespace, argv: list[str]) -> RunArgs:
    """The parsed command line as ``RunArgs``."""
    lora = None
    if a.command == "finetune" and a.lora_rank:
        lora = LoRAConfig(rank=a.lora_rank, alpha=a.lora_alpha or 2.0 * a.lora_rank, dropout=a.lora_dropout,
                          targets=tuple(t.strip() for t in a.lora_targets.split(",") if t.strip()))
    lr = a.lr or (1e-3 if lora else 1e-4)
    train = TrainConfig(
        steps=a.steps, batch_size=a.batch_size, grad_accum=a.grad_accum, lr=lr, min_lr=a.min_lr,
        warmup_steps=min(100, a.steps // 10) if a.warmup is None else a.warmup, weight_decay=a.weight_decay,
        grad_clip=a.grad_clip, eval_interval=max(1, a.steps // 10) if a.eval_interval is None else a.eval_interval,
        eval_batches=a.eval_batches, max_time=a.max_time, time_schedule=a.time_schedule, precision=a.precision,
        compile=a.compile, seed=a.seed,
    )
    a.data = str(Path(a.data).expanduser().resolve())  # training_args.json must work from any directory
    if a.command == "finetune" and Path(a.model).expanduser().is_dir():
        a.model = str(Path(a.model).expanduser().resolve())
    common = dict(column=a.column, val_fraction=a.val_fraction, test_fraction=a.test_split, cache_dir=a.cache_dir,
                  device=a.device, save_dtype=a.save_dtype, plot=a.plot,
                  command=shlex.join(["python", "-m", "training", *argv]))
    if a.command == "pretrain":
        a.block_size = a.block_size or 256
        shape = GPTConfig(block_size=a.block_size, n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd,
                          dropout=a.dropout)
        return RunArgs("pretrain", a.data, train, block_size=a.block_size, model_config=asdict(shape),
                       compact_vocab=a.compact_vocab,
                       compact_min_count=a.compact_min_count, repeat_fraction=a.repeat_fraction,
                       repeat_periods=tuple(a.repeat_periods), **common)
    return RunArgs("finetune", a.data, train, block_size=a.block_size, model=a.model, lora=lora, **common)


def _progress(records: Iterator[StepRecord], quiet: bool) -> StepRecord | None:
    """Drive the run, showing a tqdm bar; returns the last record."""
    from tqdm import tqdm

    bar, last = None, None
    for rec in records:
        if bar is None:
            bar = tqdm(total=rec.steps, initial=rec.step - 1, unit="step", disable=quiet, dynamic_ncols=True)
        bar.set_postfix_str(f"loss {rec.train_loss:.3f} | lr {rec.lr:.1e} | {rec.tokens_per_s:,.0f} tok/s | "
                            f"eta {format_time(rec.eta_s)}", refresh=False)
        bar.update(rec.step - bar.n)
        if rec.val_loss is not None:
            bar.write(eval_line(rec))
        last = rec
    if bar is not None:
        bar.close()
    return last


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = build_parser().parse_args(argv)
    info = dist.init_distributed(getattr(a, "device", None))
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING, format="%(message)s")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 for whatever runs outside autocast
    stop = threading.Event()

    def on_sigint(signum, frame):  # first Ctrl-C: finish the step, save, stop; second: abort
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if info.is_main:
            print("\nstopping after this step (Ctrl-C again to abort)", file=sys.stderr)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        if a.command == "resume":
            out = a.out
            records = resume_run(out, steps=a.steps, max_time=a.max_time, stop_event=stop)
        else:
            out = a.out
            torch.manual_seed(a.seed + info.rank)  # dropout; the data order has its own per-step seed
            records = run(run_args(a, argv), out, stop_event=stop, overwrite=a.overwrite)
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            last = _progress(records, quiet=a.quiet or not info.is_main)
    except (DataError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.cleanup()
    if info.is_main and last is not None:
        _summary(last, out)
    return 1 if last is not None and last.stop_reason == "nan" else 0


def _summary(last: StepRecord, out: str) -> None:
    for line in summary(last):
        print(line)
    print(f"model, logs and plot in {out}")
