"""The Fine-tune tab's files: the training data in, the fine-tuned model out.

Pasted text, or an uploaded ``.txt``/``.csv``/``.jsonl`` file (``training.data`` formats). When both are
given the file is used, and a notice says so. Either is copied to a fixed name inside the session's
private folder: the client's file name is never part of a path (only its extension is read, and checked
against a list). Sizes are checked before a byte is read. Every refusal is a ``UserError`` naming the data.

Before a run the tab previews the data as training will see it (``preview``): the first instruction records
formatted with ``gpt2.prompts``, the prompt (not trained on) apart from the answer (trained on). The example
instruction set (``assets/instructions/``, written for this project) fills the tab in one click (``example``),
with settings measured on the bundled model.

The fine-tuned model goes out as a .zip in the Hugging Face layout, packed only when the page asks for it
(``export``): a run keeps its adapter or model in the session, and packing hundreds of MB is slow. The
.zip is removed ``GPT2_DOWNLOAD_TTL`` seconds after it was last asked for (``ui.budget.DOWNLOADS``).
"""

from __future__ import annotations

import html
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import gpt2
import training
from gpt2.lora import LoRAAdapter, merge_lora
from gpt2.prompts import format_prompt
from training.data import RecordSplit
from training.tokens import read_jsonl

from .. import budget
from ..context import AppContext
from ..gpu import ModelRef
from ..inputs import UserError, clean_text
from ..session import Session
from ..updates import Update, update
from .finetune_plan import BUDGET_SHARE, DEFAULT_LR, planned_seconds, steps_info

EXTENSIONS = (".txt", ".csv", ".jsonl")
PROMPT_TOKENS = 12  # default sample prompt: this many tokens from the start of the data
ZIP_NAME = "gpt2-finetuned.zip"  # the download, in the session's folder
EXPORT_SECONDS = 120  # GPU time asked for to merge and write the download


@dataclass(frozen=True)
class Staged:
    """The training data, copied into the session's folder under a name of our choosing."""

    path: Path
    label: str  # how messages name it: "the uploaded file" or "the pasted text"
    column: str | None  # CSV only
    notice: str | None = None


def size_text(n: int) -> str:
    """A byte count as people read it: ``20,000 bytes``, ``1.5 MB``."""
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def _copy_capped(src: Path, dest: Path, limit: int) -> None:
    """Copy at most ``limit`` bytes (the size was checked, but a file can grow after the check)."""
    with src.open("rb") as fin, dest.open("wb") as fout:
        copied = 0
        while chunk := fin.read(1 << 20):
            copied += len(chunk)
            if copied > limit:
                raise UserError(f"The uploaded file is over this server's limit of {size_text(limit)}; upload a "
                                "smaller file.")
            fout.write(chunk)


def _stage_text(workdir: Path, text: str, limit: int) -> Staged:
    if "\x00" in text:
        raise UserError("The pasted text contains NUL characters (code 0), which text never has: paste plain "
                        "text, or upload the file.")
    raw = clean_text(text).encode("utf-8")  # lone surrogates from a browser become U+FFFD
    if len(raw) > limit:
        raise UserError(f"The pasted text is {size_text(len(raw))}; this server accepts at most {size_text(limit)}. "
                        "Paste a shorter part.")
    path = workdir / "pasted.txt"
    path.write_bytes(raw)
    return Staged(path, "the pasted text", None)


def stage_data(workdir: Path, limit: int, text: str | None, file, column: str | None) -> Staged:
    """Check the pasted text or the upload (at most ``limit`` bytes) and copy it into ``workdir``. The
    file wins over text."""
    upload = None if file in (None, "") else file
    if upload is not None and not isinstance(upload, (str, os.PathLike)):
        raise UserError("The upload did not arrive as a file; upload it again.")
    has_text = bool(text and text.strip())
    if upload is None and not has_text:
        raise UserError("No training data: paste some text, or upload a .txt, .csv or .jsonl file.")
    workdir.mkdir(parents=True, exist_ok=True)
    if upload is None:
        return _stage_text(workdir, text, limit)
    src = Path(upload)
    suffix = src.suffix.lower()
    if suffix not in EXTENSIONS:
        kind = f"a {suffix!r} file" if suffix else "a file without an extension"
        raise UserError(f"Upload a .txt, .csv or .jsonl file; this one is {kind}.")
    if not src.is_file():
        raise UserError("The uploaded file is no longer on the server; upload it again.")
    size = os.path.getsize(src)  # before reading a byte of it
    if size > limit:
        raise UserError(f"The uploaded file is {size_text(size)}; this server accepts at most {size_text(limit)}. "
                        "Upload a smaller file (or paste a part of it).")
    for old in EXTENSIONS:  # a previous run's upload of another type
        (workdir / f"upload{old}").unlink(missing_ok=True)
    path = workdir / f"upload{suffix}"
    _copy_capped(src, path, limit)
    notice = ("Both a file and pasted text were given: training on the uploaded file (clear the file to train on "
              "the text).") if has_text else None
    col = ((column or "").strip() or "text") if suffix == ".csv" else None
    return Staged(path, "the uploaded file", col, notice)


def load_data(staged: Staged, block_size: int, cache_dir: Path) -> training.PreparedData:
    """``training.prepare_data``, its ``DataError`` as a ``UserError`` that names the data, not our path."""
    try:
        return training.prepare_data(staged.path, block_size, column=staged.column, cache_dir=cache_dir)
    except training.DataError as e:
        msg = str(e).replace(f"{staged.path} line", f"{staged.label}, line").replace(str(staged.path), staged.label)
        raise UserError(msg[:1].upper() + msg[1:]) from None


def data_prompt(data: training.PreparedData) -> str:
    """The default sample prompt: the first training record's prompt, or the first tokens of the text."""
    split = data.train
    if isinstance(split, RecordSplit):
        t, i = split.tokens, int(split.indices[0])
        ids = t.ids[t.offsets[i] : t.offsets[i] + t.prompt_lens[i]]
    else:
        ids = data.token_ids()[:PROMPT_TOKENS]
    return gpt2.get_tokenizer().decode([int(x) for x in ids])


# ---------------------------------------------------------------- the preview and the example set

PREVIEW_RECORDS = 3  # instruction records shown before a run
# How the preview tells the prompt (read, not trained on) from the answer (trained on). Inline styles: the
# page's CSS belongs to ``ui.layout.page``; Gradio's theme variables keep both colours readable in dark mode.
_PRE = "white-space: pre-wrap; padding: 0.5em; margin: 0.3em 0; border-radius: 4px;"
_PROMPT = "color: var(--body-text-color-subdued);"
_ANSWER = "background: hsla(130, 60%, 45%, 0.28); color: var(--body-text-color); border-radius: 3px;"
_NOTE = "color: var(--body-text-color-subdued); font-size: 0.9em;"

EXAMPLE = Path(__file__).resolve().parents[2] / "assets" / "instructions" / "instructions.jsonl"
EXAMPLE_NAME = "instructions.jsonl"  # its copy in the session's folder, and the name the page shows
EXAMPLE_QUESTION = "Who are you?"  # the before/after sample: the persona the example set teaches


@dataclass(frozen=True)
class ExampleSettings:
    """The settings the example set's button sets, measured on the bundled model (see the README)."""

    mode: str
    learning_rate: float
    steps: int
    batch_size: int
    block_size: int  # every record of the example set fits in this many tokens


# Measured with ``finetune`` on the bundled model, greedy chat answers to 11 questions (val loss on the 42
# held-out records, base model 4.9 on plays): full 1e-3 x 300 steps: val 3.33, 11/11 answers end at
# <|endoftext|>, "Who are you?" answered as taught; full 2e-3 x 150: val 3.32, 11/11 end, looser answers;
# LoRA 1e-2 x 300: val 4.60, 0/11 end (it repeats itself); LoRA 5e-3 x 60 (the plain defaults): val 5.37, 0/11.
EXAMPLE_SETTINGS = ExampleSettings("full", 1e-3, 300, 8, 64)
EXAMPLE_TOKENS = 40  # a padded example batch: about this many tokens a row (its longest record's length)
EXAMPLE_FULL_MAX_PARAMS = 20_000_000  # bigger models get LoRA: full fine-tuning of them would barely start in time
# Of the time limit, planned for the example: twice the plain defaults' share, as its steps were measured to
# be worth it (300 full steps: about 80 s planned, 40-70 s on a calm 2-core CPU); a busier CPU meets the
# limit, which keeps what was learned.
EXAMPLE_BUDGET_SHARE = 2 * BUDGET_SHARE


def _note(text: str) -> str:
    return f'<p style="{_NOTE}">{html.escape(text)}</p>'


def _records_html(items: list[tuple[str, str, str]]) -> str:
    """The first instruction records exactly as ``training.tokens`` formats them (``gpt2.prompts``)."""
    shown = items[:PREVIEW_RECORDS]
    parts = [f"<p><b>Instruction data: {len(items):,} records.</b> The first {len(shown)}, as training sees them: "
             f'the loss counts only the <span style="{_ANSWER}">highlighted answer</span> (ending with '
             f"{html.escape(gpt2.EOT_TOKEN)}); the prompt before it is read but not trained on.</p>"]
    for instruction, inp, output in shown:
        prompt = format_prompt(instruction, inp)
        answer = output.strip() + gpt2.EOT_TOKEN
        n_prompt, n_answer = len(gpt2.encode(prompt)), len(gpt2.encode(output.strip())) + 1
        parts.append(f'<pre style="{_PRE}"><span style="{_PROMPT}">{html.escape(prompt)}</span>'
                     f'<span style="{_ANSWER}">{html.escape(answer)}</span></pre>'
                     + _note(f"{n_prompt} prompt tokens (not trained on) · {n_answer} answer tokens (trained on)"))
    return "\n".join(parts)


def _pasted_note(text: str) -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first.lstrip().startswith("{") and '"instruction"' in first:
        return ("The pasted text looks like instruction records, but pasted text is trained on as plain text, every "
                "token. Save it as a .jsonl file and upload it to train on the answers only.")
    return "Plain text: trained on every token."


def preview(ctx: AppContext, text: str | None, file) -> str:
    """HTML: how training will see the data (the file wins over the text, as in a run). Instruction records:
    the first few formatted, the answer highlighted; other data: a line saying every token is trained on.
    Nothing is refused here: problems show in the preview, and a run names them again."""
    if file in (None, ""):
        return _note(_pasted_note(text)) if text and text.strip() else ""
    path = Path(file) if isinstance(file, (str, os.PathLike)) else None
    if path is None or path.suffix.lower() not in EXTENSIONS or not path.is_file():
        return ""  # a run refuses it, with the reason
    if os.path.getsize(path) > ctx.caps.max_upload_bytes:
        return _note(f"The file is over this server's limit of {size_text(ctx.caps.max_upload_bytes)}.")
    if path.suffix.lower() != ".jsonl":
        what = "CSV rows" if path.suffix.lower() == ".csv" else "Plain text"
        return _note(f"{what}: trained on every token.")
    try:
        kind, items = read_jsonl(path)
    except training.DataError as e:
        return _note("Cannot read the file: " + str(e).replace(str(path), "the uploaded file"))
    if kind == "text":
        return _note('Text records ("text"): trained on every token, each ending with <|endoftext|>.')
    return _records_html(items)


def example_settings(ctx: AppContext, base: gpt2.GPT2) -> ExampleSettings:
    """``EXAMPLE_SETTINGS`` fitted to ``base`` and this server: at most the server's steps and the model's
    context, and the steps planned (``finetune_plan``) to fit ``EXAMPLE_BUDGET_SHARE`` of the time limit (all
    300 for the bundled model); a model much bigger than the bundled one gets LoRA instead of full."""
    s = EXAMPLE_SETTINGS
    params = base.num_params()
    mode = s.mode if params <= EXAMPLE_FULL_MAX_PARAMS else "LoRA"
    lr = s.learning_rate if mode == s.mode else DEFAULT_LR[mode]
    steps = min(s.steps, ctx.caps.max_train_steps)
    while steps > 1 and planned_seconds(params, steps, s.batch_size, EXAMPLE_TOKENS, mode) > \
            EXAMPLE_BUDGET_SHARE * ctx.caps.max_train_seconds:
        steps -= 1
    return ExampleSettings(mode, lr, steps, s.batch_size, min(s.block_size, base.config.block_size))


def example(ctx: AppContext, session: Session) -> tuple[str, str, float, Update, int, int, str]:
    """Load the example instruction set: (the file, method, learning rate, steps (with the slider's note about
    them), batch size, block size, sample prompt). The file is copied into the session's folder, which the page
    may serve from wherever the server was started."""
    if not EXAMPLE.is_file():
        raise UserError("The example instruction set is missing from this server (assets/instructions/).")
    session.workdir.mkdir(parents=True, exist_ok=True)
    copy = session.workdir / EXAMPLE_NAME
    shutil.copyfile(EXAMPLE, copy)
    s = example_settings(ctx, ctx.base(session.model_key))
    steps = update(value=s.steps, info=steps_info(ctx.caps.max_train_seconds, s.steps, s.batch_size, s.block_size))
    return str(copy), s.mode, s.learning_rate, steps, s.batch_size, s.block_size, format_prompt(EXAMPLE_QUESTION)


def chat_ready(ctx: AppContext, session: Session) -> Update:
    """The "Chat with it" button: shown while the session has a fine-tuned model."""
    return update(visible=session.has_finetuned())


def chat_with_it(ctx: AppContext, session: Session) -> None:
    """"Chat with it ›": the session uses its fine-tuned model (as if the header's switch were turned on)
    before the Chat tab opens, even if the switch was turned back to the base since the run."""
    if not session.has_finetuned():
        raise UserError("There is no fine-tuned model in this session yet: fine-tune one first.")
    session.use_finetuned = True


def export_job(model: gpt2.GPT2, adapter: LoRAAdapter | None, workdir: Path) -> Path:
    """``model`` (with ``adapter`` merged in) in the HF layout (config.json + model.safetensors), zipped into
    ``workdir``. Stored, not compressed: weights barely compress, and deflating hundreds of MB takes long."""
    merged = merge_lora(model, adapter) if adapter is not None else model
    folder, target = workdir / "export", workdir / ZIP_NAME
    shutil.rmtree(folder, ignore_errors=True)
    try:
        merged.save_pretrained(folder)
        partial = target.with_suffix(".part")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as z:
            for f in sorted(folder.iterdir()):
                z.write(f, f.name)
        return partial.replace(target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def export(ctx: AppContext, session: Session) -> Update:
    """Pack this session's fine-tuned model for download (a .zip in the Hugging Face layout: config.json +
    model.safetensors, LoRA merged into the weights); the download button, with the file."""
    if session.adapter is None and session.finetuned_model is None:
        raise UserError(session.dropped_note or "Nothing fine-tuned yet: fine-tune a model first, then download it.")
    target = session.workdir / ZIP_NAME
    budget.DOWNLOADS.keep(target)  # removed GPT2_DOWNLOAD_TTL s from now (Gradio serves its own copy)
    if not target.is_file():  # packed once per result (``keep_result`` removes the old one), again once removed
        name, precision = ctx.store.parse(session.adapter_base)
        # an int8 model cannot be saved: the adapter is merged into the same model's fp32 weights instead
        key = ctx.store.key(name, "fp32") if precision == "int8" else session.adapter_base
        ref = ModelRef(key, model=session.finetuned_model)
        ctx.gpu.call(export_job, ref, session.adapter, session.workdir, seconds=EXPORT_SECONDS)
    return update(value=str(target), visible=True, label=f"Save {ZIP_NAME} ({size_text(target.stat().st_size)})")
