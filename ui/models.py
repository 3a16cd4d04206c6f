"""The models the playground offers, loaded once and shared by every session.

A request names a model only by its key in the catalogue, never by a path: the server decides which
directories exist (the bundled checkpoints, folders under ``checkpoints/`` and the one the operator
passed with ``--model``), so no user value ever reaches the filesystem.

Each model is offered in several precisions (``PRECISIONS``), and the store keeps one loaded model per
(model, precision), under the key ``"NAME (PRECISION)"``: the key is what sessions, jobs and records name
(and show), the picker still offers the plain names. A plain name means the model's default precision:
on a CPU int8 for the hub's GPT-2 sizes (the fastest there: a quarter of fp32's bytes read per token, and
it meets the fidelity bar, top-1 agreement >= 98 %), fp32 for the bundled and local checkpoints (tiny
models gain nothing, and their training figures are fp32); on a GPU the device's default dtype (bf16).
The operator may choose one for all (``GPT2_DEFAULT_PRECISION``, ``app.py --precision``).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

import gpt2
from gpt2.lora import install_lora
from gpt2.quant import check_supported
from gpt2.weights import CONFIG_FILE, HUB_MODELS, WEIGHTS_FILE, resolve_device_dtype, restore_interrupted_save

log = logging.getLogger(__name__)

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
BUNDLED = "shakespeare-small"  # the default: trained by training/, ships in checkpoints/ (see its README)
DEMOS = ("induction-demo",)  # also shipped: small models trained to show one mechanism (see their READMEs)
PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT = "default"  # a model's default precision (``ModelStore.default_precision``)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Entry:
    key: str  # what the picker sends back
    label: str  # what the picker shows
    source: str  # a directory or a hub id, for gpt2.GPT2.from_pretrained
    hub: bool = False  # downloaded from the hub (on a CPU its default precision is int8)


def catalog(extra: str | None = None) -> dict[str, Entry]:
    """Bundled and local checkpoints, the operator's ``extra`` model, then the GPT-2 hub sizes."""
    entries: dict[str, Entry] = {}
    if CHECKPOINTS.is_dir():
        for aside in CHECKPOINTS.glob(".*.old-*"):  # a save killed mid-swap set the checkpoint aside
            restore_interrupted_save(CHECKPOINTS / aside.name[1:].rpartition(".old-")[0])
        for d in sorted(CHECKPOINTS.iterdir(), key=lambda p: (p.name != BUNDLED, p.name not in DEMOS, p.name)):
            if d.name.startswith("."):  # hidden: e.g. a save's temporary directory, never a model
                continue
            if (d / CONFIG_FILE).is_file() and (d / WEIGHTS_FILE).is_file():
                tag = "bundled" if d.name == BUNDLED or d.name in DEMOS else "local"
                entries[d.name] = Entry(d.name, f"{d.name} ({tag})", str(d))
    if extra and key_for(entries, extra) is None and extra not in HUB_MODELS:
        entries[extra] = Entry(extra, f"{Path(extra).name or extra} (--model)", extra,
                               hub=not Path(extra).expanduser().is_dir())
    for name in HUB_MODELS:
        entries[name] = Entry(name, f"{name} (Hugging Face Hub)", name, hub=True)
    return entries


def key_for(entries: dict[str, Entry], model: str) -> str | None:
    """The catalogue key of ``model``: a key itself, or a directory that an entry already offers (however
    the path is written: ``checkpoints/NAME``, ``./checkpoints/NAME/``, absolute). None if not offered."""
    if model in entries:
        return model
    path = Path(model).expanduser()
    if not path.is_dir():
        return None
    return next((k for k, e in entries.items() if Path(e.source).is_dir() and Path(e.source).samefile(path)), None)


def entry_config(entry: Entry) -> gpt2.GPTConfig | None:
    """The shape of an offered model without loading it: a hub size's preset, or a checkpoint's
    ``config.json`` (None when neither is at hand: a hub id passed with ``--model``; nothing is downloaded)."""
    if entry.hub:
        return gpt2.PRESETS.get(entry.key) if entry.key in HUB_MODELS else None
    try:
        return gpt2.GPTConfig.from_hf(json.loads((Path(entry.source) / CONFIG_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def weight_bytes(config: gpt2.GPTConfig, precision: str, act_bytes: int = 4) -> int:
    """Bytes of a model's weights in ``precision``. int8 (``gpt2.quant``) keeps each matrix (the block
    projections and the tied embedding/head) at a byte a weight plus a scale per row (in the activations'
    dtype, and a bf16 copy for the kernel); the rest (biases, LayerNorms, positions) in ``act_bytes``."""
    params = config.num_params()
    if precision != "int8":
        return params * _DTYPES[precision].itemsize
    C = config.n_embd
    matrices = config.vocab_size * C + config.n_layer * 12 * C * C
    rows = config.vocab_size + config.n_layer * 9 * C
    return matrices + rows * (act_bytes + 2) + (params - matrices) * act_bytes


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes a loaded model holds (weights and buffers; a tensor shared by two modules counted once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in itertools.chain(model.parameters(), model.buffers())}
    return sum(storages.values())


def size_text(n: int) -> str:
    """``n`` bytes, as the header says it: 6.5 MB, 85 MB, 498 MB, 1.42 GB."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.0f} MB" if n >= 1e7 else f"{n / 1e6:.1f} MB"


def precision_text(model: gpt2.GPT2) -> str:
    """A loaded model's precision in words: ``fp32``, ``bf16``, ``int8 weights, fp32 activations``."""
    short = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    dtype = short.get(model.dtype, str(model.dtype).removeprefix("torch."))
    return f"{model.quantization} weights, {dtype} activations" if model.quantization else dtype


class ModelStore:
    """Thread-safe cache of loaded base models: each (model, precision) is loaded once, at most
    ``capacity`` are kept.

    Evicting only drops the store's reference; a session still generating with an evicted model keeps
    it alive until it finishes. ``precision``: the operator's default for every model (None: by model kind
    and device, see the module docstring).
    """

    def __init__(self, entries: dict[str, Entry], capacity: int = 2, device=None, precision: str | None = None) -> None:
        self.entries = entries
        self.capacity = capacity
        self.device = device
        if precision not in (None, "", DEFAULT, *PRECISIONS):
            raise ValueError(f"the default precision must be one of {', '.join((DEFAULT, *PRECISIONS))}, "
                             f"got {precision!r}")
        self.precision = precision if precision in PRECISIONS else None
        self._int8: bool | None = None  # whether this device has the int8 kernel (asked once, when needed)
        if self.precision == "int8" and "int8" not in self.precisions():
            raise ValueError(f"int8 weights are not supported on {self._device()} by this torch build: "
                             "choose fp32 or bf16 as the default precision")
        self._models: OrderedDict[str, gpt2.GPT2] = OrderedDict()
        self._new_locks()
        # ZeroGPU forks GPU workers from this process: a lock that another thread held at that moment
        # would stay held in the worker forever, so a worker starts with fresh ones.
        this = weakref.ref(self)

        def in_child() -> None:
            store = this()
            if store is not None:
                store._new_locks()

        os.register_at_fork(after_in_child=in_child)

    def _new_locks(self) -> None:
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def _device(self) -> torch.device:
        return resolve_device_dtype(self.device)[0]

    def precisions(self) -> tuple[str, ...]:
        """The precisions offered on this server's device: int8 only where torch has its kernel."""
        if self._int8 is None:
            try:
                check_supported(self._device())
                self._int8 = True
            except Exception:  # noqa: BLE001 - whatever the reason, int8 is then not offered here
                self._int8 = False
        return PRECISIONS if self._int8 else tuple(p for p in PRECISIONS if p != "int8")

    def default_precision(self, name: str) -> str:
        """The precision a plain model name means (see the module docstring)."""
        if self.precision is not None:
            return self.precision
        device, dtype = resolve_device_dtype(self.device)
        if device.type != "cpu":
            return "bf16" if dtype == torch.bfloat16 else "fp32"
        return "int8" if self.entries[name].hub and "int8" in self.precisions() else "fp32"

    def key(self, name: str, precision: str = DEFAULT) -> str:
        """The store key of an offered model in an offered precision (``DEFAULT``: the model's default)."""
        if name not in self.entries:
            raise KeyError(f"{name!r} is not one of the offered models")
        precision = self.default_precision(name) if precision == DEFAULT else precision
        if precision not in self.precisions():
            raise KeyError(f"precision {precision!r} is not offered here; choose one of {', '.join(self.precisions())}")
        return f"{name} ({precision})"

    def parse(self, key: str) -> tuple[str, str]:
        """``(name, precision)`` of a store key or a plain model name; ``KeyError`` if not offered."""
        if key in self.entries:
            return key, self.default_precision(key)
        name, _, rest = key.rpartition(" (")
        if name not in self.entries or rest[:-1] not in self.precisions() or not rest.endswith(")"):
            raise KeyError(f"{key!r} is not one of the offered models")
        return name, rest[:-1]

    def choices(self, name: str) -> list[tuple[str, str]]:
        """The precision picker for model ``name``: (label with the weights' memory, precision)."""
        config, default = entry_config(self.entries[name]), self.default_precision(name)
        act = 2 if self._device().type != "cpu" else 4  # int8's activations: the device's dtype
        choices = []
        for p in self.precisions():
            size = f" · {size_text(weight_bytes(config, p, act))}" if config is not None else ""
            choices.append((f"{p}{size}" + (" · default" if p == default else ""), p))
        return choices

    def get(self, key: str) -> gpt2.GPT2:
        """The model for a store key (or a plain name: its default precision); raises ``KeyError`` for
        keys not offered and ``gpt2.CheckpointError`` (with what to do) when it cannot be loaded."""
        name, precision = self.parse(key)
        key = self.key(name, precision)  # one model, however it was named
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one load per model even if many sessions ask at once
            with self._lock:
                if key in self._models:
                    return self._models[key]
            log.info("loading model %s", key)
            how = {"quantize": "int8"} if precision == "int8" else {"dtype": _DTYPES[precision]}
            model = gpt2.GPT2.from_pretrained(self.entries[name].source, device=self.device, **how)
            # Shared by every session: frozen, with LoRA slots installed now (before any concurrent use),
            # so a session's fine-tuning adds an adapter instead of changing the model.
            install_lora(model)
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.capacity:
                    evicted, _ = self._models.popitem(last=False)
                    log.info("unloaded model %s", evicted)
            return model

    def loaded(self, key: str) -> bool:
        """Whether the model ``key`` names is loaded now."""
        try:
            key = self.key(*self.parse(key))
        except KeyError:
            return False
        with self._lock:
            return key in self._models
