"""The Lab's "Knock out heads": run a text with some attention heads knocked out (``gpt2.Edit``) and
compare with the plain run: the next-token candidates, each token's loss, and a same-seed continuation.

Heads are written ``layer.head`` (``"1.3, 2.0"``); the page's grid of toggles sends the same strings as a
list. Presets pick heads from the Attention tab's head table on the repeated-random-tokens probe. Every
pass is a ``ui.gpu`` job with its own ``Edit``: the shared model keeps no hooks and no state.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch

import gpt2
from gpt2.edit import MODES
from gpt2.inspection import probe_pool, repeated_probe, repeated_tokens

from .. import figures_lab, inputs
from ..context import AppContext
from ..gpu import ModelRef
from ..inputs import UserError
from ..session import Session
from ..updates import Update, update
from .attention import REPEAT_LENGTH, head_table
from .generate import percent

TOP_K = 3  # heads a "top … heads" preset picks
NONE, TOP_INDUCTION, TOP_PREVIOUS = "none", f"top {TOP_K} induction heads", f"top {TOP_K} previous-token heads"
LAYER_PRESET = "all heads of layer {}"
PROBE_SEED = 0  # the presets' probe: the same repeated random tokens every time, so a preset is repeatable
CANDIDATES = 10  # next-token candidates shown, before and after
EXAMPLE_SEED = 1  # the section's first text: a repeated-random-tokens probe (see ``example``)
HEADS_FORMAT = ("layer.head pairs separated by commas or spaces (e.g. '1.3, 2.0'; 'L1.H3' also works, and "
                "'2.*' is every head of layer 2), or empty for none")
_PAIR = re.compile(r"^l?(\d+)\.(?:h?(\d+)|\*)$", re.IGNORECASE)


# ---------------------------------------------------------------- heads: parsing, labels, presets


def parse_heads(value, n_layer: int, n_head: int) -> dict[int, list[int]]:
    """``heads`` as an API caller (``"1.3, 2.0"``) or the page's toggles (``["1.3", "2.0"]``) send it:
    layer -> sorted heads. Malformed pairs and heads the model lacks are refused, named."""
    if value is None:
        return {}
    if isinstance(value, str):
        pieces = [p for p in re.split(r"[\s,;]+", value.strip()) if p]
    elif isinstance(value, Sequence) and all(isinstance(p, str) for p in value):
        pieces = [p.strip() for p in value if p.strip()]
    else:
        raise UserError(f"heads must be {HEADS_FORMAT}; got {inputs.shown(value)}.")
    heads: dict[int, set[int]] = {}
    for piece in pieces:
        m = _PAIR.match(piece)
        if m is None:
            raise UserError(f"heads must be {HEADS_FORMAT}; {inputs.shown(piece)} is not a layer.head pair.")
        layer = int(m.group(1))
        if layer >= n_layer:
            raise UserError(f"heads: layer {layer} (in {piece!r}) is not a layer of this model: its layers are "
                            f"0 to {n_layer - 1}.")
        chosen = range(n_head) if m.group(2) is None else [int(m.group(2))]
        if chosen and max(chosen) >= n_head:
            raise UserError(f"heads: head {max(chosen)} (in {piece!r}) is not a head of this model: each layer has "
                            f"heads 0 to {n_head - 1}.")
        heads.setdefault(layer, set()).update(chosen)
    return {layer: sorted(hs) for layer, hs in sorted(heads.items())}


def heads_text(heads: Mapping[int, Sequence[int]]) -> str:
    """Heads in the API's format, ``"1.3, 2.0"`` ("" for none)."""
    return ", ".join(f"{layer}.{h}" for layer, hs in sorted(heads.items()) for h in sorted(hs))


def head_values(heads: Mapping[int, Sequence[int]]) -> list[str]:
    """Heads as the page's toggles hold them."""
    return [f"{layer}.{h}" for layer, hs in sorted(heads.items()) for h in sorted(hs)]


def head_choices(n_layer: int, n_head: int) -> list[tuple[str, str]]:
    """The toggles of a model's heads, layer by layer: (label ``"L1.H3"``, value ``"1.3"``)."""
    return [(f"L{layer}.H{h}", f"{layer}.{h}") for layer in range(n_layer) for h in range(n_head)]


def presets(n_layer: int) -> list[str]:
    """The presets offered for a model with ``n_layer`` layers."""
    return [NONE, TOP_INDUCTION, TOP_PREVIOUS, *(LAYER_PRESET.format(i) for i in range(n_layer))]


def probe_head_table(model: gpt2.GPT2):
    """The head table on the presets' probe: random tokens the model tells apart, repeated once, as the
    Attention tab's button makes them (a ``ui.gpu`` job)."""
    return head_table(model, repeated_probe(model, min(REPEAT_LENGTH, model.config.block_size // 2), PROBE_SEED))


def top_heads(table, column: str, k: int = TOP_K) -> dict[int, list[int]]:
    """The ``k`` heads of a head table (``head_table``) with the highest ``column`` (NaN last)."""
    best = table.sort_values(column, ascending=False, na_position="last", kind="stable").head(k)
    heads: dict[int, list[int]] = {}
    for layer, head in zip(best["layer"], best["head"], strict=True):
        heads.setdefault(int(layer), []).append(int(head))
    return {layer: sorted(hs) for layer, hs in sorted(heads.items())}


def preset_heads(ctx: AppContext, session: Session, preset) -> dict[int, list[int]]:
    """The heads a preset picks on the session's model (the top ones: from the head table on the probe)."""
    ref = ctx.ref(session)
    config = ctx.config(ref)
    preset = inputs.choice("preset", preset, presets(config.n_layer))
    if preset == NONE:
        return {}
    if preset in (TOP_INDUCTION, TOP_PREVIOUS):
        table = ctx.gpu.call(probe_head_table, ref)
        return top_heads(table, "induction" if preset == TOP_INDUCTION else "previous-token")
    return {int(preset.rsplit(" ", 1)[1]): list(range(config.n_head))}


def toggles(ctx: AppContext, session: Session, heads: Mapping[int, Sequence[int]]) -> Update:
    """The grid of toggles for the session's model, with ``heads`` on."""
    config = ctx.config(ctx.ref(session))
    return update(choices=head_choices(config.n_layer, config.n_head), value=head_values(heads))


def preset(ctx: AppContext, session: Session, preset) -> Update:
    """A preset was chosen: the toggles set to its heads."""
    return toggles(ctx, session, preset_heads(ctx, session, preset))


def fit(ctx: AppContext, session: Session, heads, preset) -> tuple[Update, Update]:
    """The tab opened or the model changed: (toggles, presets) for the session's model. Values change only
    where the model lacks them (this may race the Attention tab's preselection, which must win)."""
    config = ctx.config(ctx.ref(session))
    heads = [h for h in heads or [] if isinstance(h, str)]
    kept = [h for h in heads if _fits(h, config)]
    choices = presets(config.n_layer)
    return (update(choices=head_choices(config.n_layer, config.n_head), **({} if kept == heads else {"value": kept})),
            update(choices=choices, **({} if preset in choices else {"value": NONE})))


def _fits(value: str, config: gpt2.GPTConfig) -> bool:
    try:
        return bool(parse_heads(value, config.n_layer, config.n_head))
    except UserError:
        return False


def preselect(ctx: AppContext, session: Session, heads) -> Update:
    """The Attention tab's "Knock out … in the Lab ›": the toggles with those heads on (``heads``: the
    API's format; heads the session's model lacks are refused, named)."""
    config = ctx.config(ctx.ref(session))
    return toggles(ctx, session, parse_heads(heads, config.n_layer, config.n_head))


def probe_text(ctx: AppContext, ref, seed: int | None = None) -> str:
    """Random tokens repeated once, as text (the induction probe, as the Attention tab's button makes it, of
    tokens the model tells apart), short enough to be scored whole: both copies and ``<|endoftext|>`` fit the
    context and the Lab's cap. ``seed`` None: a new probe each time."""
    config = ctx.config(ref)
    limit = min(config.block_size - 1, ctx.caps.max_attribution_tokens)
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    pool = ctx.gpu.call(probe_pool, ref)
    n = min(REPEAT_LENGTH, limit // 2)
    while True:  # decoded random tokens may encode to more tokens (split bytes): shorter until it fits
        text = gpt2.get_tokenizer().decode(repeated_tokens(n, seed, config.vocab_size, pool=pool))
        over = len(gpt2.encode(text)) - limit
        if over <= 0 or n <= 1:
            return text
        n -= max(1, over // 2)


def repeated(ctx: AppContext, session: Session) -> str:
    """The "use repeated random tokens" button: a new probe for the session's model."""
    return probe_text(ctx, ctx.ref(session))


# ---------------------------------------------------------------- jobs (``ui.gpu``: plain values in and out)


@dataclass
class Scored:
    """One text scored with every head in place and with some knocked out."""

    loss_before: np.ndarray  # (T,) −log p(token | before it), nats; token 0 predicted from <|endoftext|>
    loss_after: np.ndarray
    next_before: np.ndarray  # (V,) the next token's probabilities after the whole text
    next_after: np.ndarray


@torch.no_grad()
def _losses(model: gpt2.GPT2, seq: torch.Tensor, edit: gpt2.Edit | None) -> tuple[np.ndarray, np.ndarray]:
    logp = model(seq, edit=edit)[0].float().log_softmax(-1)  # (T + 1, V)
    loss = -logp[:-1].gather(-1, seq[0, 1:, None])[:, 0]
    return loss.cpu().numpy(), logp[-1].exp().cpu().numpy()


def score_job(model: gpt2.GPT2, ids: list[int], heads: dict[int, list[int]], mode: str) -> Scored:
    """Two passes over ``<|endoftext|>`` + ``ids``: plain, and with ``heads`` knocked out (``mode``)."""
    seq = torch.tensor([[gpt2.EOT_ID, *ids]], device=model.device)
    before = _losses(model, seq, None)
    after = _losses(model, seq, gpt2.Edit(ablate_heads=heads, mode=mode)) if heads else before
    return Scored(before[0], after[0], before[1], after[1])


def regenerate_job(model: gpt2.GPT2, ids: list[int], params: gpt2.SamplingParams, heads: dict[int, list[int]],
                   mode: str) -> tuple[str, str]:
    """The continuation of ``ids`` plain and with ``heads`` knocked out, with the same seed."""
    edit = gpt2.Edit(ablate_heads=heads, mode=mode) if heads else None
    return tuple("".join(step.text for step in gpt2.generate(model, ids, params, edit=e)) for e in (None, edit))


# ---------------------------------------------------------------- the section's event, and /ablate


def text_ids(ctx: AppContext, config: gpt2.GPTConfig, text) -> tuple[list[int], str | None]:
    """The text's tokens, cropped from the left to what one pass scores (``<|endoftext|>`` in front, within
    the model's context) and to the server's cap on the Lab's texts, with a notice when cropped."""
    ids, notice = inputs.prompt_ids(text, ctx.caps.max_prompt_chars, config.block_size)
    if not ids:
        raise UserError("text is empty: type a text (or press “use repeated random tokens”).")
    limit = min(config.block_size - 1, ctx.caps.max_attribution_tokens)
    if len(ids) > limit:
        ids = ids[-limit:]
        notice = (f"Text cropped to its last {limit} tokens: at most {ctx.caps.max_attribution_tokens} (this "
                  f"server's limit on the Lab's texts) and the model's context of {config.block_size} with "
                  "<|endoftext|> in front.")
    return ids, notice


def _params(ctx: AppContext, max_new_tokens, seed) -> gpt2.SamplingParams:
    """Plain sampling (temperature 1, nothing cut) for ``max_new_tokens`` with one seed for both runs (blank
    or -1: a random one, the same for both)."""
    params = inputs.sampling(max_new_tokens, 1.0, 0, 1.0, 1.0, seed, max_tokens=ctx.caps.max_new_tokens)
    if params.seed is None:
        params = dataclasses.replace(params, seed=random.SystemRandom().randrange(2**31))
    return params


def repeated_half(ids: Sequence[int]) -> int | None:
    """Where the second copy starts when ``ids`` is a text repeated once (the induction probe), else None."""
    n = len(ids) // 2
    return n if n and len(ids) % 2 == 0 and list(ids[:n]) == list(ids[n:]) else None


def summary(ids: list[int], heads: Mapping[int, Sequence[int]], mode: str, scored: Scored, seed: int,
            notice: str | None) -> str:
    """The Markdown above the figures: what was knocked out, the mean loss and the top next token."""
    labels = [f"L{layer}.H{h}" for layer, hs in sorted(heads.items()) for h in hs]
    what = (f"**Knocked out** ({mode}): {', '.join(labels)}" if heads
            else "**No heads knocked out**: before and after are the same run.")
    before, after = float(scored.loss_before.mean()), float(scored.loss_after.mean())
    lines = [what, f"**Mean loss** over {len(ids)} tokens: {before:.3f} → {after:.3f} nats ({after - before:+.3f})."]
    split = repeated_half(ids)
    if split is not None:
        b, a = float(scored.loss_before[split:].mean()), float(scored.loss_after[split:].mean())
        lines.append(f"**Second copy** of the repeated text: {b:.3f} → {a:.3f} nats ({a - b:+.3f}) (a model's "
                     "induction heads are what make it predictable).")
    names = []
    for probs in (scored.next_before, scored.next_after):
        top = int(probs.argmax())
        names.append(f"'{gpt2.token_display([top])[0]}' ({percent(float(probs[top]))})")
    lines.append(f"**Top next token**: {names[0]} → {names[1]}.")
    lines.append(f"Continuations below: same seed ({seed}), temperature 1.")
    return "\n\n".join([*lines, *([f"> {notice}"] if notice else [])])


def _candidates(scored: Scored) -> go.Figure:
    """The top candidates before, then those only the knocked-out run ranks in its top: both probabilities."""
    order = [int(i) for i in np.argsort(-scored.next_before)[:CANDIDATES]]
    order += [int(i) for i in np.argsort(-scored.next_after)[:CANDIDATES] if int(i) not in order]
    return figures_lab.ablation_candidates(gpt2.token_display(order), scored.next_before[order],
                                           scored.next_after[order])


def ablate(ctx: AppContext, session: Session, text, heads, mode, max_new_tokens, seed) -> tuple:
    """Knock out attention ``heads`` (``"1.3, 2.0"``: layer.head pairs; empty: none) in ``mode`` ("zero" or
    "mean") while reading ``text``: (summary, next-token candidates, per-token loss, the plain continuation,
    the continuation with the heads knocked out), both continuations ``max_new_tokens`` long with ``seed``."""
    ref: ModelRef = ctx.ref(session)
    config = ctx.config(ref)
    mode = inputs.choice("mode", mode, MODES)
    chosen = parse_heads(heads, config.n_layer, config.n_head)
    params = _params(ctx, max_new_tokens, seed)
    ids, notice = text_ids(ctx, config, text)
    scored = ctx.gpu.call(score_job, ref, ids, chosen, mode)
    plain, edited = ctx.gpu.call(regenerate_job, ref, ids, params, chosen, mode)
    loss = figures_lab.ablation_loss(gpt2.token_display(ids), scored.loss_before, scored.loss_after,
                                     repeated_half(ids))
    return summary(ids, chosen, mode, scored, params.seed, notice), _candidates(scored), loss, plain, edited
