"""The Fine-tune tab: train on the user's text with a live loss plot, then use, compare and download it.

The shared base model is never changed. LoRA (the default) trains a small adapter that only this
session applies (``training.lora``); full fine-tuning trains a private deep copy. Either becomes the
session's model in the other tabs (``AppContext.ref``) behind the header's "use my fine-tuned model"
toggle. Every limit (steps, upload size, wall-clock, block size) is checked here, on the server.

Data: pasted text, or an uploaded ``.txt``/``.csv``/``.jsonl`` file (``training.data`` formats). When
both are given the file is used and the progress says so. Either is copied to a fixed name inside the
session's private folder; the client's file name is never part of a path.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

import gpt2
import training
from training import DataError, LoRAAdapter, LoRAConfig, PreparedData, StepRecord, TrainConfig
from training.data import RecordSplit
from training.lora import merge_lora, use_adapter

from . import figures, widgets
from .context import AppContext, Caps
from .generate_tab import prepare_prompt
from .gpu import ModelRef, StopFlag
from .session import Session

MODES = ("LoRA", "full")
# Defaults finish in about a minute on a CPU with the bundled model (4 layers, n_embd 128, full vocabulary):
# 60 steps of 8 x 64 tokens took 54 s (LoRA) and 52 s (full), data, samples and zip included, on one
# shared core. Learning rates measured at this budget (validation loss on 89 kB of English prose, base
# 9.15): LoRA 3e-3 6.43, 5e-3 6.31, 1e-2 6.20 (unsteady), 3e-2 7.06 (diverges first); full 3e-4 5.99,
# 1e-3 4.56, 3e-3 4.60.
DEFAULT_LR = {"LoRA": 5e-3, "full": 1e-3}
DEFAULT_STEPS = 60
DEFAULT_BATCH = 8
DEFAULT_BLOCK = 64
DEFAULT_RANK = 8
MAX_BATCH = 32
MIN_BLOCK = 8
MAX_RANK = 64
MAX_LR = 1.0  # above this every run diverges: refuse it instead of training on NaNs
FULL_MAX_PARAMS = 200_000_000  # full fine-tuning holds a copy plus AdamW moments (16 bytes a parameter)
EXTENSIONS = (".txt", ".csv", ".jsonl")
EVAL_BATCHES = 4  # per evaluation: a cheap, steady validation estimate
WARMUP_STEPS = 5
SAMPLE_TOKENS = 60  # before/after sample length (capped by caps.max_new_tokens)
PROMPT_TOKENS = 12  # default sample prompt: this many tokens from the start of the data
FINISH_SECONDS = 60  # GPU time asked for beyond the training limit: the samples and the download
STREAM_INTERVAL_S = 0.2  # at most ~5 page updates a second; evaluations and the end always show
ZIP_NAME = "gpt2-finetuned"  # the download: <workdir>/gpt2-finetuned.zip


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


def _number(label: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{label} must be a number; got {value!r}.") from None
    if not math.isfinite(number):
        raise gr.Error(f"{label} must be a finite number; got {value!r}.")
    return number


def _whole(label: str, value, low: int, high: int, why: str = "") -> int:
    """A whole number in ``[low, high]``; widgets send 40.0 for 40, API clients may send anything."""
    number = _number(label, value)
    if number != int(number) or not low <= number <= high:
        raise gr.Error(f"{label} must be a whole number from {low} to {high}{why}; got {value!r}.")
    return int(number)


def parse_settings(caps: Caps, context: int, mode, steps, learning_rate, batch_size, block_size, lora_rank,
                   seed) -> Settings:
    """Widget (or API) values -> ``Settings``; anything out of range is a ``gr.Error`` saying the range.
    ``context`` is the session model's context length; ``seed`` blank or -1 picks a random one."""
    name = {m.lower(): m for m in MODES}.get(str(mode).strip().lower())
    if name is None:
        raise gr.Error(f"Mode must be 'LoRA' or 'full'; got {mode!r}.")
    lr = _number("Learning rate", learning_rate)
    if not 0 < lr <= MAX_LR:
        raise gr.Error(f"Learning rate must be above 0 and at most {MAX_LR:g}; got {learning_rate!r}. "
                       f"Try {DEFAULT_LR['LoRA']:g} for LoRA or {DEFAULT_LR['full']:g} for full fine-tuning.")
    if seed in (None, "", -1):
        seed = secrets.randbelow(2**31)  # shown in the progress, so the samples can be reproduced
    return Settings(
        mode=name,
        steps=_whole("Steps", steps, 1, caps.max_train_steps, " (this server's limit)"),
        lr=lr,
        batch_size=_whole("Batch size", batch_size, 1, MAX_BATCH),
        block_size=_whole("Block size", block_size, MIN_BLOCK, context, " (the model's context)"),
        rank=_whole("LoRA rank", lora_rank, 1, MAX_RANK),
        seed=_whole("Seed", seed, 0, 2**63 - 1, " (blank or -1: random)"),
    )


@dataclass(frozen=True)
class Staged:
    """The training data, copied into the session's folder under a name of our choosing."""

    path: Path
    label: str  # how messages name it: "the uploaded file" or "the pasted text"
    column: str | None  # CSV only
    notice: str | None = None


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def _copy_capped(src: Path, dest: Path, limit: int) -> None:
    """Copy at most ``limit`` bytes (the size was checked, but a file can grow after the check)."""
    with src.open("rb") as fin, dest.open("wb") as fout:
        copied = 0
        while chunk := fin.read(1 << 20):
            copied += len(chunk)
            if copied > limit:
                raise gr.Error(f"The uploaded file is over this server's limit of {_mb(limit)}; upload a "
                               "smaller file.")
            fout.write(chunk)


def stage_data(workdir: Path, caps: Caps, text: str | None, file, column: str | None) -> Staged:
    """Validate the pasted text or the upload and copy it into ``workdir``. The file wins over text."""
    upload = None if file in (None, "") else file
    if upload is not None and not isinstance(upload, (str, os.PathLike)):
        raise gr.Error("The upload did not arrive as a file; upload it again.")
    has_text = bool(text and text.strip())
    if upload is None and not has_text:
        raise gr.Error("No training data: paste some text, or upload a .txt, .csv or .jsonl file.")
    workdir.mkdir(parents=True, exist_ok=True)
    if upload is None:
        if "\x00" in text:
            raise gr.Error("The pasted text contains NUL characters (code 0), which text never has: paste plain "
                           "text, or upload the file.")
        raw = text.encode("utf-8", errors="replace")  # lone surrogates from a browser become "?"
        if len(raw) > caps.max_upload_bytes:
            raise gr.Error(f"The pasted text is {_mb(len(raw))}; this server accepts at most "
                           f"{_mb(caps.max_upload_bytes)}. Paste a shorter part.")
        path = workdir / "pasted.txt"
        path.write_bytes(raw)
        return Staged(path, "the pasted text", None)
    src = Path(upload)
    suffix = src.suffix.lower()  # only the extension of the client's name is used, checked against a list
    if suffix not in EXTENSIONS:
        kind = f"a {suffix!r} file" if suffix else "a file without an extension"
        raise gr.Error(f"Upload a .txt, .csv or .jsonl file; this one is {kind}.")
    if not src.is_file():
        raise gr.Error("The uploaded file is no longer on the server; upload it again.")
    size = os.path.getsize(src)  # before reading a byte of it
    if size > caps.max_upload_bytes:
        raise gr.Error(f"The uploaded file is {_mb(size)}; this server accepts at most "
                       f"{_mb(caps.max_upload_bytes)}. Upload a smaller file (or paste a part of it).")
    for old in EXTENSIONS:  # a previous run's upload of another type
        (workdir / f"upload{old}").unlink(missing_ok=True)
    path = workdir / f"upload{suffix}"
    _copy_capped(src, path, caps.max_upload_bytes)
    notice = ("Both a file and pasted text were given: training on the uploaded file (clear the file to "
              "train on the text).") if has_text else None
    col = ((column or "").strip() or "text") if suffix == ".csv" else None
    return Staged(path, "the uploaded file", col, notice)


def load_data(staged: Staged, block_size: int, cache_dir: Path) -> PreparedData:
    """``training.prepare_data`` with its ``DataError`` as a ``gr.Error`` that names the data, not our path."""
    try:
        return training.prepare_data(staged.path, block_size, column=staged.column, cache_dir=cache_dir)
    except DataError as e:
        msg = str(e).replace(f"{staged.path} line", f"{staged.label}, line").replace(str(staged.path), staged.label)
        raise gr.Error(msg[:1].upper() + msg[1:]) from None


def data_prompt(data: PreparedData) -> str:
    """The default sample prompt: the first training record's prompt, or the first tokens of the text."""
    split = data.train
    if isinstance(split, RecordSplit):
        t, i = split.tokens, int(split.indices[0])
        ids = t.ids[t.offsets[i] : t.offsets[i] + t.prompt_lens[i]]
    else:
        ids = data.token_ids()[:PROMPT_TOKENS]
    return gpt2.get_tokenizer().decode([int(x) for x in ids])


# ---------------------------------------------------------------- training


@dataclass
class Progress:
    """Everything the page shows about one run; updated in place and yielded as it goes."""

    settings: Settings
    caps: Caps
    notices: list[str] = field(default_factory=list)
    about: str = ""  # the data and the trainable parameters
    phase: str = "preparing"  # preparing, training, finishing, done
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    last: StepRecord | None = None
    learned: bool = False  # at least one optimizer step was applied
    before: str = ""
    after: str = ""
    zip_path: Path | None = None

    def add(self, rec: StepRecord) -> None:
        self.last = rec
        if rec.stop_reason != "nan":  # a NaN step was not applied
            self.learned = True
            self.steps.append(rec.step)
            self.train_loss.append(rec.train_loss)
        if rec.val_loss is not None:
            self.val_steps.append(rec.step)
            self.val_loss.append(rec.val_loss)

    def figure(self) -> go.Figure:
        return figures.loss_curve(self.steps, self.train_loss, self.val_steps, self.val_loss)

    def markdown(self) -> str:
        r, s = self.last, self.settings
        if r is None:
            head = "Preparing the data…" if self.phase == "preparing" else "Training starts…"
        else:
            parts = [f"**step {r.step} / {r.steps}**", f"train loss {r.train_loss:.3f}"]
            if self.val_loss:
                parts.append(f"val loss {self.val_loss[-1]:.3f} (step {self.val_steps[-1]})")
            parts += [f"{r.tokens_per_s:,.0f} tokens/s", f"{_duration(r.elapsed_s)} elapsed"]
            if not r.stop_reason:
                parts.append(f"ETA {_duration(r.eta_s)}")
            head = " · ".join(parts)
        lines = [head]
        if r is not None and r.stop_reason:
            lines.append(self._outcome(r))
        if self.phase == "finishing":
            lines.append("Sampling the fine-tuned model and packing the download…")
        elif self.phase == "done" and self.learned:
            lines.append("This session now uses the fine-tuned model in every tab; the **use my fine-tuned "
                         "model** switch at the top goes back to the base.")
        rank = f" rank {s.rank}" if s.mode == "LoRA" else ""
        lines.append(f"{s.mode}{rank} · lr {s.lr:g} · batch {s.batch_size} × block {s.block_size} · "
                     f"sample seed {s.seed}" + (f" · {self.about}" if self.about else ""))
        lines += [f"> {n}" for n in self.notices]
        return "\n\n".join(lines)

    def _outcome(self, r: StepRecord) -> str:
        if r.stop_reason == "done":
            return f"Finished all {r.steps} steps."
        if r.stop_reason == "stopped":
            return f"Stopped at step {r.step} of {r.steps}; what it learned so far is kept."
        if r.stop_reason == "time":
            return (f"Reached this server's training time limit ({self.caps.max_train_seconds} s) at step "
                    f"{r.step}; what it learned is kept.")
        kept = " What it learned before that step is kept." if self.learned else " Nothing was learned."
        return f"{r.message}.{kept}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def sample_params(caps: Caps, seed: int) -> gpt2.SamplingParams:
    """The before/after sampler: one seed for both, so only the model differs."""
    return gpt2.SamplingParams(temperature=0.8, top_k=40, max_new_tokens=min(SAMPLE_TOKENS, caps.max_new_tokens),
                               seed=seed)


def sample_text(model: gpt2.GPT2, ids: list[int], params: gpt2.SamplingParams) -> str:
    """One sample from ``model`` with whatever adapter is active."""
    return "".join(step.text for step in gpt2.generate(model, ids, params))


def export_zip(workdir: Path, model: gpt2.GPT2) -> Path:
    """``model`` in the HF layout (config.json + model.safetensors), zipped into ``workdir``; the
    session's previous download is removed first."""
    target = workdir / f"{ZIP_NAME}.zip"
    target.unlink(missing_ok=True)
    folder = workdir / "export"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        model.save_pretrained(folder)
        return Path(shutil.make_archive(str(workdir / ZIP_NAME), "zip", root_dir=folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def keep_result(session: Session, key: str, adapter: LoRAAdapter | None, model: gpt2.GPT2 | None) -> None:
    """Make the result this session's fine-tuned model (replacing an earlier one) and switch to it."""
    session.adapter, session.finetuned_model = adapter, model
    session.adapter_base = key  # the base it was trained on (``AppContext.ref`` checks it for adapters)
    session.use_finetuned = True


Result = tuple[LoRAAdapter | None, gpt2.GPT2 | None]  # what a run made: an adapter, or a full copy


@dataclass(frozen=True)
class Run:
    """A fine-tuning run's inputs, as plain values (they travel to a ZeroGPU worker)."""

    data: PreparedData
    prompt_ids: list[int]
    stop: StopFlag
    max_time: float  # seconds left of the server's limit when training starts
    workdir: Path  # the session's private folder, for the download
    to_cpu: bool  # hand the result back on the CPU (it leaves a ZeroGPU worker)


def train_job(base: gpt2.GPT2, progress: Progress, run: Run) -> Iterator[tuple[Progress, Result | None]]:
    """Fine-tune the shared ``base`` (a ``ui.gpu`` job), yielding ``(progress, None)`` after steps
    (throttled), then, if anything was learned, a before/after sample, the zipped model and finally
    ``(progress, result)``. Stopped, timed out or NaN runs keep what was learned until then; the shared
    base is never changed (LoRA trains an adapter, full fine-tuning a deep copy)."""
    s = progress.settings
    params = sample_params(progress.caps, s.seed)
    progress.before = sample_text(base, run.prompt_ids, params)
    adapter, model = None, None
    if s.mode == "LoRA":
        adapter = LoRAAdapter(base, LoRAConfig(rank=s.rank), seed=s.seed)  # seeded: torch's global RNG untouched
        trainable = adapter.num_params()
    else:
        model = copy.deepcopy(base).requires_grad_(True)  # the shared base is frozen and stays so
        trainable = model.num_params()
    progress.about = f"{trainable:,} trainable parameters · {run.data.describe()}"
    cfg = TrainConfig(steps=s.steps, lr=s.lr, batch_size=s.batch_size, warmup_steps=min(WARMUP_STEPS, s.steps // 10),
                      eval_interval=max(1, s.steps // 10), eval_batches=EVAL_BATCHES, max_time=run.max_time)
    progress.phase = "training"
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
        progress.after = sample_text(base if model is None else model, run.prompt_ids, params)
    progress.zip_path = export_zip(run.workdir, merge_lora(base, adapter) if adapter is not None else model)
    progress.phase = "done"
    if run.to_cpu:
        adapter, model = (m.cpu() if m is not None else None for m in (adapter, model))
    yield progress, (adapter, model)


# ---------------------------------------------------------------- handlers and layout


@dataclass
class Handlers:
    finetune: Callable  # the /finetune endpoint (a generator)
    toggle: Callable  # the header's "use my fine-tuned model" checkbox
    stop: Callable


def make_handlers(ctx: AppContext) -> Handlers:
    """The tab's handlers: plain functions of widget values (testable without a browser)."""
    caps = ctx.caps

    def finetune(text, file, column, mode, steps, learning_rate, batch_size, block_size, lora_rank, sample_prompt,
                 seed, session):
        """Fine-tune this session's model on pasted text or an uploaded .txt/.csv/.jsonl file (the file wins
        if both are given), streaming (loss figure, progress, before sample, after sample, download, session).
        ``mode`` is "LoRA" or "full"; ``seed`` (blank or -1: random) is used for both samples."""
        started = time.perf_counter()
        session = ctx.session(session)
        session.train_stop.clear()
        key = session.model_key  # the result belongs to this model even if the session switches meanwhile
        base = ctx.base(key)  # read here for its size and context; the training runs in a ``ui.gpu`` job
        settings = parse_settings(caps, base.config.block_size, mode, steps, learning_rate, batch_size, block_size,
                                  lora_rank, seed)
        if settings.mode == "full" and base.num_params() > FULL_MAX_PARAMS:
            raise gr.Error(f"Full fine-tuning is limited to models of up to {FULL_MAX_PARAMS / 1e6:.0f}M parameters "
                           f"here ({key} has {base.num_params() / 1e6:.0f}M); choose LoRA.")
        progress = Progress(settings, caps)
        keep = gr.update()  # the download button: unchanged until there is a new zip
        # First yield: the page now holds the session, so Stop can reach it.
        yield progress.figure(), progress.markdown(), "", "", keep, session
        staged = stage_data(session.workdir, caps, text, file, column)
        data = load_data(staged, settings.block_size, session.workdir / "cache")
        if staged.notice:
            progress.notices.append(staged.notice)
        prompt = sample_prompt if sample_prompt and sample_prompt.strip() else data_prompt(data)
        ids, notice = prepare_prompt(prompt, caps, base.config.block_size)
        if notice:
            progress.notices.append(notice)
        run = Run(data, ids, session.train_stop, max(1.0, caps.max_train_seconds - (time.perf_counter() - started)),
                  session.workdir, ctx.gpu.remote)
        # closing: if the page goes away, the job ends at once (its result with it: nobody is left to use it)
        with contextlib.closing(ctx.gpu.iterate(train_job, ModelRef(key), progress, run,
                                                seconds=run.max_time + FINISH_SECONDS)) as steps:
            for p, result in steps:
                if result is not None:
                    keep_result(session, key, *result)
                download = gr.update(value=str(p.zip_path), visible=True) if p.zip_path else keep
                yield p.figure(), p.markdown(), p.before, p.after, download, session

    def toggle(value, session):
        """Switch this session between the base and its fine-tuned model; returns (checkbox, session)."""
        session = ctx.session(session)
        if value and not session.has_finetuned():
            if session.adapter is not None:
                gr.Warning(f"Your fine-tuned adapter was trained on {session.adapter_base}; choose that model "
                           "to use it, or fine-tune this one.")
            else:
                gr.Warning("Nothing fine-tuned yet: train in the Fine-tune tab first. The base model is used.")
            value = False
        session.use_finetuned = bool(value)
        return session.use_finetuned, session

    def stop(session) -> None:
        """Ask this session's training to stop after the step in progress (it keeps what it learned)."""
        if isinstance(session, Session):
            session.train_stop.set()

    return Handlers(finetune, toggle, stop)


@dataclass
class FinetuneTab:
    start: gr.Button
    stop: gr.Button
    plot: gr.Plot
    progress: gr.Markdown
    before: gr.Textbox
    after: gr.Textbox
    download: gr.DownloadButton
    done: list  # events that end a run (the header checkbox follows the session after them)


def _widest_context(ctx: AppContext) -> int:
    """The block-size slider's maximum: the widest offered context (a slider refuses API values past
    the maximum it was built with); the handler checks the session's own model."""
    configs = [ctx.store.get(ctx.default_key).config, *(gpt2.PRESETS[k] for k in ctx.store.entries
                                                         if k in gpt2.PRESETS)]
    return max(c.block_size for c in configs)


def build(ctx: AppContext, state: gr.State, use_finetuned: gr.Checkbox | None = None) -> FinetuneTab:
    """Lay out the tab and wire its events. With the header's ``use_finetuned`` checkbox, also wire the
    base/fine-tuned toggle and show the switch turned on after a run."""
    caps = ctx.caps
    h = make_handlers(ctx)
    context = ctx.store.get(ctx.default_key).config.block_size
    with gr.Row():
        with gr.Column(scale=3):
            text = gr.Textbox(label="Training text", lines=8, placeholder="Paste text to train on…")
            file = gr.File(label=f"…or upload a .txt, .csv or .jsonl file (at most {_mb(caps.max_upload_bytes)}; "
                                 "used instead of the text)", file_types=list(EXTENSIONS), type="filepath")
            column = gr.Textbox("text", label="CSV column", info="for .csv files: the column holding the text")
            with gr.Row():
                start = gr.Button("Start fine-tuning", variant="primary")
                stop = gr.Button("Stop")
            progress = gr.Markdown("Paste text or upload a file, then press **Start fine-tuning**.")
        with gr.Column(scale=2):
            mode = widgets.radio(list(MODES), value="LoRA", label="Method",
                            info="LoRA: a small adapter on the shared model (light); full: every weight of a copy")
            steps = widgets.slider(1, caps.max_train_steps, value=min(DEFAULT_STEPS, caps.max_train_steps), step=1,
                              label="steps", info=f"training also stops after {caps.max_train_seconds} s")
            lr = gr.Number(DEFAULT_LR["LoRA"], label="learning rate", info="above 0, at most 1")
            batch = widgets.slider(1, MAX_BATCH, value=DEFAULT_BATCH, step=1, label="batch size")
            block = widgets.slider(MIN_BLOCK, _widest_context(ctx), value=min(DEFAULT_BLOCK, context), step=1,
                              label="block size (tokens)", info=f"at most the model's context ({context} here)",
                              checked_by_handler=True)
            rank = widgets.slider(1, MAX_RANK, value=DEFAULT_RANK, step=1, label="LoRA rank")
    plot = gr.Plot(label="loss")
    with gr.Row():
        sample_prompt = gr.Textbox(label="Sample prompt", placeholder="blank = the start of your data", scale=3)
        seed = widgets.number(0, label="sample seed", info="blank or -1 = random", scale=1,
                              allowed="Give a whole number, or leave it blank (or -1) for a random seed.")
    with gr.Row():
        before = gr.Textbox(label="Before (base model)", lines=6, interactive=False)
        after = gr.Textbox(label="After (fine-tuned, same seed)", lines=6, interactive=False)
    download = gr.DownloadButton("Download the fine-tuned model (.zip, Hugging Face layout)", visible=False)

    mode.input(lambda m: DEFAULT_LR.get(m, DEFAULT_LR["LoRA"]), [mode], [lr], queue=False, api_visibility="private")
    train = start.click(h.finetune, [text, file, column, mode, steps, lr, batch, block, rank, sample_prompt, seed,
                                     state], [plot, progress, before, after, download, state], api_name="finetune",
                        concurrency_limit=1, concurrency_id="train",  # one run at a time; others see their place
                        show_progress="full", show_progress_on=[progress])
    stop.click(h.stop, [state], None, queue=False, api_visibility="private")
    if use_finetuned is not None:
        train.then(lambda s: isinstance(s, Session) and s.use_finetuned, [state], [use_finetuned], queue=False,
                   api_visibility="private")
        # Queued (not queue=False) so its gr.Warning reaches the page; never behind a training run.
        use_finetuned.input(h.toggle, [use_finetuned, state], [use_finetuned, state], concurrency_limit=None,
                            api_visibility="private")
    return FinetuneTab(start, stop, plot, progress, before, after, download, [train])
