"""``python -m training``'s metrics: validation accuracy and perplexity in the progress lines, ``--test-split``
and the final test line, the text log with the command (run in-process on a tiny model)."""

import json
import re
import signal

import pytest
from conftest import words

from training import cli, runlog
from training.trainer import StepRecord

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
        "--plot", "none", "--quiet"]


@pytest.fixture
def main():
    """``cli.main`` with the process's SIGINT handler put back afterwards (main installs its own)."""
    handler = signal.getsignal(signal.SIGINT)
    yield cli.main
    signal.signal(signal.SIGINT, handler)


def test_progress_lines_show_accuracy_perplexity_and_the_test(tmp_path, main, capsys):
    text, out = tmp_path / "plays.txt", tmp_path / "run"
    text.write_text(words(150))
    args = ["pretrain", "--data", str(text), "--out", str(out), "--steps", "4", "--eval-interval", "2",
            "--test-split", "0.2", "--cache-dir", str(tmp_path / "c"), *TINY]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    evals = re.findall(r"step (\d): train \d+\.\d{4}  val \d+\.\d{4}  acc \d+\.\d\d%  ppl \d+\.\d\d", stdout)
    assert evals == ["2", "4"]
    assert re.search(r"finished at step 4/4 after \d+:\d\d; final val loss \d+\.\d{4} \(acc \d+\.\d\d%, ppl ", stdout)
    assert re.search(r"test \(best model\): loss \d+\.\d{4}  acc \d+\.\d\d%  ppl \d+\.\d\d", stdout)
    assert json.loads((out / "training_args.json").read_text())["test_fraction"] == 0.2
    (log,) = out.glob("training_*.log")
    logged = log.read_text()
    assert "command: python -m training pretrain --data" in logged and "--test-split 0.2" in logged
    assert "test (best model): loss" in logged and "finished at step 4/4" in logged


def test_test_split_too_large_is_refused(tmp_path, main, capsys):
    text = tmp_path / "plays.txt"
    text.write_text(words(50))
    args = ["pretrain", "--data", str(text), "--out", str(tmp_path / "run"), "--steps", "1", "--test-split", "0.95",
            "--cache-dir", str(tmp_path / "c"), *TINY]
    assert main(args) == 2
    assert "error: val_fraction + test_fraction must be below 1" in capsys.readouterr().err


def test_eval_line_without_accuracy():
    rec = StepRecord(step=3, steps=9, train_loss=2.5, lr=1e-3, grad_norm=1.0, tokens=9, tokens_per_s=1.0,
                     elapsed_s=1.0, eta_s=2.0, val_loss=2.25, best=True)  # e.g. a record from an older log
    assert runlog.eval_line(rec) == "step 3: train 2.5000  val 2.2500  (best so far)"


@pytest.mark.parametrize("fraction", ["1", "-0.5"])
def test_a_repeat_fraction_outside_0_1_is_refused(tmp_path, main, capsys, fraction):
    text = tmp_path / "plays.txt"
    text.write_text(words(50))
    args = ["pretrain", "--data", str(text), "--out", str(tmp_path / "run"), "--steps", "1", "--repeat-fraction",
            fraction, "--cache-dir", str(tmp_path / "c"), *TINY]
    assert main(args) == 2
    assert f"error: repeat_fraction must be in [0, 1), got {float(fraction)}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("flags, message", [
    (["--compact-min-count", "3"], "compact_min_count is for a compact vocabulary (--compact-vocab)"),
    (["--compact-vocab", "--compact-min-count", "0"], "compact_min_count must be >= 1, got 0"),
    (["--repeat-fraction", "0.5", "--repeat-periods", "9", "3"], "repeat periods must be 1 <= shortest <= longest"),
])
def test_bad_vocabulary_and_repeat_flags_are_refused(tmp_path, main, capsys, flags, message):
    text = tmp_path / "plays.txt"
    text.write_text(words(50))
    args = ["pretrain", "--data", str(text), "--out", str(tmp_path / "run"), "--steps", "1", *flags,
            "--cache-dir", str(tmp_path / "c"), *TINY]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_compact_min_count_and_repeat_periods_reach_the_run(tmp_path, main):
    text, out = tmp_path / "plays.txt", tmp_path / "run"
    text.write_text(words(150))
    args = ["pretrain", "--data", str(text), "--out", str(out), "--steps", "1", "--compact-vocab",
            "--compact-min-count", "4", "--repeat-fraction", "0.5", "--repeat-periods", "2", "4",
            "--cache-dir", str(tmp_path / "c"), *TINY]
    assert main(args) == 0
    saved = json.loads((out / "training_args.json").read_text())
    assert saved["compact_min_count"] == 4 and saved["repeat_periods"] == [2, 4]
