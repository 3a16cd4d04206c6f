"""The instruction/chat turn format, shared by ``python -m gpt2 chat`` and instruction fine-tuning.

One turn is::

    ### Instruction:
    {instruction}

    ### Input:            <- only when there is an input
    {input}

    ### Response:
    {output}<|endoftext|>

A chat prompt is the earlier turns (each closed by ``<|endoftext|>``) followed by the new
instruction and an open ``### Response:`` header; the reply ends at ``<|endoftext|>`` or at the next
``### `` header, whichever comes first.

The chat's shared pieces (``python -m gpt2 chat`` and the app's Chat tab): ``fit_history`` (the oldest
turns dropped to fit the context), ``chat_params`` (stop at the end of the reply) and ``clean_reply``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .sampling import SamplingParams
from .tokenizer import EOT_ID, EOT_TOKEN, encode

RESPONSE_HEADER = "### Response:\n"
STOP_STRINGS = ("\n### ",)  # a model that forgets <|endoftext|> still stops at the next header


def format_prompt(instruction: str, input: str = "") -> str:
    """The part of a turn before the model's answer (the loss is masked on this part)."""
    body = f"### Instruction:\n{instruction.strip()}\n\n"
    if input.strip():
        body += f"### Input:\n{input.strip()}\n\n"
    return body + RESPONSE_HEADER


def format_turn(instruction: str, input: str = "", output: str = "") -> str:
    """A complete turn: prompt, answer and ``<|endoftext|>``."""
    return format_prompt(instruction, input) + output.strip() + EOT_TOKEN


def chat_prompt(history: Sequence[tuple[str, str]], message: str) -> str:
    """Earlier ``(user, reply)`` turns plus the new user message, ready for the model to answer."""
    return "".join(format_turn(user, output=reply) for user, reply in history) + format_prompt(message)


def _turn_ids(user: str, reply: str) -> list[int]:
    """One earlier turn, closed by ``<|endoftext|>`` (typed ``<|endoftext|>`` stays ordinary text)."""
    return encode(format_prompt(user) + reply.strip(), allow_special=False) + [EOT_ID]


def _message_ids(message: str) -> list[int]:
    return encode(format_prompt(message), allow_special=False)


def chat_prompt_ids(history: Sequence[tuple[str, str]], message: str) -> list[int]:
    """Token ids of ``chat_prompt``, with ``<|endoftext|>`` only as the turn separator: typed text
    that contains ``<|endoftext|>`` stays ordinary text and cannot end a turn early."""
    return [i for user, reply in history for i in _turn_ids(user, reply)] + _message_ids(message)


def reply_room(max_new_tokens: int, block_size: int) -> int:
    """Tokens of the context kept free for the reply: its length, but at most half the context (a long
    reply slides the window rather than leave a message no room)."""
    return min(max_new_tokens, block_size // 2)


def fit_history(history: Sequence[tuple[str, str]], message: str, block_size: int,
                reserve: int) -> tuple[list[int], int]:
    """Token ids of the chat prompt from the newest turns of ``history`` that fit: the oldest are dropped
    until the prompt leaves ``reserve`` tokens of the context for the reply. Returns the ids and how many
    turns were dropped (``history`` itself is left as it is). A message too long on its own keeps no
    history; what to do with it (crop, refuse) is the caller's choice. Each turn is encoded once."""
    turns = [_turn_ids(user, reply) for user, reply in history]
    ids = _message_ids(message)
    room, kept = block_size - reserve - len(ids), 0
    for turn in reversed(turns):
        if len(turn) > room:
            break
        room -= len(turn)
        kept += 1
    dropped = len(turns) - kept
    return [i for turn in turns[dropped:] for i in turn] + ids, dropped


def chat_params(params: SamplingParams) -> SamplingParams:
    """``params`` for a chat reply: it also stops at ``<|endoftext|>`` and at the next turn's header."""
    return dataclasses.replace(params, stop=(*params.stop, *STOP_STRINGS), stop_at_eos=True)


def clean_reply(text: str) -> str:
    """A reply as shown and kept: without the white space around it (the response header already ends
    its line; what ends the reply may leave a line break)."""
    return text.strip()
