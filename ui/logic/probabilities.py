"""The Probabilities tab: the candidates behind every generated token, raw and through each sampler stage
(re-drawn from the kept logits, so "what if" settings never run the model), and for any text its
GLTR-style rank colouring, surprisal, entropy, perplexity and a logit lens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch

import gpt2
from gpt2.inspection import LogitLens, TokenScores, logit_lens, score

from .. import inputs
from ..context import AppContext
from ..figures import GLTR_COLORS, candidates_bar, gltr_highlights, logit_lens_heatmap, surprisal_chart
from ..inputs import UserError
from ..session import GenerationRecord, Session
from ..updates import KEEP, Update, update
from . import branch, records

TOP_K = 12  # candidates shown per step (the chosen token is added when it is not among them)
LENS_TOKENS = 48  # the logit lens reads every layer over the whole vocabulary: keep it to the last few tokens
NO_TEXT = "text is empty: enter a text to analyse (or click “Use the selected generation”)."
RECOMPUTED = ("Only the latest generations keep their logits, so the model was run again on this step's context "
              "(probabilities may differ from the generation's in the last digits).")
# The "what if" sliders, in the order of /step_probabilities' parameters, with their ranges on the page.
SLIDER_RANGES = {"temperature": (0, 2), "top_k": (0, 200), "top_p": (0, 1), "repetition_penalty": (0.5, 2),
                 **inputs.ADVANCED_RANGES}
SETTINGS = tuple(SLIDER_RANGES)
# What ``show_record`` returns, in order (the layout wires its outputs in the same order).
SHOWN = ("step", *SETTINGS, "candidates", "info", "kept", "token", "lineage", "family")


# ---- one generated step ----------------------------------------------------------------------------------


def step_history(record: GenerationRecord, step: int) -> list[int]:
    """Every id before token ``step`` as the generation had them (an empty prompt read ``<|endoftext|>``)."""
    return inputs.model_input(record.prompt_ids) + record.token_ids[:step]


def step_window(record: GenerationRecord, step: int, block_size: int) -> list[int]:
    """What the model saw when it chose token ``step``: the step's window (generations past the context
    slid it), cropped to the context."""
    return step_history(record, step)[record.steps[step].window_start :][-block_size:]


def stage_probs(record: GenerationRecord, step: int, params: gpt2.SamplingParams,
                logits: np.ndarray) -> dict[str, torch.Tensor]:
    """Full-vocabulary probabilities after each sampler stage, from raw logits (no model call)."""
    raw = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    seen = torch.tensor(step_history(record, step), dtype=torch.long)
    return {name: x.softmax(-1) for name, x in gpt2.sampler_stages(raw, seen, params)}


def candidates(record: GenerationRecord, step: int, probs: dict[str, torch.Tensor],
               k: int = TOP_K) -> tuple[list[str], dict[str, np.ndarray], int]:
    """Candidate labels (the top ``k`` by raw probability, plus the chosen token when it is outside them),
    their probability after each stage and the index of the chosen one."""
    ids = probs["raw"].topk(min(k, probs["raw"].numel())).indices.tolist()
    chosen = record.token_ids[step]
    if chosen not in ids:
        ids.append(chosen)
    index = torch.tensor(ids)
    return gpt2.token_display(ids), {name: p[index].numpy() for name, p in probs.items()}, ids.index(chosen)


def off_stages(params: gpt2.SamplingParams) -> list[str]:
    """The sampler stages that ``params`` switch off (they leave the distribution as it is)."""
    off = {"repetition penalty": params.repetition_penalty == 1, "no-repeat n-gram": params.no_repeat_ngram_size == 0,
           "temperature": params.temperature == 1, "top-k": params.top_k == 0, "top-p": params.top_p == 1,
           "min-p": params.min_p == 0, "typical": params.typical_p == 1, "epsilon": params.epsilon_cutoff == 0,
           "eta": params.eta_cutoff == 0}
    return [stage for stage in gpt2.sampling.STAGES if off.get(stage, False)]


def kept_counts(probs: dict[str, torch.Tensor]) -> dict[str, int]:
    """How many tokens of the whole vocabulary each stage leaves a chance."""
    return {name: int((p > 0).sum()) for name, p in probs.items()}


def stages_line(probs: dict[str, torch.Tensor], off: list[str]) -> str:
    """Markdown: every stage in order with the tokens it keeps, or "off"."""
    kept = kept_counts(probs)
    return "tokens kept: " + " → ".join(f"{name} off" if name in off else f"{name} **{kept[name]:,}**"
                                        for name in probs)


def step_stages(record: GenerationRecord, step: int, params: gpt2.SamplingParams, k: int = TOP_K,
                logits: np.ndarray | None = None) -> tuple[list[str], dict[str, np.ndarray], int]:
    """``candidates`` of generated token ``step`` under ``params``, from the record's kept raw logits (or
    ``logits``, e.g. from ``next_logits``); never the model."""
    logits = record.steps[step].logits if logits is None else logits
    if logits is None:
        raise ValueError(f"step {step} of generation #{record.id} has no kept logits: pass next_logits()")
    return candidates(record, step, stage_probs(record, step, params, logits), k)


@torch.no_grad()
def next_logits(model: gpt2.GPT2, ids: list[int]) -> np.ndarray:
    """Raw next-token logits after ``ids``, from one forward pass (a ``ui.gpu`` job)."""
    logits = model(torch.tensor([ids], device=model.device), last_only=True)[0, -1]
    return logits.float().cpu().numpy()


@dataclass(frozen=True)
class KeptLogits:
    """Logits recomputed for one step of a record whose own were dropped, so moving a slider after that
    re-runs only the sampler stages. Held per session in the tab's own ``gr.State``."""

    record_id: int
    step: int
    logits: np.ndarray
    model_note: str | None = None  # ``AppContext.record_model``'s note on the model that recomputed them


def step_logits(ctx: AppContext, session: Session, record: GenerationRecord, step: int,
                kept: KeptLogits | None = None) -> tuple[np.ndarray, KeptLogits | None, list[str]]:
    """Raw logits of a step: the record's own, else ``kept`` when it is for this step, else recomputed by
    the model that made the record. Returns (logits, what to keep for the next call, notes to show)."""
    own = record.steps[step].logits
    if own is not None:
        return own, kept, []
    if kept is not None and (kept.record_id, kept.step) == (record.id, step):
        return kept.logits, kept, [kept.model_note] if kept.model_note else []
    ref, note = ctx.record_model(session, record)
    logits = ctx.gpu.call(next_logits, ref, step_window(record, step, ctx.config(ref).block_size))
    return logits, KeptLogits(record.id, step, logits, note), [RECOMPUTED, *([note] if note else [])]


def _pct(p: float) -> str:
    return f"{p:.3%}" if 0 < p < 0.001 else f"{p:.1%}"


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return max(0.0, float(-(p * p.log()).sum()))  # no "-0.00" for a one-token distribution


def step_summary(record: GenerationRecord, step: int, probs: dict[str, torch.Tensor], notes: list[str],
                 off: list[str] = ()) -> str:
    """Markdown: the chosen token, its rank and probabilities raw / after the sampler, and the entropies."""
    chosen = record.token_ids[step]
    details = record.steps[step]
    raw, final = probs["raw"], probs[gpt2.sampling.STAGES[-1]]
    rank = int((raw > raw[chosen]).sum()) + 1
    label = gpt2.token_display([chosen])[0]
    main = [
        f"**Step {step}** of {len(record.token_ids)} (generation #{record.id}) · chose **`{label}`**, "
        f"rank {rank} in the raw distribution",
        f"p = **{_pct(float(raw[chosen]))}** raw → **{_pct(float(final[chosen]))}** after the sampler with these "
        f"settings (at generation time: {_pct(details.chosen_prob)})",
        f"entropy {details.entropy:.2f} nats raw → {_entropy(final):.2f} nats after the sampler",
        stages_line(probs, list(off)),
    ]
    if record.parent is not None and step <= record.branch_step:  # a branch's first tokens were not drawn
        whose = "the token this branch was made with" if step == record.branch_step else f"#{record.parent}'s own"
        main[0] += f" · forced: {whose}"
    if float(final[chosen]) == 0:
        notes = ["With these settings the sampler would have removed the chosen token.", *notes]
    return "  \n".join(main) + "".join(f"\n\n> {note}" for note in notes)


def _draw(ctx: AppContext, session: Session, record: GenerationRecord, step, params: gpt2.SamplingParams,
          kept: KeptLogits | None) -> tuple[go.Figure, str, KeptLogits | None]:
    """Step ``step`` of ``record`` under ``params``: (candidates figure, step info, what to keep)."""
    n = len(record.token_ids)
    i = inputs.index("step", step, n, f"generation #{record.id} has {n} tokens; 0 = the first")
    logits, kept, notes = step_logits(ctx, session, record, i, kept)
    probs = stage_probs(record, i, params, logits)
    off = off_stages(params)
    figure = candidates_bar(*candidates(record, i, probs), kept=kept_counts(probs), off=off)
    return figure, step_summary(record, i, probs, notes, off), kept


def step_probabilities(ctx: AppContext, session: Session, record, step, temperature, top_k, top_p,
                       repetition_penalty, min_p=None, typical_p=None, epsilon_cutoff=None, eta_cutoff=None,
                       no_repeat_ngram_size=None,
                       kept: KeptLogits | None = None) -> tuple[go.Figure, str, KeptLogits | None]:
    """Candidates of generated token ``step`` (0 = the first) of generation ``record`` (empty or "latest":
    the newest) through every sampler stage under the given settings, from its kept logits: (candidates
    figure, step info, what to keep). A setting left None means the generation's own."""
    chosen = records.find(session, record)
    given = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                 min_p=min_p, typical_p=typical_p, epsilon_cutoff=epsilon_cutoff, eta_cutoff=eta_cutoff,
                 no_repeat_ngram_size=no_repeat_ngram_size)
    v = {name: getattr(chosen.params, name) if value is None or value == "" else value for name, value in given.items()}
    advanced = {name: v[name] for name in inputs.ADVANCED_OFF}
    params = inputs.sampling(1, v["temperature"], v["top_k"], v["top_p"], v["repetition_penalty"], max_tokens=1,
                             **advanced)  # 1: a step view makes no new tokens
    return _draw(ctx, session, chosen, step, params, kept)


def _settings(params: gpt2.SamplingParams) -> tuple[Update, ...]:
    """The sampler sliders at ``params``, widening a range when an API caller generated outside it."""
    values = {name: getattr(params, name) for name in SLIDER_RANGES}
    return tuple(update(value=v, minimum=min(SLIDER_RANGES[name][0], v), maximum=max(SLIDER_RANGES[name][1], v))
                 for name, v in values.items())


def show_record(ctx: AppContext, session: Session, record, kept: KeptLogits | None = None) -> tuple:
    """A generation picked: the step slider over its tokens, the sampler sliders at its own settings, its
    first step drawn, the candidates to branch with and its tree of branches (the outputs ``SHOWN``).
    Without any generation yet, only the step info changes: it says what to do."""
    if not session.records:
        return tuple(records.NO_GENERATION if name == "info" else kept if name == "kept" else KEEP for name in SHOWN)
    chosen = records.find(session, record)
    n = len(chosen.token_ids)
    step = update(value=0, minimum=0, maximum=max(1, n - 1), interactive=n > 1)  # a 0..0 slider won't render
    return (step, *_settings(chosen.params), *_draw(ctx, session, chosen, 0, chosen.params, kept),
            branch.token_choices(ctx, session, chosen.id, 0), *records.lineage(session, chosen))


def follow(ctx: AppContext, session: Session, record, kept: KeptLogits | None = None) -> tuple:
    """After a generation: the picker's fresh choices, then ``show_record``'s outputs for the new one when
    the picker follows the latest (or its choice was dropped); the user's own choice stays as it is (its
    tree of branches is refreshed)."""
    picker = records.picker(session, record)
    if inputs.record_id(picker["value"]) is not None:  # a generation the user chose, still kept
        tree = records.lineage(session, records.find(session, picker["value"]))
        return picker, *(KEEP,) * (len(SHOWN) - 4), kept, KEEP, *tree
    return picker, *show_record(ctx, session, inputs.LATEST, kept)


def open_latest(ctx: AppContext, session: Session, kept: KeptLogits | None = None) -> tuple:
    """Generate's "Inspect probabilities ›": the picker back on the latest, which is drawn (as ``follow``)."""
    picker = update(choices=records.choices(session), value=inputs.LATEST)
    return picker, *show_record(ctx, session, inputs.LATEST, kept)


def go_to(ctx: AppContext, session: Session, record, kept: KeptLogits | None = None) -> tuple:
    """A generation picked in the tree of branches (or a branch just made): the picker on it, which is
    drawn (as ``follow``)."""
    chosen = records.find(session, record)
    picker = update(choices=records.choices(session), value=chosen.id)
    return picker, *show_record(ctx, session, chosen.id, kept)


def show_branch(ctx: AppContext, session: Session, kept: KeptLogits | None = None) -> tuple:
    """After "Continue from this token": the new branch (the newest generation) picked and drawn."""
    return go_to(ctx, session, inputs.LATEST, kept)


def reset(ctx: AppContext, session: Session, record, step, kept: KeptLogits | None = None) -> tuple:
    """The sampler sliders back at the generation's own settings, and the step re-drawn with them:
    (every setting of ``SETTINGS``, candidates, step info, kept)."""
    chosen = records.find(session, record)
    return *_settings(chosen.params), *_draw(ctx, session, chosen, step, chosen.params, kept)


# ---- any text -----------------------------------------------------------------------------------------


@dataclass
class TextReport:
    """Everything the "Any text" section shows, from two model calls."""

    scores: TokenScores
    pieces: list[str]  # each token's own text (what the highlighted text shows)
    lens: LogitLens  # over the last ``LENS_TOKENS`` tokens only

    @property
    def lens_first(self) -> int:
        """The position in the text of the lens's first token."""
        return len(self.scores.token_ids) - len(self.lens.labels)


def analyse_text(model: gpt2.GPT2, ids: list[int]) -> TextReport:
    """Score every token and run the logit lens on the last ``LENS_TOKENS`` (a ``ui.gpu`` job)."""
    tok = gpt2.get_tokenizer()
    pieces = [tok.decode_single_token_bytes(t).decode("utf-8", "replace") for t in ids]
    return TextReport(score(model, ids), pieces, logit_lens(model, ids[-LENS_TOKENS:]))


def text_summary(report: TextReport, model_name: str, notices: list[str]) -> str:
    """Markdown: perplexity, token count, mean surprisal and the share of tokens in each GLTR bucket."""
    s = report.scores
    n = len(s.token_ids)
    buckets = [name for _, name in gltr_highlights(report.pieces, s.ranks)]
    shares = " · ".join(f"{name} {buckets.count(name) / n:.0%}" for name in GLTR_COLORS)
    text = (f"**Perplexity {s.perplexity:.2f}** over **{n} tokens** ({model_name}) · mean surprisal "
            f"{-float(s.logprobs.mean()):.2f} nats  \nrank buckets: {shares}")
    if report.lens_first:
        notices = [*notices, f"The logit lens shows the last {len(report.lens.labels)} tokens only (positions "
                             f"{report.lens_first} to {n - 1}), read without the text before them (it reads every "
                             "layer over the whole vocabulary)."]
    return text + "".join(f"\n\n> {m}" for m in notices)


def text_probabilities(ctx: AppContext, session: Session,
                       text: str | None) -> tuple[list[tuple[str, str | None]], str, go.Figure, go.Figure]:
    """Token ranks (GLTR highlights), perplexity, surprisal, entropy and a logit lens of ``text`` under the
    session's model: (highlights, text info, surprisal chart, logit lens heatmap)."""
    ref = ctx.ref(session)
    ids, notice = inputs.prompt_ids(text, ctx.caps.max_prompt_chars, ctx.config(ref).block_size)
    if not ids:
        raise UserError(NO_TEXT)
    report = ctx.gpu.call(analyse_text, ref, ids)
    finetuned = ref.adapter is not None or ref.model is not None
    name = session.model_key + (", fine-tuned" if finetuned else "")
    s, lens = report.scores, report.lens
    return (
        gltr_highlights(report.pieces, s.ranks),
        text_summary(report, name, [notice] if notice else []),
        surprisal_chart(s.labels, -s.logprobs, s.entropies),
        logit_lens_heatmap(lens.labels, lens.top_labels, lens.top_probs, first=report.lens_first),
    )


def use_generation(ctx: AppContext, session: Session, record) -> tuple:
    """"Use the selected generation": its prompt and generated text in the text box, analysed as
    ``text_probabilities`` does: (text, highlights, text info, surprisal chart, logit lens heatmap)."""
    chosen = records.find(session, record)
    text = gpt2.get_tokenizer().decode(chosen.prompt_ids + chosen.token_ids)
    return text, *text_probabilities(ctx, session, text)
