"""What a run says as text: the progress and summary lines (the CLI prints them) and the run's text log.

``text_log(out, args)`` writes ``out/training_YYYYMMDD_HHMMSS.log`` (local time; a resumed run starts a new
file): the command, the arguments, one line per step (the validation metrics at evaluations), the test
metrics and the final result, plus the warnings the ``training`` package logs meanwhile (e.g. cropped
records). Lines go to a private logger, so the console shows only what it showed before, whatever the
logging configuration; the file handler is removed when the run ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .trainer import StepRecord

LOG_GLOB = "training_*.log"
_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_REASONS = {"done": "finished", "time": "stopped at the time budget", "stopped": "stopped on request",
            "nan": "stopped: loss is not finite"}


def format_time(seconds: float) -> str:
    """``"m:ss"``, or ``"h:mm:ss"`` from an hour on."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def eval_line(rec: StepRecord) -> str:
    """An evaluation step: ``"step 100: train 3.1234  val 3.2000  acc 41.20%  ppl 24.53  (best so far)"``."""
    text = f"step {rec.step}: train {rec.train_loss:.4f}  val {rec.val_loss:.4f}"
    if rec.val_accuracy is not None:
        text += f"  acc {rec.val_accuracy:.2%}  ppl {rec.val_perplexity:.2f}"
    return text + ("  (best so far)" if rec.best else "")


def step_line(rec: StepRecord) -> str:
    """One step for the text log; evaluation steps end with their ``eval_line``."""
    text = (f"step {rec.step}/{rec.steps} | loss {rec.train_loss:.4f} | lr {rec.lr:.2e} | grad norm "
            f"{rec.grad_norm:.3f} | {rec.tokens_per_s:,.0f} tok/s | elapsed {format_time(rec.elapsed_s)} | "
            f"eta {format_time(rec.eta_s)}")
    return text + (f" | {eval_line(rec)}" if rec.val_loss is not None else "")


def on_test_line(rec: StepRecord) -> str | None:
    """The test split's metrics of the saved best model, if this record has them."""
    if rec.test_loss is None:
        return None
    return (f"test (best model): loss {rec.test_loss:.4f}  acc {rec.test_accuracy:.2%}  "
            f"ppl {rec.test_perplexity:.2f}")


def summary(last: StepRecord) -> list[str]:
    """How the run ended: the reason, the step, the time, the final validation loss, the test metrics."""
    why = _REASONS.get(last.stop_reason or "", "ended")
    lines = [f"{why} at step {last.step}/{last.steps} after {format_time(last.elapsed_s)}"
             + (f"; final val loss {last.val_loss:.4f}" if last.val_loss is not None else "")]
    if last.val_accuracy is not None:
        lines[0] += f" (acc {last.val_accuracy:.2%}, ppl {last.val_perplexity:.2f})"
    lines += [line for line in (on_test_line(last), last.message) if line]
    return lines


def log_name() -> str:
    """This moment's file name (local time)."""
    return time.strftime("training_%Y%m%d_%H%M%S.log")


@contextlib.contextmanager
def text_log(out: Path, args: dict[str, Any], enabled: bool = True) -> Iterator[logging.Logger]:
    """The run's text log in ``out`` for the duration of the block; yields the logger to write lines to
    (one that writes nowhere when not ``enabled``, e.g. on ranks other than 0). The logger is private to
    the run, so two runs in one process never write into each other's lines; the ``training`` package's
    warnings go to every open run's file."""
    run_log = logging.Logger("training.run.text", logging.INFO)  # not registered: dropped with the run
    if not enabled:
        run_log.disabled = True
        yield run_log
        return
    handler = logging.FileHandler(out / log_name(), encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(lambda r: r.name == run_log.name or r.levelno >= logging.WARNING)  # the package: warnings
    package = logging.getLogger("training")
    run_log.addHandler(handler)
    package.addHandler(handler)
    try:
        run_log.info("command: %s", args.get("command") or "(Python API)")
        run_log.info("args: %s", json.dumps(args))
        yield run_log
    except BaseException as e:  # a failed run says why in its log too (GeneratorExit: the reader stopped)
        if not isinstance(e, GeneratorExit):
            run_log.error("failed: %s: %s", type(e).__name__, e)
        raise
    finally:
        package.removeHandler(handler)
        handler.close()
