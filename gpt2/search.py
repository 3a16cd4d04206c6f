"""Beam search with transformers' semantics, recording the whole search as a tree of plain records.

CONTRACT (set by the lead; the UI builds on these names and fields; the implementation fills them in):
``beam_search(model, prompt_ids, BeamParams(...)) -> BeamResult``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .model import GPT2


@dataclass(frozen=True)
class BeamParams:
    """How to search. ``early_stopping``: True, False or ``"never"`` (as transformers)."""

    num_beams: int = 4
    max_new_tokens: int = 40
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    num_return_sequences: int = 1


@dataclass
class Candidate:
    """One token considered at a step: a beam of the previous step extended by ``token_id``."""

    token_id: int
    parent: int  # index into the previous step's ``kept`` (0 at step 0: the prompt)
    token_logprob: float  # log-probability of this token given its beam
    logprob: float  # cumulative log-probability of the sequence ending with this token
    status: str  # "kept" (a live beam), "finished" (a hypothesis, it ended with <|endoftext|>) or "pruned"
    score: float | None = None  # length-normalised score, for a finished one


@dataclass
class BeamStep:
    """One step of the search."""

    candidates: list[Candidate]  # every candidate considered, best cumulative log-prob first
    kept: list[int]  # indices into ``candidates`` of the live beams after this step, in beam order
    finished: list[int] = field(default_factory=list)  # indices into ``candidates`` that became hypotheses


@dataclass
class BeamResult:
    sequences: list[list[int]]  # generated ids (prompt excluded), best first; a finished one ends with EOT
    scores: list[float]  # their length-normalised scores (transformers' ``sequences_scores``)
    tree: list[BeamStep]  # per step
    paths: list[list[int]]  # per returned sequence: its candidate index at each step (to highlight it)


def beam_search(model: GPT2, prompt_ids: Sequence[int], params: BeamParams = BeamParams()) -> BeamResult:
    """The ``num_return_sequences`` best continuations of ``prompt_ids`` under beam search."""
    raise NotImplementedError  # the implementation lands next (see the contract above)
