"""The Beams tab: a beam search drawn as a tree and stepped through, beside greedy and one sample from the
same prompt.

The search runs once per request (``gpt2.search.beam_search``, a ``ui.gpu`` job); its record is kept in
the tab's per-session ``gr.State`` (``KeptSearch``) so the step slider redraws the tree without the model.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

import gpt2
from gpt2.search import BeamParams, BeamResult, beam_search

from .. import inputs
from ..context import AppContext, Caps
from ..figures_beam import beam_tree
from ..inputs import UserError
from ..session import Session
from ..updates import KEEP, Update, update

EARLY_STOPPING = {"false": False, "true": True, "never": "never"}  # widget / API text -> BeamParams value
MAX_LENGTH_PENALTY = 10.0  # |length_penalty|: past this the scores only rank by length
SAMPLE_SEED, SAMPLE_TEMPERATURE = 0, 1.0  # the one sample shown beside the search: the model's own distribution
SEARCHING = "Searching…"
EXAMPLE = "ROMEO:\nBut soft, what light"


@dataclass(frozen=True)
class KeptSearch:
    """A session's last search, held in the tab's ``gr.State``: what the step slider redraws from."""

    result: BeamResult
    labels: list[list[str]]  # each step's candidates as display text (``gpt2.token_display``)
    prompt: str  # the prompt's text (the tree's root, on hover)

    @property
    def steps(self) -> int:
        return len(self.result.tree)


# ---- inputs -----------------------------------------------------------------------------------------


def early_stopping(value) -> bool | str:
    """``early_stopping`` as ``BeamParams`` takes it: True, False or "never"; the API may send booleans or
    the widget's texts "true", "false", "never" (any case)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    return EARLY_STOPPING[inputs.choice("early_stopping", value, list(EARLY_STOPPING))]


def beam_params(ctx: AppContext, num_beams, max_new_tokens, length_penalty, early_stopping_value,
                no_repeat_ngram_size, num_return_sequences, min_beams: int = 1) -> BeamParams:
    """Search settings from widget or API values, within the server's caps (beams, new tokens, positions)."""
    caps = ctx.caps
    one = "; 1 = greedy" if min_beams == 1 else ""
    beams = inputs.integer("num_beams", num_beams, min_beams, caps.max_beams,
                           f"a whole number from {min_beams} to {caps.max_beams} (this server's limit{one})")
    returned = inputs.integer("num_return_sequences", num_return_sequences, 1, beams,
                              f"a whole number from 1 to num_beams ({beams})")
    new = inputs.integer("max_new_tokens", max_new_tokens, 1, caps.max_new_tokens,
                         f"a whole number from 1 to {caps.max_new_tokens} (this server's limit)")
    inputs.batch_prompt([], beams, new, caps.max_cache_positions, "num_beams")  # refused if nothing would fit
    try:
        return BeamParams(
            num_beams=beams,
            max_new_tokens=new,
            length_penalty=inputs.number("length_penalty", length_penalty, -MAX_LENGTH_PENALTY, MAX_LENGTH_PENALTY),
            early_stopping=early_stopping(early_stopping_value),
            no_repeat_ngram_size=inputs.integer("no_repeat_ngram_size", no_repeat_ngram_size, 0, inputs.MAX_NGRAM,
                                                f"a whole number from 0 to {inputs.MAX_NGRAM} (0 = off)"),
            num_return_sequences=returned,
        )
    except ValueError as e:  # what only BeamParams knows
        raise UserError(str(e)) from None


def search_prompt(text: str | None, caps: Caps, block_size: int,
                  params: BeamParams) -> tuple[list[int], list[str]]:
    """The prompt's ids, cropped from the left so that the new tokens fit in the context after it (a
    search cannot slide its window as sampling does) and every beam's positions within
    ``caps.max_cache_positions``, and notices saying what was cropped."""
    ids, notice = inputs.prompt_ids(text, caps.max_prompt_chars, block_size)
    notices = [notice] if notice else []
    new = params.max_new_tokens
    room = max(1, block_size + 1 - new)  # the last new token is never fed back
    if len(ids) > room:
        ids = ids[-room:]
        notices.append(f"Prompt cropped to its last {room} tokens so that {new} new tokens fit: the model's "
                       f"context ({block_size} tokens).")
    ids, notice = inputs.batch_prompt(ids, params.num_beams, new, caps.max_cache_positions, "num_beams")
    return ids, notices + ([notice] if notice else [])


def new_tokens(ids: list[int], block_size: int, max_new_tokens: int) -> int:
    """How many steps a search can take after ``ids`` (an empty prompt reads ``<|endoftext|>``)."""
    return max(1, min(max_new_tokens, block_size + 1 - len(inputs.model_input(ids))))


# ---- model work (ui.gpu jobs) -----------------------------------------------------------------------


def search_job(model: gpt2.GPT2, ids: list[int], params: BeamParams) -> BeamResult:
    """The beam search (a ``ui.gpu`` job: plain records back)."""
    try:
        return beam_search(model, ids, params)
    except ValueError as e:  # what only the model knows (e.g. a checkpoint with a smaller vocabulary)
        raise UserError(str(e)) from None


def decode_job(model: gpt2.GPT2, ids: list[int], params: gpt2.SamplingParams) -> str:
    """The text one sampling run generates after ``ids`` (a ``ui.gpu`` job)."""
    return "".join(step.text for step in gpt2.generate(model, ids, params))


# ---- outputs ----------------------------------------------------------------------------------------


def sequence_text(ids: list[int]) -> str:
    """A returned sequence's text, without the ``<|endoftext|>`` that ended it."""
    return gpt2.get_tokenizer().decode(ids[:-1] if ids and ids[-1] == gpt2.EOT_ID else ids)


def kept_search(result: BeamResult, prompt_ids: list[int]) -> KeptSearch:
    """What the step slider needs of a search: the record and its candidates' labels."""
    labels = [gpt2.token_display([c.token_id for c in step.candidates]) for step in result.tree]
    prompt = gpt2.get_tokenizer().decode(prompt_ids) if prompt_ids else "(empty prompt: <|endoftext|>)"
    return KeptSearch(result, labels, prompt)


def _cell(text: str) -> str:
    """Text as one Markdown table cell: escaped, on one line (line breaks shown as ↵)."""
    text = re.sub(r"([\\`*_\[\]~])", r"\\\1", text)  # Markdown's emphasis and code marks, as text
    return html.escape(text).replace("|", "&#124;").replace("\n", "↵") or "(empty)"


def stop_reason(result: BeamResult, params: BeamParams, steps_possible: int) -> str:
    """Why the search ended, in words."""
    n = len(result.tree)
    if n >= params.max_new_tokens:
        return f"max_new_tokens ({params.max_new_tokens})"
    if n >= steps_possible:
        return "the model's context is full"
    if params.early_stopping is True:
        return f"{params.num_beams} hypotheses finished (early_stopping=true)"
    return "no live beam can beat the finished hypotheses any more"


def hypotheses_table(result: BeamResult, params: BeamParams, steps_possible: int, notices: list[str]) -> str:
    """Markdown: a summary of the search, then the returned sequences with their normalised scores and
    whether they ended with ``<|endoftext|>`` or at the length limit."""
    finished = sum(len(step.finished) for step in result.tree)
    lines = [f"**{params.num_beams} beams · {len(result.tree)} steps** · {finished} hypotheses finished during "
             f"the search (★ in the tree) · ended: {stop_reason(result, params, steps_possible)}",
             "", "| # | score | tokens | ended | text |", "| ---: | ---: | ---: | --- | --- |"]
    for rank, (ids, score) in enumerate(zip(result.sequences, result.scores, strict=True), 1):
        ended = "end of text" if ids and ids[-1] == gpt2.EOT_ID else "length"
        lines.append(f"| {rank} | {score:.4f} | {len(ids)} | {ended} | {_cell(sequence_text(ids))} |")
    return "\n".join(lines) + "".join(f"\n\n> {m}" for m in notices)


# ---- events -----------------------------------------------------------------------------------------


def search(ctx: AppContext, session: Session, prompt: str | None, num_beams, max_new_tokens, length_penalty,
           early_stopping, no_repeat_ngram_size, num_return_sequences,
           kept: KeptSearch | None = None) -> Iterator[tuple]:
    """Beam-search ``prompt``, then greedy and one sample (temperature 1, seed 0) from it with the same
    new tokens and n-gram ban: (best sequence's text, hypotheses table, tree figure, greedy text, sample
    text, what the step slider keeps), yielded as each is ready."""
    params = beam_params(ctx, num_beams, max_new_tokens, length_penalty, early_stopping, no_repeat_ngram_size,
                         num_return_sequences)
    ref = ctx.ref(session)
    block = ctx.config(ref).block_size
    ids, notices = search_prompt(prompt, ctx.caps, block, params)
    yield "", SEARCHING, KEEP, "", "", kept  # the old texts go at once; the old tree stays until the new one
    result = ctx.gpu.call(search_job, ref, ids, params)
    kept = kept_search(result, ids)
    steps = new_tokens(ids, block, params.max_new_tokens)
    best, table = sequence_text(result.sequences[0]), hypotheses_table(result, params, steps, notices)
    figure = beam_tree(result, kept.labels, prompt=kept.prompt)
    yield best, table, figure, "…", "…", kept
    texts = ["…", "…"]
    for i, (temperature, seed) in enumerate(((0.0, None), (SAMPLE_TEMPERATURE, SAMPLE_SEED))):
        sampling = gpt2.SamplingParams(temperature=temperature, seed=seed, max_new_tokens=steps,
                                       no_repeat_ngram_size=params.no_repeat_ngram_size)
        texts[i] = ctx.gpu.call(decode_job, ref, ids, sampling)
        yield best, table, figure, *texts, kept  # the figure again: an API caller gets the last outputs


def fit_steps(ctx: AppContext, session: Session, kept: KeptSearch | None = None) -> Update:
    """The step slider over the kept search's steps, at its last (the whole tree)."""
    if kept is None:
        return KEEP
    last = kept.steps - 1
    return update(value=last, minimum=0, maximum=max(1, last), interactive=last > 0)  # a 0..0 slider won't render


def show_step(ctx: AppContext, session: Session, step, kept: KeptSearch | None = None) -> go.Figure:
    """The kept search's tree up to ``step`` (0 = the first new token), from the kept record: the model
    is not run again."""
    if kept is None:
        return beam_tree(None)
    i = inputs.index("step", step, kept.steps, f"the search took {kept.steps} steps; 0 = the first")
    return beam_tree(kept.result, kept.labels, upto=i, prompt=kept.prompt)
