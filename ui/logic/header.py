"""The header: which model this session uses (the picker and its precision) and whether its fine-tuned
version is on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import gpt2

from .. import inputs
from ..context import AppContext
from ..inputs import UserError
from ..models import DEFAULT, PRECISIONS, model_bytes, precision_text, size_text
from ..session import Session
from ..updates import KEEP, Update, update

_HUB_HINT = "Download it where the hub is reachable"  # gpt2.weights' advice for people running the app


def model_info(ctx: AppContext, key: str) -> str:
    """One line about a loaded model (a store key): size, shape, context, device, precision and memory."""
    model, (name, _) = ctx.store.get(key), ctx.store.parse(key)
    c = model.config  # its parameter count: an int8 model's matrices are buffers, not parameters
    return (f"**{name}** · {c.num_params() / 1e6:.1f}M parameters · {c.n_layer} layers × {c.n_head} heads · "
            f"context {c.block_size} · {model.device.type.upper()} · {precision_text(model)} · "
            f"{size_text(model_bytes(model))}")


def load_message(error: Exception) -> str:
    """Why a model cannot be loaded, for this server's visitors: on a hosted Space they cannot run
    ``hf download`` for it, so the advice is for them instead."""
    message = str(error)
    if os.environ.get("SPACE_ID") and _HUB_HINT in message:
        message = (message.partition(_HUB_HINT)[0] + "The Hugging Face Hub cannot be reached from this Space right "
                   "now: try again later, or pick another model.")
    return message


def offered(ctx: AppContext, model) -> str:
    """``model`` if it is a key of the picker's catalogue (exactly: keys are names, never paths), else a
    ``UserError`` naming the choices."""
    if not isinstance(model, str) or model not in ctx.store.entries:
        choices = ", ".join(repr(key) for key in ctx.store.entries)
        raise UserError(f"model {inputs.shown(model)} is not one of the offered models. Choose one of {choices}.")
    return model


def precision_of(ctx: AppContext, precision) -> str:
    """``precision`` if this server offers it ("default", or blank: the model's default), else a
    ``UserError`` naming the choices."""
    offered_here = (DEFAULT, *ctx.store.precisions())
    if precision is None or precision == "":
        return DEFAULT
    if isinstance(precision, str) and precision.strip().lower() in set(PRECISIONS) - set(offered_here):
        raise UserError(f"precision {precision.strip().lower()!r} is not available on this server's device (its "
                        f"torch has no kernel for it). Choose one of {', '.join(map(repr, offered_here))}.")
    return inputs.choice("precision", precision, offered_here)


def load_model(ctx: AppContext, session: Session, model, precision=DEFAULT) -> str:
    """Switch this session to an offered model in a precision ("default": the model's default; "fp32",
    "bf16", "int8"); others are unaffected. Its description. Raises ``UserError`` when either is not
    offered or the model cannot be loaded (the current model stays)."""
    key = ctx.store.key(offered(ctx, model), precision_of(ctx, precision))
    try:
        ctx.store.get(key)
    except gpt2.CheckpointError as e:
        raise UserError(f"{load_message(e)} The current model, {session.model_key}, stays loaded.") from None
    session.model_key = key
    session.use_finetuned = session.use_finetuned and session.has_finetuned()
    return model_info(ctx, key)


@dataclass(frozen=True)
class Switch:
    """What the header shows while and after switching: the description, the model picker, the precision
    picker, the fine-tuned switch, and the message when the model cannot be had."""

    info: str | Update
    picker: Update
    precision: Update
    finetuned: bool | Update
    error: str | None = None


def precision_picker(ctx: AppContext, key: str) -> Update:
    """The precision picker for the model of store key ``key``: its precisions (each with its memory), and
    the one in use."""
    name, precision = ctx.store.parse(key)
    return update(choices=ctx.store.choices(name), value=precision)


def switch_model(ctx: AppContext, session: Session, model: str, precision: str = DEFAULT) -> Iterator[Switch]:
    """The page's pickers: like ``load_model``, but a model that cannot be had never breaks the page: the
    message is given, and the pickers go back to the model in use, whose description stays. A new model
    comes in its default precision; the precision picker then lists that model's."""
    yield Switch(f"Loading **{model}**" + ("" if precision == DEFAULT else f" in {precision}") + "…", KEEP, KEEP, KEEP)
    try:
        info = load_model(ctx, session, model, precision)
    except UserError as e:
        current = session.model_key
        yield Switch(model_info(ctx, current), update(value=ctx.store.parse(current)[0]),
                     precision_picker(ctx, current), KEEP, str(e))
        return
    yield Switch(info, KEEP, precision_picker(ctx, session.model_key), session.use_finetuned)


def switch_precision(ctx: AppContext, session: Session, precision: str) -> Iterator[Switch]:
    """The precision picker: the session's model in another precision (``switch_model``)."""
    yield from switch_model(ctx, session, ctx.store.parse(session.model_key)[0], precision)


def use_finetuned(session: Session, value: bool) -> tuple[bool, str | None]:
    """The "use my fine-tuned model" switch: its new state, and a message when it cannot be on."""
    message = None
    if value and not session.has_finetuned():
        if session.adapter is not None or session.finetuned_model is not None:
            message = (f"Your fine-tuned model was trained on {session.adapter_base}; choose that model (and "
                       "precision) to use it, or fine-tune this one.")
        else:
            message = "Nothing fine-tuned yet: train in the Fine-tune tab first. The base model is used."
    session.use_finetuned = bool(value) and message is None
    return session.use_finetuned, message
