"""The Lab's activation patching: run a corrupted prompt with one residual-stream cell (a layer's output
at one position) taken from a clean run, and see how much of the clean prediction comes back
(``gpt2.patch_residual``). Where the recovered fraction is high, that cell carries the difference.

The two prompts must have the same number of tokens (cell ``(l, p)`` of one run is put into the other),
so a helper view shows both tokenised as the user types, the differing tokens marked, without running
the model. Prompts longer than ``Caps.max_patch_tokens`` are refused, not cropped: cropping would
change the experiment. Target and foil (the logit difference is logit(target) - logit(foil) at the
last position) are typed, or filled from the two prompts' top predictions.
"""

from __future__ import annotations

import contextlib
import html
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch

import gpt2

from .. import inputs
from ..context import AppContext
from ..figures_lab import patch_row_names, patching_heatmap
from ..inputs import UserError
from ..session import Session
from .lab import token

# Which pronoun comes next, "thou" or "he"? Even the bundled Shakespeare model carries it from six tokens
# back: at the embeddings the difference sits in "thou" and "hast"; one layer later, in the last position.
CLEAN, CORRUPTED = "O, thou hast slain my brother, and", "O, he hath slain my brother, and"
TARGET, FOIL = " thou", " he"
NAMES = {"clean": "clean (the clean prompt)", "corrupted": "corrupted (the corrupted prompt)"}


@dataclass(frozen=True)
class Patching:
    """A patching experiment so far: the rows done, and both runs' logit differences."""

    grid: np.ndarray  # (n_layer + 1, T) recovered fraction; rows done so far while streaming
    ld_clean: float
    ld_corrupted: float
    n_layer: int


def _ids(name: str, text: str | None, ctx: AppContext, limit: int, why: str = "this server's limit for patching"
         ) -> list[int]:
    """One prompt's ids, refused (naming it) when empty or longer than ``limit`` tokens (``why``)."""
    text = inputs.clean_text(text)
    if len(text) > ctx.caps.max_prompt_chars:
        raise UserError(f"{NAMES[name]} must be at most {limit} tokens ({why}); it has {len(text):,} characters.")
    ids = gpt2.encode(text)
    if not ids:
        raise UserError(f"{NAMES[name]} is empty: type a prompt (clean and corrupted need the same token count).")
    if len(ids) > limit:
        raise UserError(f"{NAMES[name]} must be at most {limit} tokens ({why}); it has {len(ids)}. Patching "
                        "prompts are not cropped: that would change the experiment.")
    return ids


def pair(ctx: AppContext, clean: str | None, corrupted: str | None, block_size: int | None = None
         ) -> tuple[list[int], list[int]]:
    """The two prompts' ids, checked: not empty, within the cap (and the model's context), the same token
    count, and not identical."""
    limit, why = ctx.caps.max_patch_tokens, "this server's limit for patching"
    if block_size is not None and block_size < limit:
        limit, why = block_size, "the model's context"
    a, b = _ids("clean", clean, ctx, limit, why), _ids("corrupted", corrupted, ctx, limit, why)
    if len(a) != len(b):
        raise UserError(f"clean and corrupted must have the same number of tokens: clean has {len(a)}, corrupted "
                        f"has {len(b)}. Change a word for one that is as many tokens long (the view above "
                        "shows both tokenised).")
    if a == b:
        raise UserError("clean and corrupted are the same tokens: there is no difference to patch. Change a word "
                        "in the corrupted prompt.")
    return a, b


def differing(a: list[int], b: list[int]) -> list[int]:
    """The positions where two equally long token lists differ."""
    return [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


# Inline styles: the view is the section's own (no page CSS); the marked tokens read on light and dark themes
_CHIP = "border: 1px solid rgba(140,140,140,0.45); border-radius: 3px; padding: 0 3px; white-space: pre;"
_MARK = "background: rgba(255,165,0,0.45); font-weight: 600;"
_SHOWN = 200  # tokens drawn per prompt (a huge paste is refused anyway; its first tokens say why)


def _chips(ids: list[int], marked: set[int]) -> str:
    cells = []
    for i, label in enumerate(gpt2.token_display(ids[:_SHOWN])):
        cls, style = ("patch-tok patch-diff", _CHIP + _MARK) if i in marked else ("patch-tok", _CHIP)
        cells.append(f'<span class="{cls}" style="{style}" title="position {i}">{html.escape(label)}</span>')
    return " ".join(cells) + (" …" if len(ids) > _SHOWN else "")


def diff_view(ctx: AppContext, clean: str | None, corrupted: str | None) -> str:
    """Both prompts tokenised, the differing tokens marked, and whether the pair can be patched (token
    counts, the cap): HTML, computed as the user types (the tokenizer only, never the model)."""
    rows, problems = [], []
    ids = {}
    for name, text in (("clean", clean), ("corrupted", corrupted)):
        try:
            ids[name] = _ids(name, text, ctx, ctx.caps.max_patch_tokens)
        except UserError as e:
            problems.append(str(e))
            ids[name] = gpt2.encode(inputs.clean_text(text)[: ctx.caps.max_prompt_chars])
    a, b = ids["clean"], ids["corrupted"]
    n = min(len(a), len(b))
    marked = set(differing(a[:n], b[:n])) | set(range(n, max(len(a), len(b))))
    for name, these in (("clean", a), ("corrupted", b)):
        rows.append(f'<div class="patch-row" style="margin: 4px 0; line-height: 1.9"><b>{name}</b> '
                    f'({len(these)} tokens): {_chips(these, marked)}</div>')
    if not problems and len(a) != len(b):
        problems.append(f"Different lengths: clean has {len(a)} tokens, corrupted has {len(b)}. Patching needs the "
                        "same count: change a word for one that is as many tokens long.")
    if not problems and a == b:
        problems.append("The prompts are the same tokens: change a word in the corrupted prompt.")
    if problems:
        status = "".join(f'<div class="patch-problem">⚠ {html.escape(p)}</div>' for p in problems)
    else:
        where = ("position " if len(marked) == 1 else "positions ") + ", ".join(map(str, sorted(marked)))
        status = f'<div class="patch-ok">✓ {len(a)} tokens each; {len(marked)} differ ({where}).</div>'
    return f'<div class="patch-diff-view">{"".join(rows)}{status}</div>'


def _label(token_id: int) -> str:
    """A token as the target/foil boxes take it back: its text when that is exactly this one token, else
    ``#id``."""
    text = gpt2.get_tokenizer().decode([token_id])
    return text if gpt2.encode(text) == [token_id] else f"#{token_id}"


def top_job(model: gpt2.GPT2, clean_ids: list[int], corrupt_ids: list[int]) -> tuple[list[int], list[int]]:
    """The model work of filling target and foil (a ``ui.gpu`` job): each prompt's two most likely next
    tokens, best first (one pass over both prompts)."""
    with torch.inference_mode():
        idx = torch.tensor([clean_ids, corrupt_ids], device=model.device)
        logits = model(idx, last_only=True)[:, -1].float()
        top = logits.topk(2, dim=-1).indices.cpu().tolist()
    return top[0], top[1]


def fill_from_top(ctx: AppContext, session: Session, clean: str | None, corrupted: str | None
                  ) -> tuple[str, str, str]:
    """Target: the clean prompt's most likely next token; foil: the corrupted prompt's (its second when
    both are the same). Returns (target, foil, a note)."""
    ref = ctx.ref(session)
    a, b = pair(ctx, clean, corrupted, ctx.config(ref).block_size)
    top_clean, top_corrupt = ctx.gpu.call(top_job, ref, a, b)
    target = top_clean[0]
    foil = top_corrupt[0] if top_corrupt[0] != target else top_corrupt[1]
    shown = gpt2.token_display([target, foil])
    note = f"Target '{shown[0]}': the clean prompt's top prediction; foil '{shown[1]}': the corrupted prompt's"
    note += "." if foil == top_corrupt[0] else " second (its top one is the target too)."
    note += " Press **Patch** to see where the difference between them lives."
    return _label(target), _label(foil), note


def patch_job(model: gpt2.GPT2, clean_ids: list[int], corrupt_ids: list[int], target: int, foil: int
              ) -> Iterator[gpt2.PatchStep]:
    """The model work (a ``ui.gpu`` job): the grid one row (layer) at a time. The core's refusals (the
    same logit difference for both prompts: nothing to recover) become messages."""
    try:
        yield from gpt2.patch_residual_steps(model, clean_ids, corrupt_ids, target, foil)
    except ValueError as e:
        message = str(e)
        raise UserError(message[:1].upper() + message[1:] + ".") from None


def summary(result: Patching, labels: tuple[list[str], list[str]], target: int, foil: int) -> str:
    """The logit differences and the best cell, in Markdown."""
    names = gpt2.token_display([target, foil])
    text = (f"Logit difference LD = logit('{names[0]}') − logit('{names[1]}') at the last position: clean "
            f"**{result.ld_clean:.3f}**, corrupted **{result.ld_corrupted:.3f}**. Each cell is the fraction of the "
            "change recovered when the corrupted run gets the clean run's residual stream there: "
            "(LD patched − LD corrupted) / (LD clean − LD corrupted); 1 = fully recovered, 0 = no change.")
    done = result.grid.shape[0]
    if done < result.n_layer + 1:
        return text + f"\n\nPatching… {done} of {result.n_layer + 1} rows."
    # the last row's last position is the whole clean residual at the end: it always recovers exactly 1
    rows = result.grid[:-1] if result.n_layer else result.grid
    grid = np.where(np.isfinite(rows), rows, -math.inf)
    layer, pos = (int(i) for i in np.unravel_index(int(np.argmax(grid)), grid.shape))
    row = patch_row_names(result.n_layer)[layer]
    change = labels[0][pos] if labels[0][pos] == labels[1][pos] else f"{labels[0][pos]}' → '{labels[1][pos]}"
    where = " before the last row (whose last position always recovers 1)" if result.n_layer else ""
    return text + (f"\n\nBest cell{where}: {row}, position {pos} ('{change}'): **{result.grid[layer, pos]:.3f}** "
                   "recovered.")


def check_tokens(target, foil, vocab_size: int) -> tuple[int, int]:
    """Target and foil as token ids: each a single token (text or id), and not the same."""
    target_id = token("target", target, vocab_size)
    foil_id = token("foil", foil, vocab_size)
    if target_id == foil_id:
        raise UserError("target and foil must be different tokens (a token's logit minus its own is always 0).")
    return target_id, foil_id


def patch(ctx: AppContext, session: Session, clean: str | None, corrupted: str | None, target, foil
          ) -> Iterator[tuple[str, go.Figure | None]]:
    """Patch every (layer, position) cell of the corrupted run with the clean run's residual stream;
    streams (summary, heatmap) after each layer."""
    ref = ctx.ref(session)
    config = ctx.config(ref)
    a, b = pair(ctx, clean, corrupted, config.block_size)
    target_id, foil_id = check_tokens(target, foil, config.vocab_size)
    labels = (gpt2.token_display(a), gpt2.token_display(b))
    yield "Patching…", None
    rows: list[np.ndarray] = []
    with contextlib.closing(ctx.gpu.iterate(patch_job, ref, a, b, target_id, foil_id)) as steps:
        for step in steps:  # closed with the page: the job ends at once
            rows.append(np.asarray(step.row, dtype=np.float64))
            result = Patching(np.stack(rows), step.ld_clean, step.ld_corrupt, config.n_layer)
            figure = patching_heatmap(result.grid, *labels, result.ld_clean, result.ld_corrupted, config.n_layer)
            yield summary(result, labels, target_id, foil_id), figure
