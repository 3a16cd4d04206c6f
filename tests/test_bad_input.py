"""Bad input, catalogued in one place: every case gets a sensible result or a clear message that names
the problem and says what to do (never a traceback, a hang or a dead server), and the next ordinary
request still works.

Two catalogues, each a plain table driven by one parametrized test; add a row to extend them:

* ``API_CASES``: requests to the launched app (the shared ``served`` fixture, a tiny random model), sent
  the way an API user sends them: with ``gradio_client``, or as raw JSON over HTTP for what
  gradio_client cannot encode (NaN, ±Infinity, lone surrogates) and for uploads under names no local
  file can have. After each case an ordinary request must still work, and no model may have been read
  from anywhere but the picker's catalogue.
* the library without the app: ``BAD_SAMPLING`` (``gpt2.SamplingParams``), ``CORE_CASES``
  (``gpt2.generate``/``generate_text``), ``PICKLE_CASES`` (pickles offered as weights are refused and
  provably never unpickled, also by the app and its model picker) and ``UNKNOWN_MODELS``
  (``gpt2.GPT2.from_pretrained``).

A refusal's message must match every pattern of its row (case-insensitive): the parameter, by its API
name or its label (``named``), and what is allowed. Gradio's own messages for its input checks ("Value 0
is less than minimum value 1.") do not name the parameter, so rows whose value gradio checks first fail
until the app labels those checks.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import gpt2
from ui.context import Caps

CAPS = Caps()  # the served app's limits (defaults, or the GPT2_* environment variables)
TINY = gpt2.GPTConfig.preset("tiny")  # the served model
NAN, INF = math.nan, math.inf
WHOLE = r"whole|integer"  # what a message says an integer parameter must be
NUMBER = r"number|integer|float"
# Gradio's stand-ins when a handler raised something other than gr.Error: a traceback on the server, and
# nothing the user can act on.
GENERIC = re.compile(r"upstream Gradio app has raised an exception|Traceback|^None$|^$")


def named(*params: str) -> str:
    """A pattern for a parameter as a message may name it: its API name (``top_k``) or its label
    (``top-k``, ``Top k``); several params are alternatives (``named("mode", "method")``)."""
    return "|".join(r"\b" + r"[ _-]?".join(map(re.escape, p.split("_"))) + r"\b" for p in params)


# ---------------------------------------------------------------- the API catalogue: how rows are written


@dataclass(frozen=True)
class Ok:
    """The request succeeds; each pattern is searched (case-insensitive) in output ``part`` as text."""

    patterns: tuple[str, ...] = ()
    part: int = 0


@dataclass(frozen=True)
class Refused:
    """The request fails with a message matching every pattern. ``any_message``: only the refusal
    matters (gradio refuses before the app runs, and hides its reason from the caller)."""

    patterns: tuple[str, ...] = ()
    any_message: bool = False


def ok(*patterns: str, part: int = 0) -> Ok:
    return Ok(patterns, part)


def refused(*patterns: str, any_message: bool = False) -> Refused:
    return Refused(patterns, any_message)


@dataclass(frozen=True)
class Upload:
    """A file the case uploads first (under exactly this name for ``http`` cases, where the name may be
    one no local file can have)."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Ref:
    """A value only known once the app runs (see ``api.refs``)."""

    name: str


@dataclass(frozen=True)
class Case:
    id: str
    endpoint: str  # the API name, e.g. "/generate"
    args: tuple  # the endpoint's inputs, in order (Upload and Ref placeholders are filled in)
    expect: Ok | Refused
    http: bool = False  # raw JSON over HTTP instead of gradio_client
    seconds: float = 10.0  # it must answer within this
    absent: str | None = None  # a path that must not exist afterwards


def _inputs(defaults: dict[str, Any]) -> Callable[..., tuple]:
    """``f(**changes)``: the endpoint's inputs in order, the defaults with some changed."""

    def build(**changes: Any) -> tuple:
        unknown = set(changes) - set(defaults)
        assert not unknown, f"no such input: {unknown}"
        return tuple((defaults | changes).values())

    return build


generate = _inputs(dict(prompt="The cat", max_new_tokens=4, temperature=1.0, top_k=0, top_p=1.0,
                        repetition_penalty=1.0, seed=0, stop="", min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0,
                        eta_cutoff=0.0, no_repeat_ngram_size=0, decoding="sampling", num_beams=4,
                        length_penalty=1.0, early_stopping="false"))
compare = _inputs(dict(prompt="The cat", max_new_tokens=4, temperature_a=1.0, top_k_a=0, top_p_a=1.0,
                       repetition_penalty_a=1.0, temperature_b=1.2, top_k_b=0, top_p_b=1.0, repetition_penalty_b=1.0,
                       seed=0, stop=""))
attention = _inputs(dict(text="The cat sat on the mat.", source="text", record=None, layer=0, head=0,
                         view="one head", query=0, step=0, scale="fitted to the data"))
step_probabilities = _inputs(dict(record=None, step=0, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                                   min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
                                   no_repeat_ngram_size=0))
# (BUILDERS: one line per new endpoint below, in its API order)
ablate = _inputs(dict(text="The cat sat on the mat. The cat sat", heads="0.1", mode="zero", max_new_tokens=4, seed=0))
branch = _inputs(dict(record=None, step=0, token=464))  # the session's latest generation has 2 tokens (``ordinary``)
beam_search = _inputs(dict(prompt="The cat", num_beams=2, max_new_tokens=4, length_penalty=1.0, early_stopping="false",
                           no_repeat_ngram_size=0, num_return_sequences=1))
diversity = _inputs(dict(prompt="The cat", num_samples=3, max_new_tokens=4, temperature=1.0, top_k=0, top_p=1.0,
                         repetition_penalty=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
                         no_repeat_ngram_size=0, seed=0, sweep="none"))
attribute = _inputs(dict(text="The cat sat on the", target=" mat", foil="", method="gradient_x_input", steps=4,
                         record=None, step=0, source="text"))
patch = _inputs(dict(clean="The cat sat on the mat and", corrupted="The dog sat on the mat and", target=" the",
                     foil=" a"))
chat = _inputs(dict(message="Hi", history=[], max_new_tokens=4, temperature=1.0, top_k=0, top_p=1.0,
                    repetition_penalty=1.0, seed=0, stop="", min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0,
                    eta_cutoff=0.0, no_repeat_ngram_size=0))
TRAIN_TEXT = " ".join(f"The cat number {i} sat on the mat." for i in range(60))
finetune = _inputs(dict(text=TRAIN_TEXT, file=None, column="text", mode="LoRA", steps=1, learning_rate=1e-2,
                        batch_size=1, block_size=8, lora_rank=2, sample_prompt="The", seed=0))

HUGE = "a" * 300_000  # hundreds of thousands of characters: cropped to the context, fast
HUGE_TEXT = "The cat sat on the mat. " * 12_500
CONTROL = "\x00\x01\x07\x08\x1b[31mred\x1b[0m\r\x7f\u200b\u202e"
SURROGATES = "lone \ud800 surrogates \udfff"  # only raw JSON can carry them (gradio_client encodes UTF-8)
EOT = "<|endoftext|>"
CAP = CAPS.max_upload_bytes
OVER_CAP = refused(r"size|too (big|large)|exceeds", rf"{CAP}|{CAP:,}|{CAP / 1e6:.1f} MB")  # names the cap
ESCAPE = f"bad-input-{uuid.uuid4().hex[:12]}"  # a directory an upload's name tries to write into
# a model the picker does not offer: refused by name, with the choices
NOT_OFFERED = refused(named("model"), r"not (in the list of|one of the) (choices|offered)", r"choices|choose")


def _sampler_rows(endpoint: str, build: Callable[..., tuple], names: dict[str, str]) -> list[Case]:
    """Out-of-range values of the sampling parameters (``names``: the input -> the parameter it is)."""
    rows = []
    bad: dict[str, list[tuple[str, Any, Ok | Refused]]] = {
        "max_new_tokens": [("negative", -1, refused(named("max_new_tokens"), r"\b1\b")),
                           ("zero", 0, refused(named("max_new_tokens"), r"\b1\b")),
                           ("non-integer", 2.5, refused(named("max_new_tokens"), WHOLE)),
                           ("absurd", 10**12, refused(named("max_new_tokens"), rf"\b{CAPS.max_new_tokens}\b")),
                           ("text", "many", refused(named("max_new_tokens"), NUMBER))],
        "temperature": [("negative", -1, refused(named("temperature"), r"\b0\b")),
                        ("zero (greedy)", 0, ok()),
                        ("tiny (greedy)", 1e-300, ok()),
                        ("above the range", 2.5, refused(named("temperature"), r"\b2\b")),
                        ("text", "hot", refused(named("temperature"), NUMBER))],
        "top_k": [("negative", -1, refused(named("top_k"), r"\b0\b")),
                  ("non-integer", 2.5, refused(named("top_k"), WHOLE)),
                  ("absurd", 10**12, refused(named("top_k"), r"\b200\b"))],
        "top_p": [("negative", -0.5, refused(named("top_p"), r"\b0\b")),
                  ("zero (top token)", 0, ok()),
                  ("above 1", 1.5, refused(named("top_p"), r"\b1\b"))],
        "repetition_penalty": [("negative", -1, refused(named("repetition_penalty"), r"\b0?\.5\b|\b0\b")),
                               ("zero", 0, refused(named("repetition_penalty"), r"\b0?\.5\b|\b0\b")),
                               ("absurd", 10**12, refused(named("repetition_penalty"), r"\b2\b"))],
        "seed": [("negative", -5, refused(named("seed"))),
                 ("-1 (random)", -1, ok()),
                 ("blank (random)", None, ok()),
                 ("non-integer", 2.5, refused(named("seed"), WHOLE)),
                 ("past 2**63", 2**64, refused(named("seed"), r"2\*\*63|9223372036854775807")),
                 ("text", "lucky", refused(named("seed"), NUMBER))],
    }
    for field_name, param in names.items():
        for what, value, expect in bad[param]:
            rows.append(Case(f"{endpoint} {field_name} {what}", endpoint, build(**{field_name: value}), expect))
        # Only raw JSON can carry these. NaN passes range checks (every comparison is false), so it tests
        # each parameter's own check; ±inf takes the path of any value out of range, except for the seed.
        extremes = [("NaN", NAN)] + ([("+inf", INF), ("-inf", -INF)] if param in ("seed", "temperature") else [])
        for what, value in extremes:
            rows.append(Case(f"{endpoint} {field_name} {what}", endpoint, build(**{field_name: value}),
                             refused(named(param)), http=True))
    return rows


GENERATE_PARAMS = {p: p for p in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed")}

API_CASES: list[Case] = [
    # ---- prompts (/generate): cleaned, cropped with a notice, never an error
    Case("/generate empty prompt", "/generate", generate(prompt=""), ok("4 tokens", part=1)),
    Case("/generate whitespace prompt", "/generate", generate(prompt="  \n\t  "), ok("4 tokens", part=1)),
    Case("/generate missing prompt", "/generate", generate(prompt=None), ok("4 tokens", part=1)),
    Case("/generate 300k-character prompt", "/generate", generate(prompt=HUGE), ok("4 tokens", "cropped", part=1),
         seconds=5),
    Case("/generate 300k-character text prompt", "/generate", generate(prompt=HUGE_TEXT),
         ok("4 tokens", "cropped", part=1), seconds=5),
    # a request body over GPT2_MAX_REQUEST_BYTES (a 50 MB prompt) is refused before Gradio reads it (HTTP 413)
    Case("/generate prompt over the request cap", "/generate", generate(prompt="a" * (CAPS.max_request_bytes + 1)),
         refused("too large", rf"{CAPS.max_request_bytes:,} bytes"), http=True),
    Case("/generate control characters", "/generate", generate(prompt=CONTROL), ok("4 tokens", part=1)),
    Case("/generate <|endoftext|> prompt", "/generate", generate(prompt=EOT), ok("4 tokens", part=1)),
    Case("/generate <|endoftext|> inside", "/generate", generate(prompt=f"a{EOT}b{EOT}{EOT}c"), ok("4 tokens", part=1)),
    Case("/generate lone surrogates", "/generate", generate(prompt=SURROGATES), ok("4 tokens", part=1), http=True),
    Case("/generate stop with control characters", "/generate", generate(stop=f"\x00\n{SURROGATES}"),
         ok("4 tokens", part=1), http=True),
    # 20,000 stop strings are checked after every token: refuse them (or be fast), never tie up a worker
    Case("/generate 20,000 stop sequences", "/generate",
         generate(max_new_tokens=CAPS.max_new_tokens, stop="\n".join(f"zq{i}xv" for i in range(20_000))),
         refused(named("stop"), r"\d"), seconds=5),
    # ---- sampling parameters (/generate, /compare, /step_probabilities)
    *_sampler_rows("/generate", generate, GENERATE_PARAMS),
    Case("/generate temperature None", "/generate", generate(temperature=None), refused(named("temperature"), NUMBER)),
    Case("/generate top_k true (not 1)", "/generate", generate(top_k=True), refused(named("top_k"), WHOLE)),
    Case("/compare 300k-character prompt", "/compare", compare(prompt=HUGE), ok("cropped", part=2), seconds=5),
    Case("/compare B temperature above the range", "/compare", compare(temperature_b=5),
         refused(named("temperature_b"), r"\b2\b")),
    Case("/compare B top_k non-integer", "/compare", compare(top_k_b=2.5), refused(named("top_k_b"), WHOLE)),
    Case("/compare B top_p NaN", "/compare", compare(top_p_b=NAN), refused(named("top_p_b")), http=True),
    # A's sliders are Generate's own ("the settings above"): Gradio's range check names them by their label
    Case("/compare A repetition_penalty zero", "/compare", compare(repetition_penalty_a=0),
         refused(named("repetition_penalty"), r"\b0?\.5\b|\b0\b")),
    Case("/attention unknown scale", "/attention", attention(scale="logarithmic"),
         refused(named("scale"), "fitted to the data")),
    Case("/compare max_new_tokens absurd", "/compare", compare(max_new_tokens=10**12),
         refused(named("max_new_tokens"), rf"\b{CAPS.max_new_tokens}\b")),
    # (the session has generations: each case's ordinary request makes one)
    Case("/step_probabilities step past the generation", "/step_probabilities", step_probabilities(step=5),
         refused(named("step"), r"\b0\b")),
    Case("/step_probabilities step absurd", "/step_probabilities", step_probabilities(step=10**9),
         refused(named("step"), r"\d")),
    Case("/step_probabilities step negative", "/step_probabilities", step_probabilities(step=-1),
         refused(named("step"), r"\b0\b")),
    Case("/step_probabilities step non-integer", "/step_probabilities", step_probabilities(step=0.5),
         refused(named("step"), WHOLE)),
    Case("/step_probabilities step NaN", "/step_probabilities", step_probabilities(step=NAN),
         refused(named("step")), http=True),
    Case("/step_probabilities unknown record", "/step_probabilities", step_probabilities(record=123_456),
         refused("123456", "pick")),
    Case("/step_probabilities record not a number", "/step_probabilities", step_probabilities(record="newest"),
         refused(named("record", "generation"), "latest")),
    Case("/step_probabilities record 'latest'", "/step_probabilities", step_probabilities(record="latest"),
         ok("Step 0", part=1)),
    # a record id is a whole number: not infinite, not past any float, not 1.5, and not true (True is not #1)
    Case("/step_probabilities record Infinity", "/step_probabilities", step_probabilities(record=INF),
         refused(named("record"), WHOLE, "latest"), http=True),
    Case("/step_probabilities record NaN", "/step_probabilities", step_probabilities(record=NAN),
         refused(named("record"), WHOLE, "latest"), http=True),
    Case("/step_probabilities record 10**400", "/step_probabilities", step_probabilities(record=10**400),
         refused(named("record"), WHOLE, "latest")),
    Case("/step_probabilities record non-integer", "/step_probabilities", step_probabilities(record=1.5),
         refused(named("record"), WHOLE)),
    Case("/step_probabilities record true", "/step_probabilities", step_probabilities(record=True),
         refused(named("record"), WHOLE)),
    Case("/step_probabilities step true", "/step_probabilities", step_probabilities(step=True),
         refused(named("step"), WHOLE)),
    Case("/step_probabilities temperature above the range", "/step_probabilities",
         step_probabilities(temperature=5), refused(named("temperature"), r"\b2\b")),
    Case("/step_probabilities temperature NaN", "/step_probabilities", step_probabilities(temperature=NAN),
         refused(named("temperature")), http=True),
    Case("/step_probabilities tiny temperature", "/step_probabilities", step_probabilities(temperature=1e-300),
         ok("Step 0", part=1)),
    Case("/step_probabilities top_k negative", "/step_probabilities", step_probabilities(top_k=-1),
         refused(named("top_k"), r"\b0\b")),
    # ---- /attention and /text_probabilities: texts and positions
    Case("/attention empty text", "/attention", attention(text=""), refused(named("text"))),
    Case("/attention whitespace text", "/attention", attention(text="   "), ok("heatmap")),
    Case("/attention 300k-character text", "/attention", attention(text=HUGE), ok("cropped", part=2), seconds=5),
    Case("/attention control characters", "/attention", attention(text=CONTROL), ok("heatmap")),
    Case("/attention lone surrogates", "/attention", attention(text=SURROGATES), ok("heatmap"), http=True),
    Case("/attention layer past the model", "/attention", attention(layer=TINY.n_layer),
         refused(named("layer"), rf"\b{TINY.n_layer - 1}\b")),
    Case("/attention layer negative", "/attention", attention(layer=-1), refused(named("layer"), r"\b0\b")),
    Case("/attention layer non-integer", "/attention", attention(layer=0.5), refused(named("layer"), WHOLE)),
    Case("/attention layer NaN", "/attention", attention(layer=NAN), refused(named("layer")), http=True),
    Case("/attention head past the model", "/attention", attention(head=TINY.n_head),
         refused(named("head"), rf"\b{TINY.n_head - 1}\b")),
    Case("/attention query absurd", "/attention", attention(query=10**9), refused(named("query"), r"\d")),
    # None or blank: the last token (of 7), whose row is outlined
    Case("/attention query None (the last token)", "/attention", attention(query=None), ok(r'"y0":\s*5\.5\b')),
    Case("/attention query blank (the last token)", "/attention", attention(query=""), ok(r'"y0":\s*5\.5\b')),
    Case("/attention layer None", "/attention", attention(layer=None), refused(named("layer"), WHOLE)),
    Case("/attention layer true", "/attention", attention(layer=True), refused(named("layer"), WHOLE)),
    Case("/attention unknown view", "/attention", attention(view="sideways"), refused(named("view"), "one head")),
    Case("/attention unknown source", "/attention", attention(source="elsewhere"),
         refused(named("source"), "a generation")),
    Case("/attention record not a number", "/attention", attention(source="a generation", record="newest"),
         refused(named("record", "generation"), "latest")),
    Case("/attention record 'latest'", "/attention", attention(source="a generation", record="latest"),
         ok("Generation #", part=2)),
    Case("/text_probabilities empty text", "/text_probabilities", ("",), refused(named("text"))),
    Case("/text_probabilities missing text", "/text_probabilities", (None,), refused(named("text"))),
    Case("/text_probabilities whitespace text", "/text_probabilities", ("   ",), ok("Perplexity", part=1)),
    Case("/text_probabilities <|endoftext|>", "/text_probabilities", (EOT,), ok("Perplexity", part=1)),
    Case("/text_probabilities control characters", "/text_probabilities", (CONTROL,), ok("Perplexity", part=1)),
    Case("/text_probabilities lone surrogates", "/text_probabilities", (SURROGATES,), ok("Perplexity", part=1),
         http=True),
    Case("/text_probabilities 300k-character text", "/text_probabilities", (HUGE_TEXT,),
         ok("Perplexity", "cropped", part=1), seconds=5),
    # ---- /finetune: uploads (all fail validation before any training)
    Case("/finetune empty file", "/finetune", finetune(file=Upload("empty.txt", b"")), refused("empty")),
    Case("/finetune binary file", "/finetune", finetune(file=Upload("blob.txt", b"\x00\x01\xfe\xff" * 256)),
         refused("binary", "UTF-8")),
    Case("/finetune not UTF-8", "/finetune", finetune(file=Upload("latin1.txt", "café crème ".encode("latin-1") * 99)),
         refused("not UTF-8", "convert")),
    Case("/finetune over the size cap", "/finetune", finetune(file=Upload("big.txt", b"a" * (CAP + 1))),
         OVER_CAP),
    Case("/finetune over the size cap, raw upload", "/finetune", finetune(file=Upload("big.txt", b"a" * (CAP + 1))),
         OVER_CAP, http=True),
    Case("/finetune CSV without the column", "/finetune",
         finetune(file=Upload("table.csv", b"id,body\n" + b"1,the cat sat\n" * 50)),
         refused("column 'text'", "'body'")),
    Case("/finetune JSONL with a broken line", "/finetune",
         finetune(file=Upload("data.jsonl", b'{"text": "fine"}\n{"text": "fine"}\n{"text": broken}\n')),
         refused("line 3", "JSON")),
    Case("/finetune unsupported extension", "/finetune", finetune(file=Upload("paper.pdf", b"%PDF-1.4")),
         refused(r"\.txt", r"\.jsonl")),
    Case("/finetune file named ../../etc/passwd", "/finetune", finetune(file=Upload("../../etc/passwd", b"root:x:0:0")),
         refused(r"\.txt", r"\.jsonl"), http=True),
    Case("/finetune file name escaping the upload folder", "/finetune",
         finetune(file=Upload(f"../../../../../tmp/{ESCAPE}/evil.txt", b"")), refused("empty"), http=True,
         absent=f"/tmp/{ESCAPE}"),
    Case("/finetune 1,000-character file name", "/finetune", finetune(file=Upload("n" * 996 + ".txt", b"")),
         refused("empty"), http=True),
    # A server path the client never uploaded: gradio refuses it before the app runs (its reason hidden)
    Case("/finetune server path not uploaded", "/finetune", finetune(file=Ref("not_uploaded")),
         refused(any_message=True), http=True),
    Case("/finetune no data", "/finetune", finetune(text="  \n "), refused("no training data", "paste|upload")),
    # ---- /finetune: settings out of range
    Case("/finetune 0 steps", "/finetune", finetune(steps=0), refused(named("steps"), r"\b1\b")),
    Case("/finetune absurd steps", "/finetune", finetune(steps=10**9),
         refused(named("steps"), rf"\b{CAPS.max_train_steps}\b")),
    Case("/finetune non-integer steps", "/finetune", finetune(steps=2.5), refused(named("steps"), WHOLE)),
    Case("/finetune steps None", "/finetune", finetune(steps=None), refused(named("steps"), WHOLE)),
    Case("/finetune steps true", "/finetune", finetune(steps=True), refused(named("steps"), WHOLE)),
    Case("/finetune steps NaN", "/finetune", finetune(steps=NAN), refused(named("steps")), http=True),
    Case("/finetune huge learning rate", "/finetune", finetune(learning_rate=1e9),
         refused(named("learning_rate"), r"at most 1\b")),
    Case("/finetune zero learning rate", "/finetune", finetune(learning_rate=0),
         refused(named("learning_rate"), r"above 0")),
    Case("/finetune learning rate NaN", "/finetune", finetune(learning_rate=NAN), refused(named("learning_rate")),
         http=True),
    Case("/finetune learning rate +inf", "/finetune", finetune(learning_rate=INF), refused(named("learning_rate")),
         http=True),
    Case("/finetune block size beyond the context", "/finetune", finetune(block_size=TINY.block_size + 1),
         refused(named("block_size"), rf"\b{TINY.block_size}\b")),
    Case("/finetune block size absurd", "/finetune", finetune(block_size=10**6),
         refused(named("block_size"), rf"\b{TINY.block_size}\b")),
    Case("/finetune block size too small", "/finetune", finetune(block_size=4), refused(named("block_size"), r"\b8\b")),
    Case("/finetune batch size 0", "/finetune", finetune(batch_size=0), refused(named("batch_size"), r"\b1\b")),
    Case("/finetune LoRA rank 0", "/finetune", finetune(lora_rank=0), refused(named("lora_rank"), r"\b1\b")),
    Case("/finetune unknown mode", "/finetune", finetune(mode="adam"), refused(named("mode", "method"), "LoRA")),
    Case("/finetune non-integer seed", "/finetune", finetune(seed=2.5), refused(named("seed"), WHOLE)),
    Case("/finetune seed NaN", "/finetune", finetune(seed=NAN), refused(named("seed")), http=True),
    Case("/finetune NUL bytes in the pasted text", "/finetune", finetune(text=f"{TRAIN_TEXT}\x00{TRAIN_TEXT}"),
         refused("pasted text", "NUL")),
    # the one case that trains (1 step of 1 x 8 tokens): odd characters in the data and the sample prompt
    Case("/finetune control characters and surrogates", "/finetune",
         finetune(text=f"{TRAIN_TEXT} {CONTROL[1:]} {SURROGATES} {EOT} " * 2, sample_prompt=SURROGATES),
         ok("Finished all 1 steps", part=1), http=True, seconds=30),
    # ---- /load_model: only the picker's keys; a request never names a path
    Case("/load_model a system file", "/load_model", ("/etc/passwd",), NOT_OFFERED),
    Case("/load_model a relative path", "/load_model", ("../checkpoints/shakespeare-small",), NOT_OFFERED),
    Case("/load_model a checkpoint outside the catalogue", "/load_model", (Ref("outside_checkpoint"),),
         NOT_OFFERED),
    Case("/load_model an unknown hub id", "/load_model", ("openai-community/gpt2-huge",), NOT_OFFERED),
    Case("/load_model empty", "/load_model", ("",), NOT_OFFERED),
    Case("/load_model None", "/load_model", (None,), NOT_OFFERED),
    Case("/load_model a list", "/load_model", (["gpt2"],), NOT_OFFERED),  # was "unhashable" and a traceback
    Case("/load_model a number", "/load_model", (3,), NOT_OFFERED),
    # offered, but it cannot be had here (offline, nothing cached): the caller must be told, not handed the
    # current model's description as if the switch had worked
    Case("/load_model a listed hub model offline", "/load_model", ("distilgpt2",),
         refused("distilgpt2", r"hf download|connection|offline")),
    # ---- /generate: decoding choice and advanced samplers (GENERATE-ROWS)
    # gradio_client fills in the parameters left out (their defaults): callers of the first eight still work
    Case("/generate the first eight parameters only", "/generate", generate()[:8], ok("4 tokens", part=1)),
    Case("/generate greedy", "/generate", generate(decoding="greedy", temperature=1.5), ok("4 tokens", part=1)),
    Case("/generate beam search", "/generate", generate(decoding="beam search", num_beams=2),
         ok("4 tokens", "Beam search: 2 beams", part=1)),
    Case("/generate beam search at the caps", "/generate",
         generate(decoding="beam search", num_beams=CAPS.max_beams, max_new_tokens=CAPS.max_new_tokens),
         ok(rf"Beam search: {CAPS.max_beams} beams", part=1), seconds=15),
    Case("/generate beam search, early_stopping never", "/generate",
         generate(decoding="beam search", num_beams=2, early_stopping="never"), ok("Beam search", part=1)),
    Case("/generate beam search, early_stopping true (a boolean)", "/generate",
         generate(decoding="beam search", num_beams=2, early_stopping=True), ok("Beam search", part=1)),
    Case("/generate unknown decoding", "/generate", generate(decoding="beam"),
         refused(named("decoding"), "beam search")),
    Case("/generate decoding None", "/generate", generate(decoding=None), refused(named("decoding"), "sampling")),
    Case("/generate decoding a number", "/generate", generate(decoding=3), refused(named("decoding"), "greedy")),
    Case("/generate num_beams over the cap", "/generate", generate(num_beams=CAPS.max_beams + 1),
         refused(named("num_beams"), rf"\b{CAPS.max_beams}\b")),
    Case("/generate num_beams absurd", "/generate", generate(num_beams=10**9),
         refused(named("num_beams"), rf"\b{CAPS.max_beams}\b")),
    Case("/generate num_beams one", "/generate", generate(num_beams=1), refused(named("num_beams"), r"\b2\b")),
    Case("/generate num_beams non-integer", "/generate", generate(num_beams=2.5), refused(named("num_beams"), WHOLE)),
    Case("/generate num_beams true", "/generate", generate(num_beams=True), refused(named("num_beams"), WHOLE)),
    Case("/generate num_beams None", "/generate", generate(num_beams=None), refused(named("num_beams"), WHOLE)),
    Case("/generate num_beams NaN", "/generate", generate(num_beams=NAN), refused(named("num_beams")), http=True),
    Case("/generate length_penalty text", "/generate", generate(length_penalty="long"),
         refused(named("length_penalty"), NUMBER)),
    Case("/generate length_penalty absurd", "/generate", generate(length_penalty=1e9),
         refused(named("length_penalty"), r"\b10\b")),
    Case("/generate length_penalty true", "/generate", generate(length_penalty=True),
         refused(named("length_penalty"), NUMBER)),
    Case("/generate length_penalty NaN", "/generate", generate(length_penalty=NAN), refused(named("length_penalty")),
         http=True),
    Case("/generate length_penalty -inf", "/generate", generate(length_penalty=-INF), refused(named("length_penalty")),
         http=True),
    Case("/generate early_stopping unknown", "/generate", generate(early_stopping="sometimes"),
         refused(named("early_stopping"), "never")),
    Case("/generate early_stopping a number", "/generate", generate(early_stopping=1),
         refused(named("early_stopping"), "true")),
    Case("/generate early_stopping None", "/generate", generate(early_stopping=None),
         refused(named("early_stopping"), "false")),
    Case("/generate advanced samplers together", "/generate",
         generate(min_p=0.05, typical_p=0.9, epsilon_cutoff=3e-4, eta_cutoff=1e-3, no_repeat_ngram_size=2),
         ok("4 tokens", part=1)),
    Case("/generate advanced samplers None (off)", "/generate",
         generate(min_p=None, typical_p=None, epsilon_cutoff=None, eta_cutoff=None, no_repeat_ngram_size=None),
         ok("4 tokens", part=1)),
    Case("/generate min_p above 1", "/generate", generate(min_p=1.5), refused(named("min_p"), r"\b1\b")),
    Case("/generate min_p negative", "/generate", generate(min_p=-0.1), refused(named("min_p"), r"\b0\b")),
    Case("/generate min_p text", "/generate", generate(min_p="most"), refused(named("min_p"), NUMBER)),
    Case("/generate min_p true", "/generate", generate(min_p=True), refused(named("min_p"), NUMBER)),
    Case("/generate min_p NaN", "/generate", generate(min_p=NAN), refused(named("min_p")), http=True),
    Case("/generate typical_p zero", "/generate", generate(typical_p=0), refused(named("typical_p"), r"above 0")),
    Case("/generate typical_p above 1", "/generate", generate(typical_p=2), refused(named("typical_p"), r"\b1\b")),
    Case("/generate typical_p NaN", "/generate", generate(typical_p=NAN), refused(named("typical_p")), http=True),
    Case("/generate epsilon_cutoff 1", "/generate", generate(epsilon_cutoff=1),
         refused(named("epsilon_cutoff"), r"\b1\b")),
    Case("/generate epsilon_cutoff negative", "/generate", generate(epsilon_cutoff=-1e-4),
         refused(named("epsilon_cutoff"), r"\b0\b")),
    Case("/generate epsilon_cutoff NaN", "/generate", generate(epsilon_cutoff=NAN), refused(named("epsilon_cutoff")),
         http=True),
    Case("/generate epsilon_cutoff +inf", "/generate", generate(epsilon_cutoff=INF), refused(named("epsilon_cutoff")),
         http=True),
    Case("/generate eta_cutoff 1", "/generate", generate(eta_cutoff=1), refused(named("eta_cutoff"), r"\b1\b")),
    Case("/generate eta_cutoff text", "/generate", generate(eta_cutoff="low"), refused(named("eta_cutoff"), NUMBER)),
    Case("/generate eta_cutoff NaN", "/generate", generate(eta_cutoff=NAN), refused(named("eta_cutoff")), http=True),
    Case("/generate no_repeat_ngram_size negative", "/generate", generate(no_repeat_ngram_size=-1),
         refused(named("no_repeat_ngram_size"), r"\b0\b")),
    Case("/generate no_repeat_ngram_size absurd", "/generate", generate(no_repeat_ngram_size=10**6),
         refused(named("no_repeat_ngram_size"), r"\b16\b")),
    Case("/generate no_repeat_ngram_size non-integer", "/generate", generate(no_repeat_ngram_size=2.5),
         refused(named("no_repeat_ngram_size"), WHOLE)),
    Case("/generate no_repeat_ngram_size true", "/generate", generate(no_repeat_ngram_size=True),
         refused(named("no_repeat_ngram_size"), WHOLE)),
    Case("/generate no_repeat_ngram_size NaN", "/generate", generate(no_repeat_ngram_size=NAN),
         refused(named("no_repeat_ngram_size")), http=True),
    # ---- /step_probabilities stages and /branch (BRANCH-ROWS)
    Case("/step_probabilities every stage on", "/step_probabilities",
         step_probabilities(temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.2, min_p=0.01, typical_p=0.9,
                            epsilon_cutoff=0.0003, eta_cutoff=0.0005, no_repeat_ngram_size=2),
         ok(r"min-p \*\*\d", r"eta \*\*\d", part=1)),
    Case("/step_probabilities min_p above 1", "/step_probabilities", step_probabilities(min_p=2),
         refused(named("min_p"), r"\b1\b")),
    Case("/step_probabilities min_p negative", "/step_probabilities", step_probabilities(min_p=-0.1),
         refused(named("min_p"), r"\b0\b")),
    Case("/step_probabilities min_p NaN", "/step_probabilities", step_probabilities(min_p=NAN), refused(named("min_p")),
         http=True),
    Case("/step_probabilities typical_p zero", "/step_probabilities", step_probabilities(typical_p=0),
         refused(named("typical_p"), "above 0")),
    Case("/step_probabilities typical_p text", "/step_probabilities", step_probabilities(typical_p="typical"),
         refused(named("typical_p"), NUMBER)),
    Case("/step_probabilities epsilon_cutoff 1", "/step_probabilities", step_probabilities(epsilon_cutoff=1),
         refused(named("epsilon_cutoff"), r"not including, 1")),
    Case("/step_probabilities epsilon_cutoff +inf", "/step_probabilities", step_probabilities(epsilon_cutoff=INF),
         refused(named("epsilon_cutoff")), http=True),
    Case("/step_probabilities eta_cutoff negative", "/step_probabilities", step_probabilities(eta_cutoff=-1),
         refused(named("eta_cutoff"), r"\b0\b")),
    Case("/step_probabilities eta_cutoff NaN", "/step_probabilities", step_probabilities(eta_cutoff=NAN),
         refused(named("eta_cutoff")), http=True),
    Case("/step_probabilities no_repeat_ngram_size non-integer", "/step_probabilities",
         step_probabilities(no_repeat_ngram_size=2.5), refused(named("no_repeat_ngram_size"), WHOLE)),
    Case("/step_probabilities no_repeat_ngram_size absurd", "/step_probabilities",
         step_probabilities(no_repeat_ngram_size=10**9), refused(named("no_repeat_ngram_size"), r"\b16\b")),
    Case("/step_probabilities no_repeat_ngram_size negative", "/step_probabilities",
         step_probabilities(no_repeat_ngram_size=-1), refused(named("no_repeat_ngram_size"), r"\b0\b")),
    Case("/branch the latest, another token", "/branch", branch(step=1), ok("Branch #", "from #", part=1)),
    Case("/branch record 'latest'", "/branch", branch(record="latest"), ok("Branch #", part=1)),
    Case("/branch step past the generation", "/branch", branch(step=2), refused(named("step"), r"\b1\b")),
    Case("/branch step absurd", "/branch", branch(step=10**9), refused(named("step"), r"\b1\b")),
    Case("/branch step negative", "/branch", branch(step=-1), refused(named("step"), r"\b0\b")),
    Case("/branch step non-integer", "/branch", branch(step=0.5), refused(named("step"), WHOLE)),
    Case("/branch step NaN", "/branch", branch(step=NAN), refused(named("step")), http=True),
    Case("/branch step not a number", "/branch", branch(step="second"), refused(named("step"), WHOLE)),
    Case("/branch step None", "/branch", branch(step=None), refused(named("step"), WHOLE)),
    Case("/branch token outside the vocabulary", "/branch", branch(token=TINY.vocab_size),
         refused(named("token"), rf"\b{TINY.vocab_size - 1}\b")),
    Case("/branch token absurd", "/branch", branch(token=10**400), refused(named("token")), http=True),
    Case("/branch token negative", "/branch", branch(token=-1), refused(named("token"), r"\b0\b")),
    Case("/branch token non-integer", "/branch", branch(token=2.5), refused(named("token"), WHOLE)),
    Case("/branch token NaN", "/branch", branch(token=NAN), refused(named("token")), http=True),
    Case("/branch token text (not an id)", "/branch", branch(token="the"), refused(named("token"), "token id")),
    Case("/branch token None", "/branch", branch(token=None), refused(named("token"), "token id")),
    Case("/branch token true", "/branch", branch(token=True), refused(named("token"), WHOLE)),
    Case("/branch unknown record", "/branch", branch(record=123_456), refused("no longer kept", "#123456")),
    Case("/branch record not a number", "/branch", branch(record="newest"), refused(named("record"), "latest")),
    Case("/branch record NaN", "/branch", branch(record=NAN), refused(named("record")), http=True),
    # ---- /beam_search (BEAM-ROWS)
    Case("/beam_search empty prompt", "/beam_search", beam_search(prompt=""), ok(r"beams · \d+ steps", part=1)),
    Case("/beam_search 300k-character prompt", "/beam_search", beam_search(prompt=HUGE), ok("cropped", part=1),
         seconds=5),
    Case("/beam_search control characters", "/beam_search", beam_search(prompt=CONTROL),
         ok(r"beams · \d+ steps", part=1)),
    Case("/beam_search lone surrogates", "/beam_search", beam_search(prompt=SURROGATES),
         ok(r"beams · \d+ steps", part=1), http=True),
    # the caps at once: the most beams and new tokens (the tiny model's context ends the search first)
    Case("/beam_search beams and tokens at the caps", "/beam_search",
         beam_search(num_beams=CAPS.max_beams, num_return_sequences=CAPS.max_beams,
                     max_new_tokens=CAPS.max_new_tokens), ok(rf"{CAPS.max_beams} beams", part=1), seconds=10),
    Case("/beam_search num_beams over the cap", "/beam_search", beam_search(num_beams=CAPS.max_beams + 1),
         refused(named("num_beams"), rf"\b{CAPS.max_beams}\b")),
    Case("/beam_search num_beams absurd", "/beam_search", beam_search(num_beams=10**9),
         refused(named("num_beams"), rf"\b{CAPS.max_beams}\b")),
    Case("/beam_search num_beams zero", "/beam_search", beam_search(num_beams=0),
         refused(named("num_beams"), r"\b1\b")),
    Case("/beam_search num_beams non-integer", "/beam_search", beam_search(num_beams=2.5),
         refused(named("num_beams"), WHOLE)),
    Case("/beam_search num_beams true", "/beam_search", beam_search(num_beams=True),
         refused(named("num_beams"), WHOLE)),
    Case("/beam_search num_beams NaN", "/beam_search", beam_search(num_beams=NAN), refused(named("num_beams")),
         http=True),
    Case("/beam_search more returned sequences than beams", "/beam_search", beam_search(num_return_sequences=3),
         refused(named("num_return_sequences"), named("num_beams"), r"\b2\b")),
    Case("/beam_search num_return_sequences zero", "/beam_search", beam_search(num_return_sequences=0),
         refused(named("num_return_sequences"), r"\b1\b")),
    Case("/beam_search max_new_tokens absurd", "/beam_search", beam_search(max_new_tokens=10**12),
         refused(named("max_new_tokens"), rf"\b{CAPS.max_new_tokens}\b")),
    Case("/beam_search max_new_tokens zero", "/beam_search", beam_search(max_new_tokens=0),
         refused(named("max_new_tokens"), r"\b1\b")),
    Case("/beam_search length_penalty text", "/beam_search", beam_search(length_penalty="long"),
         refused(named("length_penalty"), NUMBER)),
    Case("/beam_search length_penalty absurd", "/beam_search", beam_search(length_penalty=1e9),
         refused(named("length_penalty"), r"\b10\b")),
    Case("/beam_search length_penalty NaN", "/beam_search", beam_search(length_penalty=NAN),
         refused(named("length_penalty")), http=True),
    Case("/beam_search length_penalty -inf", "/beam_search", beam_search(length_penalty=-INF),
         refused(named("length_penalty")), http=True),
    Case("/beam_search early_stopping unknown", "/beam_search", beam_search(early_stopping="sometimes"),
         refused(named("early_stopping"), "never")),
    Case("/beam_search early_stopping None", "/beam_search", beam_search(early_stopping=None),
         refused(named("early_stopping"), "never")),
    Case("/beam_search early_stopping a number", "/beam_search", beam_search(early_stopping=1),
         refused(named("early_stopping"), "never")),
    Case("/beam_search early_stopping true (boolean)", "/beam_search", beam_search(early_stopping=True),
         ok(r"beams · \d+ steps", part=1)),
    Case("/beam_search early_stopping 'NEVER'", "/beam_search", beam_search(early_stopping="NEVER"),
         ok(r"beams · \d+ steps", part=1)),
    Case("/beam_search no_repeat_ngram_size negative", "/beam_search", beam_search(no_repeat_ngram_size=-1),
         refused(named("no_repeat_ngram_size"), r"\b0\b")),
    Case("/beam_search no_repeat_ngram_size absurd", "/beam_search", beam_search(no_repeat_ngram_size=10**6),
         refused(named("no_repeat_ngram_size"), r"\b16\b")),
    Case("/beam_search no_repeat_ngram_size non-integer", "/beam_search", beam_search(no_repeat_ngram_size=1.5),
         refused(named("no_repeat_ngram_size"), WHOLE)),
    # ---- /diversity (DIVERSITY-ROWS)
    Case("/diversity empty prompt", "/diversity", diversity(prompt=""), ok("distinct-1", "3 samples")),
    Case("/diversity 300k-character prompt", "/diversity", diversity(prompt=HUGE), ok("distinct-1", "cropped"),
         seconds=5),
    Case("/diversity control characters", "/diversity", diversity(prompt=CONTROL), ok("distinct-1")),
    Case("/diversity <|endoftext|> prompt", "/diversity", diversity(prompt=EOT), ok("distinct-1")),
    Case("/diversity lone surrogates", "/diversity", diversity(prompt=SURROGATES), ok("distinct-1"), http=True),
    *_sampler_rows("/diversity", diversity, GENERATE_PARAMS),
    Case("/diversity num_samples zero", "/diversity", diversity(num_samples=0),
         refused(named("num_samples"), r"\b1\b")),
    Case("/diversity num_samples negative", "/diversity", diversity(num_samples=-3),
         refused(named("num_samples"), r"\b1\b")),
    Case("/diversity num_samples over the cap", "/diversity", diversity(num_samples=CAPS.max_diversity_samples + 1),
         refused(named("num_samples"), rf"\b{CAPS.max_diversity_samples}\b")),
    Case("/diversity num_samples absurd", "/diversity", diversity(num_samples=10**12),
         refused(named("num_samples"), rf"\b{CAPS.max_diversity_samples}\b")),
    Case("/diversity num_samples non-integer", "/diversity", diversity(num_samples=2.5),
         refused(named("num_samples"), WHOLE)),
    Case("/diversity num_samples true", "/diversity", diversity(num_samples=True),
         refused(named("num_samples"), WHOLE)),
    Case("/diversity num_samples text", "/diversity", diversity(num_samples="many"),
         refused(named("num_samples"), WHOLE)),
    Case("/diversity num_samples None", "/diversity", diversity(num_samples=None),
         refused(named("num_samples"), WHOLE)),
    Case("/diversity num_samples NaN", "/diversity", diversity(num_samples=NAN), refused(named("num_samples")),
         http=True),
    # samples x new tokens x runs (the current setting + 8 temperatures) over GPT2_MAX_DIVERSITY_TOKENS
    Case("/diversity samples x tokens x sweep over the cap", "/diversity",
         diversity(num_samples=CAPS.max_diversity_samples, max_new_tokens=CAPS.max_new_tokens, sweep="temperature"),
         refused(named("num_samples"), named("max_new_tokens"),
                 rf"\b{CAPS.max_diversity_tokens:,}\b|\b{CAPS.max_diversity_tokens}\b")),
    # the caps at once: the most samples, and the most new tokens that fit with a sweep of 8 temperatures
    Case("/diversity samples and tokens at the caps, with a sweep", "/diversity",
         diversity(num_samples=CAPS.max_diversity_samples, sweep="temperature", max_new_tokens=min(
             CAPS.max_new_tokens, CAPS.max_diversity_tokens // (9 * CAPS.max_diversity_samples))),
         ok("Sweep of temperature", "distinct-2"), seconds=20),
    Case("/diversity unknown sweep", "/diversity", diversity(sweep="top_k"), refused(named("sweep"), "temperature")),
    Case("/diversity sweep None", "/diversity", diversity(sweep=None), refused(named("sweep"), "top_p")),
    Case("/diversity sweep a number", "/diversity", diversity(sweep=1), refused(named("sweep"), "temperature")),
    Case("/diversity min_p above 1", "/diversity", diversity(min_p=1.5), refused(named("min_p"), r"\b1\b")),
    Case("/diversity min_p negative", "/diversity", diversity(min_p=-0.1), refused(named("min_p"), r"\b0\b")),
    Case("/diversity min_p text", "/diversity", diversity(min_p="most"), refused(named("min_p"), NUMBER)),
    Case("/diversity min_p NaN", "/diversity", diversity(min_p=NAN), refused(named("min_p")), http=True),
    Case("/diversity min_p None (off)", "/diversity", diversity(min_p=None), ok("distinct-1")),
    Case("/diversity typical_p zero", "/diversity", diversity(typical_p=0), refused(named("typical_p"), r"above 0")),
    Case("/diversity typical_p above 1", "/diversity", diversity(typical_p=2), refused(named("typical_p"), r"\b1\b")),
    Case("/diversity typical_p NaN", "/diversity", diversity(typical_p=NAN), refused(named("typical_p")), http=True),
    Case("/diversity epsilon_cutoff 1", "/diversity", diversity(epsilon_cutoff=1),
         refused(named("epsilon_cutoff"), r"\b1\b")),
    Case("/diversity epsilon_cutoff negative", "/diversity", diversity(epsilon_cutoff=-1e-4),
         refused(named("epsilon_cutoff"), r"\b0\b")),
    Case("/diversity epsilon_cutoff NaN", "/diversity", diversity(epsilon_cutoff=NAN), refused(named("epsilon_cutoff")),
         http=True),
    Case("/diversity eta_cutoff 1", "/diversity", diversity(eta_cutoff=1), refused(named("eta_cutoff"), r"\b1\b")),
    Case("/diversity eta_cutoff +inf", "/diversity", diversity(eta_cutoff=INF), refused(named("eta_cutoff")),
         http=True),
    Case("/diversity eta_cutoff NaN", "/diversity", diversity(eta_cutoff=NAN), refused(named("eta_cutoff")), http=True),
    Case("/diversity no_repeat_ngram_size negative", "/diversity", diversity(no_repeat_ngram_size=-1),
         refused(named("no_repeat_ngram_size"), r"\b0\b")),
    Case("/diversity no_repeat_ngram_size absurd", "/diversity", diversity(no_repeat_ngram_size=10**6),
         refused(named("no_repeat_ngram_size"), r"\b16\b")),
    Case("/diversity no_repeat_ngram_size non-integer", "/diversity", diversity(no_repeat_ngram_size=1.5),
         refused(named("no_repeat_ngram_size"), WHOLE)),
    Case("/diversity no_repeat_ngram_size NaN", "/diversity", diversity(no_repeat_ngram_size=NAN),
         refused(named("no_repeat_ngram_size")), http=True),
    # ---- /ablate (ABLATE-ROWS)
    Case("/ablate empty text", "/ablate", ablate(text=""), refused(named("text"), "empty")),
    Case("/ablate 300k-character text", "/ablate", ablate(text=HUGE), ok("cropped", "mean loss"), seconds=5),
    Case("/ablate control characters", "/ablate", ablate(text=CONTROL), ok("mean loss")),
    Case("/ablate <|endoftext|> text", "/ablate", ablate(text=EOT), ok("mean loss")),
    Case("/ablate lone surrogates", "/ablate", ablate(text=SURROGATES), ok("mean loss"), http=True),
    Case("/ablate no heads", "/ablate", ablate(heads=""), ok("no heads knocked out")),
    Case("/ablate heads None (none)", "/ablate", ablate(heads=None), ok("no heads knocked out")),
    Case("/ablate every head of a layer", "/ablate", ablate(heads="0.1, 1.*"), ok(r"L0\.H1, L1\.H0, L1\.H1")),
    Case("/ablate heads malformed", "/ablate", ablate(heads="1-3"), refused(named("heads"), r"layer\.head")),
    Case("/ablate heads a number", "/ablate", ablate(heads=5), refused(named("heads"), r"layer\.head")),
    Case("/ablate heads layer outside the model", "/ablate", ablate(heads="9.0"),
         refused(named("heads"), r"layer 9", rf"0 to {TINY.n_layer - 1}")),
    Case("/ablate heads head outside the model", "/ablate", ablate(heads="0.7"),
         refused(named("heads"), r"head 7", rf"0 to {TINY.n_head - 1}")),
    Case("/ablate heads 300k characters", "/ablate", ablate(heads=HUGE), refused(named("heads"), r"layer\.head")),
    Case("/ablate mode unknown", "/ablate", ablate(mode="half"), refused(named("mode"), "zero", "mean")),
    Case("/ablate mode None", "/ablate", ablate(mode=None), refused(named("mode"), "zero")),
    Case("/ablate mode mean", "/ablate", ablate(mode="mean", heads="1.0"), ok(r"knocked out\*\* \(mean\)")),
    Case("/ablate max_new_tokens zero", "/ablate", ablate(max_new_tokens=0),
         refused(named("max_new_tokens"), r"\b1\b")),
    Case("/ablate max_new_tokens absurd", "/ablate", ablate(max_new_tokens=10**12),
         refused(named("max_new_tokens"), rf"\b{CAPS.max_new_tokens}\b")),
    Case("/ablate max_new_tokens non-integer", "/ablate", ablate(max_new_tokens=2.5),
         refused(named("max_new_tokens"), WHOLE)),
    Case("/ablate max_new_tokens NaN", "/ablate", ablate(max_new_tokens=NAN), refused(named("max_new_tokens")),
         http=True),
    Case("/ablate seed -1 (random)", "/ablate", ablate(seed=-1), ok("same seed")),
    Case("/ablate seed non-integer", "/ablate", ablate(seed=2.5), refused(named("seed"), WHOLE)),
    Case("/ablate seed NaN", "/ablate", ablate(seed=NAN), refused(named("seed")), http=True),
    # the caps at once: the longest text (cropped to the context) and the most new tokens, every head out
    Case("/ablate text and tokens at the caps", "/ablate",
         ablate(text=HUGE_TEXT, heads="0.*, 1.*", mode="mean", max_new_tokens=CAPS.max_new_tokens),
         ok("cropped", "mean loss"), seconds=10),
    # ---- /attribute (ATTRIBUTE-ROWS)
    Case("/attribute a text", "/attribute", attribute(), ok("gradient × input", r"Top tokens", "`␣mat`")),
    Case("/attribute integrated gradients", "/attribute", attribute(method="integrated_gradients"),
         ok("integrated gradients, 4 steps")),
    Case("/attribute occlusion, with a foil", "/attribute", attribute(method="occlusion", foil=" hat"),
         ok("occlusion", "foil `␣hat`")),
    Case("/attribute steps at the cap", "/attribute",
         attribute(method="integrated_gradients", steps=CAPS.max_attribution_steps, text=HUGE_TEXT),
         ok(rf"{CAPS.max_attribution_steps} steps", "cropped"), seconds=20),
    Case("/attribute target as an id", "/attribute", attribute(target="#464"), ok("#464")),
    Case("/attribute a generation's step", "/attribute", attribute(source="a generation", step=1),
         ok(r"Generation #\d+\*\*, step 1")),
    Case("/attribute record 'latest'", "/attribute", attribute(source="a generation", record="latest"),
         ok("Generation #")),
    Case("/attribute 300k-character text", "/attribute", attribute(text=HUGE), ok("cropped"), seconds=5),
    Case("/attribute control characters", "/attribute", attribute(text=CONTROL), ok("Top tokens")),
    Case("/attribute <|endoftext|> text", "/attribute", attribute(text=EOT), ok("Top tokens")),
    Case("/attribute lone surrogates", "/attribute", attribute(text=SURROGATES), ok("Top tokens"), http=True),
    Case("/attribute empty text", "/attribute", attribute(text=""), refused(named("text"), "empty")),
    Case("/attribute multi-token target", "/attribute", attribute(target=" a mat"),
         refused(named("target"), "single token", r"2 tokens")),
    Case("/attribute empty target", "/attribute", attribute(target=""), refused(named("target"), "required")),
    Case("/attribute target id outside the vocabulary", "/attribute", attribute(target=f"#{TINY.vocab_size}"),
         refused(named("target"), rf"\b{TINY.vocab_size - 1}\b")),
    Case("/attribute target id negative", "/attribute", attribute(target="#-1"), refused(named("target"), r"\b0\b")),
    Case("/attribute target id absurd", "/attribute", attribute(target="#" + "9" * 400), refused(named("target"))),
    Case("/attribute multi-token foil", "/attribute", attribute(foil=" two words"),
         refused(named("foil"), "single token")),
    Case("/attribute foil equal to the target", "/attribute", attribute(foil=" mat"), refused(named("foil"), "differ")),
    Case("/attribute unknown method", "/attribute", attribute(method="saliency"),
         refused(named("method"), "gradient_x_input")),
    Case("/attribute method None", "/attribute", attribute(method=None), refused(named("method"), "occlusion")),
    Case("/attribute steps zero", "/attribute", attribute(steps=0), refused(named("steps"), r"\b1\b")),
    Case("/attribute steps over the cap", "/attribute", attribute(steps=CAPS.max_attribution_steps + 1),
         refused(named("steps"), rf"\b{CAPS.max_attribution_steps}\b")),
    Case("/attribute steps absurd", "/attribute", attribute(steps=10**12),
         refused(named("steps"), rf"\b{CAPS.max_attribution_steps}\b")),
    Case("/attribute steps non-integer", "/attribute", attribute(steps=2.5), refused(named("steps"), WHOLE)),
    Case("/attribute steps true", "/attribute", attribute(steps=True), refused(named("steps"), WHOLE)),
    Case("/attribute steps NaN", "/attribute", attribute(steps=NAN), refused(named("steps")), http=True),
    Case("/attribute unknown source", "/attribute", attribute(source="a file"), refused(named("source"), "generation")),
    Case("/attribute unknown record", "/attribute", attribute(source="a generation", record=123_456),
         refused("no longer kept", "#123456")),
    Case("/attribute record not a number", "/attribute", attribute(source="a generation", record="newest"),
         refused(named("record"), "latest")),
    Case("/attribute step past the generation", "/attribute", attribute(source="a generation", step=2),
         refused(named("step"), r"\b1\b")),
    Case("/attribute step negative", "/attribute", attribute(source="a generation", step=-1),
         refused(named("step"), r"\b0\b")),
    Case("/attribute step None", "/attribute", attribute(source="a generation", step=None),
         refused(named("step"), WHOLE)),
    Case("/attribute step NaN", "/attribute", attribute(source="a generation", step=NAN), refused(named("step")),
         http=True),
    # ---- /patch (PATCH-ROWS)
    Case("/patch the default pair", "/patch", patch(), ok(r"clean \*\*-?\d", "Best cell")),
    Case("/patch <|endoftext|> in the prompts", "/patch",
         patch(clean=f"{EOT} The cat sat", corrupted=f"{EOT} The dog sat"), ok("Best cell")),
    Case("/patch control characters", "/patch", patch(clean=CONTROL, corrupted=CONTROL.replace("red", "bed")),
         ok("Best cell")),
    Case("/patch lone surrogates", "/patch", patch(clean=SURROGATES, corrupted=SURROGATES.replace("lone", "Lone")),
         ok("Best cell"), http=True),
    Case("/patch different token counts", "/patch", patch(corrupted="The dog sat"),
         refused(named("clean"), named("corrupted"), r"same number of tokens", r"\b7\b", r"\b3\b")),
    Case("/patch clean over the cap", "/patch", patch(clean=" word" * (CAPS.max_patch_tokens + 1)),
         refused(named("clean"), rf"\b{CAPS.max_patch_tokens}\b", "not cropped")),
    Case("/patch 300k-character corrupted prompt", "/patch", patch(corrupted=HUGE),
         refused(named("corrupted"), rf"\b{CAPS.max_patch_tokens}\b"), seconds=5),
    Case("/patch empty clean prompt", "/patch", patch(clean=""), refused(named("clean"), "empty")),
    Case("/patch corrupted None", "/patch", patch(corrupted=None), refused(named("corrupted"), "empty")),
    Case("/patch identical prompts", "/patch", patch(corrupted="The cat sat on the mat and"),
         refused(named("clean"), named("corrupted"), r"same tokens|no difference")),
    Case("/patch multi-token target", "/patch", patch(target=" the cat"), refused(named("target"), "single token")),
    Case("/patch empty target", "/patch", patch(target=""), refused(named("target"), "required")),
    Case("/patch foil id outside the vocabulary", "/patch", patch(foil="#50257"), refused(named("foil"), r"50256")),
    Case("/patch foil id absurd", "/patch", patch(foil="#" + "9" * 400), refused(named("foil"))),
    Case("/patch foil id negative", "/patch", patch(foil="#-1"), refused(named("foil"), r"\b0\b", r"50256")),
    Case("/patch foil a number, not an id", "/patch", patch(foil=10**12), refused(named("foil"), "single token")),
    Case("/patch target id", "/patch", patch(target="#262", foil="#257"), ok("Best cell")),
    Case("/patch target '#nan'", "/patch", patch(target="#nan"), refused(named("target"), r"\bid\b", "50256")),
    Case("/patch target '#2.5'", "/patch", patch(target="#2.5"), refused(named("target"), r"\bid\b", "50256")),
    # a textbox's value is text: NaN, inf and true arrive as the words, each one token (explained as such)
    Case("/patch target NaN", "/patch", patch(target=NAN), ok("logit\\('nan'\\)"), http=True),
    Case("/patch target +inf", "/patch", patch(target=INF), ok("logit\\('inf'\\)"), http=True),
    Case("/patch target true", "/patch", patch(target=True), ok("logit\\('True'\\)")),
    Case("/patch target equals foil", "/patch", patch(target="#257"),
         refused(named("target"), named("foil"), "different")),
    # ---- /load_model precision (PRECISION-ROWS)
    # the optional second input: "default" (the model's own), "fp32", "bf16" or "int8", checked before any load
    Case("/load_model precision fp16", "/load_model", ("distilgpt2", "fp16"),
         refused(named("precision"), r"'default', 'fp32', 'bf16', 'int8'")),
    Case("/load_model precision int4", "/load_model", ("distilgpt2", "int4"),
         refused(named("precision"), r"'default', 'fp32', 'bf16', 'int8'")),
    Case("/load_model precision a number", "/load_model", ("distilgpt2", 8),
         refused(named("precision"), r"'default', 'fp32', 'bf16', 'int8'")),
    Case("/load_model precision a list", "/load_model", ("distilgpt2", ["int8"]), refused(named("precision"))),
    Case("/load_model precision NaN", "/load_model", ("distilgpt2", NAN), refused(named("precision")), http=True),
    # blank means the default: the model itself is then what cannot be had here (offline)
    Case("/load_model precision blank", "/load_model", ("distilgpt2", None),
         refused("distilgpt2", r"hf download|connection|offline"), http=True),
    Case("/load_model a path with a precision", "/load_model", ("/etc/passwd", "int8"), NOT_OFFERED),
    # ---- /chat (CHAT-ROWS): the message is refused rather than cropped (a cropped question is another one);
    # the history is cropped from its oldest turn, with a notice (output 2)
    Case("/chat a message", "/chat", chat(), ok(r"'role': 'assistant'", part=1)),
    Case("/chat empty message", "/chat", chat(message=""), refused(named("message"), "empty")),
    Case("/chat whitespace message", "/chat", chat(message=" \n\t "), refused(named("message"), "empty")),
    Case("/chat missing message", "/chat", chat(message=None), refused(named("message"), "empty")),
    Case("/chat 300k-character message", "/chat", chat(message=HUGE),
         refused(named("message"), rf"{CAPS.max_prompt_chars:,}|{CAPS.max_prompt_chars}", "shorten"), seconds=5),
    Case("/chat message too long for the context", "/chat", chat(message=" word" * TINY.block_size),
         refused(named("message"), rf"context of {TINY.block_size} tokens", "shorten")),
    Case("/chat control characters", "/chat", chat(message=CONTROL), ok(r"'role': 'assistant'", part=1)),
    Case("/chat <|endoftext|> message", "/chat", chat(message=f"a{EOT}b"), ok(r"'role': 'assistant'", part=1)),
    Case("/chat lone surrogates", "/chat", chat(message=SURROGATES), ok(), http=True),
    Case("/chat history too long for the context", "/chat",
         chat(history=[{"role": r, "content": [{"type": "text", "text": f"turn {i}"}]}
                       for i in range(300) for r in ("user", "assistant")]),
         ok("300 earlier turns", "left out", part=2)),
    Case("/chat history over the character limit", "/chat",
         chat(history=[{"role": r, "content": [{"type": "text", "text": "x" * 100}]}
                       for _ in range(2_000) for r in ("user", "assistant")]),
         ok("2000 earlier turns", rf"{CAPS.max_prompt_chars:,}-character", part=2), seconds=10),
    Case("/chat history with an unknown role", "/chat",
         chat(history=[{"role": "robot", "content": [{"type": "text", "text": "beep"}]}]),
         refused(named("history"), "'user' or 'assistant'")),
    *_sampler_rows("/chat", chat, GENERATE_PARAMS),
]


# ---------------------------------------------------------------- the API catalogue: running it


def _raw_call(url: str, endpoint: str, data: list, session_hash: str | None, timeout: float) -> tuple[bool, Any]:
    """POST the inputs as raw JSON (NaN/Infinity literals, ``\\udxxx`` escapes allowed), then read the
    event stream: (True, outputs) or (False, the error message)."""
    import httpx

    body = json.dumps({"data": data, "session_hash": session_hash})
    name = endpoint.strip("/")
    deadline = time.monotonic() + timeout  # the server sends heartbeats: a read timeout alone never fires
    with httpx.Client(base_url=url, timeout=timeout) as http:
        r = http.post(f"gradio_api/call/{name}", content=body, headers={"content-type": "application/json"})
        if r.status_code != 200:
            return False, r.json().get("detail", r.text) if "json" in r.headers.get("content-type", "") else r.text
        event = None
        with http.stream("GET", f"gradio_api/call/{name}/{r.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{endpoint}: no answer within {timeout} s")
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    payload = json.loads(line.removeprefix("data:"))
                    if event == "complete":
                        return True, payload
                    return False, str(payload.get("error") if isinstance(payload, dict) else payload)
    raise AssertionError(f"{endpoint}: the event stream ended without a result")


class Api:
    """The launched app, one gradio_client session on it, and what the cases need."""

    def __init__(self, served, client, folder: Path, refs: dict[str, Any]) -> None:
        self.served, self.client, self.folder, self.refs = served, client, folder, refs
        self.baseline = self.ordinary()  # the app works before any case (and the session has a generation)

    def _upload(self, up: Upload, http: bool) -> Any:
        from gradio_client import handle_file

        if not http:  # gradio_client uploads a local file under its own name
            path = self.folder / uuid.uuid4().hex / up.name
            path.parent.mkdir()
            path.write_bytes(up.data)
            return handle_file(path)
        import httpx

        r = httpx.post(f"{self.served.url}gradio_api/upload", files=[("files", (up.name, up.data))], timeout=30)
        if r.status_code != 200:
            raise UploadRefused(r.text)
        return {"path": r.json()[0], "orig_name": up.name, "meta": {"_type": "gradio.FileData"}}

    def call(self, case: Case) -> tuple[bool, Any]:
        """Send the case: (True, outputs) or (False, the message the caller got)."""
        try:
            args = [self._upload(a, case.http) if isinstance(a, Upload) else
                    self.refs[a.name] if isinstance(a, Ref) else a for a in case.args]
        except UploadRefused as e:
            return False, str(e)
        if case.http:
            return _raw_call(self.served.url, case.endpoint, args, self.client.session_hash, case.seconds)
        try:
            job = self.client.submit(*args, api_name=case.endpoint)
        except Exception as e:  # noqa: BLE001 - gradio_client refusing to send it (e.g. a file over the cap)
            return False, str(e)
        try:
            return True, job.result(timeout=case.seconds)
        except TimeoutError:
            job.cancel()
            raise
        except Exception as e:  # noqa: BLE001 - AppError: the app's answer
            return False, str(e)

    def ordinary(self) -> str:
        """An ordinary request on the same session; it must work. (Raw HTTP: gradio_client's round trip
        costs half as much again, times every case.)"""
        answered, result = _raw_call(self.served.url, "/generate", list(generate(prompt="The cat sat", max_new_tokens=2,
                                                                                  temperature=0)),
                                     self.client.session_hash, timeout=30)
        assert answered and "2 tokens" in result[1], f"the next ordinary request failed: {result}"
        return result[0]


class UploadRefused(Exception):
    """The server refused the upload itself (e.g. over gradio's size cap)."""


@pytest.fixture(scope="module")
def loads(served):
    """Every source ``GPT2.from_pretrained`` is asked to read while the cases run."""
    seen: list[str] = []
    original = gpt2.GPT2.from_pretrained

    def recording(name_or_dir, *args, **kwargs):
        seen.append(str(name_or_dir))
        return original(name_or_dir, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpt2.GPT2, "from_pretrained", staticmethod(recording))
        yield seen


@pytest.fixture(scope="module")
def api(served, offline, loads, tmp_path_factory) -> Api:
    gradio_client = pytest.importorskip("gradio_client")
    assert served.ctx.caps == CAPS and served.ctx.store.get(served.key).config == TINY  # the table's numbers
    folder = tmp_path_factory.mktemp("bad-input")
    outside = gpt2.GPT2(gpt2.GPTConfig.preset("tiny")).save_pretrained(folder / "outside-checkpoint")
    secret = folder / "secret.txt"  # on the server, never uploaded
    secret.write_text("The cat sat on the mat. " * 100)
    refs = {"outside_checkpoint": str(outside),
            "not_uploaded": {"path": str(secret), "orig_name": "notes.txt", "meta": {"_type": "gradio.FileData"}}}
    return Api(served, gradio_client.Client(served.url, verbose=False), folder, refs)


def _check(case: Case, answered: bool, result: Any) -> None:
    if isinstance(case.expect, Ok):
        assert answered, f"refused: {result}"
        text = str(result[case.expect.part])
        for pattern in case.expect.patterns:
            assert re.search(pattern, text, re.IGNORECASE), f"{pattern!r} not in: {text[:300]}"
        return
    assert not answered, f"accepted, but should be refused: {str(result)[:300]}"
    if case.expect.any_message:
        return
    message = str(result)
    assert not GENERIC.search(message), f"no message the caller can act on (a traceback on the server): {message!r}"
    missing = [p for p in case.expect.patterns if not re.search(p, message, re.IGNORECASE)]
    assert not missing, f"the message {message!r} lacks {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api(api: Api, loads: list[str], case: Case):
    start = time.perf_counter()
    try:
        try:
            answered, result = api.call(case)
        except TimeoutError:
            pytest.fail(f"no answer within {case.seconds} s (a hang, or work the server should refuse)")
        seconds = time.perf_counter() - start
        _check(case, answered, result)
        assert seconds < case.seconds, f"answered in {seconds:.1f} s; at most {case.seconds} s expected"
    finally:  # also after a failed case: the app must keep serving, and never read a path from a request
        api.ordinary()
        catalogue = {e.source for e in api.served.ctx.store.entries.values()}
        assert set(loads) <= catalogue, f"read models from outside the catalogue: {set(loads) - catalogue}"
        if case.absent:
            assert not Path(case.absent).exists(), f"{case.absent} was created"


@pytest.mark.slow
def test_after_the_catalogue_a_new_session_gets_the_untouched_app(api: Api):
    """A new client gets the same model and the same greedy text as before any case ran."""
    import gradio_client

    fresh = gradio_client.Client(api.served.url, verbose=False)
    text, stats, _ = fresh.predict("The cat sat", 2, 0, 0, 1.0, 1.0, 0, "", api_name="/generate")
    assert "2 tokens" in stats and text == api.baseline
    info = fresh.predict(api.served.key, api_name="/load_model")
    assert f"{TINY.n_layer} layers" in info


# ---------------------------------------------------------------- the core catalogue


BAD_SAMPLING = [
    ("temperature", -0.1), ("temperature", NAN), ("temperature", INF), ("temperature", -INF), ("temperature", "1"),
    ("temperature", None), ("temperature", True),
    ("top_k", -1), ("top_k", 2.5), ("top_k", 3.0), ("top_k", NAN), ("top_k", INF), ("top_k", True), ("top_k", "3"),
    ("top_p", -0.01), ("top_p", 1.01), ("top_p", NAN), ("top_p", INF), ("top_p", None),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_penalty", NAN),
    ("repetition_penalty", INF),
    ("max_new_tokens", 0), ("max_new_tokens", -5), ("max_new_tokens", 2.5), ("max_new_tokens", 3.0),
    ("max_new_tokens", NAN), ("max_new_tokens", INF), ("max_new_tokens", None),
    ("seed", -1), ("seed", 2**63), ("seed", 1.5), ("seed", NAN), ("seed", "7"),
    ("stop", [""]), ("stop", ""), ("stop", [3]), ("stop", [None]),
]


@pytest.mark.parametrize(("name", "value"), BAD_SAMPLING, ids=[f"{n}={v!r}" for n, v in BAD_SAMPLING])
def test_sampling_params(name: str, value: Any):
    """Every bad value is a ValueError that names the parameter and what it must be."""
    with pytest.raises(ValueError, match=rf"^{name} must be .+; got ") as err:
        gpt2.SamplingParams(**{name: value})
    assert "must be" in str(err.value)


@pytest.fixture(scope="module")
def model() -> gpt2.GPT2:
    torch.manual_seed(0)
    return gpt2.GPT2(gpt2.GPTConfig.preset("tiny")).eval()


def _greedy(n: int = 3) -> gpt2.SamplingParams:
    return gpt2.SamplingParams(temperature=0, max_new_tokens=n, stop_at_eos=False)


def _steps(model, ids, params, n: int = 3) -> list[gpt2.Step]:
    """The first ``n`` steps of a generation (the generator is closed after them)."""
    it = gpt2.generate(model, ids, params)
    try:
        return [step for _, step in zip(range(n), it, strict=False)]
    finally:
        it.close()


def _evil_pickle(path: Path, marker: Path) -> Path:
    """A torch checkpoint whose unpickling creates ``marker``: proof of whether it was ever unpickled."""
    torch.save({"transformer.wte.weight": _Payload(str(marker))}, path)
    return path


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")  # unpickling opens (creates) the marker file


def test_the_pickle_payload_runs_when_unpickled(tmp_path):
    """The marker works: unpickling the bait (as torch.load without weights_only would) creates it."""
    bait = _evil_pickle(tmp_path / "bait.bin", tmp_path / "marker")
    torch.load(bait, weights_only=False)
    assert (tmp_path / "marker").exists()


def _pickle_dir(tmp: Path, marker: Path, weights: str) -> Path:
    """A checkpoint directory: a valid config.json and, as ``weights``, a pickle that creates ``marker``."""
    d = tmp / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(gpt2.GPTConfig.preset("tiny").to_hf()))
    _evil_pickle(d / weights, marker)
    return d


def _app_model(d: Path) -> gpt2.GPT2:
    """What the app does with ``--model d`` (``app.main`` turns the error into one line and exits)."""
    import app

    ctx = app.make_context(str(d))
    return ctx.store.get(ctx.default_key)


def _generate(ids=None, text=None, **params) -> Callable[[gpt2.GPT2], Any]:
    p = gpt2.SamplingParams(**({"max_new_tokens": 3, "seed": 0, "stop_at_eos": False} | params))
    if text is not None:
        return lambda model: gpt2.generate_text(model, text, p)
    return lambda model: _steps(model, ids, p)


CORE_CASES: list[tuple[str, Callable[[gpt2.GPT2], Any], Ok | Refused]] = [
    # (id, what to run on the tiny model, expected): Ok patterns are searched in str(result)
    ("generate empty ids", _generate(ids=[]), ok(r"Step\(index=2")),
    ("generate ids past the vocabulary", _generate(ids=[1, TINY.vocab_size]),
     refused(r"prompt_ids", rf"0 to {TINY.vocab_size - 1}", rf"got {TINY.vocab_size}")),
    ("generate negative ids", _generate(ids=[-1]), refused(r"prompt_ids", rf"0 to {TINY.vocab_size - 1}", "got -1")),
    ("generate_text empty", _generate(text=""), ok()),
    ("generate_text whitespace", _generate(text="  \n\t "), ok()),
    ("generate_text lone surrogates", _generate(text=SURROGATES), ok()),
    ("generate_text <|endoftext|>", _generate(text=EOT), ok()),
    ("generate_text <|endoftext|> inside", _generate(text=f"a{EOT}b"), ok()),
    ("generate_text control characters", _generate(text=CONTROL), ok()),
    ("generate_text 300k characters", _generate(text=HUGE), ok()),
    ("generate absurd max_new_tokens", _generate(ids=[1, 2], max_new_tokens=10**12), ok(r"Step\(index=2")),
]


@pytest.mark.parametrize(("run", "expect"), [c[1:] for c in CORE_CASES], ids=[c[0] for c in CORE_CASES])
def test_core(model: gpt2.GPT2, run: Callable, expect: Ok | Refused):
    start = time.perf_counter()
    if isinstance(expect, Refused):
        with pytest.raises(ValueError) as err:
            run(model)
        for pattern in expect.patterns:
            assert re.search(pattern, str(err.value), re.IGNORECASE), f"{pattern!r} not in {err.value}"
    else:
        result = run(model)
        for pattern in expect.patterns:
            assert re.search(pattern, str(result)), f"{pattern!r} not in {str(result)[:300]}"
    assert time.perf_counter() - start < 5  # huge prompts and absurd lengths are fast too


def test_tiny_temperature_is_greedy(model: gpt2.GPT2):
    """A temperature so small that logits / temperature overflows picks the greedy tokens (no NaN)."""
    tiny = [s.token_id for s in _steps(model, [1, 2], gpt2.SamplingParams(temperature=1e-300, max_new_tokens=5,
                                                                           seed=0, stop_at_eos=False), 5)]
    assert tiny == [s.token_id for s in _steps(model, [1, 2], _greedy(5), 5)]


PICKLE_CASES = {
    # id: (the weights file, how it is offered, the message expected)
    "pytorch_model.bin": ("pytorch_model.bin", gpt2.GPT2.from_pretrained, r"pytorch_model\.bin.*never loaded"),
    ".pt": ("model.pt", gpt2.GPT2.from_pretrained, r"model\.pt.*never loaded"),
    "pickle named model.safetensors": ("model.safetensors", gpt2.GPT2.from_pretrained, r"not a readable safetensors"),
    "app --model": ("pytorch_model.bin", _app_model, r"never loaded.*convert"),
}


@pytest.mark.parametrize("case", list(PICKLE_CASES))
def test_pickles_offered_as_weights_are_refused_and_never_unpickled(tmp_path, case):
    weights, load, message = PICKLE_CASES[case]
    marker = tmp_path / "unpickled"
    d = _pickle_dir(tmp_path, marker, weights)
    with pytest.raises(gpt2.CheckpointError, match=message):
        load(d)
    assert not marker.exists(), "the pickle was unpickled"


def test_the_picker_never_offers_a_pickle_folder(tmp_path, monkeypatch):
    """A folder under checkpoints/ holding only a pickle is not in the catalogue (so no request reaches it)."""
    from ui import models

    _pickle_dir(tmp_path, tmp_path / "unpickled", "pytorch_model.bin")
    gpt2.GPT2(gpt2.GPTConfig.preset("tiny")).save_pretrained(tmp_path / "fine")
    monkeypatch.setattr(models, "CHECKPOINTS", tmp_path)
    entries = models.catalog()
    assert "fine" in entries and "pickled" not in entries
    assert not any("pickled" in e.source for e in entries.values())
    assert not (tmp_path / "unpickled").exists()


UNKNOWN_MODELS = [
    # (a name given to GPT2.from_pretrained, the message expected: what is accepted, or how to get it)
    ("gpt-7", r"Unknown model 'gpt-7'.*gpt2-medium"),
    ("", r"No model given.*a directory holding config\.json"),  # not "the current directory"
    ("  ", r"No model given"),
    ("/etc/passwd", r"Unknown model '/etc/passwd'"),
    ("../../etc", r"Unknown model '\.\./\.\./etc'"),
    ("no-such-owner/no-such-model", r"Cannot download 'no-such-owner/no-such-model'.*hf download"),
]


@pytest.mark.parametrize(("name", "message"), UNKNOWN_MODELS)
def test_unknown_model_names(monkeypatch, tmp_path, name, message):
    """Not a directory holding a checkpoint, not a hub id (or one that cannot be had): refused with what
    is accepted or how to get it; nothing is downloaded (offline, empty cache)."""
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # relative names resolve in an empty folder
    start = time.perf_counter()
    with pytest.raises(gpt2.CheckpointError, match=message):
        gpt2.GPT2.from_pretrained(name)
    assert time.perf_counter() - start < 10
