"""Many continuations of one prompt, drawn as one batch, and how diverse they are.

``sample_batch`` draws N continuations at once: the prompt is prefilled once, its keys and values are
copied to N cache rows, and each new token is one batched forward pass for all rows. The sampler stages
run row-wise (``process_logits`` on ``(N, V)`` logits with ``(N, T)`` context ids), and each step draws
N tokens with one uniform number per row from a ``torch.Generator`` seeded from ``params.seed``: the same
seed gives the same samples. (The draw is not ``torch.multinomial``'s, so a sample is not the text
``gpt2.generate`` draws with that seed; greedy rows are exactly its greedy text.)
A row that draws ``<|endoftext|>`` ends there (it keeps step with the others; what follows is dropped).
Stop strings are not used here. Past the context the window slides as in ``gpt2.generate``.

The metrics (``metrics``) are on GPT-2 tokens, with a final ``<|endoftext|>`` left out:

- **distinct-n** (Li et al., 2016): distinct n-grams / n-grams, over all samples pooled.
- **self-BLEU** (Zhu et al., 2018): each sample's *sentence* BLEU against the other samples as references
  (sacrebleu's ``sentence_bleu``: up to 4-grams, effective order, exponential smoothing), averaged over
  the samples and scaled to 0..1. The tokens are written as their ids separated by spaces with
  ``tokenize="none"``, so BLEU counts the same units as distinct-n. 1: all samples alike.
- **repetition rate**: seq-rep-4 (Welleck et al., 2019): in each sample, the fraction of its 4-grams that
  repeat a 4-gram earlier in the same sample (1 - distinct 4-grams / 4-grams), averaged over the samples
  that have a 4-gram.
- **mean log-probability**: the mean over every drawn token of every sample (``<|endoftext|>`` included)
  of ``log p(token | context)`` under the model's raw distribution, before any sampler stage
  (temperature, top-k, ...), in nats per token.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from .generation import crop_prompt, prefill_rows, stepwise
from .model import GPT2, KVCache
from .sampling import SamplingParams, make_generator, process_logits
from .tokenizer import EOT_ID, get_tokenizer

# The settings a sweep tries, each with the other settings unchanged.
SWEEPS: dict[str, tuple[str, tuple[float, ...]]] = {
    "temperature": ("temperature", (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6)),
    "top_p": ("top_p", (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)),
}
REPETITION_N = 4  # seq-rep-4, as Welleck et al.


@dataclass
class Sample:
    """One continuation: its new token ids (ending with ``<|endoftext|>`` if it drew one), its text, and
    the raw log-probability of each of its tokens."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str  # "eos" or "length"

    @property
    def content_ids(self) -> list[int]:
        """The tokens of the text: without a final ``<|endoftext|>``."""
        return self.token_ids[:-1] if self.finish_reason == "eos" else self.token_ids


@dataclass
class Batch:
    """The samples of one setting (its ``params.seed`` is the seed they were drawn with)."""

    params: SamplingParams
    samples: list[Sample]
    notice: str | None = None  # the window slid past the context


@dataclass(frozen=True)
class Metrics:
    """How diverse, repetitive and likely a set of samples is (see the module's docstring). A metric that
    the samples cannot define (no bigrams, one sample for self-BLEU, no tokens) is None."""

    distinct_1: float | None
    distinct_2: float | None
    distinct_3: float | None
    self_bleu: float | None
    repetition_rate: float | None
    mean_logprob: float | None
    num_samples: int
    num_tokens: int


@stepwise
def _decode(model: GPT2, all_ids: torch.Tensor, n: int, cache: KVCache) -> tuple[torch.Tensor, bool]:
    """Logits ``(N, V)`` after the ``n`` tokens of every row: one cached step, or (context full) the last
    three quarters prefilled again into the emptied cache, as ``gpt2.generate`` does; and whether it slid."""
    block = model.config.block_size
    if cache.pos != block:
        return model(all_ids[:, n - 1 : n], cache, last_only=True)[:, -1].float(), False
    cache.reset()
    keep = block - block // 4
    return model(all_ids[:, n - keep : n], cache, last_only=True)[:, -1].float(), True


def _choose(processed: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> torch.Tensor:
    """One token per row of ``processed`` ``(N, V)``: the arg-max when greedy, else a draw by inverting each
    row's cumulative distribution at one uniform number per row. (``torch.multinomial`` does the same work
    ten times slower on a CPU, in float64: it dominated a batched step. In float32 a token's chance is off by
    at most the rounding of the running sum, about 1e-7 of the total; a removed token adds exactly 0 to the
    sum, so it is never drawn.)"""
    if params.greedy:
        return processed.argmax(dim=-1)
    cdf = processed.float().softmax(dim=-1).cumsum(dim=-1)
    u = torch.rand(cdf.size(0), 1, generator=gen, device=cdf.device) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=cdf.size(-1) - 1)  # the first cdf > u
    removed = torch.isneginf(processed.gather(1, token[:, None])[:, 0])  # u rounded up to the very top
    return torch.where(removed, processed.argmax(dim=-1), token) if bool(removed.any()) else token


@stepwise
def _draw(logits: torch.Tensor, context: torch.Tensor, params: SamplingParams,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's next token and its raw log-probability (before the sampler stages)."""
    token = _choose(process_logits(logits, context, params), params, gen)
    return token, logits.log_softmax(-1).gather(1, token[:, None])[:, 0]


@stepwise
def _run(model: GPT2, ids: list[int], params: SamplingParams, n: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor, bool]:
    """The batched decode loop: (new ids (n, T'), their log-probs, each row's length, whether it slid)."""
    T, P = params.max_new_tokens, len(ids)
    all_ids = torch.empty(n, P + T, dtype=torch.long, device=model.device)
    all_ids[:, :P] = torch.tensor(ids, device=model.device)
    logprobs = torch.zeros(n, T, device=model.device)
    lengths = torch.full((n,), T, dtype=torch.long, device=model.device)
    done = torch.zeros(n, dtype=torch.bool, device=model.device)
    gen = make_generator(params.seed, model.device)
    logits, cache = prefill_rows(model, ids, n, min(model.config.block_size, P + T))
    logits = logits.expand(n, -1)  # (n, V): every row starts from the same prompt
    slid, steps = False, T
    for i in range(T):
        token, logprobs[:, i] = _draw(logits, all_ids[:, : P + i], params, gen)
        all_ids[:, P + i] = token
        if params.stop_at_eos:
            ended = (token == EOT_ID) & ~done
            lengths[ended] = i + 1
            done |= ended
            if bool(done.all()):  # the step's one device sync
                steps = i + 1
                break
        if i + 1 < T:
            logits, moved = _decode(model, all_ids, P + i + 1, cache)
            slid = slid or moved
    return all_ids[:, P : P + steps], logprobs[:, :steps], lengths, slid


def sample_batch(model: GPT2, prompt_ids: Sequence[int], params: SamplingParams = SamplingParams(),
                 num_samples: int = 8) -> Batch:
    """``num_samples`` continuations of ``prompt_ids`` under ``params`` (its ``stop`` strings unused), drawn
    as one batch. A ``params.seed`` of None is replaced by a random one, kept on the result."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1; got {num_samples!r}")
    if params.seed is None:
        params = replace(params, seed=secrets.randbelow(2**63))  # not torch's global generator: no side effect
    ids, notice = crop_prompt(prompt_ids, model.config)
    new_ids, logprobs, lengths, slid = _run(model, ids, params, num_samples)
    if slid:
        keep = model.config.block_size - model.config.block_size // 4
        notice = f"Context full ({model.config.block_size} tokens): the model then saw only the last {keep}."
    tok, samples = get_tokenizer(), []
    for row, lps, length in zip(new_ids.tolist(), logprobs.tolist(), lengths.tolist(), strict=True):
        row, lps = row[:length], lps[:length]
        reason = "eos" if params.stop_at_eos and row[-1] == EOT_ID else "length"
        text = tok.decode(row[:-1] if reason == "eos" else row)
        samples.append(Sample(row, text, lps, reason))
    return Batch(params, samples, notice)


def sweep_settings(params: SamplingParams, sweep: str) -> list[SamplingParams]:
    """The settings of a sweep (``"none"``: none; ``"temperature"``, ``"top_p"``: see ``SWEEPS``)."""
    if sweep == "none":
        return []
    if sweep not in SWEEPS:
        raise ValueError(f"sweep must be one of 'none', {', '.join(map(repr, SWEEPS))}; got {sweep!r}")
    name, values = SWEEPS[sweep]
    return [replace(params, **{name: v}) for v in values]


def sample_sweep(model: GPT2, prompt_ids: Sequence[int], params: SamplingParams, num_samples: int,
                 sweep: str = "none") -> Iterator[Batch]:
    """The batch of ``params`` itself, then one per sweep setting, all with the same seed (a random one
    when ``params.seed`` is None), so the settings are compared on the same random numbers."""
    first = sample_batch(model, prompt_ids, params, num_samples)
    yield first
    for setting in sweep_settings(first.params, sweep):
        yield sample_batch(model, prompt_ids, setting, num_samples)


# ---------------------------------------------------------------- metrics


def _ngrams(seq: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float | None:
    """Distinct n-grams / n-grams, over all ``samples`` pooled (None: no n-gram at all)."""
    grams = [g for s in samples for g in _ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else None


def self_bleu(samples: Sequence[Sequence[int]]) -> float | None:
    """The mean sentence BLEU (0..1) of each sample against the others (None: fewer than two samples)."""
    if len(samples) < 2:
        return None
    from sacrebleu.metrics import BLEU  # only the diversity analysis needs it

    bleu = BLEU(tokenize="none", effective_order=True)  # as ``sacrebleu.sentence_bleu``
    texts = [" ".join(map(str, s)) for s in samples]
    scores = [bleu.sentence_score(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)]
    return sum(scores) / len(scores) / 100


def repetition_rate(samples: Sequence[Sequence[int]], n: int = REPETITION_N) -> float | None:
    """seq-rep-n: per sample, the fraction of its n-grams that repeat one earlier in it, averaged over the
    samples with an n-gram (None: none has one)."""
    rates = [1 - len(set(g)) / len(g) for g in (_ngrams(s, n) for s in samples) if g]
    return sum(rates) / len(rates) if rates else None


def mean_logprob(logprobs: Sequence[Sequence[float]]) -> float | None:
    """The mean log-probability per token over every token of every sample (None: no tokens)."""
    flat = [x for lps in logprobs for x in lps]
    return math.fsum(flat) / len(flat) if flat else None


def metrics(samples: Sequence[Sample]) -> Metrics:
    """Every metric of a set of samples."""
    content = [s.content_ids for s in samples]
    return Metrics(
        distinct_1=distinct_n(content, 1),
        distinct_2=distinct_n(content, 2),
        distinct_3=distinct_n(content, 3),
        self_bleu=self_bleu(content),
        repetition_rate=repetition_rate(content),
        mean_logprob=mean_logprob([s.logprobs for s in samples]),
        num_samples=len(samples),
        num_tokens=sum(len(s.token_ids) for s in samples),
    )
