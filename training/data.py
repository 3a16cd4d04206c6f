"""Training data: read a text, CSV or JSONL file, tokenize it once (cached), split it, serve batches.

Two kinds of data come out of a file:

* **a token stream** (``.txt``; CSV rows; JSONL ``{"text": ...}`` records, each followed by
  ``<|endoftext|>``): split by position (first 90% train, last 10% validation), training windows of
  ``block_size + 1`` tokens are drawn at random inside the training part, so no window straddles the
  boundary;
* **instruction records** (JSONL ``{"instruction", "input"?, "output"}``): each record is formatted with
  ``gpt2.prompts`` (the template ``python -m gpt2 chat`` uses; shown in that module's docstring), the
  loss is masked (label -100) on the prompt, and ``collate`` pads a batch. Records are split at random
  with a fixed seed (0), so the split never depends on the training seed.

Tokens are cached as a uint16 memmap under ``cache_dir``, keyed by the file's sha256 and the reading
options, so a second run on the same file skips tokenization.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt2 import EOT_ID, encode, get_tokenizer
from gpt2.prompts import format_prompt

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of positions that do not count in the loss
CACHE_VERSION = 1  # bump when the cached format or the tokenization changes
Batch = tuple[torch.Tensor, torch.Tensor]  # (x, y), both (B, T) int64


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
    """Write into a temporary sibling and rename it: a crash never leaves a half-written cache entry."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
    try:
        mm = np.memmap(tmp / "tokens.bin", dtype=np.uint16, mode="w+", shape=(max(len(tokens.ids), 1),))
        mm[: len(tokens.ids)] = tokens.ids
        mm.flush()
        del mm
        if tokens.kind == "records":
            np.save(tmp / "offsets.npy", tokens.offsets)
            np.save(tmp / "prompt_lens.npy", tokens.prompt_lens)
        meta = {"kind": tokens.kind, "n_tokens": len(tokens.ids), "source": str(source), "version": CACHE_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.replace(tmp, entry)
        except OSError:  # another process (e.g. another DDP rank) wrote the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_cached(entry: Path) -> Tokens:
    meta = json.loads((entry / "meta.json").read_text())
    ids = np.memmap(entry / "tokens.bin", dtype=np.uint16, mode="r")[: meta["n_tokens"]]
    if meta["kind"] == "records":
        return Tokens("records", ids, np.load(entry / "offsets.npy"), np.load(entry / "prompt_lens.npy"))
    return Tokens("stream", ids)


# ---------------------------------------------------------------------------------------------------
# Splits and batches


def collate(examples: list[tuple[np.ndarray, int]], block_size: int) -> Batch:
    """Records ``(ids, prompt_len)`` -> padded ``(x, y)``: next-token labels, -100 on prompt and padding.

    Records longer than ``block_size + 1`` tokens are cropped to their start.
    """
    seqs = [(ids[: block_size + 1].astype(np.int64), p) for ids, p in examples]
    T = max(len(s) for s, _ in seqs) - 1
    x = torch.full((len(seqs), T), EOT_ID, dtype=torch.long)  # padding id: any valid token; never a label
    y = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long)
    for i, (s, prompt_len) in enumerate(seqs):
        t = torch.from_numpy(s)
        x[i, : len(s) - 1] = t[:-1]
        y[i, : len(s) - 1] = t[1:]
        y[i, : max(prompt_len - 1, 0)] = IGNORE_INDEX  # positions whose next token is still the prompt
    return x, y


class StreamSplit:
    """A contiguous run of tokens; batches are windows of ``block_size + 1`` tokens inside it."""

    def __init__(self, ids: np.ndarray, block_size: int) -> None:
        self.ids, self.block_size = ids, block_size

    def __len__(self) -> int:
        """Number of non-overlapping windows (what one evaluation pass covers)."""
        return max(0, (len(self.ids) - 1) // self.block_size)

    def _windows(self, starts) -> Batch:
        w = np.stack([self.ids[s : s + self.block_size + 1] for s in starts]).astype(np.int64)
        w = torch.from_numpy(w)  # (B, block_size + 1)
        return w[:, :-1], w[:, 1:]

    def sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        starts = torch.randint(len(self.ids) - self.block_size, (batch_size,), generator=gen)
        return self._windows(starts.tolist())

    def eval_batches(self, batch_size: int, max_batches: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Non-overlapping windows, evenly spread over the split when ``max_batches`` limits them;
        rank ``rank`` of ``world`` gets every world-th window."""
        starts = _spread(len(self), batch_size * max_batches)[rank::world] * self.block_size
        for i in range(0, len(starts), batch_size):
            yield self._windows(starts[i : i + batch_size])


class RecordSplit:
    """Some instruction records; batches are padded by ``collate``."""

    def __init__(self, tokens: Tokens, indices: np.ndarray, block_size: int) -> None:
        self.tokens, self.indices, self.block_size = tokens, indices, block_size

    def __len__(self) -> int:
        return len(self.indices)

    def _batch(self, idx) -> Batch:
        t = self.tokens
        return collate([(t.ids[t.offsets[i] : t.offsets[i + 1]], int(t.prompt_lens[i])) for i in idx],
                       self.block_size)

    def sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        pick = torch.randint(len(self.indices), (batch_size,), generator=gen)
        return self._batch(self.indices[pick.numpy()])

    def eval_batches(self, batch_size: int, max_batches: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        idx = self.indices[_spread(len(self), batch_size * max_batches)][rank::world]
        for i in range(0, len(idx), batch_size):
            yield self._batch(idx[i : i + batch_size])


class MappedSplit:
    """Another split whose token ids go through ``table`` (full id -> new id), e.g. a compact vocabulary."""

    def __init__(self, split: StreamSplit | RecordSplit, table: torch.Tensor) -> None:
        self.split, self.table = split, table

    def __len__(self) -> int:
        return len(self.split)

    def _map(self, batch: Batch) -> Batch:
        x, y = batch
        return self.table[x], torch.where(y == IGNORE_INDEX, y, self.table[y.clamp_min(0)])

    def sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        return self._map(self.split.sample(batch_size, gen))

    def eval_batches(self, batch_size: int, max_batches: int = 0, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        for batch in self.split.eval_batches(batch_size, max_batches, rank, world):
            yield self._map(batch)


def _spread(n: int, k: int) -> np.ndarray:
    """All of ``range(n)`` if ``k`` is 0 or at least ``n``, else ``k`` indices evenly spread over it."""
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


@dataclass
class PreparedData:
    """Train and validation splits ready to serve batches (``val`` is None with ``val_fraction=0``)."""

    train: StreamSplit | RecordSplit | MappedSplit
    val: StreamSplit | RecordSplit | MappedSplit | None
    kind: str  # "stream" or "records"
    n_tokens: int
    block_size: int

    def token_ids(self) -> np.ndarray:
        """Every token id of the training split (the used vocabulary comes from here)."""
        t = self.train
        if isinstance(t, StreamSplit):
            return t.ids
        return np.concatenate([t.tokens.ids[t.tokens.offsets[i] : t.tokens.offsets[i + 1]] for i in t.indices])

    def map_tokens(self, table: torch.Tensor) -> PreparedData:
        """The same data with ids mapped through ``table`` (full id -> new id)."""
        val = MappedSplit(self.val, table) if self.val is not None else None
        return PreparedData(MappedSplit(self.train, table), val, self.kind, self.n_tokens, self.block_size)

    def describe(self) -> str:
        unit = "windows" if self.kind == "stream" else "records"
        val = f"{len(self.val)} validation {unit}" if self.val is not None else "no validation split"
        return f"{self.n_tokens:,} tokens ({self.kind}): {len(self.train)} training {unit}, {val}"

    @classmethod
    def from_tokens(cls, tokens: Tokens, block_size: int, val_fraction: float = 0.1,
                    name: str = "the data") -> PreparedData:
        """Split tokenized data and check that each split can serve at least one block."""
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if tokens.kind == "records":
            return cls._split_records(tokens, block_size, val_fraction, name)
        n = len(tokens.ids)
        n_val = int(round(n * val_fraction))
        train = StreamSplit(tokens.ids[: n - n_val], block_size)
        val = StreamSplit(tokens.ids[n - n_val :], block_size) if val_fraction else None
        smallest = min(n - n_val, n_val) if val is not None else n
        if smallest <= block_size:
            fit = smallest - 1
            hint = f"use a block size of {fit} or less, or more text" if fit >= 8 else "use more text"
            split = f"{n - n_val:,} training" + (f" and {n_val:,} validation" if val is not None else "")
            raise DataError(f"{name} is too small: {n:,} tokens ({split}), but each split needs at least "
                            f"block_size + 1 = {block_size + 1} tokens; {hint}")
        return cls(train, val, "stream", n, block_size)

    @classmethod
    def _split_records(cls, tokens: Tokens, block_size: int, val_fraction: float, name: str) -> PreparedData:
        n = len(tokens.offsets) - 1
        n_val = max(1, int(round(n * val_fraction))) if val_fraction else 0
        if n - n_val < 1:
            raise DataError(f"{name} has {n} record(s): too few to hold out {val_fraction:.0%} for validation "
                            "and still train; add records or set the validation fraction to 0")
        lengths = np.diff(tokens.offsets)
        if (lengths < 2).all():
            raise DataError(f"{name}: every record is shorter than two tokens")
        perm = np.random.default_rng(0).permutation(n)  # fixed seed: the split never moves
        cropped = int((lengths > block_size + 1).sum())
        if cropped:
            log.warning("%d of %d records are longer than block_size + 1 = %d tokens and will be cropped",
                        cropped, n, block_size + 1)
        train = RecordSplit(tokens, np.sort(perm[: n - n_val]), block_size)
        val = RecordSplit(tokens, np.sort(perm[n - n_val :]), block_size) if n_val else None
        return cls(train, val, "records", len(tokens.ids), block_size)


def prepare_data(path: str | Path, block_size: int, *, val_fraction: float = 0.1, column: str | None = None,
                 cache_dir: str | Path | None = None) -> PreparedData:
    """Read, tokenize (cached) and split a ``.txt``, ``.csv``/``.tsv`` or ``.jsonl`` file.

    Raises ``DataError`` with a message naming the problem (and line, for JSONL) on bad data.
    """
    tokens = tokenize_file(path, column=column, cache_dir=cache_dir)
    return PreparedData.from_tokens(tokens, block_size, val_fraction, name=str(path))
