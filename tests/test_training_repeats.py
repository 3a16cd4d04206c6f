"""training.repeats: repeated random tokens mixed into pretraining batches (what they are, where they go)."""

import json
import threading

import numpy as np
import pytest
import torch
from conftest import words

from gpt2 import GPTConfig
from training import TrainConfig, prepare_data, pretrain, resume
from training.repeats import RepeatSplit, periods
from training.run import RunArgs

TINY = GPTConfig.preset("tiny", block_size=32)


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "plays.txt"
    path.write_text(words())
    return path


def _period(row: torch.Tensor) -> int:
    """The smallest p with row[t] == row[t - p] everywhere."""
    return next(p for p in range(1, len(row)) if torch.equal(row[p:], row[:-p]))


def test_a_batch_is_text_windows_then_windows_that_repeat(text, tmp_path):
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    vocab = np.unique(data.token_ids()).astype(np.int64)
    split = RepeatSplit(data.train, vocab, 0.25, 32)
    x, y = split.sample(8, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (8, 32)
    plain_x, plain_y = data.train.sample(6, torch.Generator().manual_seed(3))
    assert torch.equal(x[:6], plain_x) and torch.equal(y[:6], plain_y)  # the text first, drawn as before
    lo, hi = split.periods
    for row_x, row_y in zip(x[6:], y[6:], strict=True):
        window = torch.cat([row_x, row_y[-1:]])
        assert torch.equal(window[1:-1], row_y[:-1])  # y is x shifted by one
        assert lo <= _period(window) <= hi
        assert np.isin(window.numpy(), vocab).all()
    assert not torch.equal(x[6], x[7])  # each window has its own tokens


def test_periods_fit_the_window():
    assert periods(256) == (4, 64) and periods(1024) == (4, 64)
    assert periods(32) == (4, 8)  # at least three repeats in every window
    assert periods(8) == (2, 2)


def test_the_period_range_is_chosen(text, tmp_path):
    """Long periods only (``--repeat-periods 16 64``): copying by position alone no longer pays."""
    data = prepare_data(text, 256, cache_dir=tmp_path / "c")
    split = RepeatSplit(data.train, np.arange(50), 0.5, 256, (16, 64))
    assert split.periods == (16, 64) and periods(32, (16, 64)) == (8, 8)
    x, y = split.repeats(16, torch.Generator().manual_seed(0))
    found = [_period(torch.cat([row_x, row_y[-1:]])) for row_x, row_y in zip(x, y, strict=True)]
    assert all(16 <= p <= 64 for p in found) and len(set(found)) > 4


@pytest.mark.parametrize("bad", [(0, 4), (8, 4)])
def test_a_bad_period_range_is_refused(bad):
    with pytest.raises(ValueError, match="repeat periods must be 1 <= shortest <= longest"):
        RunArgs("pretrain", "x.txt", repeat_fraction=0.5, repeat_periods=bad)


def test_evaluation_sees_only_the_text(text, tmp_path):
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    split = RepeatSplit(data.train, np.arange(10), 0.5, 32)
    mixed = [x for x, _ in split.eval_batches(4, 2)]
    plain = [x for x, _ in data.train.eval_batches(4, 2)]
    assert len(mixed) == len(plain) and all(torch.equal(a, b) for a, b in zip(mixed, plain, strict=True))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ValueError, match="repeat_fraction must be in"):
        RunArgs("pretrain", "x.txt", repeat_fraction=fraction)
    with pytest.raises(ValueError, match="fraction must be in"):
        RepeatSplit(None, np.arange(3), fraction, 32)


def test_only_pretraining_mixes_in_repeats():
    with pytest.raises(ValueError, match="for pretraining only"):
        RunArgs("finetune", "x.txt", model="gpt2", repeat_fraction=0.2)


def test_instruction_records_are_refused(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"say {i}", "output": f"{i}"}) for i in range(20)))
    cfg = TrainConfig(steps=1, batch_size=2)
    with pytest.raises(ValueError, match="not instruction records"):
        list(pretrain(data, tmp_path / "run", model_config=TINY, train=cfg, cache_dir=str(tmp_path / "c"),
                      plot="none", repeat_fraction=0.5))


@pytest.mark.parametrize("compact", [False, True])
def test_a_run_trains_on_the_mix_and_resumes_with_it(text, tmp_path, compact):
    """The fraction is saved with the run; the repeats use the model's own ids (compact ones when compact)."""
    cfg = TrainConfig(steps=4, batch_size=4, eval_interval=2, eval_batches=1)
    out = tmp_path / "run"
    kw = dict(model_config=TINY, cache_dir=str(tmp_path / "c"), plot="none", compact_vocab=compact)
    stop = threading.Event()
    for _ in pretrain(text, out, train=cfg, repeat_fraction=0.5, repeat_periods=(2, 6), stop_event=stop, **kw):
        stop.set()  # seen after the next step: the run stops at step 2
    saved = json.loads((out / "training_args.json").read_text())
    assert saved["repeat_fraction"] == 0.5 and saved["repeat_periods"] == [2, 6]
    rest = list(resume(out))
    assert [r.step for r in rest] == [3, 4] and all(np.isfinite(r.train_loss) for r in rest)
    plain = list(pretrain(text, tmp_path / "plain", train=cfg, **kw))
    assert plain[-1].val_loss != rest[-1].val_loss  # the mix changed what was learned


@pytest.mark.slow
def test_a_compact_run_with_repeats_learns_to_copy(tmp_path):
    """What the mix is for: on a text of 64 words in random order (nothing to learn but their frequencies), a
    small model trained with repeats predicts the second copy of a repeated random phrase far better than its
    first; the same run without them does not."""
    from gpt2 import GPT2, encode, get_tokenizer

    tok = get_tokenizer()
    words64 = [w for w in (tok.decode([i]) for i in range(1000, 1400)) if w[1:].isalpha() and w[1:].islower()
               and w.startswith(" ")][:64]
    ids = [encode(w)[0] for w in words64]
    path = tmp_path / "words.txt"
    path.write_text("".join(np.random.default_rng(0).choice(words64, size=6000)))
    shape = GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=64)
    cfg = TrainConfig(steps=600, batch_size=32, lr=1e-3, min_lr=1e-3, warmup_steps=20, weight_decay=0.0,
                      grad_clip=0.0, eval_interval=600, eval_batches=1)
    phrase = torch.from_numpy(np.random.default_rng(1).choice(ids, size=(16, 8)))
    probe = torch.cat([phrase] * 4, 1)  # (16, 32): 8 random words, four times
    gaps = {}
    for fraction in (0.75, 0.0):
        out = tmp_path / f"run{fraction}"
        list(pretrain(path, out, model_config=shape, train=cfg, cache_dir=str(tmp_path / "c"), plot="none",
                      compact_vocab=True, repeat_fraction=fraction))
        with torch.no_grad():
            logp = GPT2.from_pretrained(out)(probe).log_softmax(-1)
        loss = -logp[:, :-1].gather(-1, probe[:, 1:, None])[..., 0]  # (16, 31)
        gaps[fraction] = float(loss[:, :7].mean() - loss[:, 8:].mean())  # first copy minus the later ones
    assert gaps[0.75] > 1.0 and gaps[0.0] < 0.3, gaps
