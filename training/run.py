"""Runs on disk: ``pretrain``, ``finetune`` and ``resume`` write and continue a run directory.

Layout of a run directory ``OUT``::

    OUT/config.json, model.safetensors   the best model by validation loss (HF layout: loads with
                                         gpt2.GPT2.from_pretrained and transformers); the last one
                                         when there is no validation split
    OUT/adapter/                         LoRA runs: the best adapter alone (the model files above are
                                         base + adapter merged)
    OUT/training_log.json                every StepRecord (validation loss, accuracy and perplexity at
                                         evaluations; with a test split, the best model's test metrics
                                         on each session's last record)
    OUT/training_YYYYMMDD_HHMMSS.log     the text log of one session (command, args, every step, the
                                         result); a resumed run adds a file (``training.runlog``)
    OUT/training_args.json               everything needed to rebuild the run (RunArgs)
    OUT/loss.html                        the loss plot (validation accuracy on a second axis)
    OUT/last/                            the latest state, fp32: the model (or adapter/; compact
                                         vocabulary runs: the compact model + vocab_subset.json), plus
                                         trainer_state.safetensors/.json (optimizer, RNG, step); resume
                                         continues from here

Checkpoints are written at each evaluation and at the end. Under ``torchrun`` only rank 0 writes.
With ``test_fraction`` a test split is held out (``training.data``) and, at the end of each session, the
saved best model (what the run publishes: merged for LoRA, full vocabulary for a compact one) is loaded
back and evaluated on it once, with the validation's batch size and number of batches.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gpt2 import GPT2, GPTConfig
from gpt2.files import write_dir_atomically, write_file_atomically

from . import distributed as dist
from . import runlog
from .data import MappedSplit, PreparedData, prepare_data
from .lora import LoRAAdapter, LoRAConfig, LoRAModel, load_adapter, merge_lora, save_adapter
from .plot import write_loss_plot
from .repeats import PERIODS, RepeatSplit, check_periods
from .trainer import StepRecord, StopEvent, TrainConfig, Trainer
from .vocab import CompactVocabModel, VocabSubset

log = logging.getLogger(__name__)
LOG_FILE, ARGS_FILE, PLOT_FILE = "training_log.json", "training_args.json", "loss.html"
LAST_DIR, ADAPTER_DIR = "last", "adapter"
STATE_TENSORS, STATE_META = "trainer_state.safetensors", "trainer_state.json"
SUBSET_FILE = "vocab_subset.json"
DEFAULT_BLOCK = 256  # fine-tuning window when none is given: CPU-friendly, and most texts fit
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class RunArgs:
    """Everything a run is built from; saved as ``training_args.json`` so ``resume`` can rebuild it."""

    mode: str  # "pretrain" or "finetune"
    data: str
    train: TrainConfig = field(default_factory=TrainConfig)
    block_size: int | None = None  # training window; None: the model's context, at most DEFAULT_BLOCK
    model: str | None = None  # finetune: hub name or checkpoint directory
    model_config: dict[str, Any] | None = None  # pretrain: GPTConfig fields
    lora: LoRAConfig | None = None
    column: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.0  # held out for one evaluation of the best model at the end (CLI --test-split)
    cache_dir: str | None = None
    device: str | None = None  # None: CUDA when available, else CPU
    compact_vocab: bool = False  # pretrain: train only the used tokens (exact; see training.vocab)
    compact_min_count: int = 1  # compact_vocab: tokens seen fewer times than this share the unused tokens' row
    repeat_fraction: float = 0.0  # pretrain: share of each batch that is repeated random tokens (training.repeats)
    repeat_periods: tuple[int, int] = PERIODS  # their shortest and longest period
    save_dtype: str = "fp32"  # dtype of the best model's weights ("fp32", "fp16", "bf16"); last/ is fp32
    plot: str = "inline"  # loss plot: "inline" (offline HTML), "cdn" (small HTML) or "none"
    command: str = ""  # the command line that started the run, if any

    def __post_init__(self) -> None:
        if self.mode not in ("pretrain", "finetune"):
            raise ValueError(f"mode must be 'pretrain' or 'finetune', got {self.mode!r}")
        if self.save_dtype not in _DTYPES:
            raise ValueError(f"save_dtype must be one of {', '.join(_DTYPES)}, got {self.save_dtype!r}")
        if self.compact_vocab and self.mode != "pretrain":
            raise ValueError("a compact vocabulary is for pretraining only (a pretrained model has its own)")
        if self.compact_min_count < 1:
            raise ValueError(f"compact_min_count must be >= 1, got {self.compact_min_count}")
        if self.compact_min_count > 1 and not self.compact_vocab:
            raise ValueError("compact_min_count is for a compact vocabulary (--compact-vocab)")
        self.repeat_periods = check_periods(self.repeat_periods)  # a list after JSON
        if not 0.0 <= self.repeat_fraction < 1.0:
            raise ValueError(f"repeat_fraction must be in [0, 1), got {self.repeat_fraction}")
        if self.repeat_fraction and self.mode != "pretrain":
            raise ValueError("repeated random tokens are for pretraining only (repeat_fraction must be 0)")
        if self.cache_dir is not None:
            self.cache_dir = str(self.cache_dir)  # a Path is welcome; training_args.json holds strings
        if self.plot not in ("inline", "cdn", "none"):
            raise ValueError(f"plot must be 'inline', 'cdn' or 'none', got {self.plot!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunArgs:
        d = dict(d)
        d["train"] = TrainConfig.from_dict(d.get("train") or {})
        if d.get("lora"):
            d["lora"] = LoRAConfig(**{**d["lora"], "targets": tuple(d["lora"]["targets"])})
        return cls(**d)


# ---------------------------------------------------------------------------------------------------
# Public entry points


def pretrain(data: str | Path, out_dir: str | Path, *, model_config: GPTConfig, train: TrainConfig | None = None,
             stop_event: StopEvent | None = None, overwrite: bool = False, **options: Any) -> Iterator[StepRecord]:
    """Train a new model of shape ``model_config`` on ``data``, writing the run to ``out_dir``.

    ``options`` are the other ``RunArgs`` fields (``column``, ``val_fraction``, ``device`` ...).
    """
    args = RunArgs("pretrain", _abs(data), train or TrainConfig(), block_size=model_config.block_size,
                   model_config=asdict(model_config), **options)
    return run(args, out_dir, stop_event=stop_event, overwrite=overwrite)


def finetune(model: str | Path | GPT2, data: str | Path, out_dir: str | Path, *, train: TrainConfig | None = None,
             lora: LoRAConfig | None = None, stop_event: StopEvent | None = None, overwrite: bool = False,
             **options: Any) -> Iterator[StepRecord]:
    """Fine-tune ``model`` (a hub name, a checkpoint directory, or a loaded ``GPT2``) on ``data``.

    A loaded model is trained in place for full fine-tuning (copy it first if it is shared); with
    ``lora`` only a new adapter is trained and the model is left untouched, so a shared one is fine.
    """
    given = model if isinstance(model, GPT2) else None
    name = "<in-memory model>" if given is not None else str(model)
    if given is None and Path(name).expanduser().is_dir():
        name = _abs(name)
    args = RunArgs("finetune", _abs(data), train or TrainConfig(), model=name, lora=lora, **options)
    return run(args, out_dir, stop_event=stop_event, overwrite=overwrite, model=given)


def _abs(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def resume(out_dir: str | Path, *, steps: int | None = None, max_time: float | None = None,
           stop_event: StopEvent | None = None, model: GPT2 | None = None) -> Iterator[StepRecord]:
    """Continue the run in ``out_dir`` from ``last/``: same data, model, optimizer, step and RNG, so the
    loss curve continues as if never interrupted. ``steps`` extends (or shortens) the run, which also
    stretches the cosine; ``max_time`` is this session's budget. ``model``: the base of an in-memory
    LoRA run."""
    out = Path(out_dir)
    if not (out / LAST_DIR / STATE_META).is_file():
        raise FileNotFoundError(f"{out} has no {LAST_DIR}/{STATE_META}: not a run directory that can be resumed")
    args = RunArgs.from_dict(json.loads((out / ARGS_FILE).read_text()))
    changes = {k: v for k, v in (("steps", steps), ("max_time", max_time)) if v is not None}
    args.train = replace(args.train, **changes)
    return run(args, out, stop_event=stop_event, resume=True, model=model)


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class _Job:
    """What a run trains, and how to export it."""

    model: GPT2  # the weights being trained (frozen base for LoRA; compact-vocabulary model)
    adapter: LoRAAdapter | None = None
    subset: VocabSubset | None = None

    def trainable(self) -> torch.nn.Module:
        if self.adapter is not None:
            return LoRAModel(self.model, self.adapter)
        return CompactVocabModel(self.model, self.subset) if self.subset is not None else self.model

    def export(self) -> GPT2:
        """The model to publish: an ordinary full-vocabulary GPT-2."""
        if self.adapter is not None:
            return merge_lora(self.model, self.adapter)
        return self.subset.expand(self.model) if self.subset is not None else self.model


def run(args: RunArgs, out_dir: str | Path, *, stop_event: StopEvent | None = None, resume: bool = False,
        overwrite: bool = False, model: GPT2 | None = None) -> Iterator[StepRecord]:
    """Build everything ``args`` describes, train, checkpoint; yield each ``StepRecord``.

    Like any generator, nothing runs before the first ``next()``; errors in the data or the model
    name are raised there, before any training step.
    """
    out = Path(out_dir).expanduser()
    info = dist.current()
    if info.is_main and not resume:
        _claim(out, overwrite)
    with runlog.text_log(out, args.to_dict(), enabled=info.is_main) as text:
        yield from _train(args, out, info, text, stop_event, resume, model)


def _train(args: RunArgs, out: Path, info: dist.DistInfo, text: logging.Logger, stop_event: StopEvent | None,
           resume: bool, model: GPT2 | None) -> Iterator[StepRecord]:
    """``run``'s body, writing each step to the run's text log ``text``."""
    device = torch.device(args.device or (f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"))
    last = out / LAST_DIR if resume else None
    job, data = _build(args, device, model, last, info)
    log.info("data: %s", data.describe())
    text.info("data: %s", data.describe())
    trainer = Trainer(job.trainable(), data, args.train)
    records: list[dict[str, Any]] = []
    if resume:
        records = _restore(out, trainer)
        text.info("resumed at step %d", trainer.step)
    elif info.is_main:
        _write_json(out / ARGS_FILE, args.to_dict())
    saved_best = any(r.get("best") for r in records)
    for rec in trainer.run(stop_event):
        records.append(rec.to_dict())
        if info.is_main and (rec.val_loss is not None or rec.stop_reason):
            write_best = rec.best or (data.val is None) or not saved_best
            _checkpoint(out, args, trainer, job, records, write_best)
            saved_best = saved_best or write_best
        if rec.stop_reason and data.test is not None:
            _test(out, trainer, data.test, rec)
            records[-1] = rec.to_dict()
            if info.is_main:
                _write_log(out, args, records)
        text.info(runlog.step_line(rec))
        for line in runlog.summary(rec) if rec.stop_reason else ():
            text.info(line)
        yield rec


def _build(args: RunArgs, device: torch.device, given: GPT2 | None, last: Path | None,
           info: dist.DistInfo) -> tuple[_Job, PreparedData]:
    """The job and its data. A pretrained model fixes the default block size, so it comes first;
    a compact vocabulary comes from the data, so for pretraining the data comes first."""
    if args.mode == "pretrain":
        data = _prepare_data(args, args.model_config["block_size"], info)
        subset = None
        if args.compact_vocab:
            subset = _load_subset(last) if last is not None else VocabSubset.from_ids(data.token_ids(),
                                                                                       args.compact_min_count)
            data = data.map_tokens(subset.table)
            log.info("compact vocabulary: %d used tokens + 1 shared row", subset.size - 1)
        if args.repeat_fraction:
            data = _with_repeats(data, args, subset)
        if last is not None:
            return _Job(GPT2.from_pretrained(last, device=device, dtype=torch.float32).requires_grad_(True),
                        subset=subset), data
        shape = dict(args.model_config, vocab_size=subset.size if subset else args.model_config["vocab_size"])
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(args.train.seed)
            model = GPT2(GPTConfig(**shape))
            if subset is not None and args.repeat_fraction:  # copying forms several times faster (training.vocab)
                subset.init_shared_row(model)
            return _Job(model.to(device), subset=subset), data
    if last is not None and args.lora is None:
        base = GPT2.from_pretrained(last, device=device, dtype=torch.float32)
    else:
        base = given if given is not None else GPT2.from_pretrained(args.model, device=device, dtype=torch.float32)
    block_size = args.block_size or min(DEFAULT_BLOCK, base.config.block_size)
    if block_size > base.config.block_size:
        raise ValueError(f"block size {block_size} exceeds the model's context of {base.config.block_size}")
    data = _prepare_data(args, block_size, info)
    if args.lora is None:
        return _Job(base.requires_grad_(True)), data
    if last is not None:
        return _Job(base, load_adapter(last / ADAPTER_DIR, base)), data
    return _Job(base, LoRAAdapter(base, args.lora, seed=args.train.seed)), data


def _with_repeats(data: PreparedData, args: RunArgs, subset: VocabSubset | None) -> PreparedData:
    """``data`` whose training batches mix in repeated random tokens of the vocabulary the model trains on
    (a compact model's used rows, never its shared row; else the training split's tokens)."""
    if data.kind != "stream":
        raise ValueError("repeated random tokens mix into a text stream, not instruction records")
    vocab = np.arange(subset.other) if subset is not None else np.unique(data.token_ids())
    split = RepeatSplit(data.train, vocab, args.repeat_fraction, data.block_size, args.repeat_periods)
    log.info("%.0f%% of each batch: random tokens repeating every %d-%d tokens", 100 * split.fraction, *split.periods)
    return replace(data, train=split)


def _claim(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse to mix two runs in one directory unless ``overwrite``."""
    if (out / ARGS_FILE).exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a training run: resume it, or pass overwrite "
                                  "(--overwrite) to replace it, or choose another output directory")
        for name in (LAST_DIR, ADAPTER_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        for old in out.glob(runlog.LOG_GLOB):  # the earlier run's text logs
            old.unlink(missing_ok=True)
        for name in (LOG_FILE, ARGS_FILE, PLOT_FILE, "config.json", "model.safetensors"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _prepare_data(args: RunArgs, block_size: int, info: dist.DistInfo) -> PreparedData:
    """Rank 0 tokenizes first; the others then read its cache instead of tokenizing again."""
    def prep() -> PreparedData:
        return prepare_data(args.data, block_size, val_fraction=args.val_fraction, column=args.column,
                            cache_dir=args.cache_dir, test_fraction=args.test_fraction)
    if info.is_main:
        data = prep()
        dist.barrier()
        return data
    dist.barrier()
    return prep()


# ---------------------------------------------------------------------------------------------------
# Writing and reading a run directory


def _checkpoint(out: Path, args: RunArgs, trainer: Trainer, job: _Job, records: list[dict[str, Any]],
                write_best: bool) -> None:
    """Write last/ (always), the best model (when asked), the log and the plot."""
    _write_last(out / LAST_DIR, trainer, job)
    if write_best:
        _write_model(job.export(), out, _DTYPES[args.save_dtype])
        if job.adapter is not None:
            write_dir_atomically(out / ADAPTER_DIR, lambda tmp: save_adapter(job.adapter, tmp, args.model or ""))
    _write_log(out, args, records)


def _write_log(out: Path, args: RunArgs, records: list[dict[str, Any]]) -> None:
    _write_json(out / LOG_FILE, records, one_per_line=True)
    if args.plot != "none":
        write_loss_plot(records, out / PLOT_FILE, args.plot, title=f"{args.mode}: {Path(args.data).name}")


def _test(out: Path, trainer: Trainer, split, rec: StepRecord) -> None:
    """Evaluate the saved best model once on the test split, on every rank; the metrics go on ``rec``.
    The saved model is the published one (merged LoRA; full vocabulary, so a compact run's test split is
    read unmapped: the losses are equal, see ``training.vocab``). It is a second copy in memory, briefly."""
    dist.barrier()  # rank 0 has written it
    best = GPT2.from_pretrained(out, device=trainer.device, dtype=torch.float32)
    result = trainer.evaluate(split.split if isinstance(split, MappedSplit) else split, model=best)
    rec.test_loss, rec.test_accuracy, rec.test_perplexity = result.loss, result.accuracy, result.perplexity


def _write_last(last: Path, trainer: Trainer, job: _Job) -> None:
    """The trained weights (or adapter) and the trainer state, swapped in together so they match."""
    tensors, meta = trainer.state_dict()

    def write(tmp: Path) -> None:
        if job.adapter is not None:
            save_adapter(job.adapter, tmp / ADAPTER_DIR)
        else:
            job.model.save_pretrained(tmp)
        if job.subset is not None:
            _write_json(tmp / SUBSET_FILE, job.subset.used.tolist())
        save_file(tensors, tmp / STATE_TENSORS)
        _write_json(tmp / STATE_META, meta)

    write_dir_atomically(last, write)


def _load_subset(last: Path) -> VocabSubset:
    return VocabSubset(json.loads((last / SUBSET_FILE).read_text()))


def _write_model(model: GPT2, out: Path, dtype: torch.dtype) -> None:
    """``save_pretrained`` into a fresh directory, then move its two files into ``out`` (each
    ``os.replace`` is atomic). ``model.save_pretrained(out)`` itself would copy every other file of
    ``out`` into its temporary directory, and ``last/`` holds three model-sized tensors of state."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".best-", dir=out) as tmp:
        saved = model.save_pretrained(Path(tmp) / "model", dtype=dtype)
        for name in ("config.json", "model.safetensors"):
            (saved / name).chmod(0o644)  # safetensors writes 0600 (via a temporary file): publish readable
            os.replace(saved / name, out / name)


def _write_json(path: Path, obj: Any, one_per_line: bool = False) -> None:
    """Atomic write; ``one_per_line`` writes a list with one item per line (logs: compact, diffable)."""
    text = "[\n" + ",\n".join(json.dumps(x) for x in obj) + "\n]" if one_per_line else json.dumps(obj, indent=1)
    write_file_atomically(path, text + "\n")


def _restore(out: Path, trainer: Trainer) -> list[dict[str, Any]]:
    """Load last/'s trainer state (our own safetensors + json); returns the log up to that step."""
    last = out / LAST_DIR
    meta = json.loads((last / STATE_META).read_text())
    trainer.load_state_dict(load_file(last / STATE_TENSORS), meta)
    records = json.loads((out / LOG_FILE).read_text()) if (out / LOG_FILE).is_file() else []
    log.info("resumed %s at step %d", out, trainer.step)
    return [r for r in records if r["step"] <= trainer.step]
