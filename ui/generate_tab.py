"""The Generate tab: stream a continuation, compare two settings, keep every generation as a record."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr
import numpy as np

import gpt2

from . import widgets
from .context import AppContext, Caps
from .session import GenerationRecord, Session

MAX_STOPS, MAX_STOP_CHARS = 16, 100  # each stop sequence is checked after every token
TOP_CANDIDATES = 20  # candidates kept per step for the probability tab
STREAM_INTERVAL_S = 0.05  # throttle UI updates: a small model outruns the browser
_SURROGATE = re.compile("[\ud800-\udfff]")
EXAMPLES = [
    "ROMEO:\nBut soft, what light",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "The meaning of life is",
    "Once upon a time, in a land far away,",
]


def parse_params(caps: Caps, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                 stop: str | None = None) -> gpt2.SamplingParams:
    """Widget (or API) values -> ``SamplingParams``; anything invalid becomes a ``gr.Error`` that names
    the parameter and its range. ``seed`` blank or -1 means random; ``stop`` is one string per line."""
    try:
        max_new = _integer("max_new_tokens", max_new_tokens)
        if max_new > caps.max_new_tokens:
            raise ValueError(f"max_new_tokens must be at most {caps.max_new_tokens} here; got {max_new}")
        seed = None if seed in (None, "", -1) else _integer("seed", seed)
        stops = tuple(_unescape(s) for s in (stop or "").splitlines() if s)
        if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop must be at most {MAX_STOPS} sequences (one per line) of at most {MAX_STOP_CHARS} "
                             f"characters each; got {len(stops)}, the longest {max(map(len, stops))} characters")
        return gpt2.SamplingParams(
            temperature=_number("temperature", temperature), top_k=_integer("top_k", top_k),
            top_p=_number("top_p", top_p), repetition_penalty=_number("repetition_penalty", repetition_penalty),
            max_new_tokens=max_new, seed=seed, stop=stops,
        )
    except (ValueError, TypeError) as e:
        raise gr.Error(str(e)) from None


def _unescape(stop: str) -> str:
    """Let people type ``\\n`` and ``\\t`` for newline and tab in a one-line stop sequence."""
    return stop.replace("\\n", "\n").replace("\\t", "\t")


def _number(name: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None


def _integer(name: str, value) -> int:
    """Accept 40 and 40.0 (widgets send floats), refuse 2.5, NaN and text."""
    number = _number(name, value)
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{name} must be a whole number; got {value!r}")
    return int(number)


def prepare_prompt(text: str | None, caps: Caps, block_size: int) -> tuple[list[int], str | None]:
    """Clean and tokenize a prompt, cropping very long ones from the left with a notice. Lone
    surrogates become U+FFFD instead of failing."""
    text = _SURROGATE.sub("\ufffd", text or "")  # lone surrogates cannot be encoded to UTF-8
    notice = None
    if len(text) > caps.max_prompt_chars:  # crop before tokenizing: megabytes of text stay fast
        text = text[-caps.max_prompt_chars :]
        notice = f"Prompt cropped to its last {caps.max_prompt_chars} characters."
    ids = gpt2.encode(text)
    if len(ids) > block_size:
        notice = f"Prompt cropped to its last {block_size} tokens (the model's context)."
        ids = ids[-block_size:]
    return ids, notice


@dataclass
class Progress:
    record: GenerationRecord
    notices: list[str]
    finish_reason: str | None = None

    def stats(self) -> str:
        n, s = len(self.record.token_ids), self.record.seconds
        rate = f" · {n / s:.1f} tokens/s" if s > 0 and n else ""
        done = f" · finished: {self.finish_reason}" if self.finish_reason else ""
        notes = "".join(f"\n\n> {m}" for m in self.notices)
        return f"**{n} tokens**{rate}{done}{notes}"


def generate_job(model: gpt2.GPT2, ids: list[int], params: gpt2.SamplingParams) -> Iterator[gpt2.Step]:
    """The model work of a generation (a ``ui.gpu`` job): steps with the details the other tabs show,
    their logits in half precision (half the memory, plenty for plots)."""
    for step in gpt2.generate(model, ids, params, top_candidates=TOP_CANDIDATES, keep_logits=True):
        step.details.logits = step.details.logits.astype(np.float16)
        yield step


def stream(ctx: AppContext, session: Session, prompt: str, params: gpt2.SamplingParams) -> Iterator[Progress]:
    """Generate for a session, yielding progress after each token; the record is kept at the end."""
    ref = ctx.ref(session)
    ids, notice = prepare_prompt(prompt, ctx.caps, ctx.config(ref).block_size)
    record = GenerationRecord(ids, params, session.model_key, session.use_finetuned and session.has_finetuned())
    progress = Progress(record, [notice] if notice else [])
    steps = ctx.gpu.iterate(generate_job, ref, ids, params)
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
            yield progress
    finally:  # also when the browser goes away mid-stream: keep what was made, end the job
        steps.close()
        if record.token_ids:
            session.add_record(record)


def _throttled(progress: Iterator[Progress]) -> Iterator[Progress]:
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


@dataclass
class SamplerWidgets:
    temperature: gr.Slider
    top_k: gr.Slider
    top_p: gr.Slider
    repetition_penalty: gr.Slider

    def components(self) -> list[gr.components.Component]:
        return [self.temperature, self.top_k, self.top_p, self.repetition_penalty]


def sampler_widgets(temperature: float = 0.8, top_k: int = 40, top_p: float = 1.0,
                    penalty: float = 1.0) -> SamplerWidgets:
    return SamplerWidgets(
        widgets.slider(0, 2, value=temperature, step=0.05, label="temperature", info="0 = greedy"),
        widgets.slider(0, 200, value=top_k, step=1, label="top-k", info="0 = off"),
        widgets.slider(0, 1, value=top_p, step=0.01, label="top-p", info="1 = off"),
        widgets.slider(0.5, 2, value=penalty, step=0.05, label="repetition penalty", info="1 = off"),
    )


@dataclass
class GenerateTab:
    output: gr.Textbox
    stats: gr.Markdown
    inspect_attention: gr.Button
    inspect_probabilities: gr.Button
    done: list  # events that finish a generation (other tabs refresh their record lists on these)


def build(ctx: AppContext, state: gr.State) -> GenerateTab:
    """Lay out the tab and wire its events."""
    caps = ctx.caps
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=4, placeholder="Type the start of a text…")
            gr.Examples(EXAMPLES, inputs=[prompt], label="Examples")
            with gr.Row():
                run = gr.Button("Generate", variant="primary")
                stop_btn = gr.Button("Stop")
            output = gr.Textbox(label="Generated text", lines=8, interactive=False, buttons=["copy"],
                                elem_id="generated-text")
            stats = gr.Markdown()
            with gr.Row():
                inspect_attention = gr.Button("Inspect attention ›", size="sm")
                inspect_probabilities = gr.Button("Inspect probabilities ›", size="sm")
        with gr.Column(scale=2):
            a = sampler_widgets()
            max_new = widgets.slider(1, caps.max_new_tokens, value=min(80, caps.max_new_tokens), step=1,
                                label="max new tokens")
            seed = widgets.number(value=0, label="seed", info="blank or -1 = random",
                                  allowed="Give a whole number, or leave it blank (or -1) for a random seed.")
            stop = gr.Textbox("", label="stop sequences", lines=2, placeholder="one per line, e.g. \\n\\n")
    with gr.Accordion("Compare two settings (same prompt and seed)", open=False):
        with gr.Row():
            with gr.Column():
                gr.Markdown("**B settings**")
                b = sampler_widgets(temperature=1.2, top_k=0)
                compare = gr.Button("Compare A and B", variant="secondary")
            with gr.Column():
                out_a = gr.Textbox(label="A (settings above)", lines=6, interactive=False)
                out_b = gr.Textbox(label="B", lines=6, interactive=False)
                compare_stats = gr.Markdown()

    def generate(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, session):
        """Stream a continuation of ``prompt``; the first output is the generated text."""
        session = ctx.session(session)
        session.stop.clear()
        params = parse_params(caps, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop)
        yield "", "", session
        for p in _throttled(stream(ctx, session, prompt, params)):
            yield p.record.text, p.stats(), session
            if session.stop.is_set():
                break

    def compare_ab(prompt, max_new_tokens, ta, ka, pa, ra, tb, kb, pb, rb, seed, stop, session):
        """Generate with settings A and B side by side, interleaving their tokens."""
        session = ctx.session(session)
        session.stop.clear()
        pa_ = parse_params(caps, max_new_tokens, ta, ka, pa, ra, seed, stop)
        pb_ = parse_params(caps, max_new_tokens, tb, kb, pb, rb, seed, stop)
        streams = [_throttled(stream(ctx, session, prompt, p)) for p in (pa_, pb_)]
        latest: list[Progress | None] = [None, None]
        while any(s is not None for s in streams):
            for i, s in enumerate(streams):
                if s is not None:
                    latest[i] = next(s, None) or latest[i]
                    if latest[i] is None or latest[i].finish_reason:
                        streams[i] = None
            texts = [p.record.text if p else "" for p in latest]
            yield *texts, "  \n".join(f"{n}: {p.stats()}" for n, p in zip("AB", latest, strict=True) if p), session
            if session.stop.is_set():
                break

    common = dict(concurrency_limit=caps.generate_concurrency, concurrency_id="generate")
    gen_event = run.click(generate, [prompt, max_new, *a.components(), seed, stop, state], [output, stats, state],
                          api_name="generate", **common)
    submit_event = prompt.submit(generate, [prompt, max_new, *a.components(), seed, stop, state],
                                 [output, stats, state], api_visibility="private", **common)
    cmp_event = compare.click(compare_ab, [prompt, max_new, *a.components(), *b.components(), seed, stop, state],
                              [out_a, out_b, compare_stats, state], api_name="compare", **common)
    stop_btn.click(lambda s: s.stop.set() if isinstance(s, Session) else None, [state], None, queue=False,
                   api_visibility="private")
    return GenerateTab(output, stats, inspect_attention, inspect_probabilities, [gen_event, submit_event, cmp_event])
