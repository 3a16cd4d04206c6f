"""The catalogue of offered models and the shared store (``ui.models``)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import make_ctx

import app
from ui.models import catalog, key_for


@pytest.fixture()
def ctx(tiny_dir):
    return make_ctx(tiny_dir)


def test_catalog_offers_hub_sizes_and_the_operator_model(tiny_dir):
    entries = catalog(extra=tiny_dir)
    assert {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"} <= set(entries)
    assert entries[tiny_dir].source == tiny_dir


def test_store_refuses_keys_outside_the_catalog_and_loads_once(ctx, tiny_dir):
    with pytest.raises(KeyError, match="not one of the offered models"):
        ctx.store.get("/etc")
    models = []
    threads = [threading.Thread(target=lambda: models.append(ctx.store.get(tiny_dir))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(m is models[0] for m in models) and not any(p.requires_grad for p in models[0].parameters())


def test_a_checkpoint_folder_is_listed_once_however_it_is_named(tmp_path, monkeypatch, tiny_model):
    """``python app.py --model checkpoints/NAME`` offers NAME once, as the default."""
    monkeypatch.setattr("ui.models.CHECKPOINTS", tmp_path / "checkpoints")
    folder = tiny_model.save_pretrained(tmp_path / "checkpoints" / "mine")
    monkeypatch.chdir(tmp_path)
    for spelling in ("checkpoints/mine", "./checkpoints/mine/", str(folder), "mine"):
        entries = catalog(extra=spelling)
        assert [k for k, e in entries.items() if Path(e.source).resolve() == folder.resolve()] == ["mine"]
        assert key_for(entries, spelling) == "mine"
        assert app.make_context(spelling).default_key == "mine"
