"""The Fine-tune tab's files: the training data in, the fine-tuned model out.

Pasted text, or an uploaded ``.txt``/``.csv``/``.jsonl`` file (``training.data`` formats). When both are
given the file is used, and a notice says so. Either is copied to a fixed name inside the session's
private folder: the client's file name is never part of a path (only its extension is read, and checked
against a list). Sizes are checked before a byte is read. Every refusal is a ``UserError`` naming the data.

The fine-tuned model goes out as a .zip in the Hugging Face layout, packed only when the page asks for it
(``export``): a run keeps its adapter or model in the session, and packing hundreds of MB is slow. The
.zip is removed ``GPT2_DOWNLOAD_TTL`` seconds after it was last asked for (``ui.budget.DOWNLOADS``).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import gpt2
import training
from gpt2.lora import LoRAAdapter, merge_lora
from training.data import RecordSplit

from .. import budget
from ..context import AppContext
from ..gpu import ModelRef
from ..inputs import UserError, clean_text
from ..session import Session
from ..updates import Update, update

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
