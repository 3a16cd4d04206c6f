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
"""

from __future__ import annotations

from collections.abc import Sequence

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


def chat_prompt_ids(history: Sequence[tuple[str, str]], message: str) -> list[int]:
    """Token ids of ``chat_prompt``, with ``<|endoftext|>`` only as the turn separator: typed text
    that contains ``<|endoftext|>`` stays ordinary text and cannot end a turn early."""
    ids: list[int] = []
    for user, reply in history:
        ids += encode(format_prompt(user) + reply.strip(), allow_special=False) + [EOT_ID]
    return ids + encode(format_prompt(message), allow_special=False)
