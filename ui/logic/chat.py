"""The Chat tab: a conversation with the session's model (base or fine-tuned, the header's switch) in the
instruction format of ``gpt2.prompts``, the one ``python -m gpt2 chat`` uses and instruction fine-tuning
trains on; streamed, with the Generate tab's sampler settings.

The conversation lives in the page (the chatbot's messages) and comes back with each request. The model
reads the newest turns that fit its context (and this server's limit on characters read per request);
the older ones stay on the page but are left out, with a notice. Replies are not kept as generation
records: the other tabs' pickers stay about the Generate tab's texts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import gpt2
from gpt2 import prompts

from .. import inputs
from ..context import AppContext
from ..inputs import UserError
from ..session import Session
from ..updates import KEEP
from .generate import throttled

HINT = ("This model was not instruction-tuned: it continues the text rather than answering. Fine-tune it on "
        "instruction records (the Fine-tune tab's example set) and press Chat with it.")
EXAMPLES = ["Who are you?", "What can you do?", "Say hello as Juliet would."]  # the example set's kind
MAX_NEW_TOKENS = 128  # the default: replies are worth a little more room than a one-off continuation
# A small instruction-tuned model answers best cool: the bundled model tuned on the example set gave its taught
# answers at 0.3 and drifted at Generate's 0.8 (12 samples each, top-k 40).
TEMPERATURE = 0.3
USER, ASSISTANT = "user", "assistant"
TURN_CHARS = len(prompts.format_turn("", output=""))  # the template's own characters in each turn
HISTORY_FORMAT = ("history must be a list of messages {'role': 'user' or 'assistant', 'content': text} "
                  "(the chatbot's format)")

Turn = tuple[str, str]  # (the user's message, the reply)
Outputs = tuple[str, list[dict], str]  # (the reply so far, the conversation, the notice)


def instruction_tuned(session: Session) -> bool:
    """Whether the model in use was fine-tuned on instruction records (so it answers rather than continues)."""
    return session.use_finetuned and session.has_finetuned() and session.instruction_tuned


def hint(ctx: AppContext, session: Session) -> str:
    """The notice's hint: what to do while the model in use was not instruction-tuned; else nothing."""
    return "" if instruction_tuned(session) else f"> {HINT}"


def _text(content: Any, n: int) -> str:
    """A message's text: a string, or the chatbot's list of parts (``{"type": "text", "text": ...}``)."""
    parts = content if isinstance(content, list) else [content]
    texts = [p if isinstance(p, str) else p.get("text") if isinstance(p, dict) and p.get("type", "text") == "text"
             else None for p in parts]
    if any(not isinstance(t, str) for t in texts):
        raise UserError(f"{HISTORY_FORMAT}; message {n + 1} holds something other than text "
                        f"({inputs.shown(content)}): send text only.")
    return inputs.clean_text("".join(texts))


def turns(history: Sequence[dict] | None) -> list[Turn]:
    """The conversation as (user, reply) turns. A message without its reply (a failed or cleared one) is a
    turn with an empty reply; a reply without a message before it, one with an empty message."""
    if history is None:
        return []
    if not isinstance(history, list | tuple):
        raise UserError(f"{HISTORY_FORMAT}; got {inputs.shown(history)}.")
    found: list[Turn] = []
    pending: str | None = None
    for n, item in enumerate(history):
        role = item.get("role") if isinstance(item, dict) else None
        if role not in (USER, ASSISTANT):
            raise UserError(f"{HISTORY_FORMAT}; message {n + 1} is {inputs.shown(item)}.")
        text = _text(item.get("content"), n)
        if role == USER:
            if pending is not None:
                found.append((pending, ""))
            pending = text
        else:
            found.append((pending or "", text))
            pending = None
    return found + ([(pending, "")] if pending is not None else [])


def messages(conversation: Sequence[Turn]) -> list[dict]:
    """Turns as the chatbot's messages. Text parts rather than plain strings: Gradio dedents plain ones."""
    out = []
    for user, reply in conversation:
        out.append(_message(USER, user))
        out.append(_message(ASSISTANT, reply))
    return out


def _message(role: str, text: str) -> dict:
    return {"role": role, "content": [{"type": "text", "text": text}]}


def _checked_message(message: Any, max_chars: int) -> str:
    """The user's message: text, not empty, at most ``max_chars`` characters (refused, not cropped: a
    cropped question is another question)."""
    if message is not None and not isinstance(message, str):
        raise UserError(f"message must be text; got {inputs.shown(message)}.")
    text = inputs.clean_text(message)
    if not text.strip():
        raise UserError("message is empty: type a message to send.")
    if len(text) > max_chars:
        raise UserError(f"message must be at most {max_chars:,} characters (this server's limit); got "
                        f"{len(text):,}: shorten it.")
    return text


def _recent(conversation: Sequence[Turn], chars: int) -> list[Turn]:
    """The newest turns whose characters (with the template's) stay within ``chars``."""
    kept = 0
    for user, reply in reversed(conversation):
        chars -= len(user) + len(reply) + TURN_CHARS
        if chars < 0:
            break
        kept += 1
    return list(conversation[len(conversation) - kept:])


def fit(ctx: AppContext, conversation: Sequence[Turn], message: str, max_new_tokens: int,
        block_size: int) -> tuple[list[int], str | None]:
    """The prompt's token ids (the newest turns that fit, then ``message``) and a notice when turns were
    left out. A message too long for the context on its own is refused: cropped, it would be another one."""
    reserve = prompts.reply_room(max_new_tokens, block_size)
    recent = _recent(conversation, ctx.caps.max_prompt_chars - len(message))
    ids, dropped = prompts.fit_history(recent, message, block_size, reserve)
    if len(ids) + reserve > block_size:
        raise UserError(f"message is {len(ids)} tokens in the chat format, but this model's context of "
                        f"{block_size} tokens leaves room for at most {block_size - reserve} ({reserve} are kept "
                        "for the reply): shorten the message, or lower max_new_tokens.")
    dropped += len(conversation) - len(recent)
    if not dropped:
        return ids, None
    n, kept = len(conversation), len(conversation) - dropped
    what = f"only the last {kept} of the {n} earlier turns: the {dropped} oldest were" if kept else (
        f"none of the {n} earlier turns: they were")
    return ids, (f"The model reads {what} left out to fit its context ({block_size} tokens, {reserve} kept for the "
                 f"reply) and this server's {ctx.caps.max_prompt_chars:,}-character limit.")


def settings(ctx: AppContext, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed=None, stop=None,
             **advanced) -> gpt2.SamplingParams:
    """The sampler settings, named and checked as the Generate tab's (``advanced``: its advanced samplers,
    None: off), for a reply: it ends at ``<|endoftext|>`` or the next turn's header too."""
    params = inputs.sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop,
                             max_tokens=ctx.caps.max_new_tokens, **advanced)
    return prompts.chat_params(params)


def reply_job(model: gpt2.GPT2, ids: list[int], params: gpt2.SamplingParams) -> Iterator[gpt2.Step]:
    """The model work of one reply (a ``ui.gpu`` job): its steps, without per-step details."""
    yield from gpt2.generate(model, ids, params)


def _replies(ctx: AppContext, session: Session, ref, ids: list[int],
             params: gpt2.SamplingParams) -> Iterator[tuple[str, list[str], str | None]]:
    """The reply so far after each token, the notices of its steps, and why it ended on the last one (the
    session's Stop: "stopped", keeping what was made)."""
    steps = ctx.gpu.iterate(reply_job, ref, ids, params)
    text, notices = "", []
    try:
        for step in steps:
            text += step.text
            notices += [step.notice] if step.notice and step.notice not in notices else []  # each slide says it
            reason = step.finish_reason or ("stopped" if session.stop.is_set() else None)
            yield text, notices, reason
            if reason:
                break
    finally:  # also when the page goes away mid-reply: end the job at once
        steps.close()


def answer(ctx: AppContext, session: Session, message: str, earlier: list[Turn],
           params: gpt2.SamplingParams) -> Iterator[Outputs]:
    """Stream the reply to ``message`` after the ``earlier`` turns: (reply so far, conversation, notice)."""
    ref = ctx.ref(session)
    ids, cropped = fit(ctx, earlier, message, params.max_new_tokens, ctx.config(ref).block_size)
    notes = [n for n in (hint(ctx, session), cropped and f"> {cropped}") if n]
    session.stop.clear()
    yield "", messages([*earlier, (message, "")])[:-1], "\n\n".join(notes)  # the message shows at once
    for text, notices, reason in throttled(_replies(ctx, session, ref, ids, params)):
        reply = prompts.clean_reply(text)
        ending = ["> Stopped: the reply so far is kept."] if reason == "stopped" else [
            "> The model ended its turn without a reply."] if reason and not reply else []
        yield reply, messages([*earlier, (message, reply)]), "\n\n".join(
            [*notes, *(f"> {n}" for n in notices), *ending])


def chat(ctx: AppContext, session: Session, message: str | None, history: list[dict] | None = None,
         max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, top_k=40, top_p=1.0, repetition_penalty=1.0, seed=None,
         stop=None, min_p=None, typical_p=None, epsilon_cutoff=None, eta_cutoff=None,
         no_repeat_ngram_size=None) -> Iterator[Outputs]:
    """Send ``message`` after the conversation ``history`` (the chatbot's messages) and stream the reply:
    (reply so far, the conversation with it, notice). The settings are the Generate tab's (``seed`` blank
    or -1: random; ``stop``: extra stop sequences, one per line); the notice holds the hint while the model
    was not instruction-tuned, and says when the oldest turns were left out to fit the context."""
    params = settings(ctx, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, min_p=min_p,
                      typical_p=typical_p, epsilon_cutoff=epsilon_cutoff, eta_cutoff=eta_cutoff,
                      no_repeat_ngram_size=no_repeat_ngram_size)
    earlier = turns(history)
    yield from answer(ctx, session, _checked_message(message, ctx.caps.max_prompt_chars), earlier, params)


def regenerate(ctx: AppContext, session: Session, history: list[dict] | None = None, **values) -> Iterator[Outputs]:
    """Answer the conversation's last message again, its reply dropped (with a blank seed, a new one)."""
    params = settings(ctx, **values)
    earlier = turns(history)
    if not earlier:
        raise UserError("Nothing to regenerate yet: send a message first.")
    *earlier, (message, _) = earlier
    yield from answer(ctx, session, _checked_message(message, ctx.caps.max_prompt_chars), earlier, params)


def stop(ctx: AppContext, session: Session) -> None:
    """Ask this session's reply to end after the token in progress (what it made is kept)."""
    session.stop.set()


def clear(ctx: AppContext, session: Session) -> tuple[str, list, str, bool]:
    """An empty conversation, and the page's note that it was cleared: a reply in progress is stopped, and
    once it has ended (writing its conversation back) ``settle`` clears again."""
    session.stop.set()
    return "", [], hint(ctx, session), True


def settle(ctx: AppContext, session: Session, cleared: bool) -> tuple[Any, Any, Any, bool]:
    """After a reply: the conversation cleared again if Clear was pressed while it ran, else unchanged."""
    if cleared:
        return "", [], hint(ctx, session), False
    return KEEP, KEEP, KEEP, False
