"""The Diversity tab: N samples of one prompt under the current settings; how diverse, repetitive and
likely they are (``gpt2.diversity``); and a sweep of temperature or top-p plotted as diversity against
log-probability, the quality/diversity trade-off.

One request draws ``num_samples`` x ``max_new_tokens`` tokens per setting: the current one, plus each
sweep point. The server refuses a request whose total passes ``Caps.max_diversity_tokens`` (it names the
parameters, the cap and the largest ``max_new_tokens`` that fits) rather than quietly shortening it, so
that the numbers always describe the settings asked for.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import plotly.graph_objects as go

import gpt2
from gpt2.diversity import SWEEPS, Batch, Metrics, mean_logprob, metrics, sample_sweep

from .. import inputs
from ..context import AppContext
from ..figures_diversity import tradeoff
from ..inputs import UserError
from ..session import Session

SWEEP_CHOICES = ("none", *SWEEPS)
DEFAULT_SAMPLES = 8
EXAMPLE = "ROMEO:\nBut soft, what light"
METRIC_ROWS = (  # (name, Metrics field, what it measures)
    ("distinct-1", "distinct_1", "distinct tokens / tokens, all samples pooled"),
    ("distinct-2", "distinct_2", "distinct token pairs / pairs"),
    ("distinct-3", "distinct_3", "distinct token triples / triples"),
    ("self-BLEU", "self_bleu", "each sample's BLEU against the others, averaged (0 to 1; 1: all alike)"),
    ("repetition rate", "repetition_rate", "seq-rep-4: share of a sample's 4-grams it already had, averaged"),
    ("mean log-prob", "mean_logprob", "per token, under the raw model (before the sampler stages), in nats"),
)
_OFF = gpt2.SamplingParams()  # the sampler settings that are off, to leave out of a setting's name


@dataclass
class Report:
    """A diversity analysis as it goes: the current setting's run, then one per sweep point."""

    sweep: str
    total_points: int
    current: tuple[Batch, Metrics] | None = None
    points: list[tuple[float, Metrics]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    seconds: float = 0.0


def diversity_job(model: gpt2.GPT2, ids: list[int], params: gpt2.SamplingParams, num_samples: int,
                  sweep: str) -> Iterator[Batch]:
    """The model work (a ``ui.gpu`` job): the current setting's batch, then one per sweep point."""
    yield from sample_sweep(model, ids, params, num_samples, sweep)


def check_budget(num_samples: int, max_new_tokens: int, sweep: str, cap: int) -> None:
    """Refuse a request that would draw more than ``cap`` tokens in all (samples x new tokens x runs)."""
    runs = 1 + len(SWEEPS[sweep][1]) if sweep != "none" else 1
    total = num_samples * max_new_tokens * runs
    if total > cap:
        fits = cap // (num_samples * runs)
        why = f"{runs} runs: the current setting and {runs - 1} sweep points" if runs > 1 else "1 run, no sweep"
        hint = f"max_new_tokens up to {fits} fits" if fits else "use fewer samples"
        raise UserError(f"num_samples x max_new_tokens x runs must be at most {cap:,} tokens (this server's limit); "
                        f"got {num_samples} x {max_new_tokens} x {runs} ({why}) = {total:,}. Use fewer samples, "
                        f"fewer new tokens or no sweep ({hint}).")


SHOWN_NAMES = {"top_k": "top-k", "top_p": "top-p", "repetition_penalty": "repetition penalty", "min_p": "min-p",
               "typical_p": "typical-p", "epsilon_cutoff": "epsilon", "eta_cutoff": "eta",
               "no_repeat_ngram_size": "no-repeat n-gram"}


def describe(params: gpt2.SamplingParams) -> str:
    """A setting in a few words: the temperature and every other sampler that is on."""
    parts = ["greedy (temperature 0)" if params.greedy else f"temperature {params.temperature:g}"]
    parts += [f"{shown} {getattr(params, name):g}" for name, shown in SHOWN_NAMES.items()
              if getattr(params, name) != getattr(_OFF, name)]
    return ", ".join(parts)


def _value(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def metrics_markdown(report: Report) -> str:
    """The metrics table of the current setting, then the sweep's table so far."""
    if report.current is None:
        return "Drawing the samples…"
    batch, m = report.current
    rows = "".join(f"| {name} | {_value(getattr(m, key))} | {what} |\n" for name, key, what in METRIC_ROWS)
    text = (f"| metric | value | what it measures |\n| --- | --- | --- |\n{rows}\n"
            f"{m.num_samples} samples, {m.num_tokens} tokens · {describe(batch.params)} · seed {batch.params.seed}"
            f" · {report.seconds:.1f} s")
    if report.sweep != "none":
        name = SWEEPS[report.sweep][0]
        head = f"| {name} | distinct-1 | distinct-2 | distinct-3 | self-BLEU | repetition rate | mean log-prob |"
        lines = [f"| {v:g} | {_value(p.distinct_1)} | {_value(p.distinct_2)} | {_value(p.distinct_3)} | "
                 f"{_value(p.self_bleu)} | {_value(p.repetition_rate)} | {_value(p.mean_logprob)} |"
                 for v, p in report.points]
        done = len(report.points)
        state = "" if done == report.total_points else f" ({done} of {report.total_points} points…)"
        text += f"\n\n**Sweep of {name}**{state}\n\n{head}\n{'| --- ' * 7}|\n" + "\n".join(lines)
    return text + "".join(f"\n\n> {n}" for n in report.notices)


def _fenced(text: str) -> str:
    """``text`` as a code block, whatever backticks it holds (a longer fence than any run in it)."""
    run = longest = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def samples_markdown(batch: Batch | None) -> str:
    """Each sample of the current setting: its text, length, mean log-probability and how it ended."""
    if batch is None:
        return ""
    parts = []
    for i, s in enumerate(batch.samples, 1):
        mean = _value(mean_logprob([s.logprobs]), ".2f")
        ended = "ended with <|endoftext|>" if s.finish_reason == "eos" else "max new tokens"
        parts.append(f"**Sample {i}** · {len(s.token_ids)} tokens · mean log-prob {mean} · {ended}\n\n"
                     f"{_fenced(s.text)}")
    return "\n\n".join(parts)


def figure(report: Report) -> go.Figure:
    batch, m = report.current
    swept = None if report.sweep == "none" else SWEEPS[report.sweep][0]
    return tradeoff(m, describe(batch.params), swept, report.points, report.total_points)


def diversity(ctx: AppContext, session: Session, prompt: str | None, num_samples, max_new_tokens, temperature,
              top_k, top_p, repetition_penalty, min_p, typical_p, epsilon_cutoff, eta_cutoff, no_repeat_ngram_size,
              seed, sweep) -> Iterator[tuple[str, str, go.Figure | None]]:
    """Draw ``num_samples`` continuations of ``prompt`` under the settings (and, with a ``sweep``, under each
    of its settings), streaming (metrics table, samples, trade-off figure) after each setting."""
    caps = ctx.caps
    params = inputs.sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                             max_tokens=caps.max_new_tokens, min_p=min_p, typical_p=typical_p,
                             epsilon_cutoff=epsilon_cutoff, eta_cutoff=eta_cutoff,
                             no_repeat_ngram_size=no_repeat_ngram_size)
    n = inputs.integer("num_samples", num_samples, 1, caps.max_diversity_samples,
                       f"a whole number from 1 to {caps.max_diversity_samples} (this server's limit)")
    sweep = inputs.choice("sweep", sweep, SWEEP_CHOICES)
    check_budget(n, params.max_new_tokens, sweep, caps.max_diversity_tokens)
    ref = ctx.ref(session)
    block = ctx.config(ref).block_size
    ids, notice = inputs.prompt_ids(prompt, caps.max_prompt_chars, block)
    # each sample's cache row holds the prompt and its new tokens (at most the context: the window slides)
    ids, crop = inputs.batch_prompt(ids, n, min(params.max_new_tokens, block - 1), caps.max_cache_positions,
                                    "num_samples")
    notices = [m for m in (notice, crop) if m]
    report = Report(sweep, len(SWEEPS[sweep][1]) if sweep != "none" else 0, notices=notices)
    yield metrics_markdown(report), "", None  # clear the last analysis at once
    start = time.perf_counter()
    with contextlib.closing(ctx.gpu.iterate(diversity_job, ref, ids, params, n, sweep)) as batches:
        for batch in batches:  # closed with the page: the job ends at once
            report.seconds = time.perf_counter() - start
            if batch.notice and batch.notice not in report.notices:
                report.notices.append(batch.notice)
            if report.current is None:
                report.current = (batch, metrics(batch.samples))
            else:
                report.points.append((getattr(batch.params, SWEEPS[sweep][0]), metrics(batch.samples)))
            yield metrics_markdown(report), samples_markdown(report.current[0]), figure(report)
