"""Pretraining and fine-tuning of the ``gpt2`` model: a command line and a Python API.

Command line (``python -m training --help``)::

    python -m training pretrain --data input.txt --out runs/mini --steps 1000 --max-time 30m
    python -m training finetune --model gpt2 --data poems.txt --out checkpoints/my-poet --steps 300
    python -m training finetune --model gpt2 --data qa.jsonl --out runs/qa-lora --lora-rank 8
    python -m training resume runs/mini --steps 2000
    torchrun --nproc_per_node 2 -m training pretrain ...      # data-parallel (NCCL on GPUs, gloo on CPU)

``--max-time 30m`` stops in time (keeping the best model); ``--time-schedule`` also fits the cosine to that
budget. Evaluations report validation loss, top-1 next-token accuracy and perplexity (``training.metrics``);
``--test-split 0.1`` holds out a test share on which the best model is evaluated once, at the end. Each
session writes a text log ``training_YYYYMMDD_HHMMSS.log`` in the run directory. ``pretrain --compact-vocab``
trains only the token types the data uses (exact; several times faster on small corpora, see
``training.vocab``). ``checkpoints/shakespeare-small/README.md`` shows a
complete run.

Python API. Runs on disk (what the CLI calls), each a generator of ``StepRecord``s::

    records = training.finetune("gpt2", "poems.txt", "runs/poet", train=TrainConfig(steps=300, lr=1e-4),
                                lora=LoRAConfig(rank=8), stop_event=event)   # lora=None: full
    records = training.pretrain("input.txt", "runs/mini", model_config=GPTConfig.preset("small"))
    records = training.resume("runs/mini")
    for rec in records:            # rec.step, rec.train_loss, rec.val_loss, rec.val_accuracy, rec.val_perplexity,
        ...                        # rec.lr, rec.tokens_per_s, rec.elapsed_s, rec.eta_s; on the last one
                                   # rec.stop_reason (and rec.test_loss, test_accuracy, test_perplexity)

In memory (no files), e.g. one adapter per user on one shared base model::

    data = training.prepare_data("poems.txt", block_size=256)   # raises DataError with a clear message
    install_lora(base)                                           # once; idempotent; freezes the base
    adapter = LoRAAdapter(base, LoRAConfig(rank=8))              # per user: small, cheap, dropped by GC
    for rec in training.train(base, data, TrainConfig(steps=200, lr=1e-3), adapter=adapter, stop_event=ev):
        ...                                                      # base weights and eval mode untouched
    steps = with_adapter(gpt2.generate(base, ids, params), adapter)  # stream with the adapter applied
    merged = merge_lora(base, adapter)                           # a new GPT2 for export
    save_adapter(adapter, "my-adapter")                          # adapter_model.safetensors + json

``training.train(model, data, config)`` without an adapter trains ``model`` itself (copy a shared one
first). A generator may be resumed on any thread: no grad-mode or autocast context, and no adapter
context, is held across a ``yield``.

Data formats: ``.txt``; ``.csv``/``.tsv`` (``column``, default ``text``); ``.jsonl`` with ``{"text"}``
records or ``{"instruction", "input", "output"}`` records in ``gpt2.prompts``' template, the loss masked
on the prompt. See ``training.data``. Run directory layout: see ``training.run``.
"""

from .data import DataError, PreparedData, collate, prepare_data
from .lora import (
    LoRAAdapter,
    LoRAConfig,
    LoRALinear,
    LoRAModel,
    install_lora,
    load_adapter,
    merge_lora,
    save_adapter,
    use_adapter,
    with_adapter,
)
from .run import RunArgs, finetune, pretrain, resume
from .trainer import StepRecord, TrainConfig, Trainer, lr_at, train

__all__ = [
    "DataError", "PreparedData", "collate", "prepare_data",
    "LoRAAdapter", "LoRAConfig", "LoRALinear", "LoRAModel", "install_lora", "load_adapter", "merge_lora",
    "save_adapter", "use_adapter", "with_adapter",
    "RunArgs", "finetune", "pretrain", "resume",
    "StepRecord", "Trainer", "TrainConfig", "lr_at", "train",
]
