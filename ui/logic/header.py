"""The header: which model this session uses (the picker) and whether its fine-tuned version is on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import gpt2

from .. import inputs
from ..context import AppContext
from ..inputs import UserError
from ..session import Session
from ..updates import KEEP, Update, update

_HUB_HINT = "Download it where the hub is reachable"  # gpt2.weights' advice for people running the app


def model_info(key: str, model: gpt2.GPT2) -> str:
    """One line about a loaded model: size, shape, context, device and dtype."""
    c = model.config
    return (f"**{key}** · {model.num_params() / 1e6:.1f}M parameters · {c.n_layer} layers × {c.n_head} heads · "
            f"context {c.block_size} · {model.device.type.upper()} · {str(model.dtype).removeprefix('torch.')}")


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


def load_model(ctx: AppContext, session: Session, model) -> str:
    """Switch this session to an offered model (others are unaffected); its description. Raises
    ``UserError`` when it is not offered or cannot be loaded (the current model stays)."""
    model = offered(ctx, model)
    try:
        loaded = ctx.store.get(model)
    except gpt2.CheckpointError as e:
        raise UserError(f"{load_message(e)} The current model, {session.model_key}, stays loaded.") from None
    session.model_key = model
    session.use_finetuned = session.use_finetuned and session.has_finetuned()
    return model_info(model, loaded)


@dataclass(frozen=True)
class Switch:
    """What the header shows while and after switching: the description, the picker, the fine-tuned
    switch, and the message when the model cannot be had."""

    info: str | Update
    picker: Update
    finetuned: bool | Update
    error: str | None = None


def switch_model(ctx: AppContext, session: Session, model: str) -> Iterator[Switch]:
    """The page's picker: like ``load_model``, but a model that cannot be had never breaks the page: the
    message is given, and the picker goes back to the model in use, whose description stays."""
    yield Switch(f"Loading **{model}**…", KEEP, KEEP)
    try:
        info = load_model(ctx, session, model)
    except UserError as e:
        current = ctx.store.get(session.model_key)
        yield Switch(model_info(session.model_key, current), update(value=session.model_key), KEEP, str(e))
        return
    yield Switch(info, KEEP, session.use_finetuned)


def use_finetuned(session: Session, value: bool) -> tuple[bool, str | None]:
    """The "use my fine-tuned model" switch: its new state, and a message when it cannot be on."""
    message = None
    if value and not session.has_finetuned():
        if session.adapter is not None or session.finetuned_model is not None:
            message = (f"Your fine-tuned model was trained on {session.adapter_base}; choose that model to use it, "
                       "or fine-tune this one.")
        else:
            message = "Nothing fine-tuned yet: train in the Fine-tune tab first. The base model is used."
    session.use_finetuned = bool(value) and message is None
    return session.use_finetuned, message
