"""training: the trainer loop, schedule, accumulation, resume, stops, compact vocabulary, CLI, DDP."""

import json
import math
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import words

from gpt2 import GPT2, GPTConfig, encode
from training import TrainConfig, Trainer, lr_at, prepare_data, pretrain, resume, train
from training.data import PreparedData, StreamSplit, collate
from training.vocab import CompactVocabModel, VocabSubset

ROOT = Path(__file__).resolve().parents[1]
TINY = GPTConfig.preset("tiny", block_size=32)


@pytest.fixture
def text(tmp_path) -> Path:
    path = tmp_path / "plays.txt"
    path.write_text(words())
    return path


def tiny_model(seed: int = 0, **overrides) -> GPT2:
    torch.manual_seed(seed)
    return GPT2(GPTConfig.preset("tiny", block_size=32, **overrides))


def test_lr_schedule():
    cfg = TrainConfig(steps=110, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert [lr_at(s, cfg) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # linear warmup
    assert lr_at(10, cfg) == pytest.approx(1.0)  # the cosine starts at the peak
    assert lr_at(60, cfg) == pytest.approx(0.55)  # halfway: (lr + min_lr) / 2
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert TrainConfig(lr=3e-4).final_lr == pytest.approx(3e-5)  # default end: lr / 10
    timed = TrainConfig(steps=110, lr=1.0, min_lr=0.1, warmup_steps=10, max_time=60, time_schedule=True)
    assert lr_at(20, timed, time_fraction=0.5) == pytest.approx(0.55)  # the time budget is half used
    assert lr_at(20, timed, time_fraction=1.0) == pytest.approx(0.1)
    assert lr_at(100, timed, time_fraction=0.1) == lr_at(100, cfg)  # whichever is further along
    assert lr_at(4, timed, time_fraction=0.9) == pytest.approx(0.5)  # warmup counts steps


def test_weight_decay_on_matrices_only(text, tmp_path):
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    trainer = Trainer(tiny_model(), data, TrainConfig(weight_decay=0.1))
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == trainer.model.num_params()  # the tied head counted once


def test_tiny_model_overfits_one_batch():
    ids = np.random.default_rng(0).integers(0, 50257, 33).astype(np.uint16)
    data = PreparedData(StreamSplit(ids, 32), None, "stream", len(ids), 32)  # one window: always the same batch
    cfg = TrainConfig(steps=40, batch_size=1, lr=2e-2, min_lr=2e-2, weight_decay=0.0, eval_interval=0)
    records = list(train(tiny_model(), data, cfg))
    assert records[0].train_loss > 10  # ~ln(50257) at init
    assert records[-1].train_loss < 0.05 and records[-1].stop_reason == "done"


def test_grad_accumulation_equals_one_big_batch(text, tmp_path):
    # Records of different lengths: micro-batches pad differently and hold different label counts.
    rng = np.random.default_rng(0)
    recs = [(rng.integers(0, 50257, n).astype(np.uint16), p) for n, p in ((5, 2), (9, 4), (20, 3), (31, 10))]
    big = collate(recs, 32)
    micro = [collate(recs[:1], 32), collate(recs[1:3], 32), collate(recs[3:], 32)]
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    trainer = Trainer(tiny_model(), data, TrainConfig())

    def grads(batches):
        loss = trainer.backward(batches)
        g = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
        trainer.optimizer.zero_grad(set_to_none=True)
        return loss, g

    loss_big, g_big = grads([big])
    loss_acc, g_acc = grads(micro)
    assert loss_acc == pytest.approx(loss_big, rel=1e-5)
    for name in g_big:
        torch.testing.assert_close(g_acc[name], g_big[name], rtol=1e-4, atol=1e-7, msg=name)


def test_records_evaluation_and_stop_reasons(text, tmp_path):
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    cfg = TrainConfig(steps=5, batch_size=2, grad_accum=2, lr=1e-3, eval_interval=2, eval_batches=2)
    model = tiny_model()
    records = list(train(model, data, cfg))
    assert [r.step for r in records] == [1, 2, 3, 4, 5]
    assert [r.val_loss is not None for r in records] == [False, True, False, True, True]  # and at the end
    assert records[-1].stop_reason == "done" and all(r.stop_reason is None for r in records[:-1])
    assert records[-1].tokens == 5 * 2 * 2 * 32 and records[-1].eta_s == 0.0
    assert all(r.tokens_per_s > 0 and r.elapsed_s > 0 and r.lr > 0 for r in records)
    assert records[1].best and json.dumps([r.to_dict() for r in records])
    assert not model.training  # left ready for inference


def test_wall_clock_budget_stops_and_evaluates(text, tmp_path):
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    records = list(train(tiny_model(), data, TrainConfig(steps=10_000, batch_size=2, max_time=0.5)))
    assert records[-1].stop_reason == "time" and records[-1].val_loss is not None
    assert records[-1].step < 10_000


def test_stop_event(text, tmp_path):
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    stop = threading.Event()
    records = []
    for rec in train(tiny_model(), data, TrainConfig(steps=100, batch_size=2), stop_event=stop):
        records.append(rec)
        stop.set()
    assert [r.step for r in records] == [1, 2] and records[-1].stop_reason == "stopped"  # seen after a step


class NaNAfter(nn.Module):
    """Returns NaN logits from the ``n``-th call on."""

    def __init__(self, model: GPT2, n: int) -> None:
        super().__init__()
        self.model, self.n, self.calls = model, n, 0

    def forward(self, idx):
        self.calls += 1
        logits = self.model(idx)
        return logits * float("nan") if self.calls >= self.n else logits


def test_nan_loss_stops_without_applying_the_step(text, tmp_path):
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    model = tiny_model()
    records, snapshot = [], None
    for rec in Trainer(NaNAfter(model, 3), data, TrainConfig(steps=10, batch_size=2, eval_interval=0)).run():
        records.append(rec)
        if rec.step == 2:
            snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    assert [r.step for r in records] == [1, 2, 3]
    assert records[-1].stop_reason == "nan" and math.isnan(records[-1].train_loss)
    assert "not finite at step 3" in records[-1].message and records[-1].to_dict()["train_loss"] is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k


def test_generator_resumed_on_other_threads_inside_no_grad(text, tmp_path):
    """Gradio may resume the generator on any worker thread, whatever grad mode that thread is in."""
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    gen = train(tiny_model(), data, TrainConfig(steps=8, batch_size=4, lr=1e-2, min_lr=1e-2, eval_interval=0))

    def next_without_grad():
        with torch.no_grad():
            rec = next(gen, None)
            assert not torch.is_grad_enabled()  # nothing leaked out of the step
        return rec

    pools = [ThreadPoolExecutor(1), ThreadPoolExecutor(1)]
    records = [pools[i % 2].submit(next_without_grad).result() for i in range(8)]
    assert records[-1].step == 8 and records[-1].train_loss < records[0].train_loss - 1


def test_compact_vocab_loss_equals_the_expanded_model(text, tmp_path):
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    subset = VocabSubset.from_ids(data.token_ids())
    assert subset.size < 300 and subset.table[50256] < subset.other  # <|endoftext|> always kept
    small = tiny_model(vocab_size=subset.size)
    cfg = TrainConfig(steps=3, batch_size=4, lr=3e-3, eval_batches=0)
    list(Trainer(CompactVocabModel(small, subset), data.map_tokens(subset.table), cfg).run())  # train a little
    val_ids = np.asarray(data.val.ids)
    assert (subset.table[torch.from_numpy(val_ids.astype(np.int64))] == subset.other).any()  # unseen tokens
    compact = Trainer(CompactVocabModel(small, subset), data.map_tokens(subset.table), cfg).evaluate().loss
    full_model = subset.expand(small)
    assert full_model.config.vocab_size == 50257
    full = Trainer(full_model, data, cfg).evaluate().loss
    assert compact == pytest.approx(full, rel=1e-5)


def test_compact_min_count_sends_rare_tokens_to_the_shared_row(text, tmp_path):
    """Tokens seen fewer than ``min_count`` times share the unused row (in training too), ``<|endoftext|>`` stays,
    and the compact loss is still exactly the expanded model's."""
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    counts = np.bincount(data.token_ids(), minlength=50257)
    subset = VocabSubset.from_ids(data.token_ids(), min_count=3)
    assert set(subset.used.tolist()) == set(np.flatnonzero(counts >= 3).tolist()) | {50256}
    assert len(subset.used) < len(VocabSubset.from_ids(data.token_ids()).used)
    rare = np.flatnonzero((counts > 0) & (counts < 3))
    assert (subset.table[torch.from_numpy(rare)] == subset.other).all()
    mapped = data.map_tokens(subset.table)
    small = tiny_model(vocab_size=subset.size)
    cfg = TrainConfig(steps=3, batch_size=4, lr=3e-3, eval_batches=0)
    list(Trainer(CompactVocabModel(small, subset), mapped, cfg).run())
    compact = Trainer(CompactVocabModel(small, subset), mapped, cfg).evaluate().loss
    assert compact == pytest.approx(Trainer(subset.expand(small), data, cfg).evaluate().loss, rel=1e-5)


@pytest.mark.parametrize("init", [True, False])
def test_the_shared_row_starts_with_the_probability_of_one_token(text, tmp_path, init):
    """A new compact model gives the tokens it does not train on, together, about the probability of one
    used token (``init_shared_row``); GPT-2's plain init gives them most of it."""
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    subset = VocabSubset.from_ids(data.token_ids())
    small = tiny_model(vocab_size=subset.size)
    if init:
        subset.init_shared_row(small)
    x, _ = data.map_tokens(subset.table).train.sample(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = subset.expand(small)(torch.from_numpy(subset.used)[x])
    p_unused = 1 - logits.softmax(-1)[..., torch.from_numpy(subset.used)].sum(-1)  # (B, T)
    if init:
        assert float(p_unused.mean()) < 20 / subset.size  # one token's share, give or take the init's spread
    else:
        assert float(p_unused.mean()) > 0.5


@pytest.mark.parametrize("repeats", [0.5, 0.0])
def test_a_compact_run_with_repeats_starts_from_the_shared_row_init(text, tmp_path, repeats):
    """Runs that mix in repeated tokens (to learn copying) start the shared row low; plain compact runs keep
    GPT-2's init, whose first loss pays for the shared row's share."""
    cfg = TrainConfig(steps=1, batch_size=4, eval_batches=1)
    first = next(iter(pretrain(text, tmp_path / "run", model_config=TINY, train=cfg, cache_dir=str(tmp_path / "c"),
                               plot="none", compact_vocab=True, repeat_fraction=repeats)))
    used = len(VocabSubset.from_ids(prepare_data(text, 32, cache_dir=tmp_path / "c").token_ids()).used)
    assert (first.train_loss < math.log(used) + 0.5) == bool(repeats), first.train_loss  # vs uniform over used


def test_the_cache_directory_may_be_a_path(text, tmp_path):
    cfg = TrainConfig(steps=1, batch_size=2, eval_batches=1)
    list(pretrain(text, tmp_path / "run", model_config=TINY, train=cfg, cache_dir=tmp_path / "c", plot="none"))
    assert json.loads((tmp_path / "run" / "training_args.json").read_text())["cache_dir"] == str(tmp_path / "c")
    assert list(resume(tmp_path / "run", steps=2))[-1].step == 2


def test_resume_continues_the_same_curve(text, tmp_path):
    kw = dict(model_config=GPTConfig.preset("tiny", block_size=32, dropout=0.1),  # dropout: the RNG matters
              train=TrainConfig(steps=6, batch_size=2, lr=3e-3, warmup_steps=2, eval_interval=2, eval_batches=2),
              cache_dir=str(tmp_path / "c"), plot="none")
    torch.manual_seed(0)
    full = list(pretrain(text, tmp_path / "a", **kw))
    torch.manual_seed(0)
    stop, part = threading.Event(), []
    for rec in pretrain(text, tmp_path / "b", stop_event=stop, **kw):
        part.append(rec)
        stop.set()  # seen after the next step
    assert [r.step for r in part] == [1, 2] and part[-1].stop_reason == "stopped"
    torch.manual_seed(123)  # resume restores the RNG itself
    rest = list(resume(tmp_path / "b"))
    assert [r.step for r in rest] == [3, 4, 5, 6]
    assert [r.train_loss for r in rest] == [r.train_loss for r in full[2:]]
    assert [r.val_loss for r in rest] == [r.val_loss for r in full[2:]]
    a = GPT2.from_pretrained(tmp_path / "a" / "last")
    b = GPT2.from_pretrained(tmp_path / "b" / "last")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    log = json.loads((tmp_path / "b" / "training_log.json").read_text())
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]


def test_run_directory(text, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(steps=4, batch_size=2, eval_interval=2, eval_batches=2)
    records = list(pretrain(text, out, model_config=TINY, train=cfg, cache_dir=str(tmp_path / "c"),
                            plot="cdn", save_dtype="fp16"))
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "training_log.json", "training_args.json", "loss.html",
            "last"} <= names
    assert not [n for n in names if n.startswith(".")]  # atomic writes leave no temporaries behind
    assert not [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]  # nor does the cache
    assert {p.name for p in (out / "last").iterdir()} == {"config.json", "model.safetensors",
                                                          "trainer_state.safetensors", "trainer_state.json"}
    best = GPT2.from_pretrained(out)
    assert best.config == TINY and best.dtype == torch.float32  # loads as fp32 on CPU
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    assert len(json.loads((out / "training_log.json").read_text())) == len(records) == 4
    args = json.loads((out / "training_args.json").read_text())
    assert args["mode"] == "pretrain" and args["train"]["steps"] == 4
    with pytest.raises(FileExistsError, match="already holds a training run"):
        next(pretrain(text, out, model_config=TINY, train=cfg, cache_dir=str(tmp_path / "c")))


def _cli(*args: str, cwd: Path = ROOT, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, *launcher, "-m", "training", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_pretrain_then_lora_finetune(text, tmp_path):
    run, cache = tmp_path / "run", str(tmp_path / "c")
    p = _cli("pretrain", "--data", str(text), "--out", str(run), "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
             "--block-size", "32", "--steps", "6", "--batch-size", "4", "--lr", "3e-3", "--eval-interval", "3",
             "--eval-batches", "0", "--compact-vocab", "--cache-dir", cache, "--plot", "none", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "finished at step 6/6" in p.stdout
    model = GPT2.from_pretrained(run)
    assert model.config.vocab_size == 50257  # the compact vocabulary was expanded for export
    log = json.loads((run / "training_log.json").read_text())
    data = prepare_data(text, 32, cache_dir=cache)
    best = min(r["val_loss"] for r in log if r["val_loss"] is not None)
    assert Trainer(model, data, TrainConfig(eval_batches=0)).evaluate().loss == pytest.approx(best, rel=1e-5)

    from transformers import GPT2LMHeadModel  # the run directory is a Hugging Face checkpoint

    hf = GPT2LMHeadModel.from_pretrained(run).eval()
    ids = torch.tensor([encode("ROMEO:\nThe night")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=1e-4, atol=1e-4)

    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps({"instruction": f"Count to {i}", "output": " ".join(map(str, range(i)))})
                            for i in range(2, 30)))
    ft = tmp_path / "ft"
    p = _cli("finetune", "--model", str(run), "--data", str(qa), "--out", str(ft), "--lora-rank", "2",
             "--steps", "3", "--batch-size", "4", "--block-size", "32", "--cache-dir", cache, "--plot", "none",
             "--quiet")
    assert p.returncode == 0, p.stderr
    assert (ft / "adapter" / "adapter_model.safetensors").stat().st_size < 100_000
    merged = GPT2.from_pretrained(ft)
    assert not torch.equal(merged.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight)
    torch.testing.assert_close(merged.transformer.wte.weight, model.transformer.wte.weight)  # only projections move

    p = _cli("finetune", "--model", str(run), "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "error:" in p.stderr and "no such file" in p.stderr


@pytest.mark.slow
def test_two_process_gloo_run(text, tmp_path):
    out = tmp_path / "ddp"
    p = _cli("pretrain", "--data", str(text), "--out", str(out), "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
             "--block-size", "32", "--steps", "4", "--batch-size", "2", "--eval-interval", "2", "--eval-batches", "2",
             "--device", "cpu", "--cache-dir", str(tmp_path / "c"), "--plot", "none", "--quiet", "--test-split", "0.1",
             launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    assert p.returncode == 0, p.stderr
    log = json.loads((out / "training_log.json").read_text())
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["test_loss"] > 0 and 0 <= log[-1]["test_accuracy"] <= 1  # every rank tested the saved model
    assert len(list(out.glob("training_*.log"))) == 1 and p.stdout.count("test (best model)") == 1
    assert log[-1]["tokens"] == 4 * 2 * 2 * 32  # steps x batch x 2 processes x block
    assert p.stdout.count("finished at step 4/4") == 1  # only rank 0 reports
    GPT2.from_pretrained(out)
