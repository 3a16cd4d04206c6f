"""The Lab's attribution section: which input tokens drove a prediction, and which heads and MLPs wrote it.

What to explain is a typed text with a typed target (and optional foil), or a generated token: a kept
generation's step, whose text is what the model had read before it and whose target is the token it
chose there. One model job computes the per-token scores (``gpt2.attribution.attribute``, by the chosen
method) and the direct logit attribution of every head and MLP (``gpt2.interventions``); the figures are
pure functions of those records (``ui.figures_lab``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
import torch

import gpt2
from gpt2.attribution import attribute
from gpt2.interventions import LogitAttribution, direct_logit_attribution

from .. import figures_lab as figures
from .. import inputs
from ..context import AppContext
from ..gpu import ModelRef
from ..inputs import UserError
from ..session import Session
from ..updates import Update, update
from . import lab, probabilities, records

SOURCES = ("text", "a generation")
METHODS = ("gradient_x_input", "integrated_gradients", "occlusion")  # as ``gpt2.attribution.METHODS``
METHOD_LABELS = {"gradient_x_input": "gradient × input", "integrated_gradients": "integrated gradients",
                 "occlusion": "occlusion"}
METHOD_NOTES = {  # what each score means, for the summary
    "gradient_x_input": "the gradient of the score times each token's embedding, summed over its dimension",
    "integrated_gradients": "gradient × input averaged along the path from a zero token embedding, by {steps} "
                            "midpoint-rule points (the scores add up to score(text) − score(zero embeddings))",
    "occlusion": "how much the score drops when that token alone is replaced by <|endoftext|>",
}
EXAMPLE, EXAMPLE_TARGET = "Now is the winter of our discontent made glorious summer by this sun of", " York"
DEFAULT_STEPS = 32
TOP_TOKENS = 5  # tokens named in the summary
NO_TEXT = "text is empty: type a text whose next token to explain (and the target token)."
# the text's box: white space kept, long tokens wrapped, and room at the top for the component's label
TEXT_STYLE = "white-space: pre-wrap; line-height: 1.8; overflow-wrap: anywhere; padding: 1.8em 0.5em 0.2em"
# Diverging colours on either theme, the figures' (``ui.figures_lab.ATTR_SCALE``): blue raises the score
# (towards the target), red lowers it.
POSITIVE, NEGATIVE = (33, 102, 172), (178, 24, 43)
MAX_ALPHA = 0.5  # the strongest token: its text still reads on the colour


@dataclass(frozen=True)
class Question:
    """What to explain: the tokens read, the token predicted after them, and how."""

    ref: ModelRef
    ids: list[int]
    target: int
    foil: int | None
    method: str
    steps: int
    record_id: int | None = None  # a generation's step; None for a typed text
    step: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Found:
    """A job's result, plain values: the per-token scores, the heads and MLPs, and the model's prediction."""

    scores: np.ndarray  # (T,)
    dla: LogitAttribution
    score: float  # the score explained: log p(target) (− log p(foil))
    target_prob: float
    target_rank: int  # 1 = the model's top prediction
    top_id: int


# ---------------------------------------------------------------- parsing what to explain


def _settings(ctx: AppContext, method, steps) -> tuple[str, int]:
    method = inputs.choice("method", method, METHODS)
    cap = ctx.caps.max_attribution_steps
    steps = inputs.integer("steps", steps, 1, cap, f"a whole number from 1 to {cap} (integrated-gradients points, "
                                                   "this server's limit)")
    return method, steps


def crop(ids: list[int], cap: int) -> tuple[list[int], list[str]]:
    """``ids`` cropped from the left to ``cap`` tokens (the ones nearest the prediction stay), and a note."""
    if len(ids) <= cap:
        return ids, []
    return ids[-cap:], [f"Text cropped to its last {cap} tokens (this server's limit for attribution): the first "
                        f"{len(ids) - cap} are not attributed."]


def text_question(ctx: AppContext, session: Session, text, target, foil, method, steps) -> Question:
    """A typed text and target (and foil), read by the session's current model."""
    method, steps = _settings(ctx, method, steps)
    ref = ctx.ref(session)
    config = ctx.config(ref)
    ids, notice = inputs.prompt_ids(text, ctx.caps.max_prompt_chars, config.block_size)
    if not ids:
        raise UserError(NO_TEXT)
    target = lab.token("target", target, config.vocab_size)
    foil = _foil(foil, target, config.vocab_size)
    ids, notes = crop(ids, ctx.caps.max_attribution_tokens)
    return Question(ref, ids, target, foil, method, steps, notes=[notice, *notes] if notice else notes)


def record_question(ctx: AppContext, session: Session, record, step, foil, method, steps) -> Question:
    """Generated token ``step`` of a kept generation: the text the model had read before it (the prompt and
    the tokens before, as the model saw them) and the token it chose."""
    method, steps = _settings(ctx, method, steps)
    rec = records.find(session, record)
    ref, note = ctx.record_model(session, rec)
    config = ctx.config(ref)
    n = len(rec.token_ids)
    step = inputs.index("step", step, n, f"generation #{rec.id} has {n} generated tokens")
    target = rec.token_ids[step]
    foil = _foil(foil, target, config.vocab_size)
    ids, notes = crop(probabilities.step_window(rec, step, config.block_size), ctx.caps.max_attribution_tokens)
    return Question(ref, ids, target, foil, method, steps, rec.id, step, [note, *notes] if note else notes)


def _foil(value, target: int, vocab_size: int) -> int | None:
    foil = lab.token("foil", value, vocab_size, required=False)
    if foil == target:
        raise UserError(f"foil must differ from the target (the score would be 0); both are "
                        f"{records.token_text(target)} (#{target}). Leave the foil blank to explain the target alone.")
    return foil


def question(ctx: AppContext, session: Session, source, text, target, foil, method, steps, record,
             step) -> Question:
    """What to explain, from the chosen source."""
    if inputs.choice("source", source, SOURCES) == "text":
        return text_question(ctx, session, text, target, foil, method, steps)
    return record_question(ctx, session, record, step, foil, method, steps)


# ---------------------------------------------------------------- the model's work (a ``ui.gpu`` job)


def attribution_job(model: gpt2.GPT2, ids: list[int], target: int, foil: int | None, method: str,
                    steps: int) -> Found:
    """Per-token scores, the direct logit attribution and the prediction itself, as plain values."""
    scores = attribute(model, ids, target, method=method, foil_id=foil, steps=steps)
    dla = direct_logit_attribution(model, ids, target, foil)
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device), last_only=True)[0, -1].float()
    logp = torch.log_softmax(logits, -1)
    score = logp[target] - (logp[foil] if foil is not None else 0.0)
    rank = int((logits > logits[target]).sum().item()) + 1
    return Found(np.asarray(scores, dtype=float), dla, float(score), float(logp[target].exp()), rank,
                 int(logits.argmax().item()))


# ---------------------------------------------------------------- what is shown


def _rgba(value: float, scale: float) -> str:
    """The background of a token with attribution ``value``; ``scale`` is the largest magnitude shown."""
    r, g, b = POSITIVE if value >= 0 else NEGATIVE
    alpha = MAX_ALPHA * min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    return f"rgba({r}, {g}, {b}, {alpha:.3f})"


def colored_text(ids: Sequence[int], scores: np.ndarray, target: int) -> str:
    """The text as HTML: each token a span coloured by its score (blue raises the score, red lowers it;
    the strongest token the most saturated), its value in its ``title``, then the target token outlined.
    Every token's text is escaped."""
    scores = np.asarray(scores, dtype=float)
    if len(ids) != len(scores):
        raise ValueError(f"scores must have one value per token ({len(ids)}); got {len(scores)}")
    decode = gpt2.get_tokenizer().decode
    labels = gpt2.token_display(list(ids))
    finite = scores[np.isfinite(scores)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    spans = []
    for i, (token, label, value) in enumerate(zip(ids, labels, scores, strict=True)):
        title = html.escape(f"{i}: '{label}' · {value:+.4g}", quote=True)
        spans.append(f'<span class="attr-tok" style="background: {_rgba(value, scale)}; border-radius: 3px" '
                     f'title="{title}">{html.escape(decode([token]))}</span>')
    shown = html.escape(gpt2.token_display([target])[0], quote=True)
    spans.append(f'<span class="attr-target" style="outline: 2px dashed {figures.ATTR_TARGET}; border-radius: 3px; '
                 f'margin-left: 2px" title="the token explained: &#x27;{shown}&#x27;">'
                 f"{html.escape(decode([target]))}</span>")
    legend = ('<div class="attr-legend" style="font-size: 0.85em; opacity: 0.8; margin-top: 0.5em">'
              f'<span style="background: {_rgba(1, 1)}">blue</span> raises the score, '
              f'<span style="background: {_rgba(-1, 1)}">red</span> lowers it (hover a token for its value); '
              "the outlined token at the end is the one explained.</div>")
    return f'<div class="attribution" style="{TEXT_STYLE}">{"".join(spans)}</div>{legend}'


def _quoted(token: int) -> str:
    """A token as the summary names it (Markdown-safe)."""
    return f"`{gpt2.token_display([token])[0].replace('`', 'ˋ')}` (#{token})"


def summary(q: Question, found: Found) -> str:
    """Markdown: what was explained, by which method, the model's own prediction and the top tokens."""
    what = (f"**Generation #{q.record_id}**, step {q.step} (the token it chose)" if q.record_id is not None
            else f"**Text** of {len(q.ids)} tokens")
    against = f" against foil {_quoted(q.foil)}" if q.foil is not None else ""
    score = "log p(target) − log p(foil)" if q.foil is not None else "log p(target)"
    steps = f", {q.steps} steps" if q.method == "integrated_gradients" else ""
    lines = [f"{what} · target {_quoted(q.target)}{against}",
             f"**Method**: {METHOD_LABELS[q.method]}{steps}: {METHOD_NOTES[q.method].format(steps=q.steps)}.",
             f"**Score explained**: {score} = {found.score:.4g}. The model gives the target "
             f"{found.target_prob:.2%} (rank {found.target_rank}; its top prediction: {_quoted(found.top_id)}).",
             "**Top tokens** (by |score|): " + top_tokens(q.ids, found.scores)]
    return "\n\n".join([*lines, *(f"> {n}" for n in q.notes)])


def top_tokens(ids: Sequence[int], scores: np.ndarray, n: int = TOP_TOKENS) -> str:
    """The ``n`` tokens with the largest |score|, strongest first: ``3:`␣sun` +0.41``."""
    order = np.argsort(-np.abs(np.nan_to_num(np.asarray(scores, dtype=float))), kind="stable")[:n]
    labels = gpt2.token_display([ids[i] for i in order])
    return ", ".join(f"{i}:`{label.replace('`', 'ˋ')}` {scores[i]:+.3g}" for i, label in zip(order, labels,
                                                                                             strict=True))


def explain(ctx: AppContext, q: Question) -> tuple[str, str, go.Figure, go.Figure]:
    """Run the job for ``q``: (summary, coloured text, bar chart, direct-logit-attribution figure)."""
    found = ctx.gpu.call(attribution_job, q.ref, q.ids, q.target, q.foil, q.method, q.steps)
    labels = gpt2.token_display(q.ids)
    target, foil = gpt2.token_display([q.target])[0], (gpt2.token_display([q.foil])[0] if q.foil is not None
                                                        else None)
    method = METHOD_LABELS[q.method] + (f", {q.steps} steps" if q.method == "integrated_gradients" else "")
    bars = figures.attribution_bars(labels, found.scores, target, foil, method)
    d = found.dla
    dla = figures.logit_attribution(d.heads, d.mlps, d.embeddings, d.biases, d.total, target, foil)
    return summary(q, found), colored_text(q.ids, found.scores, q.target), bars, dla


# ---------------------------------------------------------------- the section's events


def attribute_tokens(ctx: AppContext, session: Session, text, target, foil, method, steps, record, step,
                     source) -> tuple[str, str, go.Figure, go.Figure]:
    """``/attribute``: explain a token predicted after a text (``source`` "text": ``text`` and ``target``)
    or a generated token (``source`` "a generation": ``record``'s token ``step``), optionally against
    ``foil``, by ``method`` (``steps``: integrated-gradients points). Returns the summary (Markdown), the
    text coloured by attribution (HTML), the per-token bar chart and the heads-and-MLPs figure."""
    return explain(ctx, question(ctx, session, source, text, target, foil, method, steps, record, step))


def follow(ctx: AppContext, session: Session, record, step) -> tuple[Update, Update]:
    """A generation ended: the picker refreshed (the user's choice while kept, else the latest) and the step
    slider fitted to the generation it shows."""
    picker = records.picker(session, record)
    return picker, step_range(ctx, session, picker["value"], step)


def step_range(ctx: AppContext, session: Session, record, step) -> Update:
    """The step slider fitted to the picked generation's tokens (its value kept when it still fits)."""
    try:
        n = len(records.find(session, record).token_ids)
    except UserError:
        return update()
    try:
        value = min(inputs.integer("step", step, 0), n - 1)
    except UserError:  # blank or not a step: the first
        value = 0
    return update(minimum=0, maximum=max(1, n - 1), value=value, interactive=n > 1)
