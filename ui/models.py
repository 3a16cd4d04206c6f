"""The models the playground offers, loaded once and shared by every session.

A request names a model only by its key in the catalogue, never by a path: the server decides which
directories exist (the bundled checkpoints, folders under ``checkpoints/`` and the one the operator
passed with ``--model``), so no user value ever reaches the filesystem.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import gpt2
from gpt2.lora import install_lora
from gpt2.weights import CONFIG_FILE, HUB_MODELS, WEIGHTS_FILE, restore_interrupted_save

log = logging.getLogger(__name__)

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
BUNDLED = "shakespeare-small"  # trained by training/, ships in checkpoints/ (see its README)


@dataclass(frozen=True)
class Entry:
    key: str  # what the picker sends back
    label: str  # what the picker shows
    source: str  # a directory or a hub id, for gpt2.GPT2.from_pretrained


def catalog(extra: str | None = None) -> dict[str, Entry]:
    """Bundled and local checkpoints, the operator's ``extra`` model, then the GPT-2 hub sizes."""
    entries: dict[str, Entry] = {}
    if CHECKPOINTS.is_dir():
        for aside in CHECKPOINTS.glob(".*.old-*"):  # a save killed mid-swap set the checkpoint aside
            restore_interrupted_save(CHECKPOINTS / aside.name[1:].rpartition(".old-")[0])
        for d in sorted(CHECKPOINTS.iterdir(), key=lambda p: (p.name != BUNDLED, p.name)):
            if d.name.startswith("."):  # hidden: e.g. a save's temporary directory, never a model
                continue
            if (d / CONFIG_FILE).is_file() and (d / WEIGHTS_FILE).is_file():
                tag = "bundled" if d.name == BUNDLED else "local"
                entries[d.name] = Entry(d.name, f"{d.name} ({tag})", str(d))
    if extra and key_for(entries, extra) is None and extra not in HUB_MODELS:
        entries[extra] = Entry(extra, f"{Path(extra).name or extra} (--model)", extra)
    for name in HUB_MODELS:
        entries[name] = Entry(name, f"{name} (Hugging Face Hub)", name)
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


class ModelStore:
    """Thread-safe cache of loaded base models: each is loaded once, at most ``capacity`` are kept.

    Evicting only drops the store's reference; a session still generating with an evicted model keeps
    it alive until it finishes.
    """

    def __init__(self, entries: dict[str, Entry], capacity: int = 2, device=None, dtype=None) -> None:
        self.entries = entries
        self.capacity = capacity
        self.device, self.dtype = device, dtype
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

    def get(self, key: str) -> gpt2.GPT2:
        """The model for a catalogue key; raises ``KeyError`` for keys not in the catalogue and
        ``gpt2.CheckpointError`` (with what to do) when it cannot be loaded."""
        if key not in self.entries:
            raise KeyError(f"{key!r} is not one of the offered models")
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
            model = gpt2.GPT2.from_pretrained(self.entries[key].source, device=self.device, dtype=self.dtype)
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
        with self._lock:
            return key in self._models
