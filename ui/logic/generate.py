"""The Generate tab: stream a continuation (sampling, greedy or beam search), compare two settings, keep
every generation as a record, and show the text coloured by each token's probability."""

from __future__ import annotations

import dataclasses
import html
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

import gpt2

from .. import inputs
from ..context import AppContext
from ..session import GenerationRecord, Session
from ..updates import Update, update
from . import beam
from .beam import search_prompt

TOP_CANDIDATES = 20  # candidates kept per step for the probability tab
LOGITS_BLOCK = 16  # steps whose kept logits share one allocation (see ``generate_job``)
# Page updates at most every 0.1 s (and always the last): each costs the server ~1-2 ms of Python under the
# GIL (Gradio's postprocessing, thread hops, the session state's config), taken from the model's steps;
# 10 a second still reads as a live stream (benchmarks/stream.py).
STREAM_INTERVAL_S = 0.1
EXAMPLES = [
    "ROMEO:\nBut soft, what light",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "The meaning of life is",
    "Once upon a time, in a land far away,",
]
PROMPT, GENERATED = "prompt", "generated"  # the HTML classes of the two parts of the output view
SAMPLING, GREEDY, BEAM = DECODINGS = ("sampling", "greedy", "beam search")
# The range each Generate setting's widget offers (the share link's values must fit them); the API takes
# the wider ranges of ``ui.inputs`` for the samplers. Defaults of the advanced samplers are "off".
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0, 2), "top_k": (0, 200), "top_p": (0, 1), "repetition_penalty": (0.5, 2),
    **inputs.ADVANCED_RANGES, "length_penalty": (-2, 3),
}
EARLY_STOPPING = beam.EARLY_STOPPING  # beam settings are parsed as the Beams tab parses them
ADVANCED_OFF = inputs.ADVANCED_OFF  # the advanced samplers' values that switch them off
ALTERNATIVES = 5  # candidates listed in a token's tooltip
# Colour bands of a token's probability under the model: (lowest probability, CSS class, legend label).
BANDS = ((0.5, "p50", "≥ 50%"), (0.2, "p20", "20–50%"), (0.05, "p5", "5–20%"), (0.01, "p1", "1–5%"),
         (0.0, "p0", "< 1%"))
LEGEND = ('<div class="legend">Colour: the model\'s own probability of each generated token (before the '
          "sampler settings); once it is finished, hover a token for its top alternatives. "
          + " ".join(f'<span class="tok {cls}">{label}</span>' for _, cls, label in BANDS) + "</div>")


@dataclass
class Progress:
    """A generation as it goes: its record, notices about the prompt or the window, why it ended, and the
    text each step made visible (``""`` while a character or a possible stop string is pending)."""

    record: GenerationRecord
    notices: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    pieces: list[str] = field(default_factory=list)
    _spans: dict[bool, list[str]] = field(default_factory=lambda: {True: [], False: []}, repr=False)  # rendered
    _prompt: str | None = field(default=None, repr=False)

    def stats(self) -> str:
        n, s = len(self.record.token_ids), self.record.seconds
        rate = f" · {n / s:.1f} tokens/s" if s > 0 and n else ""
        done = f" · finished: {self.finish_reason}" if self.finish_reason else ""
        notes = "".join(f"\n\n> {m}" for m in self.notices)
        return f"**{n} tokens**{rate}{done}{notes}"

    def view(self, tooltips: bool = True) -> str:
        """The prompt, then the continuation, as HTML: two spans whose classes tell them apart; each
        generated token coloured by its probability, and with ``tooltips`` its alternatives in its tooltip
        (a stream leaves them to its last update: 256 tokens' tooltips are 70 kB, sent again each update)."""
        if self._prompt is None:
            self._prompt = gpt2.get_tokenizer().decode(self.record.prompt_ids)
        spans = self._spans[tooltips]  # each token is rendered once, however often the view is
        for i in range(len(spans), len(self.pieces)):
            spans.append(token_span(self.pieces[i], self.record.token_ids[i], self.record.steps[i], tooltips))
        return view_html(self._prompt, spans)


def band(p: float) -> str:
    """The CSS class of probability ``p``'s colour band."""
    return next(cls for low, cls, _ in BANDS if p >= low)


def percent(p: float) -> str:
    """A probability as a percentage, with two significant digits below 0.1%."""
    return f"{p:.1%}" if p >= 0.001 else f"{100 * p:.2g}%"


def token_span(text: str, token_id: int, details: gpt2.StepDetails | None, tooltip: bool = True) -> str:
    """One generated token's visible ``text`` as an HTML span coloured by the model's (raw) probability of
    it, with a tooltip: that probability, the one after the sampler, and the top alternatives. A step that
    made no text visible gives nothing (its character shows with a later step)."""
    if not text or details is None:
        return html.escape(text)
    newline = " nl" if "\n" in text else ""  # the page marks it (a line break alone has no box to hover)
    if not tooltip:
        return f'<span class="tok {band(details.chosen_raw_prob)}{newline}">{html.escape(text)}</span>'
    top = [int(t) for t in details.top_ids[:ALTERNATIVES]]
    names = gpt2.token_display([token_id, *top])
    lines = [f"'{names[0]}': {percent(details.chosen_raw_prob)} under the model, "
             f"{percent(details.chosen_prob)} after the sampler", "top alternatives:"]
    lines += [f"{'▸' if t == token_id else '·'} '{name}' {percent(p)}"
              for t, name, p in zip(top, names[1:], details.raw_probs[:ALTERNATIVES], strict=True)]
    title = html.escape("\n".join(lines), quote=True)
    return (f'<span class="tok {band(details.chosen_raw_prob)}{newline}" title="{title}">'
            f"{html.escape(text)}</span>")


def view_html(prompt: str, generated: str | Sequence[str]) -> str:
    """``prompt`` and the generated part as one text in HTML (white space kept by the page's style), with
    the colour legend once there is a generated part. ``generated``: plain text (escaped here) or the
    generated tokens' spans (``token_span``)."""
    body = html.escape(generated) if isinstance(generated, str) else "".join(generated)
    spans = (f'<span class="{PROMPT}">{html.escape(prompt)}</span>' if prompt else "") + (
        f'<span class="{GENERATED}">{body}</span>' if body else "")
    legend = LEGEND if body and not isinstance(generated, str) else ""
    return f'<div class="generation">{spans}</div>{legend}'


def generate_job(model: gpt2.GPT2, ids: list[int], params: gpt2.SamplingParams,
                 forced_ids: Sequence[int] = ()) -> Iterator[gpt2.Step]:
    """The model work of a generation (a ``ui.gpu`` job): steps with the details the other tabs show,
    their logits in half precision (half the memory, plenty for plots).

    The half-precision logits of up to ``LOGITS_BLOCK`` steps share one array (each step holds its row):
    a vocabulary-sized array is one mmap and its page faults under the server's allocator settings
    (``ui.memory``), ~0.25 ms, so one per block instead of one per token. torch converts: numpy's float16
    cast is ~20x slower (~0.3 ms a step for GPT-2's vocabulary), with the same rounding."""
    block, row = np.empty((0, 0), np.float16), 0
    for i, step in enumerate(gpt2.generate(model, ids, params, top_candidates=TOP_CANDIDATES, keep_logits=True,
                                           forced_ids=forced_ids)):
        if row == len(block):  # sized to the steps still possible: no unused rows unless the run ends early
            rows = min(LOGITS_BLOCK, params.max_new_tokens - i)
            block, row = np.empty((rows, step.details.logits.size), np.float16), 0
        torch.from_numpy(block[row]).copy_(torch.from_numpy(step.details.logits))
        step.details.logits, row = block[row], row + 1
        yield step


def beam_job(model: gpt2.GPT2, ids: list[int], params: gpt2.BeamParams) -> tuple[list[int], float]:
    """The model work of a beam search (a ``ui.gpu`` job): the best sequence and its score."""
    result = gpt2.beam_search(model, ids, params)
    return list(result.sequences[0]), float(result.scores[0])


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
            progress.pieces.append(step.text)
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


def beam_stream(ctx: AppContext, session: Session, prompt: str | None, params: gpt2.SamplingParams,
                beam: gpt2.BeamParams) -> Iterator[Progress]:
    """Beam search, then its best sequence replayed as an ordinary record (``decoding`` "beam search"):
    every step gets the details the other tabs show. The replay's sampler is neutral but for the n-gram
    ban, so a step's "after the sampler" probabilities are those the search scored; ``params``' seed and
    stop sequences apply (a stop sequence cuts the text where it appears)."""
    ref = ctx.ref(session)
    ids, notices = search_prompt(prompt, ctx.caps, ctx.config(ref).block_size, beam)
    notice = " ".join(notices) or None
    start = time.perf_counter()
    best, score = ctx.gpu.call(beam_job, ref, inputs.model_input(ids), beam)
    searched = time.perf_counter() - start
    replay = gpt2.SamplingParams(max_new_tokens=len(best), seed=params.seed, stop=params.stop,
                                 no_repeat_ngram_size=beam.no_repeat_ngram_size)
    note = (f"Beam search: {beam.num_beams} beams, {searched:.2f} s; the best sequence's score (its "
            f"log-probability / length^{beam.length_penalty:g}) is {score:.3f}.")
    for p in stream(ctx, session, None, replay, forced_ids=best, prompt_ids=ids, decoding=BEAM):
        if note not in p.notices:
            p.notices[:0] = [n for n in (notice, note) if n]
        yield p


def beam_params(ctx: AppContext, max_new_tokens: int, num_beams, length_penalty, stopping,
                no_repeat_ngram_size: int) -> gpt2.BeamParams:
    """Beam search settings from widget or API values, as the Beams tab takes them (at least 2 beams here:
    1 would be greedy, a choice of its own)."""
    return beam.beam_params(ctx, num_beams, max_new_tokens, length_penalty, stopping, no_repeat_ngram_size, 1,
                            min_beams=2)


parse_early_stopping = beam.early_stopping


def throttled(progress: Iterator[Progress]) -> Iterator[Progress]:
    """Pass on the first update at once, then at most one per ``STREAM_INTERVAL_S``, and always the last."""
    last, pending = -math.inf, None
    for p in progress:
        pending = p
        if time.perf_counter() - last >= STREAM_INTERVAL_S:
            last = time.perf_counter()
            yield p
            pending = None
    if pending is not None:
        yield pending


def generate(ctx: AppContext, session: Session, prompt: str | None, max_new_tokens, temperature, top_k, top_p,
             repetition_penalty, seed, stop, min_p=None, typical_p=None, epsilon_cutoff=None, eta_cutoff=None,
             no_repeat_ngram_size=None, decoding=SAMPLING, num_beams=4, length_penalty=1.0,
             early_stopping="false") -> Iterator[tuple[str, str, str]]:
    """Stream a continuation of ``prompt``: (generated text, stats, prompt + text as HTML, coloured).
    ``seed`` blank or -1 is random; ``stop`` holds one stop sequence per line; the advanced samplers (None:
    off) as ``gpt2.SamplingParams``. ``decoding``: "sampling", "greedy" (temperature 0; the repetition
    penalty and n-gram ban still apply) or "beam search" (``num_beams``, ``length_penalty``,
    ``early_stopping``; the sampler settings but the n-gram ban do not apply)."""
    params = inputs.sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop,
                             max_tokens=ctx.caps.max_new_tokens, min_p=min_p, typical_p=typical_p,
                             epsilon_cutoff=epsilon_cutoff, eta_cutoff=eta_cutoff,
                             no_repeat_ngram_size=no_repeat_ngram_size)
    how = inputs.choice("decoding", decoding, DECODINGS)
    beam = beam_params(ctx, params.max_new_tokens, num_beams, length_penalty, early_stopping,
                       params.no_repeat_ngram_size)
    session.stop.clear()
    yield "", "", ""  # clear the last output at once (and the page holds the session: Stop reaches it)
    if how == BEAM:
        progress = beam_stream(ctx, session, prompt, params, beam)
    else:
        if how == GREEDY:
            params = dataclasses.replace(params, temperature=0.0)
        progress = stream(ctx, session, prompt, params, decoding=how)
    for p in throttled(progress):
        yield p.record.text, p.stats(), p.view(tooltips=p.finish_reason is not None)


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


def decoding_chosen(ctx: AppContext, decoding: str) -> Update:
    """Beam search's settings open when it is chosen, and close again otherwise."""
    return update(open=decoding == BEAM)
