"""The training loop, as a generator of ``StepRecord``s (minGPT's callbacks, as data).

``Trainer(model, data, config).run(stop_event)`` yields one record per optimizer step; whoever drives
it (the CLI's progress bar, the app's plot, a test) decides what to show or save. It knows nothing
of files or UIs. Grad mode and autocast are thread-local and a generator may be resumed on another
thread at each ``yield``, so every step and every evaluation sets its own modes inside its own
function, and no context is held across a ``yield``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed as dist
from . import metrics
from .data import IGNORE_INDEX, Batch, MappedSplit, PreparedData, RecordSplit, StreamSplit
from .lora import LoRAModel
from .metrics import Metrics, cross_entropy_sum

log = logging.getLogger(__name__)
STOP_REASONS = ("done", "time", "stopped", "nan")  # why a run ended, on its last record


class StopEvent(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Batch sizes are per process: a step sees
    ``batch_size * grad_accum * world_size`` sequences."""

    steps: int = 1000  # optimizer steps in the whole run (the cosine ends here)
    batch_size: int = 8
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 6e-4  # peak learning rate, reached after warmup
    min_lr: float | None = None  # where the cosine ends; None: lr / 10
    warmup_steps: int = 0
    weight_decay: float = 0.1  # on matrices (dim >= 2) only, never on biases and LayerNorm gains
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    eval_interval: int = 100  # evaluate every N steps (and always at the end); 0: only at the end
    eval_batches: int = 20  # batches per evaluation, spread over the split; 0: the whole split
    max_time: float | None = None  # wall-clock budget in seconds for this session
    time_schedule: bool = False  # decay over max_time or steps, whichever ends first (not exactly resumable)
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 elsewhere), "fp32" or "bf16"
    compile: bool = False  # torch.compile the model for training
    seed: int = 1337  # the batches of step s depend only on (seed, rank, s)

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_interval", "eval_batches", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.max_time is not None and self.max_time <= 0:
            raise ValueError(f"max_time must be > 0 seconds, got {self.max_time}")
        if self.time_schedule and not self.max_time:
            raise ValueError("time_schedule needs max_time")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class StepRecord:
    """What happened in one optimizer step."""

    step: int  # optimizer steps done, 1-based
    steps: int  # planned total
    train_loss: float  # mean loss per supervised token of this step's batch (nats)
    lr: float
    grad_norm: float  # before clipping
    tokens: int  # tokens processed so far, all processes together
    tokens_per_s: float  # this step's throughput (evaluation excluded)
    elapsed_s: float  # wall-clock since the run began (earlier sessions of a resumed run included)
    eta_s: float  # estimated time to the end of the run (or of the time budget)
    val_loss: float | None = None  # when this step evaluated
    val_accuracy: float | None = None  # top-1 next-token accuracy on the validation split (training.metrics)
    val_perplexity: float | None = None  # exp(val_loss)
    best: bool = False  # this evaluation is the lowest validation loss so far
    test_loss: float | None = None  # on a session's last record, with a test split: the saved best model's
    test_accuracy: float | None = None  # metrics on it (training.run; evaluated once, at the end)
    test_perplexity: float | None = None
    stop_reason: str | None = None  # on the last record: one of STOP_REASONS
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: non-finite numbers become None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def lr_at(step: int, config: TrainConfig, time_fraction: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup from ``lr / warmup_steps`` to
    ``lr``, then a cosine from ``lr`` down to ``final_lr`` at ``steps``, or at ``time_fraction`` 1 (the
    share of the time budget used) if that comes first."""
    c = config
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    progress = min(1.0, max((step - c.warmup_steps) / max(1, c.steps - c.warmup_steps), time_fraction))
    return c.final_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.lr - c.final_lr)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad, with weight decay on matrices only; fused kernels
    on CPU and CUDA (one kernel for all tensors instead of a Python loop)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (is it frozen, e.g. by install_lora?)")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr,
                             betas=(config.beta1, config.beta2), fused=fused)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for plain fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def _step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the data sampler at a step: resuming needs no sampler state, and ranks differ."""
    return hash((seed, rank, step)) & (2**63 - 1)  # int/tuple hashing is not randomised per process


class Trainer:
    """Trains the parameters of ``model`` that require grad. ``model(idx)`` must return logits
    ``(B, T, vocab)`` (a ``GPT2``, or a ``LoRAModel`` for adapters). ``loss_fn(logits, targets)`` returns
    the summed loss; default: the model's own ``loss_sum`` if it has one, else cross-entropy (and its own
    ``correct_sum`` for the accuracy, see ``training.metrics``). Under ``torchrun`` it wraps the model in DDP."""

    def __init__(self, model: nn.Module, data: PreparedData, config: TrainConfig, loss_fn=None) -> None:
        self.model, self.data, self.config = model, data, config
        self.loss_fn = loss_fn or getattr(model, "loss_sum", cross_entropy_sum)
        for p in model.parameters():
            if p.requires_grad and not p.is_contiguous():  # gpt2.weights loads HF's Conv1D weights as
                p.data = p.data.contiguous()  # transposed views: a resumed run must compute like the original
        self.optimizer = make_optimizer(model, config)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.device = self.params[0].device
        self.dist = dist.current()
        self.amp_dtype = autocast_dtype(config.precision, self.device)
        self.module: nn.Module = model  # what train()/eval() and the forward pass go through
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = DistributedDataParallel(model, device_ids=ids)
        self.forward = torch.compile(self.module) if config.compile else self.module
        self.step = 0  # optimizer steps done
        self.tokens = 0
        self.elapsed = 0.0  # wall-clock of earlier sessions (resume)
        self.best_val = math.inf
        self.stop_reason: str | None = None
        self._session_start: float | None = None  # perf_counter() when run() began

    # -- one step, one evaluation: each sets its own grad mode and autocast ---------------------------

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _loss_sum(self, forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(forward(x), y)  # logits (B, T, vocab)

    def _batches(self) -> list[Batch]:
        gen = torch.Generator().manual_seed(_step_seed(self.config.seed, self.dist.rank, self.step))
        return [self.data.train.sample(self.config.batch_size, gen) for _ in range(self.config.grad_accum)]

    def backward(self, batches: list[Batch]) -> float:
        """Forward and backward over micro-batches, leaving the step's gradient in ``.grad``; returns the
        mean loss per supervised token.

        Each micro-batch's summed loss is divided by the label count of the whole step (all processes),
        so k micro-batches give exactly the gradient of one batch k times larger, padding or not.
        """
        n_labels = sum(int((y != IGNORE_INDEX).sum()) for _, y in batches)
        n_labels = max(1.0, dist.all_reduce_sum(torch.tensor([float(n_labels)], device=self.device)).item())
        scale = self.dist.world_size / n_labels  # DDP averages over processes; undo that
        total = torch.zeros((), device=self.device)
        self.module.train()
        with torch.enable_grad():
            for i, (x, y) in enumerate(batches):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                last = i == len(batches) - 1
                no_sync = self.module.no_sync() if self.dist.enabled and not last else contextlib.nullcontext()
                with no_sync:
                    with self._autocast():
                        loss = self._loss_sum(self.forward, x, y)
                    (loss * scale).backward()
                total += loss.detach().float()
        return dist.all_reduce_sum(total).item() / n_labels

    def train_step(self, lr: float) -> tuple[float, float, int]:
        """One optimizer step over ``grad_accum`` micro-batches: (loss, grad norm, tokens processed).
        A non-finite loss or gradient skips the update and returns NaN."""
        batches = self._batches()
        loss = self.backward(batches)
        norm = float("nan")
        if math.isfinite(loss):
            norm = float(nn.utils.clip_grad_norm_(self.params, self.config.grad_clip or math.inf))
        if math.isfinite(loss) and math.isfinite(norm):
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(x.numel() for x, _ in batches) * self.dist.world_size
        return (loss if math.isfinite(norm) else float("nan")), norm, tokens

    def evaluate(self, split: StreamSplit | RecordSplit | MappedSplit | None = None,
                 model: nn.Module | None = None) -> Metrics | None:
        """Loss, accuracy and perplexity over the validation batches (None without a split), in one forward
        pass per batch; or over another ``split``, or of another ``model`` (its own ``loss_sum``), with the
        same batch size, number of batches and precision."""
        split = self.data.val if split is None else split
        if split is None:
            return None
        loss_fn = self.loss_fn if model is None else None
        batches = split.eval_batches(self.config.batch_size, self.config.eval_batches, self.dist.rank,
                                     self.dist.world_size)
        with self._autocast():
            return metrics.evaluate(self.model if model is None else model, batches, self.device, loss_fn)

    # -- the loop ---------------------------------------------------------------------------------

    def _stop_reason(self, stop_event: StopEvent | None, session_s: float, step_s: float) -> str | None:
        """Why to stop after this step, agreed by all processes (or they would wait on each other)."""
        reason = None
        if self.step >= self.config.steps:
            reason = "done"
        elif stop_event is not None and stop_event.is_set():
            reason = "stopped"
        elif self.config.max_time and session_s + step_s > self.config.max_time:
            reason = "time"  # the next step would overrun the budget
        if self.dist.enabled:
            code = torch.tensor([STOP_REASONS.index(reason) + 1 if reason else 0], device=self.device)
            torch.distributed.all_reduce(code, op=torch.distributed.ReduceOp.MAX)
            reason = STOP_REASONS[int(code.item()) - 1] if code.item() else None
        return reason

    def _time_fraction(self, session_s: float) -> float:
        """Share of the time budget used, for ``time_schedule`` (rank 0's clock: all ranks need one lr)."""
        if not (self.config.time_schedule and self.config.max_time):
            return 0.0
        t = torch.tensor([session_s / self.config.max_time if self.dist.is_main else 0.0], device=self.device)
        return float(dist.all_reduce_sum(t).item())

    def run(self, stop_event: StopEvent | None = None) -> Iterator[StepRecord]:
        """Train until ``config.steps``, the time budget, ``stop_event`` or a NaN; one record per step.

        The last record carries ``stop_reason``. A stop request is seen after the step in progress.
        Runs are evaluated every ``eval_interval`` steps and at the end (not when stopped by request).
        """
        cfg = self.config
        start = self._session_start = time.perf_counter()
        step_s, eval_s = None, 0.0  # moving average of a step; last evaluation time
        try:
            while self.step < cfg.steps:
                lr = lr_at(self.step, cfg, self._time_fraction(time.perf_counter() - start))
                t0 = time.perf_counter()
                loss, norm, tokens = self.train_step(lr)
                dt = time.perf_counter() - t0
                step_s = dt if step_s is None else 0.9 * step_s + 0.1 * dt
                if not math.isfinite(loss):
                    self.stop_reason = "nan"
                    yield self._record(lr, loss, norm, tokens, dt, 0.0, stop_reason="nan",
                                       message=f"loss or gradient is not finite at step {self.step + 1}: stopped "
                                               "without applying it; try a lower learning rate")
                    return
                self.step += 1
                self.tokens += tokens
                reason = self._stop_reason(stop_event, time.perf_counter() - start, step_s)
                val, scores = None, {}
                interval = cfg.eval_interval and self.step % cfg.eval_interval == 0
                if reason in ("done", "time") or (reason is None and interval):
                    t1 = time.perf_counter()
                    result = self.evaluate()
                    eval_s = time.perf_counter() - t1
                    if result is not None:
                        val, scores = result.loss, dict(val_accuracy=result.accuracy,
                                                        val_perplexity=result.perplexity)
                best = val is not None and val < self.best_val
                self.best_val = min(self.best_val, val) if val is not None else self.best_val
                remaining = cfg.steps - self.step
                evals_left = remaining // cfg.eval_interval if cfg.eval_interval else 0
                eta = remaining * step_s + (evals_left + 1) * eval_s
                if cfg.max_time:
                    eta = min(eta, max(0.0, cfg.max_time - (time.perf_counter() - start)))
                self.stop_reason = reason
                yield self._record(lr, loss, norm, tokens, dt, 0.0 if reason else eta, val_loss=val,
                                   best=best, stop_reason=reason, **scores)
                if reason:
                    return
        finally:
            self.model.eval()  # leave the model ready for inference, even if the consumer stopped early

    def _record(self, lr, loss, norm, tokens, dt, eta, **kw) -> StepRecord:
        step = self.step if kw.get("stop_reason") != "nan" else self.step + 1
        return StepRecord(step=step, steps=self.config.steps, train_loss=loss, lr=lr, grad_norm=norm,
                          tokens=self.tokens, tokens_per_s=tokens / max(dt, 1e-9),
                          elapsed_s=self.elapsed + self._session_s(), eta_s=eta, **kw)

    # -- resume ------------------------------------------------------------------------------------

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Optimizer moments, torch's RNG and counters: tensors (for safetensors) and JSON metadata.

        The learning-rate schedule is a pure function of ``step`` and the sampler is seeded per step, so
        the step restores both.
        """
        opt = self.optimizer.state_dict()
        tensors = {f"optim.{i}.{k}": v.detach().to("cpu", copy=True).contiguous()
                   for i, st in opt["state"].items() for k, v in st.items()}
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {"step": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed + self._session_s(),
                "best_val": self.best_val if math.isfinite(self.best_val) else None,
                "param_groups": opt["param_groups"], "config": asdict(self.config)}
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], restore_rng: bool = True) -> None:
        """Restore ``state_dict()``'s output. ``restore_rng`` also sets torch's global RNG (dropout),
        which is process-wide: pass False when other work shares this process and seeding matters to it."""
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, t in tensors.items():
            if key.startswith("optim."):
                _, i, name = key.split(".", 2)
                state.setdefault(int(i), {})[name] = t
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.step, self.tokens, self.elapsed = meta["step"], meta["tokens"], meta["elapsed_s"]
        self.best_val = math.inf if meta["best_val"] is None else meta["best_val"]
        if restore_rng and self.dist.is_main:
            torch.set_rng_state(tensors["rng.torch"])
            if "rng.cuda" in tensors and self.device.type == "cuda":
                torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        elif restore_rng:  # only rank 0's state was saved; other ranks need their own streams
            torch.manual_seed(_step_seed(self.config.seed + 1, self.dist.rank, self.step))

    def _session_s(self) -> float:
        return 0.0 if self._session_start is None else time.perf_counter() - self._session_start


def train(model: nn.Module, data: PreparedData, config: TrainConfig, *, adapter=None,
          stop_event: StopEvent | None = None) -> Iterator[StepRecord]:
    """Train ``model`` in place, or with ``adapter`` (a ``LoRAAdapter``) only the adapter, leaving
    ``model`` (then a frozen, shareable base) untouched and in eval mode. Yields ``StepRecord``s."""
    if adapter is not None:
        model = LoRAModel(model, adapter)
    yield from Trainer(model, data, config).run(stop_event)
