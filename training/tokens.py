"""A data file -> its token ids (``Tokens``), tokenized once and cached on disk.

The formats are described in ``training.data``, which builds training and validation splits from these
tokens. The cache is a directory per file and reading options under ``cache_dir``, keyed by the file's
sha256: a uint16 memmap of the ids (plus record offsets and prompt lengths for instruction data) and a
``meta.json``, written atomically (``gpt2.files.write_dir_atomically``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt2 import EOT_ID, encode, get_tokenizer
from gpt2.files import write_dir_atomically
from gpt2.prompts import format_prompt

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the cached format or the tokenization changes


class DataError(ValueError):
    """A data file that cannot be trained on; the message says what is wrong and where."""


def default_cache_dir() -> Path:
    """``$GPT2_PLAYGROUND_CACHE`` or ``~/.cache/gpt2-playground``, plus ``/data``."""
    root = os.environ.get("GPT2_PLAYGROUND_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / \
        "gpt2-playground"
    return Path(root).expanduser() / "data"


# ---------------------------------------------------------------------------------------------------
# Reading files


def read_text(path: Path) -> str:
    """The file as text, refusing empty, binary and non-UTF-8 files with a clear message."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path} is empty: there is nothing to train on")
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path} looks like a binary file (it contains NUL bytes); pass a UTF-8 text file")
    try:
        return raw.decode("utf-8-sig")  # -sig drops a byte-order mark
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 text: invalid byte 0x{raw[e.start]:02x} on line {line} "
                        f"(byte offset {e.start}); convert it to UTF-8 first") from None


def read_csv(path: Path, column: str | None) -> list[str]:
    """The non-empty values of one CSV column (default ``text``)."""
    text = read_text(path)
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    csv.field_size_limit(2**31 - 1)  # long texts in one cell are normal here
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    columns = reader.fieldnames or []
    name = column or "text"
    if name not in columns:
        how = f"has no column {column!r}" if column else "has no 'text' column (pass --column NAME)"
        raise DataError(f"{path} {how}; its columns are: {', '.join(map(repr, columns)) or '(none)'}")
    try:
        return [row[name] for row in reader if row.get(name) and row[name].strip()]
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: malformed CSV ({e})") from None


def read_jsonl(path: Path) -> tuple[str, list]:
    """``("text", [str])`` or ``("instruction", [(instruction, input, output)])``; all records one kind."""
    kind, items = None, []
    for n, line in enumerate(read_text(path).split("\n"), start=1):  # not splitlines(): JSON strings
        # may hold U+2028 unescaped, which splitlines() would treat as a line break
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path} line {n}: expected a JSON object, got {type(rec).__name__}")
        this = "instruction" if "instruction" in rec and "output" in rec else "text" if "text" in rec else None
        if this is None:
            raise DataError(f"{path} line {n}: a record needs a 'text' field, or 'instruction' and 'output' "
                            f"fields (and optionally 'input'); it has {sorted(rec)}")
        if kind is not None and this != kind:
            raise DataError(f"{path} line {n}: a {this} record, but earlier records are {kind} records; "
                            "use one kind per file")
        kind = this
        fields = ("instruction", "input", "output") if this == "instruction" else ("text",)
        bad = [f for f in fields if not isinstance(rec.get(f, ""), str)]
        if bad:
            raise DataError(f"{path} line {n}: field {bad[0]!r} must be a string")
        items.append(tuple(rec.get(f, "") for f in fields) if this == "instruction" else rec["text"])
    if kind is None:
        raise DataError(f"{path} has no records")
    return kind, items


# ---------------------------------------------------------------------------------------------------
# Tokenizing (cached)


@dataclass
class Tokens:
    """A tokenized file: one uint16 array, plus record boundaries for instruction data."""

    kind: str  # "stream" or "records"
    ids: np.ndarray  # (N,) uint16, usually a read-only memmap
    offsets: np.ndarray | None = None  # records: (n+1,) int64, record i is ids[offsets[i]:offsets[i+1]]
    prompt_lens: np.ndarray | None = None  # records: (n,) int64 tokens of each record's prompt


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenize_file(path: str | Path, column: str | None = None, cache_dir: str | Path | None = None) -> Tokens:
    """Tokenize ``path`` (or read its cached tokens). See the module docstring for the formats."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    options = f"v{CACHE_VERSION}|gpt2|{path.suffix.lower()}|{column or ''}"
    key = hashlib.sha256(f"{_sha256(path)}|{options}".encode()).hexdigest()[:24]
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    entry = cache / key
    if (entry / "meta.json").is_file():
        log.info("using cached tokens %s", entry)
        return _load_cached(entry)
    tokens = _tokenize(path, column)
    _save_cached(tokens, entry, path)
    log.info("tokenized %s: %d tokens, cached in %s", path, len(tokens.ids), entry)
    return _load_cached(entry)


def _tokenize(path: Path, column: str | None) -> Tokens:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _stream(read_csv(path, column))
    if suffix in (".jsonl", ".ndjson"):
        kind, items = read_jsonl(path)
        return _stream(items) if kind == "text" else _records(items)
    if suffix == ".json":
        raise DataError(f"{path}: write one JSON record per line and name the file .jsonl")
    if column:
        raise DataError(f"a column applies to CSV files only; {path} is read as plain text")
    return _stream(_chunks(read_text(path)), separate=False)


# A cut after a newline that has non-space on both sides: GPT-2's pre-tokenizer splits there anyway,
# so encoding the pieces gives exactly the tokens of the whole text.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


def _chunks(text: str, size: int = 1 << 22) -> list[str]:
    """``text`` in pieces of about ``size`` characters (so huge files encode in parallel, in parts)."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = _SAFE_CUT.search(text, start + size)
        if cut is None:
            break
        pieces.append(text[start : cut.start()])
        start = cut.start()
    return pieces + [text[start:]]


def _stream(docs: list[str], separate: bool = True) -> Tokens:
    """Documents joined into one stream, each ended by ``<|endoftext|>`` when ``separate``."""
    encoded = get_tokenizer().encode_batch(docs, allowed_special="all", disallowed_special=())
    tail = [EOT_ID] if separate else []
    return Tokens("stream", np.concatenate([np.asarray(ids + tail, dtype=np.uint16) for ids in encoded]))


def _records(items: list[tuple[str, str, str]]) -> Tokens:
    """Instruction records: prompt and answer are encoded apart, exactly as the model sees them at
    inference (the prompt alone, then generated tokens), so the mask boundary is exact."""
    ids, offsets, prompt_lens = [], [0], []
    for instruction, inp, output in items:
        prompt = encode(format_prompt(instruction, inp))
        answer = encode(output.strip()) + [EOT_ID]
        ids.extend(prompt + answer)
        offsets.append(len(ids))
        prompt_lens.append(len(prompt))
    return Tokens("records", np.asarray(ids, dtype=np.uint16), np.asarray(offsets, dtype=np.int64),
                  np.asarray(prompt_lens, dtype=np.int64))


def _save_cached(tokens: Tokens, entry: Path, source: Path) -> None:
    """Write the cache entry atomically. Another process (e.g. another DDP rank) may write the same entry
    at the same time: whichever finishes first is kept (both hold the same tokens)."""
    def write(tmp: Path) -> None:
        mm = np.memmap(tmp / "tokens.bin", dtype=np.uint16, mode="w+", shape=(max(len(tokens.ids), 1),))
        mm[: len(tokens.ids)] = tokens.ids
        mm.flush()
        del mm
        if tokens.kind == "records":
            np.save(tmp / "offsets.npy", tokens.offsets)
            np.save(tmp / "prompt_lens.npy", tokens.prompt_lens)
        meta = {"kind": tokens.kind, "n_tokens": len(tokens.ids), "source": str(source), "version": CACHE_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    write_dir_atomically(entry, write, keep_existing=True)


def _load_cached(entry: Path) -> Tokens:
    meta = json.loads((entry / "meta.json").read_text())
    ids = np.memmap(entry / "tokens.bin", dtype=np.uint16, mode="r")[: meta["n_tokens"]]
    if meta["kind"] == "records":
        return Tokens("records", ids, np.load(entry / "offsets.npy"), np.load(entry / "prompt_lens.npy"))
    return Tokens("stream", ids)
