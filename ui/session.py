"""What one browser session owns: its model choice, its fine-tuned adapter, its generation records and
its stop control. Nothing here is shared between sessions; the base models are (see ``ui.models``)."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import gpt2

from . import budget, workdirs
from .redraw import RedrawCache

MAX_RECORDS = 8  # generations a session keeps for the other tabs
# Of those, how many may keep per-step logits (vocab floats per step: the big part). On top of this rule
# the logits of all sessions share one server-wide budget, least recently used out (``ui.budget.LOGITS``).
LOGIT_RECORDS = 2


class StopFlag:
    """A stop request that a job in another process can see: a file in the session's private folder.
    It also reads as set once that folder is gone (the session closed)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self) -> None:
        with contextlib.suppress(FileNotFoundError):  # the session is already gone: nothing to stop
            self.path.touch()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def is_set(self) -> bool:
        return self.path.exists() or not self.path.parent.is_dir()


def _words(text: str, limit: int, from_end: bool = False) -> str:
    """At most about ``limit`` characters of ``text`` on one line, cut between words, with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    if from_end:
        cut = text[-limit:]
        return "…" + (cut.split(" ", 1)[1] if " " in cut[1:] else cut)
    cut = text[:limit]
    return (cut.rsplit(" ", 1)[0] if " " in cut[:-1] else cut) + "…"


@dataclass
class GenerationRecord:
    """One generation, kept so the attention and probability tabs can open it."""

    prompt_ids: list[int]
    params: gpt2.SamplingParams
    model_key: str
    finetuned: bool
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    steps: list[gpt2.StepDetails] = field(default_factory=list)
    seconds: float = 0.0
    id: int = 0  # the session's number for it, given when the session keeps it (``Session.add_record``)
    # A branch: the record it branched from, the step where it did, and the token forced there (its first
    # ``branch_step`` tokens are the parent's, then ``forced_token``, then its own picks, same settings and seed).
    parent: int | None = None
    branch_step: int | None = None
    forced_token: int | None = None
    decoding: str = "sampling"  # how its tokens were chosen: "sampling", "greedy" or "beam search"

    @property
    def label(self) -> str:
        """How pickers list it: id, size and settings first (never cut off), then where the text starts
        and how the continuation begins, each cut at a word."""
        decode = gpt2.get_tokenizer().decode
        prompt = _words(decode(self.prompt_ids), 24, from_end=True) or "(empty prompt)"
        start = _words(decode(self.token_ids[:12]), 24)
        tag = ", fine-tuned" if self.finetuned else ""
        return (f"#{self.id} · {len(self.token_ids)} tokens · T {self.params.temperature:g} · "
                f"{self.model_key}{tag} · {prompt} → {start}")

    def context_ids(self, step: int) -> np.ndarray:
        """Ids the model had seen when it chose token ``step`` (for the repetition penalty)."""
        return np.asarray(self.prompt_ids + self.token_ids[:step], dtype=np.int64)


@dataclass
class Session:
    """Per-browser-session state, held in a ``gr.State`` that expires after inactivity."""

    model_key: str
    adapter: object | None = None  # training.LoRAAdapter on the base model ``adapter_base``
    adapter_base: str | None = None
    finetuned_model: gpt2.GPT2 | None = None  # full fine-tuning keeps its own copy (``keep_finetuned``)
    dropped_note: str | None = None  # why the full copy is gone, when the server's budget dropped it
    use_finetuned: bool = False
    instruction_tuned: bool = False  # the fine-tuned model learned instruction records (the chat hint)
    records: deque[GenerationRecord] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    stop: threading.Event = field(default_factory=threading.Event)  # Generate's Stop
    redraw: RedrawCache = field(default_factory=RedrawCache, repr=False)  # the Attention tab's last text
    _workdir: tempfile.TemporaryDirectory | None = None
    # Numbered per session (1, 2, 3…): an id tells nothing about other sessions and finds none of theirs.
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    @property
    def workdir(self) -> Path:
        """A private temporary folder (uploads, downloads), removed when the session closes."""
        if self._workdir is None:
            self._workdir = workdirs.new()
        return Path(self._workdir.name)

    @property
    def train_stop(self) -> StopFlag:
        """Fine-tune's Stop: a file flag, so that training in a ZeroGPU worker process sees it too."""
        return StopFlag(self.workdir / "stop-training")

    def add_record(self, record: GenerationRecord) -> None:
        """Keep ``record`` as the session's newest generation, numbered after the previous one."""
        record.id = next(self._ids)
        self.records.append(record)
        for old in list(self.records)[:-LOGIT_RECORDS]:  # free the big arrays of older records
            budget.drop_logits(old)
            budget.LOGITS.dropped(old)
        budget.LOGITS.add(record)  # may drop other sessions' least recently used logits

    def record(self, record_id: int | None) -> GenerationRecord | None:
        """A kept record by id, or the latest one when ``record_id`` is None (it counts as used: its
        logits are the last to go under the server's budget)."""
        if record_id is None:
            found = self.records[-1] if self.records else None
        else:
            found = next((r for r in self.records if r.id == record_id), None)
        if found is not None:
            budget.LOGITS.touch(found)
        return found

    def keep_finetuned(self, adapter: object | None, model: gpt2.GPT2 | None, base: str,
                       instructions: bool = False) -> None:
        """Make ``adapter`` or the full copy ``model`` (trained on ``base``; on instruction records when
        ``instructions``) the session's fine-tuned model. A full copy counts against the server's limit on
        them (``ui.budget.FULL_COPIES``), which may drop another session's least recently used one."""
        self.adapter, self.finetuned_model, self.adapter_base = adapter, model, base
        self.dropped_note, self.instruction_tuned = None, instructions
        if model is not None:
            budget.FULL_COPIES.add(self)
        else:
            budget.FULL_COPIES.remove(self)

    def has_finetuned(self) -> bool:
        """Whether a fine-tuned version of the session's current model exists (asking counts as using a
        full copy: it is the last to be dropped)."""
        made = self.finetuned_model is not None or self.adapter is not None
        if self.finetuned_model is not None:
            budget.FULL_COPIES.touch(self)
        return made and self.adapter_base == self.model_key

    def close(self) -> None:
        """Called when the session expires: stop its work and drop its big objects now."""
        self.stop.set()  # training sees its stop flag vanish with the folder
        for old in self.records:
            budget.LOGITS.dropped(old)
        self.records.clear()
        budget.FULL_COPIES.remove(self)
        self.redraw.close()
        self.adapter = self.finetuned_model = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
