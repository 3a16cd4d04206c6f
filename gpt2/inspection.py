"""Look inside the model on a given text. Every function returns a plain record of numpy arrays and
strings, ready for a figure builder or a terminal; none keeps state or changes the model."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .model import GPT2, Trace
from .tokenizer import EOT_ID, get_tokenizer, token_display

# Positions read out through the final LayerNorm and head at once. A request then holds (CHUNK, vocab)
# fp32 logits and their softmax, ~26 MB each for GPT-2, instead of (tokens, vocab) (200 MB at 1,024 tokens).
CHUNK = 128


def _readout(model: GPT2, hidden: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """fp32 logits of the residual states ``hidden`` (T, C), ``CHUNK`` positions at a time: (the chunk's
    first position, its (n, V) logits). Reduce each chunk before asking for the next."""
    for i in range(0, hidden.shape[0], CHUNK):
        yield i, model.unembed(hidden[i : i + CHUNK]).float()


@dataclass
class TokenScores:
    """How well the model predicted each token of a text."""

    token_ids: list[int]
    labels: list[str]  # display strings (visible whitespace)
    logprobs: np.ndarray  # (T,) log p(token | everything before), nats
    ranks: np.ndarray  # (T,) rank of the actual token among the predictions (1 = most likely)
    entropies: np.ndarray  # (T,) entropy of the prediction the token was drawn against, nats
    top_ids: np.ndarray  # (T, k) the model's most likely tokens at each position

    @property
    def perplexity(self) -> float:
        return math.exp(-float(self.logprobs.mean())) if len(self.logprobs) else float("nan")


@torch.no_grad()
def score(model: GPT2, token_ids: Sequence[int], top_k: int = 5) -> TokenScores:
    """Score every token of a text. ``<|endoftext|>`` is put in front as GPT-2's start token, so the
    first token is scored too. Texts longer than the context are scored in overlapping windows, each
    token with at least half a context of history. Logits are read ``CHUNK`` positions at a time, so
    memory grows with the text's length times the width, not times the vocabulary."""
    ids = [int(t) for t in token_ids]
    seq = torch.tensor([EOT_ID, *ids], device=model.device)
    block, n = model.config.block_size, len(ids)
    logp = torch.empty(n)
    ent = torch.empty(n)
    ranks = torch.empty(n, dtype=torch.long)
    top = torch.empty(n, top_k, dtype=torch.long)
    done = 0  # targets scored so far; target j is seq[j + 1], predicted from seq[: j + 1]
    while done < n:
        start = max(0, done + 1 - (block if done == 0 else block // 2))
        end = min(start + block, n)  # the window seq[start:end] predicts targets start..end-1
        hidden = model.residual(seq[start:end][None])[0, done - start :]  # (end - done, C): the new targets
        for i, logits in _readout(model, hidden):
            at = slice(done + i, done + i + len(logits))
            lp = logits.log_softmax(-1)  # (rows, V)
            chosen = lp.gather(-1, seq[at.start + 1 : at.stop + 1, None])[:, 0]
            logp[at] = chosen.cpu()
            ent[at] = -(lp.exp() * lp).sum(-1).cpu()
            ranks[at] = ((lp > chosen[:, None]).sum(-1) + 1).cpu()
            top[at] = lp.topk(top_k, dim=-1).indices.cpu()
        done = end
    return TokenScores(ids, token_display(ids), logp.numpy(), ranks.numpy(), ent.numpy(), top.numpy())


@dataclass
class AttentionMaps:
    """Attention patterns of some layers for one text (after cropping to the context)."""

    token_ids: list[int]
    labels: list[str]
    layers: list[int]
    patterns: np.ndarray  # (len(layers), n_head, T, T): row = query (attending) token, column = key


@torch.no_grad()
def attention_maps(model: GPT2, token_ids: Sequence[int], layers: Iterable[int] | None = None) -> AttentionMaps:
    """All heads' attention for the chosen layers (default: all). Keeps the last ``block_size`` tokens."""
    ids = [int(t) for t in token_ids][-model.config.block_size :]
    layers = sorted(set(range(model.config.n_layer) if layers is None else layers))
    bad = [i for i in layers if not 0 <= i < model.config.n_layer]
    if bad:
        raise ValueError(f"layers must be in [0, {model.config.n_layer - 1}], got {bad}")
    trace = Trace(attn_layers=layers)
    model.residual(torch.tensor([ids], device=model.device), trace=trace, layers=layers[-1] + 1 if layers else 0)
    patterns = torch.stack([trace.attn[i][0] for i in layers]).cpu().numpy()
    return AttentionMaps(ids, token_display(ids), layers, patterns)


@dataclass
class LogitLens:
    """The residual stream read out through the final LayerNorm and head, after every layer."""

    labels: list[str]  # the input tokens
    top_ids: np.ndarray  # (n_layer + 1, T): most likely next token; row 0 is the embeddings
    top_probs: np.ndarray  # (n_layer + 1, T)
    top_labels: list[list[str]]  # display strings of top_ids


@torch.no_grad()
def logit_lens(model: GPT2, token_ids: Sequence[int]) -> LogitLens:
    """What the model would predict if it stopped after each layer (nostalgebraist's logit lens)."""
    ids = [int(t) for t in token_ids][-model.config.block_size :]
    trace = Trace(hidden=True)
    model.residual(torch.tensor([ids], device=model.device), trace=trace)
    top_ids = torch.empty(len(trace.hidden_states), len(ids), dtype=torch.long)
    top_probs = torch.empty(len(trace.hidden_states), len(ids))
    for layer, h in enumerate(trace.hidden_states):  # one layer and CHUNK positions at a time, never (L, T, V)
        for i, logits in _readout(model, h[0]):
            best = logits.softmax(-1).max(-1)
            top_ids[layer, i : i + len(logits)] = best.indices.cpu()
            top_probs[layer, i : i + len(logits)] = best.values.cpu()
    return LogitLens(token_display(ids), top_ids.numpy(), top_probs.numpy(),
                     [token_display(row) for row in top_ids.tolist()])


@dataclass
class HeadScores:
    """One number per (layer, head) for finding interesting heads in an ``AttentionMaps``."""

    layers: list[int]
    entropy: np.ndarray  # (L, nh) mean entropy of a query's attention, nats (low = focused)
    previous_token: np.ndarray  # (L, nh) mean attention to the immediately preceding token
    induction: np.ndarray  # (L, nh) mean attention to the token after an earlier copy of the query token


def head_scores(maps: AttentionMaps) -> HeadScores:
    """Entropy, previous-token and induction scores of every head in ``maps``.

    Induction (Olsson et al., 2022): a query whose token appeared before at ``j`` attends to ``j + 1``,
    the token that came next last time. It is averaged over queries that have such an earlier copy
    (NaN if none do); repeated text makes it stand out (see ``repeated_tokens``).
    """
    p = maps.patterns.astype(np.float64)  # (L, nh, T, T)
    T = p.shape[-1]
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(-1).mean(-1)
    prev = np.diagonal(p, offset=-1, axis1=-2, axis2=-1).mean(-1) if T > 1 else np.zeros(p.shape[:2])
    ids = np.asarray(maps.token_ids)
    targets = np.zeros((T, T), dtype=bool)  # targets[i, j+1]: token j equals token i, and j + 1 < i
    same = ids[:, None] == ids[None, :]
    targets[:, 1:] = np.tril(same, k=-2)[:, :-1]
    has = targets.any(-1)
    induction = (p[..., has, :] * targets[has]).sum(-1).mean(-1) if has.any() else np.full(p.shape[:2], np.nan)
    return HeadScores(list(maps.layers), entropy, prev, induction)


def repeated_tokens(length: int = 50, seed: int = 0, vocab_size: int = 50257,
                    pool: Sequence[int] | np.ndarray | None = None) -> list[int]:
    """Random tokens repeated twice: the classic probe that makes induction heads light up. They are drawn
    from ``pool`` when given (see ``probe_pool``), else from the common-ish ids 1,000 to 20,000."""
    rng = np.random.default_rng(seed)
    if pool is None:
        first = rng.integers(PROBE_RANGE[0], min(vocab_size, PROBE_RANGE[1]), size=length).tolist()
    else:
        first = rng.choice(np.asarray(pool, dtype=np.int64), size=length).tolist()
    return first + first


PROBE_RANGE = (1000, 20000)  # common-ish tokens: most models have seen them
_ROWS = 8192  # embedding rows read at a time by ``probe_pool`` (an int8 table dequantizes only these)
_WORD = re.compile(rb" [A-Za-z]+")


@functools.lru_cache(maxsize=1)
def word_ids() -> np.ndarray:
    """The ids in ``PROBE_RANGE`` that are a space and a word (" king"). Any sequence of them decodes to a text
    that encodes back to the same ids, so a probe made of them is the same tokens once shown and read back;
    other tokens glue to their neighbours ("ENT" after " looks") and come back as other tokens."""
    enc = get_tokenizer()
    ids = np.array([i for i in range(*PROBE_RANGE) if _WORD.fullmatch(enc.decode_single_token_bytes(i))])
    ids.setflags(write=False)  # cached and shared: nobody may change it for the others
    return ids


@torch.no_grad()
def probe_pool(model: GPT2) -> np.ndarray:
    """The word tokens (``word_ids``) whose embedding row no other token shares. A compact-vocabulary model
    (``training.vocab``) gives every token it never saw one shared row: such tokens look alike to it, so it
    cannot copy them and a probe made of them shows no induction. Falls back to every word token when fewer
    than 100 are distinct (a model that saw almost nothing)."""
    wte = model.transformer.wte
    gen = torch.Generator(device=model.device).manual_seed(0)
    r = torch.randn(wte.embedding_dim, 1, generator=gen, device=model.device, dtype=torch.float64)
    proj = torch.cat([wte(torch.arange(i, min(i + _ROWS, wte.num_embeddings), device=model.device)).double() @ r
                      for i in range(0, wte.num_embeddings, _ROWS)])[:, 0].cpu().numpy()  # (V,) a row's fingerprint
    _, inverse, counts = np.unique(proj, return_inverse=True, return_counts=True)
    words = word_ids()
    words = words[words < wte.num_embeddings]
    distinct = words[counts[inverse[words]] == 1]
    return distinct if len(distinct) >= 100 else words


def repeated_probe(model: GPT2, length: int, seed: int) -> list[int]:
    """``repeated_tokens`` drawn from the tokens ``model`` can tell apart (``probe_pool``)."""
    return repeated_tokens(length, seed, model.config.vocab_size, pool=probe_pool(model))
