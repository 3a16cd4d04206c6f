"""training metrics: validation accuracy and perplexity (known cases, a direct computation, the compact
vocabulary), the held-out test split, the step records and log, the run's text log, the loss plot."""

import json
import logging
import math
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import words

from gpt2 import GPT2, GPTConfig
from training import TrainConfig, Trainer, prepare_data, pretrain, resume, runlog
from training.data import IGNORE_INDEX, DataError, PreparedData, Tokens, collate
from training.metrics import Metrics, evaluate, perplexity
from training.plot import loss_figure
from training.vocab import CompactVocabModel, VocabSubset

pytestmark = pytest.mark.usefixtures("one_thread")
V = 10  # the constructed models' vocabulary
TINY = GPTConfig.preset("tiny", block_size=32)


class Lookup(nn.Module):
    """Knows the data's rule (next token = token + 1 mod V) and predicts it with logit ``margin`` over
    the others: on every position, or (``half``) only after an even token, else token + 2."""

    def __init__(self, half: bool = False, margin: float = 3.0) -> None:
        super().__init__()
        self.half, self.margin = half, margin
        self.w = nn.Parameter(torch.zeros(()))  # the trainer needs something to train

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        guess = (idx + 1) % V if not self.half else torch.where(idx % 2 == 0, (idx + 1) % V, (idx + 2) % V)
        return F.one_hot(guess, V).float() * self.margin + 0 * self.w


def counting(n: int = 400) -> PreparedData:
    """0, 1, ..., 9, 0, 1, ...: every next token is the previous plus one, mod V."""
    return PreparedData.from_tokens(Tokens("stream", (np.arange(n) % V).astype(np.uint16)), 8, 0.25)


def expected(batches, half: bool, margin: float = 3.0) -> tuple[float, float]:
    """Loss and accuracy of ``Lookup`` worked out by hand over ``batches``: a right guess costs
    ``lse - margin``, a wrong one ``lse`` (the target's logit is 0), with ``lse = log(e^margin + V - 1)``."""
    lse = math.log(math.exp(margin) + V - 1)
    right = wrong = 0
    for x, y in batches:
        labelled = y != IGNORE_INDEX
        hit = labelled if not half else labelled & (x % 2 == 0)
        right += int(hit.sum())
        wrong += int(labelled.sum()) - int(hit.sum())
    return (right * (lse - margin) + wrong * lse) / (right + wrong), right / (right + wrong)


@pytest.mark.parametrize("half", [False, True])
def test_known_accuracy_and_perplexity_on_every_step_record(half):
    data = counting()
    cfg = TrainConfig(steps=2, batch_size=4, eval_interval=2, eval_batches=0, lr=1e-3)
    records = list(Trainer(Lookup(half), data, cfg).run())
    assert [r.val_accuracy is not None for r in records] == [False, True]  # only where it evaluated
    assert records[0].val_perplexity is None and records[0].val_loss is None
    loss, accuracy = expected(data.val.eval_batches(4), half)
    assert accuracy == (1.0 if not half else 0.5)  # the data alternates even and odd tokens
    rec = records[-1]
    assert rec.val_loss == pytest.approx(loss, rel=1e-5) and rec.val_accuracy == accuracy
    assert rec.val_perplexity == pytest.approx(math.exp(rec.val_loss), rel=1e-12)
    assert rec.to_dict()["val_accuracy"] == accuracy and rec.test_loss is None


def test_only_supervised_positions_count():
    # Prompts (label -100) and padding are predicted wrong or right at random: they must not count.
    rng = np.random.default_rng(0)
    recs = [((np.arange(n) + s) % V, p) for n, p, s in ((6, 3, 0), (9, 5, 1), (4, 1, 3))]
    batch = collate([(r.astype(np.uint16), p) for r, p in recs], 16)
    x = batch[0].clone()
    x[batch[1] == IGNORE_INDEX] = torch.from_numpy(rng.integers(0, V, int((batch[1] == IGNORE_INDEX).sum())))
    got = evaluate(Lookup(half=True), [(x, batch[1])], torch.device("cpu"))
    loss, accuracy = expected([(x, batch[1])], half=True)
    assert got.labels == int((batch[1] != IGNORE_INDEX).sum()) == 3 + 4 + 3
    assert got.accuracy == pytest.approx(accuracy) and got.loss == pytest.approx(loss)
    assert 0 < got.accuracy < 1


def test_metrics_equal_a_direct_computation_with_the_model(tmp_path):
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text("\n".join(json.dumps({"instruction": f"Name the number {i}", "output": f"It is {i}."})
                               for i in range(40)))
    torch.manual_seed(0)
    model = GPT2(TINY).eval()
    for data in (prepare_data(jsonl, 32, cache_dir=tmp_path / "c"), counting(600)):
        got = Trainer(model, data, TrainConfig(batch_size=3, eval_batches=0)).evaluate()
        xs, ys = [], []
        for x, y in data.val.eval_batches(3):  # record batches are padded to their longest: pad all to 32
            xs.append(F.pad(x, (0, 32 - x.shape[1])))
            ys.append(F.pad(y, (0, 32 - y.shape[1]), value=IGNORE_INDEX))
        x, y = torch.cat(xs), torch.cat(ys)
        with torch.no_grad():
            logits = model(x)
        keep = y != IGNORE_INDEX
        loss = F.cross_entropy(logits[keep], y[keep]).item()
        assert got.loss == pytest.approx(loss, rel=1e-5)
        assert got.accuracy == pytest.approx((logits.argmax(-1)[keep] == y[keep]).float().mean().item())
        assert got.perplexity == pytest.approx(math.exp(loss), rel=1e-5) and got.labels == int(keep.sum())


def test_compact_vocabulary_accuracy_is_the_expanded_models(tmp_path):
    text = tmp_path / "plays.txt"
    text.write_text(words())
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    subset = VocabSubset.from_ids(data.token_ids())
    torch.manual_seed(1)
    small = GPT2(GPTConfig.preset("tiny", block_size=32, vocab_size=subset.size)).eval()
    cfg = TrainConfig(batch_size=4, eval_batches=0)
    compact = Trainer(CompactVocabModel(small, subset), data.map_tokens(subset.table), cfg).evaluate()
    full = Trainer(subset.expand(small), data, cfg).evaluate()
    assert compact.loss == pytest.approx(full.loss, rel=1e-5)
    assert compact.accuracy == pytest.approx(full.accuracy, abs=1e-9) and full.accuracy > 0
    # The shared row as the argmax, on a target among the unused tokens: one of many tied tokens, not a hit.
    logits = torch.zeros(1, 2, subset.size)
    logits[0, :, subset.other] = 5.0
    targets = torch.tensor([[subset.other, IGNORE_INDEX]])
    assert int(CompactVocabModel(small, subset).correct_sum(logits, targets)) == 0
    logits[0, :, 3] = 9.0  # a used token wins: a hit wherever it is the target
    assert int(CompactVocabModel(small, subset).correct_sum(logits, torch.tensor([[3, 3]]))) == 2


def test_perplexity_of_extreme_losses():
    assert perplexity(0.0) == 1.0 and perplexity(1e4) == math.inf and math.isnan(perplexity(math.nan))
    assert Metrics(loss=math.log(7.0), accuracy=0.5, labels=2).perplexity == pytest.approx(7.0)


# ---------------------------------------------------------------- the test split


def test_stream_splits_train_validation_test_by_position():
    ids = np.arange(1000, dtype=np.uint16)
    data = PreparedData.from_tokens(Tokens("stream", ids), 16, val_fraction=0.1, test_fraction=0.2)
    assert [len(s.ids) for s in (data.train, data.val, data.test)] == [700, 100, 200]
    assert np.array_equal(np.concatenate([data.train.ids, data.val.ids, data.test.ids]), ids)  # in this order
    assert PreparedData.from_tokens(Tokens("stream", ids), 16, 0.1).test is None  # off by default
    assert "12 test windows" in data.describe()
    with pytest.raises(DataError, match="val_fraction \\+ test_fraction must be below 1"):
        PreparedData.from_tokens(Tokens("stream", ids), 16, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="test_fraction must be in"):
        PreparedData.from_tokens(Tokens("stream", ids), 16, test_fraction=-0.1)
    with pytest.raises(DataError, match=r"too small: 1,000 tokens \(890 training and 100 validation and 10 test\)"):
        PreparedData.from_tokens(Tokens("stream", ids), 16, val_fraction=0.1, test_fraction=0.01)


def test_record_test_split_is_random_fixed_and_leaves_validation_alone():
    n = 50
    ids = np.arange(2 * n, dtype=np.uint16)
    tokens = Tokens("records", ids, np.arange(0, 2 * n + 1, 2), np.ones(n, dtype=np.int64))
    plain = PreparedData.from_tokens(tokens, 8, val_fraction=0.2)
    data = PreparedData.from_tokens(tokens, 8, val_fraction=0.2, test_fraction=0.1)
    again = PreparedData.from_tokens(tokens, 8, val_fraction=0.2, test_fraction=0.1)
    train, val, test = (set(s.indices.tolist()) for s in (data.train, data.val, data.test))
    assert (len(train), len(val), len(test)) == (35, 10, 5) and train | val | test == set(range(n))
    assert val == set(plain.val.indices.tolist())  # the validation split does not move
    assert np.array_equal(again.test.indices, data.test.indices)  # fixed seed
    assert sorted(test) != list(range(min(test), min(test) + 5))  # at random, not a block
    with pytest.raises(DataError, match="too few to hold out 60% for validation and 40% for test"):
        PreparedData.from_tokens(tokens, 8, val_fraction=0.6, test_fraction=0.4 - 1e-9)


def direct(model: GPT2, split, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over a stream split's evaluation windows, by hand."""
    x, y = (torch.cat(t) for t in zip(*split.eval_batches(batch_size), strict=True))
    with torch.no_grad():
        logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten()).item(), (logits.argmax(-1) == y).float().mean().item()


@pytest.fixture(scope="module")
def test_run(tmp_path_factory):
    """A compact-vocabulary run with a test split, stopped and resumed, each session with its text log."""
    tmp = tmp_path_factory.mktemp("run")
    text = tmp / "plays.txt"
    text.write_text(words(300))
    out, cache = tmp / "run", str(tmp / "c")
    # a learning rate that overshoots: the best model (step 2) is not the last one
    cfg = TrainConfig(steps=4, batch_size=4, lr=0.1, min_lr=0.1, eval_interval=1, eval_batches=0)
    torch.manual_seed(0)
    first = list(pretrain(text, out, model_config=TINY, train=cfg, cache_dir=cache, plot="cdn", compact_vocab=True,
                          test_fraction=0.2, command="python -m training pretrain (test)"))
    first_log = sorted(out.glob("training_*.log"))
    return dict(text=text, out=out, cache=cache, first=first, first_log=first_log)


def test_the_best_model_is_tested_once_at_the_end(test_run):
    out, first = test_run["out"], test_run["first"]
    assert [r.test_loss is not None for r in first] == [False, False, False, True]
    data = prepare_data(test_run["text"], 32, cache_dir=test_run["cache"], test_fraction=0.2)
    best = GPT2.from_pretrained(out, device="cpu", dtype=torch.float32)  # the saved one: the lowest val loss
    loss, accuracy = direct(best, data.test, 4)
    last = first[-1]
    assert last.test_loss == pytest.approx(loss, rel=1e-5) and last.test_accuracy == pytest.approx(accuracy)
    assert last.test_perplexity == pytest.approx(math.exp(loss), rel=1e-5)
    best_step = min(first, key=lambda r: r.val_loss).step
    assert best_step < 4 and [r.best for r in first][best_step - 1]  # so the last model would score otherwise
    assert last.val_loss != pytest.approx(loss)  # another split than validation
    log = json.loads((out / "training_log.json").read_text())
    assert log[-1]["test_loss"] == last.test_loss and log[0]["test_loss"] is None
    assert all(r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"])) for r in log)
    assert all(0 <= r["val_accuracy"] <= 1 for r in log)
    assert json.loads((out / "training_args.json").read_text())["test_fraction"] == 0.2


def test_the_text_log_has_the_command_args_every_step_and_the_result(test_run):
    (path,) = test_run["first_log"]
    assert re.fullmatch(r"training_\d{8}_\d{6}\.log", path.name)
    text = path.read_text()
    assert "command: python -m training pretrain (test)" in text and '"test_fraction": 0.2' in text
    assert "data: " in text and "test windows" in text
    for step in range(1, 5):
        assert re.search(rf"step {step}/4 \| loss \d+\.\d+ .*\| step {step}: train .* acc \d+\.\d+%  ppl ", text)
    assert "finished at step 4/4" in text and "test (best model): loss " in text
    assert not [h for h in logging.getLogger("training").handlers if isinstance(h, logging.FileHandler)]


def test_resume_keeps_the_test_split_and_starts_a_new_text_log(test_run, monkeypatch):
    out = test_run["out"]
    monkeypatch.setattr(runlog, "log_name", lambda: "training_20990101_000000.log")
    rest = list(resume(out, steps=6))
    assert [r.step for r in rest] == [5, 6] and rest[-1].test_loss is not None
    logs = sorted(p.name for p in out.glob("training_*.log"))
    assert len(logs) == 2 and logs[-1] == "training_20990101_000000.log"
    text = (out / logs[-1]).read_text()
    assert "resumed at step 4" in text and "step 6/6 |" in text and "step 1/4 |" not in text
    fig = loss_figure(json.loads((out / "training_log.json").read_text()))
    names = [t.name for t in fig.data]
    assert names == ["train", "validation", "validation accuracy", "test (best model)", "test accuracy"]
    assert list(fig.data[3].x) == [4, 6] and fig.data[2].yaxis == "y2" and fig.layout.yaxis2.range == (0, 1)
    assert "perplexity" in fig.data[1].hovertemplate and len(fig.data[1].customdata) == 6


def test_a_failed_run_says_why_in_its_text_log_and_overwrite_removes_old_logs(tmp_path, caplog, monkeypatch):
    small, run = tmp_path / "small.txt", tmp_path / "run"
    small.write_text("Too short.")
    monkeypatch.setattr(runlog, "log_name", lambda: "training_20000101_000000.log")
    with pytest.raises(DataError), caplog.at_level(logging.INFO):
        next(pretrain(small, run, model_config=TINY, cache_dir=str(tmp_path / "c")))
    text = (run / "training_20000101_000000.log").read_text()
    assert "failed: DataError: " in text and "too small" in text and "command: (Python API)" in text
    assert "args: " not in caplog.text  # the run's own lines stay out of the console
    (run / "training_args.json").write_text("{}")  # as if that run had started
    monkeypatch.setattr(runlog, "log_name", lambda: "training_20000101_000001.log")
    with pytest.raises(DataError):
        next(pretrain(small, run, model_config=TINY, cache_dir=str(tmp_path / "c"), overwrite=True))
    assert [p.name for p in run.glob("training_*.log")] == ["training_20000101_000001.log"]  # the old one went
