"""The Fine-tune tab: train on the user's text with a live loss plot, then use, compare and download it.

The shared base model is never changed. LoRA (the default) trains a small adapter that only this
session applies; full fine-tuning trains a private deep copy. Either becomes the session's model in the
other tabs (``AppContext.ref``) behind the header's "use my fine-tuned model" switch. Every limit (steps,
upload size, wall-clock, block size) is checked here, on the server; the data is checked before the page
changes, so a refused run leaves the last good run on show. The download is built only when asked for.
"""

from __future__ import annotations

import contextlib
import copy
import math
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import plotly.graph_objects as go

import gpt2
import training
from gpt2.lora import LoRAAdapter, LoRAConfig, use_adapter
from training.metrics import perplexity

from .. import figures, inputs
from ..context import AppContext
from ..gpu import ModelRef
from ..inputs import UserError
from ..session import Session, StopFlag
from ..updates import KEEP, Update, update
from .finetune_data import ZIP_NAME, data_prompt, load_data, stage_data
from .finetune_plan import DEFAULT_LR, EVAL_BATCHES, Defaults, defaults, eval_interval, planned_seconds, steps_info

MODES = ("LoRA", "full")
DEFAULT_RANK = 8
MAX_BATCH = 32
MIN_BLOCK = 8
MAX_RANK = 64
MAX_LR = 1.0  # above this every run diverges: refuse it instead of training on NaNs
FULL_MAX_PARAMS = 200_000_000  # full fine-tuning holds a copy plus AdamW moments (16 bytes a parameter)
WARMUP_STEPS = 5
SAMPLE_TOKENS = 60  # before/after sample length (capped by caps.max_new_tokens)
FINISH_SECONDS = 60  # GPU time asked for beyond the training limit: the before/after samples
STREAM_INTERVAL_S = 0.2  # at most ~5 page updates a second; evaluations and the end always show
RATE_STEPS = 10  # the ETA's pace: the time of the last this many steps


# ---------------------------------------------------------------- checking the request


@dataclass(frozen=True)
class Settings:
    mode: str  # "LoRA" or "full"
    steps: int
    lr: float
    batch_size: int
    block_size: int
    rank: int
    seed: int


def parse_settings(max_steps: int, context: int, mode, steps, learning_rate, batch_size, block_size, lora_rank,
                   seed) -> Settings:
    """Widget (or API) values -> ``Settings``; ``context`` is the session model's context length. A seed
    left blank (or -1) is drawn here, and shown, so the samples can be reproduced."""
    lr_allowed = (f"a number above 0 and at most {MAX_LR:g} (try {DEFAULT_LR['LoRA']:g} for LoRA, "
                  f"{DEFAULT_LR['full']:g} for full fine-tuning)")
    lr = inputs.number("learning_rate", learning_rate, 0, MAX_LR, lr_allowed)
    if lr <= 0:
        raise UserError(f"learning_rate must be {lr_allowed}; got {learning_rate!r}.")
    chosen = inputs.seed("seed", seed)
    return Settings(
        mode=inputs.choice("mode", mode, MODES),
        steps=inputs.integer("steps", steps, 1, max_steps,
                             f"a whole number from 1 to {max_steps} (this server's limit)"),
        lr=lr,
        batch_size=inputs.integer("batch_size", batch_size, 1, MAX_BATCH),
        block_size=inputs.integer("block_size", block_size, MIN_BLOCK, context,
                                  f"a whole number from {MIN_BLOCK} to {context} (the model's context)"),
        rank=inputs.integer("lora_rank", lora_rank, 1, MAX_RANK),
        seed=secrets.randbelow(2**31) if chosen is None else chosen,
    )


# ---------------------------------------------------------------- a run's progress


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


@dataclass
class Progress:
    """Everything the page shows about one run; updated in place and yielded as it goes."""

    settings: Settings
    time_limit: float  # seconds the training may take (the server's limit less the preparation)
    estimate_s: float  # the plan's guess of the training time, until steps are measured
    fallback: str  # what the session keeps using if this run learns nothing
    notices: list[str] = field(default_factory=list)
    about: str = ""  # the data and the trainable parameters
    phase: str = "training"  # training, finishing, done
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)  # top-1 next-token, at the same steps
    last: training.StepRecord | None = None
    learned: bool = False  # at least one optimizer step was applied
    before: str = ""
    after: str = ""

    def add(self, rec: training.StepRecord) -> None:
        self.last = rec
        if rec.stop_reason != "nan":  # a NaN step was not applied
            self.learned = True
            self.steps.append(rec.step)
            self.train_loss.append(rec.train_loss)
            self.elapsed.append(rec.elapsed_s)
        if rec.val_loss is not None:
            self.val_steps.append(rec.step)
            self.val_loss.append(rec.val_loss)
            self.val_accuracy.append(math.nan if rec.val_accuracy is None else rec.val_accuracy)

    def figure(self) -> go.Figure:
        return figures.loss_curve(self.steps, self.train_loss, self.val_steps, self.val_loss, self.val_accuracy)

    def eta(self) -> str:
        """Time left, and where the server's time limit will cut the run if it will: from the pace of the
        last steps (evaluations included), or from the plan until a second step (the first sets up too)."""
        s, r = self.settings, self.last
        done, seconds = (r.step, r.elapsed_s) if r else (0, 0.0)
        per_step = self.estimate_s / s.steps
        if len(self.steps) > 1:
            k = max(0, len(self.steps) - 1 - RATE_STEPS)
            per_step = (self.elapsed[-1] - self.elapsed[k]) / (self.steps[-1] - self.steps[k])
        left = (s.steps - done) * per_step
        if seconds + left <= self.time_limit or per_step <= 0:
            return f"ETA {duration(left)}" if r else f"about {duration(left)} expected"
        reach = done + int((self.time_limit - seconds) / per_step)
        head = f"ETA {duration(self.time_limit - seconds)}" if r else f"about {duration(self.time_limit)} expected"
        return f"{head}: the time limit will stop it at about step {max(reach, done, 1)} of {s.steps}"

    def markdown(self) -> str:
        r, s = self.last, self.settings
        if r is None:
            lines = [f"Training starts… ({self.eta()})"]
        else:
            parts = [f"**step {r.step} / {r.steps}**", f"train loss {r.train_loss:.3f}"]
            if self.val_loss:
                parts.append(f"val loss {self.val_loss[-1]:.3f} · accuracy {self.val_accuracy[-1]:.1%} · perplexity "
                             f"{perplexity(self.val_loss[-1]):,.1f} (step {self.val_steps[-1]})")
            parts += [f"{r.tokens_per_s:,.0f} tokens/s", f"{duration(r.elapsed_s)} elapsed"]
            if not r.stop_reason:
                parts.append(self.eta())
            lines = [" · ".join(parts)]
            if r.stop_reason:
                lines.append(self._outcome(r))
        if self.phase == "finishing":
            lines.append("Sampling the fine-tuned model…")
        elif self.phase == "done" and self.learned:
            lines.append("This session now uses the fine-tuned model in every tab; the **use my fine-tuned model** "
                         "switch at the top goes back to the base. **Download** packs it when you want it.")
        rank = f" rank {s.rank}" if s.mode == "LoRA" else ""
        lines.append(f"{s.mode}{rank} · lr {s.lr:g} · batch {s.batch_size} × block {s.block_size} · "
                     f"sample seed {s.seed}" + (f" · {self.about}" if self.about else ""))
        lines += [f"> {n}" for n in self.notices]
        return "\n\n".join(lines)

    def _outcome(self, r: training.StepRecord) -> str:
        if r.stop_reason == "done":
            return f"Finished all {r.steps} steps."
        if r.stop_reason == "stopped":
            return f"Stopped at step {r.step} of {r.steps}; what it learned so far is kept."
        if r.stop_reason == "time":
            return (f"Reached this server's time limit for training ({duration(self.time_limit)}) at step {r.step} of "
                    f"{r.steps}; what it learned is kept.")
        kept = (" What it learned before that step is kept." if self.learned
                else f" Nothing was learned: this session still uses {self.fallback}.")
        return f"{r.message}.{kept}"


# ---------------------------------------------------------------- the training job


def sample_params(max_new_tokens: int, seed: int) -> gpt2.SamplingParams:
    """The before/after sampler: one seed for both, so only the model differs."""
    return gpt2.SamplingParams(temperature=0.8, top_k=40, max_new_tokens=min(SAMPLE_TOKENS, max_new_tokens),
                               seed=seed)


def sample_text(model: gpt2.GPT2, ids: list[int], params: gpt2.SamplingParams) -> str:
    """One sample from ``model`` with whatever adapter is active."""
    return "".join(step.text for step in gpt2.generate(model, ids, params))


Result = tuple[LoRAAdapter | None, gpt2.GPT2 | None]  # what a run made: an adapter, or a full copy


@dataclass(frozen=True)
class Run:
    """A fine-tuning run's inputs, as plain values (they travel to a ZeroGPU worker)."""

    data: training.PreparedData
    prompt_ids: list[int]
    sampler: gpt2.SamplingParams
    stop: StopFlag
    max_time: float  # seconds left of the server's limit when training starts
    to_cpu: bool  # hand the result back on the CPU (it leaves a ZeroGPU worker)


def train_job(base: gpt2.GPT2, progress: Progress, run: Run) -> Iterator[tuple[Progress, Result | None]]:
    """Fine-tune the shared ``base`` (a ``ui.gpu`` job), yielding ``(progress, None)`` after steps
    (throttled), then, if anything was learned, the after sample and ``(progress, result)``. Stopped,
    timed out or NaN runs keep what was learned until then; the shared base is never changed."""
    s = progress.settings
    progress.before = sample_text(base, run.prompt_ids, run.sampler)
    adapter, model = None, None
    if s.mode == "LoRA":
        adapter = LoRAAdapter(base, LoRAConfig(rank=s.rank), seed=s.seed)  # seeded: torch's global RNG untouched
        trainable = adapter.num_params()
    else:
        model = copy.deepcopy(base).requires_grad_(True)  # the shared base is frozen and stays so
        trainable = model.num_params()
    progress.about = f"{trainable:,} trainable parameters · {run.data.describe()}"
    cfg = training.TrainConfig(steps=s.steps, lr=s.lr, batch_size=s.batch_size, max_time=run.max_time,
                               warmup_steps=min(WARMUP_STEPS, s.steps // 10), eval_interval=eval_interval(s.steps),
                               eval_batches=EVAL_BATCHES)
    yield progress, None
    last_shown = -math.inf  # the first step shows at once
    with contextlib.closing(training.train(model if model is not None else base, run.data, cfg, adapter=adapter,
                                           stop_event=run.stop)) as records:
        for rec in records:
            progress.add(rec)
            if rec.stop_reason or rec.val_loss is not None or time.perf_counter() - last_shown >= STREAM_INTERVAL_S:
                last_shown = time.perf_counter()
                yield progress, None
    if not progress.learned:
        progress.phase = "done"
        yield progress, None
        return
    progress.phase = "finishing"
    yield progress, None
    if model is not None:
        model.requires_grad_(False)  # inference only from now on: no autograd graphs while generating
    with use_adapter(adapter):
        progress.after = sample_text(base if model is None else model, run.prompt_ids, run.sampler)
    progress.phase = "done"
    if run.to_cpu:
        adapter, model = (m.cpu() if m is not None else None for m in (adapter, model))
    yield progress, (adapter, model)


def keep_result(session: Session, key: str, adapter: LoRAAdapter | None, model: gpt2.GPT2 | None,
                instructions: bool = False) -> None:
    """Make the result this session's fine-tuned model (replacing an earlier one, and its download) and
    switch to it; ``instructions``: it was trained on instruction records (the chat template's)."""
    # ``key``: the base it was trained on (``AppContext.ref``)
    session.keep_finetuned(adapter, model, key, instructions=instructions)
    session.use_finetuned = True
    (session.workdir / ZIP_NAME).unlink(missing_ok=True)  # a download of the model it replaces


def in_use(session: Session) -> str:
    """The model the session uses now, as the messages name it."""
    if session.use_finetuned and session.has_finetuned():
        return "your fine-tuned model from the last run"
    return f"the base model ({session.model_key})"


# ---------------------------------------------------------------- the tab's events


def _prepare(ctx: AppContext, session: Session, started: float, text, file, column, mode, steps, learning_rate,
             batch_size, block_size, lora_rank, sample_prompt, seed) -> tuple[Progress, Run]:
    """Check everything a run needs, the data included, before the page changes."""
    caps, base = ctx.caps, ctx.base(session.model_key)
    settings = parse_settings(caps.max_train_steps, base.config.block_size, mode, steps, learning_rate, batch_size,
                              block_size, lora_rank, seed)
    if settings.mode == "full" and base.quantization is not None:  # int8 weights cannot be trained
        raise UserError(f"Full fine-tuning needs fp32 or bf16 weights, and {session.model_key} has "
                        f"{base.quantization} weights: choose LoRA, or switch the precision to fp32.")
    if settings.mode == "full" and base.num_params() > FULL_MAX_PARAMS:
        raise UserError(f"Full fine-tuning is limited to models of up to {FULL_MAX_PARAMS / 1e6:.0f}M parameters here "
                        f"({session.model_key} has {base.num_params() / 1e6:.0f}M); choose LoRA.")
    staged = stage_data(session.workdir, caps.max_upload_bytes, text, file, column)
    data = load_data(staged, settings.block_size, session.workdir / "cache")
    prompt = sample_prompt if sample_prompt and sample_prompt.strip() else data_prompt(data)
    ids, notice = inputs.prompt_ids(prompt, caps.max_prompt_chars, base.config.block_size)
    max_time = max(1.0, caps.max_train_seconds - (time.perf_counter() - started))
    estimate = planned_seconds(base.num_params(), settings.steps, settings.batch_size, settings.block_size,
                               settings.mode)
    progress = Progress(settings, max_time, estimate, in_use(session),
                        notices=[n for n in (staged.notice, notice) if n])
    run = Run(data, ids, sample_params(caps.max_new_tokens, settings.seed), session.train_stop, max_time,
              ctx.gpu.remote)
    return progress, run


def finetune(ctx: AppContext, session: Session, text: str | None, file, column: str | None, mode, steps,
             learning_rate, batch_size, block_size, lora_rank, sample_prompt: str | None,
             seed) -> Iterator[tuple[go.Figure, str, str, str, Update]]:
    """Fine-tune this session's model on pasted text or an uploaded .txt/.csv/.jsonl file (the file wins if
    both are given), streaming (loss figure, progress, before sample, after sample, download). ``mode`` is
    "LoRA" or "full"; ``seed`` (blank or -1: random) is used for both samples. The fine-tuned model is packed
    for download by /download_finetuned."""
    started = time.perf_counter()
    session.train_stop.clear()
    key = session.model_key  # the result belongs to this model even if the session switches meanwhile
    try:
        progress, run = _prepare(ctx, session, started, text, file, column, mode, steps, learning_rate, batch_size,
                                 block_size, lora_rank, sample_prompt, seed)
    except UserError as e:  # nothing on the page has changed: say what the session still uses
        reason = str(e).rstrip()
        reason += "" if reason.endswith((".", "!", "?")) else "."
        raise UserError(f"{reason} Nothing was trained: this session still uses {in_use(session)}.") from None
    # closing: if the page goes away, the job ends at once (its result with it: nobody is left to use it)
    with contextlib.closing(ctx.gpu.iterate(train_job, ModelRef(key), progress, run,
                                            seconds=run.max_time + FINISH_SECONDS)) as items:
        for p, result in items:
            download = KEEP  # the last good run's download stays until a new model replaces it
            if result is not None:
                keep_result(session, key, *result, instructions=run.data.kind == "records")
                download = update(value=None, visible=False)
            yield p.figure(), p.markdown(), p.before, p.after, download


def stop(ctx: AppContext, session: Session) -> None:
    """Ask this session's training to stop after the step in progress (it keeps what it learned)."""
    session.train_stop.set()


def learning_rate(ctx: AppContext, mode: str) -> float:
    """The default learning rate of a method (the page sets it when the method changes)."""
    return DEFAULT_LR.get(mode, DEFAULT_LR["LoRA"])


def refit(ctx: AppContext, session: Session, fitted: str | None) -> tuple[Update, Update, Update, str, Update]:
    """Fit the controls to the session's model, if ``fitted`` (the model they fit) is another: (steps,
    batch size, block size, the model they now fit, the download button). Defaults that finish within the
    server's time limit, and the block size's range up to the model's context."""
    has_result = session.adapter is not None or session.finetuned_model is not None
    prepare = update(visible=has_result)
    key = session.model_key
    if fitted == key:
        return KEEP, KEEP, KEEP, key, prepare
    base = ctx.base(key)
    d = fitting_defaults(ctx, base)
    info = steps_info(ctx.caps.max_train_seconds, d.steps, d.batch_size, d.block_size)
    return (update(value=d.steps, info=info), update(value=d.batch_size),
            update(value=d.block_size, maximum=base.config.block_size, info=block_info(base.config.block_size)),
            key, prepare)


def fitting_defaults(ctx: AppContext, base: gpt2.GPT2) -> Defaults:
    """The default steps, batch and block size for ``base`` on this server (see ``finetune_plan``)."""
    return defaults(base.num_params(), base.config.block_size, ctx.caps.max_train_seconds, ctx.caps.max_train_steps)


def block_info(context: int) -> str:
    return f"at most the model's context ({context} here)"
