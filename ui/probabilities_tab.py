"""The Probabilities tab: the candidates behind every generated token, raw and through each sampler stage
(re-rendered from the kept logits, so "what if" settings never run the model), and for any text its
GLTR-style rank colouring, surprisal, entropy, perplexity and a logit lens."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import torch

import gpt2
from gpt2.inspection import LogitLens, TokenScores, logit_lens, score

from . import widgets
from .context import AppContext
from .figures import GLTR_COLORS, candidates_bar, gltr_highlights, logit_lens_heatmap, surprisal_chart
from .generate_tab import SamplerWidgets, parse_params, prepare_prompt, sampler_widgets
from .gpu import ModelRef
from .session import GenerationRecord, Session

TOP_K = 12  # candidates shown per step (the chosen token is added when it is not among them)
LENS_TOKENS = 48  # the logit lens reads every layer over the whole vocabulary: keep it to the last few tokens
NO_GENERATION = "No generation yet: generate some text in the Generate tab first, then pick it here."
NO_TEXT = "Enter a text to analyse (or click “Use the selected generation”)."


# ---- records -------------------------------------------------------------------------------------------


def record_choices(session: Session) -> list[tuple[str, int]]:
    """The session's kept generations for the record picker, newest first."""
    return [(r.label, r.id) for r in reversed(session.records)]


def refresh_picker(current: int | str | None, session: Session | None) -> dict:
    """Picker update after a generation: fresh choices; keeps the selected record while it is still kept,
    else selects the newest (its change event then re-renders the step view)."""
    if not isinstance(session, Session):
        return gr.update(choices=[], value=None)
    choices = record_choices(session)
    ids = [i for _, i in choices]
    try:
        keep = current is not None and int(current) in ids
    except (TypeError, ValueError):
        keep = False
    return gr.update(choices=choices, value=int(current) if keep else (ids[0] if ids else None))


def select_latest(session: Session | None) -> dict:
    """Picker update that selects the newest generation (the Generate tab's "Inspect probabilities ›")."""
    if not isinstance(session, Session) or not session.records:
        return gr.update(choices=[], value=None)
    return gr.update(choices=record_choices(session), value=session.records[-1].id)


def get_record(session: Session, record_id: int | str | None) -> GenerationRecord:
    """The chosen generation (None: the latest), or a ``gr.Error`` that says what to do."""
    if not session.records:
        raise gr.Error(NO_GENERATION)
    if record_id in (None, ""):
        return session.records[-1]
    try:
        rid = int(record_id)
    except (TypeError, ValueError):
        raise gr.Error(f"record must be a generation id from the list; got {record_id!r}") from None
    record = session.record(rid)
    if record is None:
        kept = ", ".join(f"#{r.id}" for r in session.records)
        raise gr.Error(f"Generation #{rid} is no longer kept (kept: {kept}): pick one from the list.")
    return record


def check_step(record: GenerationRecord, step) -> int:
    """``step`` as an index into the record's generated tokens, or a ``gr.Error`` with the valid range."""
    n = len(record.token_ids)
    try:
        i = int(step)
        ok = i == float(step) and 0 <= i < n
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise gr.Error(f"step must be a whole number from 0 to {n - 1} (this generation has {n} tokens); "
                       f"got {step!r}")
    return i


def step_history(record: GenerationRecord, step: int) -> list[int]:
    """Every id before token ``step`` as the generation had them: an empty prompt started from
    ``<|endoftext|>`` (see ``gpt2.generate``), which the record's ``prompt_ids`` leave out."""
    prompt = record.prompt_ids or [gpt2.EOT_ID]
    return prompt + record.token_ids[:step]


def generation_text(session: Session, record_id: int | str | None) -> str:
    """Prompt + generated text of a record, to analyse in the "Any text" section."""
    record = get_record(session, record_id)
    return gpt2.get_tokenizer().decode(record.prompt_ids + record.token_ids)


# ---- one generated step ----------------------------------------------------------------------------------


def _stage_probs(record: GenerationRecord, step: int, params: gpt2.SamplingParams,
                 logits: np.ndarray) -> dict[str, torch.Tensor]:
    """Full-vocabulary probabilities after each sampler stage, from raw logits (no model call)."""
    raw = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    seen = torch.tensor(step_history(record, step), dtype=torch.long)
    return {name: x.softmax(-1) for name, x in gpt2.sampler_stages(raw, seen, params)}


def _candidates(record: GenerationRecord, step: int, probs: dict[str, torch.Tensor],
                k: int) -> tuple[list[str], dict[str, np.ndarray], int]:
    """The top ``k`` tokens by raw probability, plus the chosen one when it is outside them."""
    ids = probs["raw"].topk(min(k, probs["raw"].numel())).indices.tolist()
    chosen = record.token_ids[step]
    if chosen not in ids:
        ids.append(chosen)
    index = torch.tensor(ids)
    stage_probs = {name: p[index].numpy() for name, p in probs.items()}
    return gpt2.token_display(ids), stage_probs, ids.index(chosen)


def step_stages(record: GenerationRecord, step: int, params: gpt2.SamplingParams, k: int = TOP_K,
                logits: np.ndarray | None = None) -> tuple[list[str], dict[str, np.ndarray], int]:
    """Candidate labels, their probability after each stage (``gpt2.sampling.STAGES`` order) and the
    index of the chosen token, for generated token ``step`` under ``params``.

    Uses the record's kept raw logits (or ``logits``, e.g. from ``recompute_logits``); never the model.
    The chosen token is always among the candidates, so the index is never None.
    """
    logits = record.steps[step].logits if logits is None else logits
    if logits is None:
        raise ValueError(f"step {step} of generation #{record.id} has no kept logits: pass recompute_logits()")
    return _candidates(record, step, _stage_probs(record, step, params, logits), k)


def step_window(record: GenerationRecord, step: int, block_size: int) -> list[int]:
    """What the model saw when it chose token ``step``: the step's window (generations past the context
    slid it), cropped to the context."""
    return step_history(record, step)[record.steps[step].window_start :][-block_size:]


@torch.no_grad()
def next_logits(model: gpt2.GPT2, ids: list[int]) -> np.ndarray:
    """Raw next-token logits after ``ids``, from one forward pass (a ``ui.gpu`` job)."""
    logits = model(torch.tensor([ids], device=model.device), last_only=True)[0, -1]
    return logits.float().cpu().numpy()


@dataclass(frozen=True)
class KeptLogits:
    """Logits recomputed for one step of a record whose own were dropped, so moving a slider after that
    re-runs only the sampler stages. Held per session in a ``gr.State``."""

    record_id: int
    step: int
    logits: np.ndarray


def _record_model(ctx: AppContext, session: Session, record: GenerationRecord) -> ModelRef:
    """The model that made ``record``, which may no longer be the session's current one."""
    if record.model_key == session.model_key:
        if record.finetuned and not session.has_finetuned():
            raise gr.Error(f"Generation #{record.id} used a fine-tuned model this session no longer has, and its "
                           "logits were not kept: pick a newer generation or generate again.")
        return ctx.ref(session, finetuned=record.finetuned)
    if record.finetuned:
        raise gr.Error(f"Generation #{record.id} used a fine-tuned {record.model_key}, but {session.model_key} is "
                       f"selected now: switch the model back to {record.model_key} or generate again.")
    return ModelRef(record.model_key)


def step_logits(ctx: AppContext, session: Session, record: GenerationRecord, step: int,
                kept: KeptLogits | None = None) -> tuple[np.ndarray, KeptLogits | None, str | None]:
    """Raw logits of a step: the record's own, else ``kept`` when it is for this step, else recomputed.
    Returns (logits, what to keep for the next call, a note when the model was re-run)."""
    own = record.steps[step].logits
    if own is not None:
        return own, kept, None
    if kept is not None and (kept.record_id, kept.step) == (record.id, step):
        return kept.logits, kept, None
    ref = _record_model(ctx, session, record)
    logits = ctx.gpu.call(next_logits, ref, step_window(record, step, ctx.config(ref).block_size))
    note = ("Only the latest generations keep their logits, so the model was run again on this step's context "
            "(probabilities may differ from the generation's in the last digits).")
    return logits, KeptLogits(record.id, step, logits), note


def _pct(p: float) -> str:
    return f"{p:.3%}" if 0 < p < 0.001 else f"{p:.1%}"


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return max(0.0, float(-(p * p.log()).sum()))  # no "-0.00" for a one-token distribution


def step_summary(record: GenerationRecord, step: int, probs: dict[str, torch.Tensor], note: str | None) -> str:
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
    ]
    extra = []
    if float(final[chosen]) == 0:
        extra.append("With these settings the sampler would have removed the chosen token.")
    if note:
        extra.append(f"> {note}")
    return "  \n".join(main) + "".join(f"\n\n{line}" for line in extra)


def _param(value, fallback):
    """A Python caller may leave a sampler setting out: it then means the generation's own."""
    return fallback if value is None or value == "" else value


def show_step(ctx: AppContext, session: Session, record_id, step, temperature, top_k, top_p, repetition_penalty,
              kept: KeptLogits | None = None) -> tuple[go.Figure, str, KeptLogits | None]:
    """The step view: candidates bar chart through the stages, the summary markdown, and what to keep
    (see ``KeptLogits``). A ``None`` sampler setting means the generation's own."""
    record = get_record(session, record_id)
    i = check_step(record, step)
    p = record.params
    params = parse_params(ctx.caps, 1, _param(temperature, p.temperature), _param(top_k, p.top_k),  # 1: unused
                          _param(top_p, p.top_p), _param(repetition_penalty, p.repetition_penalty), None)
    logits, kept, note = step_logits(ctx, session, record, i, kept)
    probs = _stage_probs(record, i, params, logits)
    labels, stage_probs, chosen = _candidates(record, i, probs, TOP_K)
    return candidates_bar(labels, stage_probs, chosen), step_summary(record, i, probs, note), kept


def _fit(value: float, low: float, high: float) -> dict:
    """A slider update to ``value``, widening the range when an API caller generated outside it."""
    return gr.update(value=value, minimum=min(low, value), maximum=max(high, value))


def record_settings(session: Session, record_id) -> tuple[dict, dict, dict, dict]:
    """Sampler slider updates holding the chosen generation's own settings."""
    p = get_record(session, record_id).params
    return (_fit(p.temperature, 0, 2), _fit(p.top_k, 0, 200), _fit(p.top_p, 0, 1),
            _fit(p.repetition_penalty, 0.5, 2))


def step_slider(session: Session, record_id) -> dict:
    """Step slider update for the chosen generation: its range, back at the first token."""
    n = len(get_record(session, record_id).token_ids)
    return gr.update(value=0, minimum=0, maximum=max(1, n - 1), interactive=n > 1)  # a 0..0 slider won't render


# ---- any text -----------------------------------------------------------------------------------------


@dataclass
class TextReport:
    """Everything the "Any text" section shows, from two model calls."""

    scores: TokenScores
    pieces: list[str]  # each token's own text (what the highlighted text shows)
    lens: LogitLens  # over the last ``LENS_TOKENS`` tokens only

    @property
    def lens_cropped(self) -> bool:
        return len(self.lens.labels) < len(self.scores.token_ids)


def analyse_text(model: gpt2.GPT2, ids: list[int]) -> TextReport:
    """Score every token and run the logit lens on the last ``LENS_TOKENS`` (a ``ui.gpu`` job)."""
    tok = gpt2.get_tokenizer()
    scores = score(model, ids)
    lens = logit_lens(model, ids[-LENS_TOKENS:])
    pieces = [tok.decode_single_token_bytes(t).decode("utf-8", "replace") for t in ids]
    return TextReport(scores, pieces, lens)


def text_summary(report: TextReport, model_name: str, notices: list[str]) -> str:
    """Markdown: perplexity, token count, mean surprisal and the share of tokens in each GLTR bucket."""
    s = report.scores
    n = len(s.token_ids)
    buckets = [name for _, name in gltr_highlights(report.pieces, s.ranks)]
    shares = " · ".join(f"{name} {buckets.count(name) / n:.0%}" for name in GLTR_COLORS)
    text = (f"**Perplexity {s.perplexity:.2f}** over **{n} tokens** ({model_name}) · mean surprisal "
            f"{-float(s.logprobs.mean()):.2f} nats  \nrank buckets: {shares}")
    if report.lens_cropped:
        notices = [*notices, f"The logit lens shows the last {len(report.lens.labels)} tokens only, read "
                             "without the text before them (it reads every layer over the whole vocabulary)."]
    return text + "".join(f"\n\n> {m}" for m in notices)


def text_probabilities(ctx: AppContext, session: Session,
                       text: str | None) -> tuple[list[tuple[str, str | None]], str, go.Figure, go.Figure]:
    """The "Any text" view: GLTR highlights, summary markdown, surprisal chart, logit lens heatmap."""
    if not text:
        raise gr.Error(NO_TEXT)
    ref = ctx.ref(session)
    ids, notice = prepare_prompt(text, ctx.caps, ctx.config(ref).block_size)
    if not ids:
        raise gr.Error(NO_TEXT)
    report = ctx.gpu.call(analyse_text, ref, ids)
    finetuned = ref.adapter is not None or ref.model is not None
    name = session.model_key + (", fine-tuned" if finetuned else "")
    s, lens = report.scores, report.lens
    return (
        gltr_highlights(report.pieces, s.ranks),
        text_summary(report, name, [notice] if notice else []),
        surprisal_chart(s.labels, -s.logprobs, s.entropies),
        logit_lens_heatmap(lens.labels, lens.top_labels, lens.top_probs),
    )


# ---- layout -------------------------------------------------------------------------------------------


@dataclass
class ProbabilitiesTab:
    record_picker: gr.Dropdown  # the app refreshes its choices after each generation (see refresh_picker)
    step: gr.Slider
    sampler: SamplerWidgets
    candidates: gr.Plot
    step_info: gr.Markdown
    text: gr.Textbox
    highlights: gr.HighlightedText
    text_info: gr.Markdown
    surprisal: gr.Plot
    lens: gr.Plot


def build(ctx: AppContext, state: gr.State) -> ProbabilitiesTab:
    """Lay out the tab and wire its events."""
    gr.Markdown("### A generation, step by step\nThe top candidates for each generated token, raw and after "
                "each sampler stage (repetition penalty → temperature → top-k → top-p); ▶ marks the chosen "
                "token. Move a slider to see what other settings would have done: the model is not run again.")
    with gr.Row():
        with gr.Column(scale=2):
            # allow_custom_value: the choices live in each browser session, so an API caller (whose
            # session never saw them) can still name a record id; show_step checks it.
            picker = widgets.dropdown([], value=None, label="Generation", allow_custom_value=True,
                                 info="empty = the latest")
            step = widgets.slider(0, max(1, ctx.caps.max_new_tokens - 1), value=0, step=1,
                             label="step", info="0 = the first generated token")
            sampler = sampler_widgets()
            with gr.Row():
                show = gr.Button("Show step", variant="primary")
                reset = gr.Button("Reset to the generation's settings")
        with gr.Column(scale=3):
            candidates = gr.Plot(label="Candidates")
            step_info = gr.Markdown()
    # KeptLogits of the last recomputed step (records older than the latest two drop their logits)
    kept = gr.State(None, time_to_live=ctx.caps.session_ttl_s)

    gr.Markdown("### Any text\nEach token coloured by the rank the model gave it (GLTR: top-10, top-100, "
                "top-1000, beyond), its surprisal and the entropy it met, and a logit lens.")
    text = gr.Textbox(label="Text", lines=4, placeholder="Paste or type any text…")
    with gr.Row():
        analyse = gr.Button("Analyse text", variant="primary")
        use_generation = gr.Button("Use the selected generation")
    highlights = gr.HighlightedText(label="Rank of each token", show_legend=True, color_map=GLTR_COLORS,
                                    combine_adjacent=False)
    text_info = gr.Markdown()
    surprisal = gr.Plot(label="Surprisal and entropy")
    lens = gr.Plot(label="Logit lens")

    step_inputs = [picker, step, *sampler.components(), state, kept]
    step_outputs = [candidates, step_info, kept]

    def step_probabilities(record, step, temperature, top_k, top_p, repetition_penalty, session, kept):
        """Candidates of generated token ``step`` (0 = the first) of generation ``record`` (empty: the latest)
        through the sampler stages under the given settings, from the kept logits."""
        return show_step(ctx, ctx.session(session), record, step, temperature, top_k, top_p, repetition_penalty,
                         kept)

    def quiet_step(record, step, temperature, top_k, top_p, repetition_penalty, session, kept):
        """As step_probabilities, but silent while there is nothing to show (after a picker refresh)."""
        if not ctx.session(session).records:
            return gr.update(), gr.update(), kept
        return step_probabilities(record, step, temperature, top_k, top_p, repetition_penalty, session, kept)

    def choose_record(record, session):
        """A new generation picked: its range and settings in the sliders."""
        session = ctx.session(session)
        if not session.records:  # nothing to show yet (e.g. the picker was cleared): not an error
            return (gr.update(),) * 5
        return step_slider(session, record), *record_settings(session, record)

    def reset_settings(record, session):
        return record_settings(ctx.session(session), record)

    def texts_probabilities(text, session):
        """Token ranks, surprisal, entropy, perplexity and logit lens of ``text`` under the session's model."""
        return text_probabilities(ctx, ctx.session(session), text)

    def selected_text(record, session):
        return generation_text(ctx.session(session), record)

    private = dict(api_visibility="private")
    model_calls = dict(concurrency_limit=ctx.caps.generate_concurrency, concurrency_id="generate")
    gr.on([show.click, step.input, *(s.input for s in sampler.components())], step_probabilities, step_inputs,
          step_outputs, api_name="step_probabilities", trigger_mode="always_last")
    (picker.change(choose_record, [picker, state], [step, *sampler.components()], **private)
     .then(quiet_step, step_inputs, step_outputs, **private))
    (reset.click(reset_settings, [picker, state], sampler.components(), **private)
     .then(step_probabilities, step_inputs, step_outputs, **private))
    text_outputs = [highlights, text_info, surprisal, lens]
    gr.on([analyse.click, text.submit], texts_probabilities, [text, state], text_outputs,
          api_name="text_probabilities", **model_calls)
    (use_generation.click(selected_text, [picker, state], [text], **private)
     .then(texts_probabilities, [text, state], text_outputs, **private, **model_calls))
    return ProbabilitiesTab(picker, step, sampler, candidates, step_info, text, highlights, text_info, surprisal,
                            lens)
