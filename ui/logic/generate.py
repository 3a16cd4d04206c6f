"""The Generate tab: stream a continuation, compare two settings, keep every generation as a record."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

import gpt2

from .. import inputs
from ..context import AppContext
from ..session import GenerationRecord, Session

TOP_CANDIDATES = 20  # candidates kept per step for the probability tab
STREAM_INTERVAL_S = 0.05  # throttle page updates: a small model outruns the browser
EXAMPLES = [
    "ROMEO:\nBut soft, what light",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "The meaning of life is",
    "Once upon a time, in a land far away,",
]
PROMPT, GENERATED = "prompt", "generated"  # the HTML classes of the two parts of the output view


@dataclass
class Progress:
    """A generation as it goes: its record, notices about the prompt or the window, and why it ended."""

    record: GenerationRecord
    notices: list[str] = field(default_factory=list)
    finish_reason: str | None = None

    def stats(self) -> str:
        n, s = len(self.record.token_ids), self.record.seconds
        rate = f" · {n / s:.1f} tokens/s" if s > 0 and n else ""
        done = f" · finished: {self.finish_reason}" if self.finish_reason else ""
        notes = "".join(f"\n\n> {m}" for m in self.notices)
        return f"**{n} tokens**{rate}{done}{notes}"

    def view(self) -> str:
        """The prompt, then the continuation, as HTML: two spans whose classes tell them apart."""
        return view_html(gpt2.get_tokenizer().decode(self.record.prompt_ids), self.record.text)


def view_html(prompt: str, generated: str) -> str:
    """``prompt`` and ``generated`` as one text in HTML (escaped; white space kept by the page's style)."""
    spans = "".join(f'<span class="{kind}">{html.escape(text)}</span>'
                    for text, kind in ((prompt, PROMPT), (generated, GENERATED)) if text)
    return f'<div class="generation">{spans}</div>'



def generate_job(model: gpt2.GPT2, ids: list[int], params: gpt2.SamplingParams,
                 forced_ids: Sequence[int] = ()) -> Iterator[gpt2.Step]:
    """The model work of a generation (a ``ui.gpu`` job): steps with the details the other tabs show,
    their logits in half precision (half the memory, plenty for plots)."""
    for step in gpt2.generate(model, ids, params, top_candidates=TOP_CANDIDATES, keep_logits=True,
                              forced_ids=forced_ids):
        step.details.logits = step.details.logits.astype(np.float16)
        yield step


def stream(ctx: AppContext, session: Session, prompt: str | None, params: gpt2.SamplingParams, *,
           forced_ids: Sequence[int] = (), prompt_ids: list[int] | None = None,
           **record_fields) -> Iterator[Progress]:
    """Generate for a session, yielding progress after each token; the record is kept at the end. The
    session's Stop ends it with the finish reason "stopped". ``prompt_ids`` (already checked ids) replace
    ``prompt``; ``forced_ids`` are the first tokens (a branch, a replayed beam); ``record_fields`` go on the
    record (``parent``, ``branch_step``, ``forced_token``, ``decoding``)."""
    ref = ctx.ref(session)
    notice = None
    if prompt_ids is None:
        prompt_ids, notice = inputs.prompt_ids(prompt, ctx.caps.max_prompt_chars, ctx.config(ref).block_size)
    ids = prompt_ids
    record = GenerationRecord(ids, params, session.model_key, session.use_finetuned and session.has_finetuned(),
                              **record_fields)
    progress = Progress(record, [notice] if notice else [])
    steps = ctx.gpu.iterate(generate_job, ref, ids, params, list(forced_ids))
    start = time.perf_counter()
    try:
        for step in steps:
            record.token_ids.append(step.token_id)
            record.text += step.text
            record.steps.append(step.details)
            record.seconds = time.perf_counter() - start
            if step.notice:
                progress.notices.append(step.notice)
            progress.finish_reason = step.finish_reason
            if session.stop.is_set() and not progress.finish_reason:
                progress.finish_reason = "stopped"
            yield progress
            if progress.finish_reason:
                break
    finally:  # also when the browser goes away mid-stream: keep what was made, end the job
        steps.close()
        if record.token_ids:
            session.add_record(record)


def throttled(progress: Iterator[Progress]) -> Iterator[Progress]:
    """Pass on at most one update per ``STREAM_INTERVAL_S``, and always the last one."""
    last, pending = 0.0, None
    for p in progress:
        pending = p
        if time.perf_counter() - last >= STREAM_INTERVAL_S:
            last = time.perf_counter()
            yield p
            pending = None
    if pending is not None:
        yield pending


def generate(ctx: AppContext, session: Session, prompt: str | None, max_new_tokens, temperature, top_k, top_p,
             repetition_penalty, seed, stop) -> Iterator[tuple[str, str, str]]:
    """Stream a continuation of ``prompt``: (generated text, stats, prompt + text as HTML).
    ``seed`` blank or -1 is random; ``stop`` holds one stop sequence per line."""
    params = inputs.sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop,
                             max_tokens=ctx.caps.max_new_tokens)
    session.stop.clear()
    yield "", "", ""  # clear the last output at once (and the page holds the session: Stop reaches it)
    for p in throttled(stream(ctx, session, prompt, params)):
        yield p.record.text, p.stats(), p.view()


def compare(ctx: AppContext, session: Session, prompt: str | None, max_new_tokens, temperature_a, top_k_a, top_p_a,
            repetition_penalty_a, temperature_b, top_k_b, top_p_b, repetition_penalty_b, seed,
            stop) -> Iterator[tuple[str, str, str]]:
    """Generate with settings A and B from the same prompt and seed side by side, interleaving their
    tokens: (text A, text B, stats)."""
    settings = [inputs.sampling(max_new_tokens, t, k, p, r, seed, stop, max_tokens=ctx.caps.max_new_tokens,
                                suffix=suffix)
                for t, k, p, r, suffix in ((temperature_a, top_k_a, top_p_a, repetition_penalty_a, "_a"),
                                           (temperature_b, top_k_b, top_p_b, repetition_penalty_b, "_b"))]
    session.stop.clear()
    streams = [throttled(stream(ctx, session, prompt, params)) for params in settings]
    latest: list[Progress | None] = [None, None]
    while any(s is not None for s in streams):
        for i, s in enumerate(streams):
            if s is not None:
                latest[i] = next(s, None) or latest[i]
                if latest[i] is None or latest[i].finish_reason:
                    streams[i] = None
        texts = [p.record.text if p else "" for p in latest]
        yield *texts, "  \n".join(f"{n}: {p.stats()}" for n, p in zip("AB", latest, strict=True) if p)


def stop(ctx: AppContext, session: Session) -> None:
    """Ask this session's generation to end after the token in progress (what it made is kept)."""
    session.stop.set()
