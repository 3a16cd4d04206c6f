"""Training data: read a text, CSV or JSONL file, tokenize it once (cached), split it, serve batches.

Two kinds of data come out of a file:

* **a token stream** (``.txt``; CSV rows; JSONL ``{"text": ...}`` records, each followed by
  ``<|endoftext|>``): split by position (first 90% train, last 10% validation; with a test fraction the
  test split is the very end, and validation the part before it), training windows of ``block_size + 1``
  tokens are drawn at random inside the training part, so no window straddles the boundary;
* **instruction records** (JSONL ``{"instruction", "input"?, "output"}``): each record is formatted with
  ``gpt2.prompts`` (the template ``python -m gpt2 chat`` uses; shown in that module's docstring), the
  loss is masked (label -100) on the prompt, and ``collate`` pads a batch. Records are split at random
  with a fixed seed (0), so the split never depends on the training seed (nor does the validation split
  on the test fraction).

Fractions are of the whole data: ``val_fraction=0.1, test_fraction=0.1`` trains on 80%. The test split is
never trained or validated on (``training.run`` evaluates the best model on it once, at the end).

Tokens are cached as a uint16 memmap under ``cache_dir``, keyed by the file's sha256 and the reading
options, so a second run on the same file skips tokenization (``training.tokens``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt2 import EOT_ID

from .tokens import DataError, Tokens, tokenize_file

__all__ = [  # DataError, Tokens and tokenize_file are training.tokens', importable from here as before
    "IGNORE_INDEX", "Batch", "DataError", "Tokens", "tokenize_file", "collate", "StreamSplit", "RecordSplit",
    "MappedSplit", "PreparedData", "prepare_data",
]
log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of positions that do not count in the loss
Batch = tuple[torch.Tensor, torch.Tensor]  # (x, y), both (B, T) int64


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
    """Train, validation and test splits ready to serve batches (``val`` is None with ``val_fraction=0``,
    ``test`` with ``test_fraction=0``)."""

    train: StreamSplit | RecordSplit | MappedSplit
    val: StreamSplit | RecordSplit | MappedSplit | None
    kind: str  # "stream" or "records"
    n_tokens: int
    block_size: int
    test: StreamSplit | RecordSplit | MappedSplit | None = None

    def token_ids(self) -> np.ndarray:
        """Every token id of the training split (the used vocabulary comes from here)."""
        t = self.train
        if isinstance(t, StreamSplit):
            return t.ids
        return np.concatenate([t.tokens.ids[t.tokens.offsets[i] : t.tokens.offsets[i + 1]] for i in t.indices])

    def map_tokens(self, table: torch.Tensor) -> PreparedData:
        """The same data with ids mapped through ``table`` (full id -> new id)."""
        def mapped(split):
            return MappedSplit(split, table) if split is not None else None
        return PreparedData(mapped(self.train), mapped(self.val), self.kind, self.n_tokens, self.block_size,
                            mapped(self.test))

    def describe(self) -> str:
        unit = "windows" if self.kind == "stream" else "records"
        val = f"{len(self.val)} validation {unit}" if self.val is not None else "no validation split"
        test = f", {len(self.test)} test {unit}" if self.test is not None else ""
        return f"{self.n_tokens:,} tokens ({self.kind}): {len(self.train)} training {unit}, {val}{test}"

    @classmethod
    def from_tokens(cls, tokens: Tokens, block_size: int, val_fraction: float = 0.1, name: str = "the data",
                    test_fraction: float = 0.0) -> PreparedData:
        """Split tokenized data and check that each split can serve at least one block."""
        for what, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= f < 1.0:
                raise DataError(f"{what} must be in [0, 1), got {f}")
        if val_fraction + test_fraction >= 1.0:
            raise DataError(f"val_fraction + test_fraction must be below 1 to leave data to train on, got "
                            f"{val_fraction} + {test_fraction}")
        if tokens.kind == "records":
            return cls._split_records(tokens, block_size, val_fraction, test_fraction, name)
        n = len(tokens.ids)
        n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
        n_train = n - n_val - n_test
        sizes = {"training": n_train, "validation": n_val if val_fraction else None,
                 "test": n_test if test_fraction else None}
        sizes = {k: v for k, v in sizes.items() if v is not None}  # the splits there will be
        if min(sizes.values()) <= block_size:
            fit = min(sizes.values()) - 1
            hint = f"use a block size of {fit} or less, or more text" if fit >= 8 else "use more text"
            split = " and ".join(f"{v:,} {k}" for k, v in sizes.items())
            raise DataError(f"{name} is too small: {n:,} tokens ({split}), but each split needs at least "
                            f"block_size + 1 = {block_size + 1} tokens; {hint}")
        train = StreamSplit(tokens.ids[:n_train], block_size)  # train | validation | test, by position
        val = StreamSplit(tokens.ids[n_train : n_train + n_val], block_size) if val_fraction else None
        test = StreamSplit(tokens.ids[n_train + n_val :], block_size) if test_fraction else None
        return cls(train, val, "stream", n, block_size, test)

    @classmethod
    def _split_records(cls, tokens: Tokens, block_size: int, val_fraction: float, test_fraction: float,
                       name: str) -> PreparedData:
        n = len(tokens.offsets) - 1
        n_val = max(1, int(round(n * val_fraction))) if val_fraction else 0
        n_test = max(1, int(round(n * test_fraction))) if test_fraction else 0
        if n - n_val - n_test < 1:
            held = " and ".join(f"{f:.0%} for {k}" for k, f in (("validation", val_fraction), ("test", test_fraction))
                                if f)
            raise DataError(f"{name} has {n} record(s): too few to hold out {held} and still train; add records "
                            "or lower the held-out fractions")
        lengths = np.diff(tokens.offsets)
        if (lengths < 2).all():
            raise DataError(f"{name}: every record is shorter than two tokens")
        perm = np.random.default_rng(0).permutation(n)  # fixed seed: the split never moves
        cropped = int((lengths > block_size + 1).sum())
        if cropped:
            log.warning("%d of %d records are longer than block_size + 1 = %d tokens and will be cropped",
                        cropped, n, block_size + 1)
        # the permutation's end is validation, the part before it test: the validation split stays the same
        # records whatever the test fraction
        n_train = n - n_val - n_test
        train = RecordSplit(tokens, np.sort(perm[:n_train]), block_size)
        val = RecordSplit(tokens, np.sort(perm[n - n_val :]), block_size) if n_val else None
        test = RecordSplit(tokens, np.sort(perm[n_train : n - n_val]), block_size) if n_test else None
        return cls(train, val, "records", len(tokens.ids), block_size, test)


def prepare_data(path: str | Path, block_size: int, *, val_fraction: float = 0.1, column: str | None = None,
                 cache_dir: str | Path | None = None, test_fraction: float = 0.0) -> PreparedData:
    """Read, tokenize (cached) and split a ``.txt``, ``.csv``/``.tsv`` or ``.jsonl`` file.

    Raises ``DataError`` with a message naming the problem (and line, for JSONL) on bad data.
    """
    tokens = tokenize_file(path, column=column, cache_dir=cache_dir)
    return PreparedData.from_tokens(tokens, block_size, val_fraction, name=str(path), test_fraction=test_fraction)
