"""Branching: continue a kept generation from any of its steps with another token.

A branch of generation #3 at step 5 with token ``t`` is an ordinary generation (a record like any other,
shown in every tab) made with #3's prompt, model and settings, seed included, whose first tokens are
forced: #3's first five, then ``t``. ``gpt2.generate`` still draws at every forced step, so the branch
uses the same random numbers as #3: forced to #3's own token it repeats #3 exactly; forced to another it
shows what that token would have led to. The record keeps ``parent``, ``branch_step`` and
``forced_token``, so branches form a tree (``ui.logic.records``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import gpt2

from .. import inputs
from ..context import AppContext
from ..inputs import UserError
from ..session import GenerationRecord, Session
from ..updates import Update, update
from . import records
from .generate import BEAM, SAMPLING, Progress, stream, throttled

# A beam search's record is its best sequence replayed under a neutral sampler (``generate.beam_stream``):
# beam search cannot start from forced tokens, so a branch of one samples on from the token, and says so.
AFTER_BEAM = ("The parent was a beam search: after the forced tokens this branch samples (temperature 1, the "
              "search's n-gram ban), so it shows one continuation, not another search.")


def token_id(ctx: AppContext, parent: GenerationRecord, value) -> int:
    """``value`` as a token id that the parent's model can read and the tokenizer can show."""
    n = min(ctx.base(parent.model_key).config.vocab_size, gpt2.get_tokenizer().n_vocab)
    return inputs.integer("token", value, 0, n - 1, f"a token id, a whole number from 0 to {n - 1} (the model's "
                                                    "vocabulary; the candidates list shows each one's id)")


def check_model(session: Session, parent: GenerationRecord) -> None:
    """A branch continues with the parent's own model: refuse when the session has since moved to another
    (its continuation would show the other model, not the token)."""
    finetuned = session.use_finetuned and session.has_finetuned()
    if (session.model_key, finetuned) != (parent.model_key, parent.finetuned):
        made = f"{'a fine-tuned ' if parent.finetuned else ''}{parent.model_key}"
        now = f"{'a fine-tuned ' if finetuned else ''}{session.model_key}"
        raise UserError(f"Generation #{parent.id} was made by {made}, and this session now uses {now}: switch back "
                        "to that model (at the top of the page) to branch from it.")


def plan(ctx: AppContext, session: Session, record, step, token) -> tuple[GenerationRecord, int, int]:
    """The checked request: (the parent, the step, the token)."""
    parent = records.find(session, record)
    n = len(parent.token_ids)
    i = inputs.index("step", step, n, f"generation #{parent.id} has {n} tokens; 0 = the first")
    t = token_id(ctx, parent, token)
    check_model(session, parent)
    return parent, i, t


def branch_stream(ctx: AppContext, session: Session, record, step, token) -> Iterator[Progress]:
    """Run the branch of generation ``record`` at ``step`` with ``token``, yielding progress; the branch is
    kept as the session's newest record."""
    parent, i, t = plan(ctx, session, record, step, token)
    forced = [*parent.token_ids[:i], t]
    decoding = SAMPLING if parent.decoding == BEAM else parent.decoding
    progress = stream(ctx, session, None, parent.params, prompt_ids=list(parent.prompt_ids), forced_ids=forced,
                      parent=parent.id, branch_step=i, forced_token=t, decoding=decoding)
    if parent.decoding == BEAM:
        progress = _noted(progress, AFTER_BEAM)
    return progress


def _noted(progress: Iterator[Progress], note: str) -> Iterator[Progress]:
    """``progress`` with ``note`` among its notices."""
    with contextlib.closing(progress):  # closed with this one (the page went away): the job ends at once
        for p in progress:
            if note not in p.notices:
                p.notices.append(note)
            yield p


def info(session: Session, p: Progress) -> str:
    """Markdown: which branch this is, where it came from, and the generation's stats."""
    r = p.record
    name = f"Branch #{r.id}" if r.id else "Branch"  # numbered once kept, at the end
    same = ""
    parent = records.kept(session, r.parent)
    if parent is not None and r.forced_token == parent.token_ids[r.branch_step]:
        same = " (its own choice there" + (": the same seed repeats it)" if r.params.seed is not None else ")")
    seed = "" if r.params.seed is not None else ("  \n> The parent drew a random seed: after the forced tokens "
                                                 "this branch draws its own random numbers.")
    return f"**{name}** {records.origin(session, r)}{same}  \n{p.stats()}{seed}"


def branch(ctx: AppContext, session: Session, record, step, token) -> Iterator[tuple[str, str]]:
    """Continue generation ``record`` (an id, empty or "latest": the newest) from step ``step`` (0 = its
    first generated token) with the token id ``token`` instead of the one it chose, with the same prompt,
    model, settings and seed; streamed: (the branch's generated text, its info)."""
    progress = branch_stream(ctx, session, record, step, token)  # checked before the first yield
    session.stop.clear()
    last, said = None, None
    for last in throttled(progress):
        said = info(session, last)
        yield last.record.text, said
    if last is not None and info(session, last) != said:  # kept once the stream ended: now it has its number
        yield last.record.text, info(session, last)


def token_choices(ctx: AppContext, session: Session, record, step, current=None) -> Update:
    """The "continue with" list for one step: its top candidates (text, id, probability raw and after the
    generation's sampler), the chosen one marked; ``current`` stays selected when it is among them, else
    the first candidate other than the chosen one."""
    parent = records.find(session, record)
    n = len(parent.token_ids)
    i = inputs.index("step", step, n, f"generation #{parent.id} has {n} tokens; 0 = the first")
    details, chosen = parent.steps[i], parent.token_ids[i]
    ids = [int(t) for t in details.top_ids]
    raw = {t: float(p) for t, p in zip(ids, details.raw_probs, strict=True)}
    final = {t: float(p) for t, p in zip(ids, details.probs, strict=True)}
    if chosen not in raw:
        ids.append(chosen)
        raw[chosen], final[chosen] = details.chosen_raw_prob, details.chosen_prob
    labels = gpt2.token_display(ids)
    options = [(f"{'▶ ' if t == chosen else ''}{label!r} · id {t} · {raw[t]:.1%} raw, {final[t]:.1%} sampled"
                + (" (chosen)" if t == chosen else ""), t) for t, label in zip(ids, labels, strict=True)]
    if current in ids:
        return update(choices=options, value=current)
    return update(choices=options, value=next((t for t in ids if t != chosen), chosen))
