"""How long a fine-tuning run takes, and the default settings that finish within the server's time limit.

A training step on a CPU costs about ``batch × block × (SECONDS_PER_TOKEN + SECONDS_PER_PARAM_TOKEN ×
parameters)``: the matrix work grows with the parameters (the tied output layer included), the rest
(the cross-entropy over 50,257 token types, the optimizer, Python) does not. Timed with ``training.train``,
LoRA rank 8, on this repository's 2-core machine while other test runs shared it, so each timing is given
as fastest step / median step over several runs:

- the bundled ``shakespeare-small`` (7.3M parameters), batch 8 × block 64: 0.14-0.53 s / 0.20-1.79 s;
  batch 8 × block 32: 0.08-0.51 s / 0.11-0.69 s;
- a GPT-2 124M shape (``GPT2(GPTConfig.preset("gpt2"))``), batch 8 × block 64: 1.9-2.5 s / 2.7-7.6 s;
  batch 8 × block 32: 1.12 s / 1.40 s; full fine-tuning at 8 × 32: 1.65 s / 2.17 s.

A line through the calm timings (small: 0.25 s, 124M: 2.0 s at 8 × 64), rounded up, gives the constants
below. A user saw the 124M model (60 steps of 8 × 64) stop at step 17 on the 180 s limit, about 2.7x the
fastest steps, so the defaults plan for a third of the limit. On a GPU the estimate is pessimistic: the
defaults then finish early.
"""

from __future__ import annotations

from dataclasses import dataclass

# Learning rates measured at 60 steps of 8 x 64 tokens on the bundled model (validation loss on 89 kB of
# English prose, base 9.15): LoRA 3e-3 6.43, 5e-3 6.31, 1e-2 6.20 (unsteady), 3e-2 7.06 (diverges first);
# full 3e-4 5.99, 1e-3 4.56, 3e-3 4.60.
DEFAULT_LR = {"LoRA": 5e-3, "full": 1e-3}

SECONDS_PER_TOKEN = 2.8e-4  # per token of a step, whatever the model's size
SECONDS_PER_PARAM_TOKEN = 3.5e-11  # per token and parameter
FULL_COST = 1.5  # full fine-tuning step / LoRA step (124M: 1.6 s / 1.1 s)
WARM_STEPS = 3  # the first step allocates everything: about this many steps' time
EVALS = 5  # validation points in a run (and one at the end)
EVAL_BATCHES = 4  # batches per validation: a cheap, steady estimate
EVAL_COST = 0.4  # a validation batch (forward only) / a training step
BUDGET_SHARE = 1 / 3  # of the time limit, planned for the defaults: a busy CPU is up to 3x slower
MAX_DEFAULT_STEPS = 60  # the learning rates were measured at this many steps
MIN_DEFAULT_STEPS = 30  # fewer than this learns little: smaller steps first
# (batch, block) tried in turn: a model too big for MIN_DEFAULT_STEPS of one gets the next, smaller one
DEFAULT_SHAPES = ((8, 64), (8, 32), (8, 16), (4, 16), (2, 16), (1, 16))


@dataclass(frozen=True)
class Defaults:
    steps: int
    batch_size: int
    block_size: int


def eval_interval(steps: int) -> int:
    """Validate every this many steps: ``EVALS`` points on the loss plot."""
    return max(1, steps // EVALS)


def step_seconds(params: int, batch_size: int, block_size: int, mode: str = "LoRA") -> float:
    """Expected seconds of one training step on a CPU (see the module docstring)."""
    seconds = batch_size * block_size * (SECONDS_PER_TOKEN + SECONDS_PER_PARAM_TOKEN * params)
    return seconds * (FULL_COST if mode == "full" else 1.0)


def planned_seconds(params: int, steps: int, batch_size: int, block_size: int, mode: str = "LoRA") -> float:
    """Expected seconds of a run's training: its steps, the first step's setup and the validations."""
    evals = steps // eval_interval(steps) + 1
    return step_seconds(params, batch_size, block_size, mode) * (steps + WARM_STEPS + evals * EVAL_BATCHES * EVAL_COST)


def defaults(params: int, context: int, max_seconds: float, max_steps: int) -> Defaults:
    """LoRA settings that finish well within the server's ``max_seconds`` for a model of ``params``
    parameters: the biggest steps (block up to the context) that still allow ``MIN_DEFAULT_STEPS``, and
    at most the server's ``max_steps``."""
    budget = BUDGET_SHARE * max_seconds
    for batch, block in DEFAULT_SHAPES:
        block = min(block, context)
        steps = MAX_DEFAULT_STEPS
        while steps > 1 and planned_seconds(params, steps, batch, block) > budget:
            steps -= 1
        if steps >= MIN_DEFAULT_STEPS:
            break
    return Defaults(min(steps, max_steps), batch, block)


def steps_info(max_seconds: int, steps: int, batch_size: int, block_size: int) -> str:
    """The steps slider's note: the server's time limit and the settings planned to fit it."""
    return f"training stops after {max_seconds} s; {steps} steps of {batch_size} × {block_size} tokens fit this model"
