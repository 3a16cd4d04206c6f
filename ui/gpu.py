"""Where the model runs: in this process, or in a ZeroGPU worker on a Hugging Face Space.

On ZeroGPU hardware a GPU exists only inside functions decorated with ``spaces.GPU``, and ``spaces``
runs them in a forked worker process: the arguments, and the result or each yielded item, are pickled
across, and nothing the function changes in memory comes back. So every piece of model work in the app
is a *job*: a module-level function ``job(model, *args)`` of plain values (token ids, parameters) that
returns or yields plain CPU values (numpy arrays, lists, strings, records). The handlers name the model
with a picklable ``ModelRef`` and keep all session state in this process. ``Gpu.call``/``Gpu.iterate``
hand a job to ``spaces.GPU`` when the package is installed (a no-op off ZeroGPU) and run it directly
otherwise: one code path on a laptop, a CPU Space and ZeroGPU.

Out of GPU memory anywhere in a job becomes a message that says what to do; the app keeps serving.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

import gpt2
from gpt2.lora import LoRAAdapter, use_adapter, with_adapter
from gpt2.weights import resolve_device_dtype

from .inputs import UserError
from .models import ModelStore

try:  # present on Hugging Face Spaces; ``spaces.GPU`` returns the function unchanged off ZeroGPU hardware
    import spaces
except ImportError:
    spaces = None

log = logging.getLogger(__name__)

CALL_SECONDS = 60  # the GPU time a call asks ZeroGPU for, unless the caller says otherwise
OOM_MESSAGE = ("The GPU ran out of memory for this request. Try a shorter text, fewer new tokens, a smaller batch "
               "or block size, or a smaller model, then try again.")


def on_zero_gpu() -> bool:
    """Whether ``spaces.GPU`` runs jobs in ZeroGPU worker processes (``SPACES_ZERO_GPU`` on a Space)."""
    return spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


@dataclass(frozen=True)
class ModelRef:
    """Which model a job runs on: a catalogue key plus this session's fine-tuning, if any. Picklable: on
    ZeroGPU it travels to the worker with the job (an adapter is small; a full fine-tuned copy is not,
    which is one reason LoRA is the default)."""

    key: str
    adapter: LoRAAdapter | None = None  # applied to the shared base, for this job only
    model: gpt2.GPT2 | None = None  # a full fine-tuned copy, used instead of the base


@contextlib.contextmanager
def _oom_as_message() -> Iterator[None]:
    try:
        yield
    except torch.OutOfMemoryError:
        log.warning("out of GPU memory in a request; the app goes on")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the memory of the failed request back to the next one
        raise UserError(OOM_MESSAGE) from None


@dataclass(frozen=True)
class _Refused:
    """A job's ``UserError``, sent back as a value: ZeroGPU passes only ``gr.Error`` exceptions on from its
    worker (any other becomes a generic failure), and jobs know nothing of Gradio."""

    message: str


def _seconds(seconds: float, *args, **kwargs) -> float:
    """ZeroGPU's ``duration``: called with the job's arguments, whose first is the time to ask for."""
    return seconds


class Gpu:
    """Runs jobs on the shared models of ``store``, where the GPU is."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.remote = on_zero_gpu()  # jobs run in another process: results must be on the CPU
        gpu = spaces.GPU(duration=_seconds) if spaces is not None else (lambda f: f)
        self._call, self._iterate = gpu(self._run_call), gpu(self._run_iterate)

    def call(self, job: Callable, ref: ModelRef, *args, seconds: float = CALL_SECONDS):
        """``job(model, *args)`` with ``ref``'s model (and adapter active); its result."""
        return _raised(self._call(seconds, job, ref, *args))

    def iterate(self, job: Callable, ref: ModelRef, *args, seconds: float = CALL_SECONDS) -> Iterator:
        """``job(model, *args)``'s items as it yields them; closing this closes the job."""
        with contextlib.closing(self._iterate(seconds, job, ref, *args)) as items:
            for item in items:
                yield _raised(item)

    def resolve(self, ref: ModelRef) -> tuple[gpt2.GPT2, LoRAAdapter | None]:
        """The model and adapter a ``ModelRef`` names, on this process's device (moved there in place:
        once in this process, once per job in a ZeroGPU worker)."""
        if ref.model is not None:
            return ref.model.to(resolve_device_dtype(self.store.device)[0]), None
        try:
            model = self.store.get(ref.key)
        except (KeyError, gpt2.CheckpointError) as e:
            raise UserError(str(e)) from None
        return model, ref.adapter.to(model.device) if ref.adapter is not None else None

    def _run_call(self, seconds: float, job: Callable, ref: ModelRef, *args):
        try:
            with _oom_as_message():
                model, adapter = self.resolve(ref)
                with use_adapter(adapter):
                    return job(model, *args)
        except UserError as e:
            return _Refused(str(e))

    def _run_iterate(self, seconds: float, job: Callable, ref: ModelRef, *args) -> Iterator:
        try:
            with _oom_as_message():
                model, adapter = self.resolve(ref)
                with contextlib.closing(with_adapter(job(model, *args), adapter)) as items:
                    yield from items
        except UserError as e:
            yield _Refused(str(e))


def _raised(item):
    """A job's item, or its refusal raised again in this process."""
    if isinstance(item, _Refused):
        raise UserError(item.message)
    return item
