"""Every widget and API value is parsed and checked here, once. No Gradio: tab logic calls these with
plain values, and a bad one raises ``UserError`` whose message names the input and what is allowed
(``ui.layout.wiring`` shows it to the user as a ``gr.Error``).

Widgets send floats for whole numbers (40.0), API callers send anything (text, NaN, 1e300): every
parser here accepts the first and refuses the rest with a message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

import gpt2


class UserError(Exception):
    """A request that cannot be served as asked; the message says what to do instead."""


MAX_STOPS, MAX_STOP_CHARS = 16, 100  # each stop sequence is checked after every token
_SURROGATE = re.compile("[\ud800-\udfff]")


def _float(value) -> float:
    """``value`` as a float; NaN when it is no number (a boolean is none: ``True`` is not 1)."""
    if isinstance(value, bool | np.bool_):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def shown(value, limit: int = 60) -> str:
    """``value`` as a message quotes it, cut short: a hostile client may send megabytes."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for printing
        return "a number too long to print"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(name: str, value, low: float = -math.inf, high: float = math.inf, allowed: str = "") -> float:
    """A finite number in ``[low, high]``; ``allowed`` replaces the default description of the range."""
    x = _float(value)
    if not (math.isfinite(x) and low <= x <= high):
        raise UserError(f"{name} must be {allowed or _range('a number', low, high)}; got {shown(value)}.")
    return x


def integer(name: str, value, low: float = -math.inf, high: float = math.inf, allowed: str = "") -> int:
    """A whole number in ``[low, high]`` (40.0 is 40; 2.5, NaN, booleans and text are refused). Python ints
    stay exact (a float would round a seed near 2**63)."""
    exact = isinstance(value, int) and not isinstance(value, bool)
    x = value if exact else _float(value)
    if not ((exact or (math.isfinite(x) and x == int(x))) and low <= x <= high):
        raise UserError(f"{name} must be {allowed or _range('a whole number', low, high)}; got {shown(value)}.")
    return int(x)


def _range(kind: str, low: float, high: float) -> str:
    if math.isinf(low) and math.isinf(high):
        return kind
    if math.isinf(high):
        return f"{kind}, {low:g} or more"
    if math.isinf(low):
        return f"{kind}, at most {high:g}"
    return f"{kind} from {low:g} to {high:g}"


def _positive(name: str, value, allowed: str) -> float:
    x = number(name, value, allowed=allowed)
    if x <= 0:
        raise UserError(f"{name} must be {allowed}; got {shown(value)}.")
    return x


def index(name: str, value, n: int, why: str) -> int:
    """A whole number in ``0..n-1`` (a layer, a head, a step); ``why`` says where ``n`` comes from."""
    return integer(name, value, 0, n - 1, f"a whole number from 0 to {n - 1} ({why})")


def choice(name: str, value, choices: Sequence[str]) -> str:
    """One of ``choices``, matched without regard to case or surrounding spaces."""
    by_key = {c.lower(): c for c in choices}
    found = by_key.get(str(value).strip().lower()) if isinstance(value, str) else None
    if found is None:
        raise UserError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {shown(value)}.")
    return found


def seed(name: str, value) -> int | None:
    """A seed: blank or -1 means random (None); else a whole number from 0 to 2**63 - 1."""
    if value is None or value == "" or value == -1:
        return None
    return integer(name, value, 0, 2**63 - 1, "a whole number from 0 to 2**63 - 1, or blank (or -1) for random")


LATEST = "latest"  # the record pickers' first choice: the newest generation, following new ones


def record_id(value) -> int | None:
    """A generation's id as a picker or an API caller sends it (each session numbers its generations 1, 2,
    3…); None, "" or ``LATEST`` mean the latest."""
    if value is None or value == "" or value == LATEST:
        return None
    return integer("record", value, 1, 2**63 - 1, "a generation id of this session (a whole number, 1 or more), "
                                                  f"or empty (or {LATEST!r}) for the latest")


def clean_text(text: str | None) -> str:
    """Text as typed: None is empty, lone surrogates (which UTF-8 cannot encode) become U+FFFD."""
    return _SURROGATE.sub("\ufffd", text or "")


def prompt_ids(text: str | None, max_chars: int, block_size: int) -> tuple[list[int], str | None]:
    """A prompt as token ids, cropped from the left to ``max_chars`` characters (before tokenizing, so
    megabytes stay fast) and to the model's context, with a notice when cropped. An empty prompt gives
    no ids: ``gpt2.generate`` starts it from ``<|endoftext|>`` (see ``model_input``)."""
    text = clean_text(text)
    notice = None
    if len(text) > max_chars:
        text = text[-max_chars:]
        notice = f"Prompt cropped to its last {max_chars} characters."
    ids = gpt2.encode(text)
    if len(ids) > block_size:
        notice = f"Prompt cropped to its last {block_size} tokens (the model's context)."
        ids = ids[-block_size:]
    return ids, notice


def batch_prompt(ids: list[int], rows: int, new_tokens: int, max_positions: int,
                 rows_name: str) -> tuple[list[int], str | None]:
    """``ids`` cropped from the left so that a batch of ``rows`` rows (beams, samples), each holding the prompt
    and ``new_tokens`` in its cache, stays within ``max_positions``, with a notice when cropped. Refused
    (naming ``rows_name`` and ``max_new_tokens``) when not even a one-token prompt would fit."""
    room = max_positions // rows - new_tokens
    if room < 1:
        raise UserError(f"{rows_name} × (max_new_tokens + 1) must be at most {max_positions:,} (this server's limit "
                        f"on what one batch holds); got {rows} × {new_tokens + 1}: use fewer {rows_name} or new "
                        "tokens.")
    if len(ids) <= room:
        return ids, None
    return ids[-room:], (f"Prompt cropped to its last {room} tokens: {rows_name} ({rows}) × (prompt + {new_tokens} "
                         f"new tokens) must fit in this server's {max_positions:,} cache positions.")


def model_input(ids: list[int]) -> list[int]:
    """What the model reads for a prompt: an empty prompt is ``<|endoftext|>``, as in ``gpt2.generate``."""
    return ids or [gpt2.EOT_ID]


def stops(text: str | None) -> tuple[str, ...]:
    """Stop sequences, one per line; ``\\n`` and ``\\t`` typed in a line mean newline and tab."""
    found = tuple(s.replace("\\n", "\n").replace("\\t", "\t") for s in (text or "").splitlines() if s)
    if len(found) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in found):
        raise UserError(f"stop must be at most {MAX_STOPS} sequences (one per line) of at most {MAX_STOP_CHARS} "
                        f"characters each; got {len(found)}, the longest {max(map(len, found))} characters.")
    return found


def sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed_value=None, stop=None, *,
             max_tokens: int, suffix: str = "", **advanced) -> gpt2.SamplingParams:
    """Sampler settings from widget or API values. ``max_tokens`` is the server's cap on new tokens;
    ``suffix`` is added to each name (``"_b"``: the second settings of /compare). ``advanced`` holds any of
    ``min_p``, ``typical_p``, ``epsilon_cutoff``, ``eta_cutoff``, ``no_repeat_ngram_size`` (None: off)."""
    s = suffix
    params = dict(
        max_new_tokens=integer("max_new_tokens", max_new_tokens, 1, max_tokens,
                               f"a whole number from 1 to {max_tokens} (this server's limit)"),
        temperature=number(f"temperature{s}", temperature, 0, allowed="a number, 0 or more (0 = greedy)"),
        top_k=integer(f"top_k{s}", top_k, 0, allowed="a whole number, 0 or more (0 = off)"),
        top_p=number(f"top_p{s}", top_p, 0, 1, "a number from 0 to 1 (1 = off)"),
        repetition_penalty=_positive(f"repetition_penalty{s}", repetition_penalty, "a number above 0 (1 = off)"),
        seed=seed("seed", seed_value),
        stop=stops(stop),
        **advanced_sampling(suffix, **advanced),
    )
    try:
        return gpt2.SamplingParams(**params)
    except ValueError as e:  # what only SamplingParams knows (e.g. a penalty of 0)
        raise UserError(str(e)) from None


ADVANCED_OFF = {"min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "no_repeat_ngram_size": 0}
MAX_NGRAM = 16  # a longer n-gram ban is never met in practice; a bound keeps each step's check cheap
# The part of each advanced sampler's range the widgets offer (the API takes the whole range checked below).
ADVANCED_RANGES = {"min_p": (0, 1), "typical_p": (0.01, 1), "epsilon_cutoff": (0, 0.01), "eta_cutoff": (0, 0.01),
                   "no_repeat_ngram_size": (0, MAX_NGRAM)}


def advanced_sampling(suffix: str = "", **values) -> dict:
    """The advanced samplers' values (missing or None: off), checked; keys are ``SamplingParams`` names."""
    unknown = set(values) - set(ADVANCED_OFF)
    if unknown:
        raise TypeError(f"unknown sampler settings {sorted(unknown)}")
    v = {k: ADVANCED_OFF[k] if values.get(k) is None else values[k] for k in ADVANCED_OFF}
    s = suffix
    return dict(
        min_p=number(f"min_p{s}", v["min_p"], 0, 1, "a number from 0 to 1 (0 = off)"),
        typical_p=_unit(f"typical_p{s}", v["typical_p"], "a number above 0, at most 1 (1 = off)", bad=0),
        epsilon_cutoff=_unit(f"epsilon_cutoff{s}", v["epsilon_cutoff"], _BELOW_ONE, bad=1),
        eta_cutoff=_unit(f"eta_cutoff{s}", v["eta_cutoff"], _BELOW_ONE, bad=1),
        no_repeat_ngram_size=integer(f"no_repeat_ngram_size{s}", v["no_repeat_ngram_size"], 0, MAX_NGRAM,
                                     f"a whole number from 0 to {MAX_NGRAM} (0 = off)"),
    )


_BELOW_ONE = "a number from 0 up to, not including, 1 (0 = off)"


def _unit(name: str, value, allowed: str, bad: float) -> float:
    """A number in ``[0, 1]`` other than the end ``bad``, which the sampler cannot take."""
    x = number(name, value, 0, 1, allowed)
    if x == bad:
        raise UserError(f"{name} must be {allowed}; got {shown(value)}.")
    return x
