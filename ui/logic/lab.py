"""The Lab tab: experiments on what *causes* a prediction. Its three tools have their own logic modules
(``ablation``, ``attribution``, ``patching``); this one holds what they share: reading a target or foil
token as a user or an API caller gives it."""

from __future__ import annotations

import gpt2

from .. import inputs
from ..inputs import UserError

INTRO = """### Why, and what if
Experiments on the model itself, each one a single request that leaves the shared model untouched:
**knock out heads** and watch the predictions and the text change, **attribute** a prediction to the input
tokens (and to every head and MLP), and **patch** activations from a clean run into a corrupted one to find
where the difference lives."""


def token(name: str, value, vocab_size: int, required: bool = True) -> int | None:
    """A single token, given as its text (which must encode to exactly one token, e.g. ``" Paris"``) or
    as a token id (a whole number, or its digits as text prefixed with ``#``, e.g. ``"#6342"``). Blank is
    None when not ``required``."""
    if value is None or (isinstance(value, str) and value == ""):
        if required:
            raise UserError(f"{name} is required: a token's text (e.g. ' Paris', with its leading space) or id.")
        return None
    if isinstance(value, str) and not value.startswith("#"):
        ids = gpt2.encode(inputs.clean_text(value))
        if len(ids) != 1:
            pieces = ", ".join(repr(gpt2.get_tokenizer().decode([i])) for i in ids[:6])
            raise UserError(f"{name} must be a single token; {value!r} is {len(ids)} tokens ({pieces}). "
                            "Type one of them (GPT-2 tokens usually start with a space), or its id as #123.")
        return ids[0]
    raw = value[1:] if isinstance(value, str) else value
    return inputs.integer(name, raw, 0, vocab_size - 1,
                          f"a token's text or id (an id from 0 to {vocab_size - 1}, as #123 in text)")
