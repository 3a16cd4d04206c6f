"""Share links: the Generate tab's prompt and settings as a URL's query parameters, and back.

``link`` writes them; ``from_query`` reads a page's query (as the browser opened it) into widget values.
Reading never fails: unknown keys are ignored, and each bad value is left out with a note that names it,
so that a mistyped or hostile link fills what it can and says what it could not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from .. import inputs
from ..context import AppContext, Caps
from .generate import DECODINGS, EARLY_STOPPING, RANGES, parse_early_stopping

# Every value a link carries, in /generate's order: its parameter names.
FIELDS = ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "stop",
          "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "no_repeat_ngram_size", "decoding", "num_beams",
          "length_penalty", "early_stopping")
INTEGERS = {"max_new_tokens", "top_k", "no_repeat_ngram_size", "num_beams"}
NUMBERS = {*INTEGERS, "seed", "temperature", "top_p", "repetition_penalty", "min_p", "typical_p", "epsilon_cutoff",
           "eta_cutoff", "length_penalty"}
_WHOLE = re.compile(r"\s*[+-]?\d{1,30}\s*")  # longer: no setting takes it (the checkers refuse the text)


def _text(value: Any) -> str:
    """A widget value as a link writes it: whole numbers without ".0", others in Python's shortest
    round-trip form, booleans as ``true``/``false``, None as blank."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return str(int(value))
    return str(value) if isinstance(value, str) else repr(value)


def query(values: Mapping[str, Any]) -> str:
    """The query string (without ``?``) of the ``FIELDS`` found in ``values``, in their order."""
    return urlencode([(name, _text(values[name])) for name in FIELDS if name in values], quote_via=quote)


def link(base: str, values: Mapping[str, Any]) -> str:
    """``base`` (the page's address, without a query) with ``values`` as its query."""
    return f"{base.split('?', 1)[0]}?{query(values)}"


def share_link(ctx: AppContext, base: str | None, **values: Any) -> str:
    """The Share button: a link to this page (``base``, as the browser gives it) with these settings."""
    return link(base or "", values)


@dataclass
class Restored:
    """What a link's query gives: widget values by parameter name, and notes on what was left out or
    changed (each names the parameter)."""

    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _parsers(caps: Caps) -> dict[str, Callable[[str], Any]]:
    """A checker per field: the value the widget takes, or a ``UserError`` naming the parameter."""
    def ranged(name: str) -> Callable[[str], Any]:
        low, high = RANGES[name]
        parse = inputs.integer if name in INTEGERS else inputs.number
        return lambda v: parse(name, v, low, high)

    cap_beams = caps.max_beams
    parsers = {name: ranged(name) for name in RANGES}
    parsers.update(
        max_new_tokens=lambda v: inputs.integer("max_new_tokens", v, 1, caps.max_new_tokens,
                                                f"a whole number from 1 to {caps.max_new_tokens} (this server's "
                                                "limit)"),
        seed=lambda v: inputs.seed("seed", v),
        stop=_stop,
        decoding=lambda v: inputs.choice("decoding", v, DECODINGS),
        num_beams=lambda v: inputs.integer("num_beams", v, 2, cap_beams, f"a whole number from 2 to {cap_beams}"),
        early_stopping=_early_stopping,
    )
    return parsers


def _number(text: str) -> int | str:
    """A whole number written out as an exact ``int`` (a seed near 2**63 is past a float's precision);
    other text as it is, for the checkers to parse or refuse."""
    return int(text) if _WHOLE.fullmatch(text) else text


def _early_stopping(value: str) -> str:
    """``early_stopping`` as its widget shows it: "false", "true" or "never"."""
    chosen = parse_early_stopping(value)
    return next(text for text, v in EARLY_STOPPING.items() if v == chosen and type(v) is type(chosen))


def _stop(value: str) -> str:
    """Stop sequences as the widget holds them (one per line), if ``inputs.stops`` takes them."""
    inputs.stops(value)
    return value


def from_query(params: Mapping[str, str], caps: Caps) -> Restored:
    """The Generate widgets' values from a page's query parameters (``FIELDS``; others ignored). The
    prompt is cropped to its last ``caps.max_prompt_chars`` characters (as a generation would), with a
    note; any other bad value is left out with a note."""
    found = Restored()
    parsers = _parsers(caps)
    for name in FIELDS:
        if name not in params:
            continue
        value = params[name]
        if name == "prompt":
            text = inputs.clean_text(value)
            if len(text) > caps.max_prompt_chars:
                text = text[-caps.max_prompt_chars:]
                found.notes.append(f"prompt cropped to its last {caps.max_prompt_chars} characters.")
            found.values[name] = text
            continue
        try:
            found.values[name] = parsers[name](_number(value) if name in NUMBERS else value)
        except inputs.UserError as e:
            found.notes.append(f"{e} (left as it was)")
    return found


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~&])")


def note_markdown(found: Restored) -> str:
    """What the page says after opening a link: which settings it restored and what it left out."""
    if not found.values and not found.notes:
        return ""
    head = "Settings restored from the link: press Generate." if found.values else "Nothing restored from the link."
    return "\n".join([head, *("- " + _MARKDOWN.sub(r"\\\1", note) for note in found.notes)])
