"""The catalogue of offered models, their precisions and the shared store (``ui.models``)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_ctx

import app
import gpt2
from ui.logic import header
from ui.logic.generate import stream
from ui.models import BUNDLED, catalog, key_for, model_bytes, size_text, weight_bytes


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


# ---------------------------------------------------------------- precisions

# Parameter counts of the hub's GPT-2 sizes (their model cards): the picker's memory labels come from the
# presets, without a download.
HUB_PARAMS = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
              "gpt2-xl": 1_557_611_200, "distilgpt2": 81_912_576}


def labels(ctx, name: str) -> dict[str, str]:
    return {p: label for label, p in ctx.store.choices(name)}


def test_the_precision_picker_shows_each_precisions_memory_without_loading(ctx, offline):
    for name, params in HUB_PARAMS.items():
        shown = labels(ctx, name)
        assert list(shown) == ["fp32", "bf16", "int8"] and shown["int8"].endswith("· default")  # on a CPU
        assert shown["fp32"].startswith(f"fp32 · {size_text(4 * params)}")
        assert shown["bf16"].startswith(f"bf16 · {size_text(2 * params)}")
        int8 = weight_bytes(gpt2.PRESETS[name], "int8")
        assert params < int8 < 1.05 * params and shown["int8"].startswith(f"int8 · {size_text(int8)}")
    assert labels(ctx, "gpt2")["fp32"] == "fp32 · 498 MB" and labels(ctx, "gpt2-xl")["bf16"] == "bf16 · 3.12 GB"
    assert not any(ctx.store.loaded(name) for name in HUB_PARAMS)  # nothing was downloaded or loaded


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_memory_labels_are_what_the_loaded_models_hold(ctx, tiny_dir, precision):
    model = ctx.store.get(ctx.store.key(tiny_dir, precision))
    assert model_bytes(model) == weight_bytes(model.config, precision)
    assert labels(ctx, tiny_dir)[precision].startswith(f"{precision} · {size_text(model_bytes(model))}")


def test_default_precision_by_model_kind_on_a_cpu(ctx, tiny_dir, monkeypatch):
    """Hub models: int8 (the fastest on a CPU, within the fidelity bar); checkpoints: fp32. The operator
    may choose one precision for all, by environment variable or ``--precision``; a bad one stops the start."""
    store = ctx.store
    assert [store.default_precision(n) for n in HUB_PARAMS] == ["int8"] * len(HUB_PARAMS)
    assert store.default_precision(tiny_dir) == "fp32" and ctx.new_session().model_key == f"{tiny_dir} (fp32)"
    if BUNDLED in store.entries:
        assert store.default_precision(BUNDLED) == "fp32"
    assert catalog(extra="openai-community/gpt2")["openai-community/gpt2"].hub  # a hub id passed with --model
    monkeypatch.setenv("GPT2_DEFAULT_PRECISION", "bf16")
    assert {make_ctx(tiny_dir).store.default_precision(n) for n in ("gpt2", tiny_dir)} == {"bf16"}
    assert app.make_context(tiny_dir, precision="int8").new_session().model_key == f"{tiny_dir} (int8)"
    monkeypatch.setenv("GPT2_DEFAULT_PRECISION", "fp16")
    with pytest.raises(ValueError, match="precision must be one of default, fp32, bf16, int8, got 'fp16'"):
        make_ctx(tiny_dir)


def test_one_model_per_precision_however_it_is_named(ctx, tiny_dir):
    store = ctx.store
    plain, fp32, int8 = store.get(tiny_dir), store.get(f"{tiny_dir} (fp32)"), store.get(f"{tiny_dir} (int8)")
    assert plain is fp32 and int8 is not fp32 and int8.quantization == "int8" and fp32.quantization is None
    assert store.parse(tiny_dir) == (tiny_dir, "fp32") and store.parse(f"{tiny_dir} (int8)") == (tiny_dir, "int8")
    for key in (f"{tiny_dir} (fp16)", f"{tiny_dir} (default)", f"{tiny_dir} (int8", "/etc (fp32)", f"{tiny_dir}(int8)"):
        with pytest.raises(KeyError, match="not one of the offered models"):
            store.get(key)
    store.get(f"{tiny_dir} (bf16)")  # a third one: the least recently used (fp32) goes (capacity 2)
    assert store.loaded(f"{tiny_dir} (int8)") and not store.loaded(tiny_dir)


def test_two_sessions_on_two_precisions_of_one_model_do_not_interfere(ctx, tiny_dir):
    """Each session's generations come from its own precision's model, whatever the other one does."""
    a, b = ctx.new_session(), ctx.new_session()
    header.load_model(ctx, b, tiny_dir, "int8")
    params = gpt2.SamplingParams(temperature=0, max_new_tokens=6, stop_at_eos=False)
    ids = gpt2.encode("The cat sat")
    made = {}
    for session in (a, b, a, b):  # interleaved
        made.setdefault(session.model_key, []).append(list(stream(ctx, session, "The cat sat", params))[-1].record)
    for (key, (first, again)), quantize in zip(made.items(), (None, "int8"), strict=True):
        own = gpt2.GPT2.from_pretrained(tiny_dir, device="cpu", quantize=quantize)  # loaded apart from the app
        with torch.no_grad():
            probs = own(torch.tensor([ids]), last_only=True)[0, -1].softmax(-1)  # the path a prompt takes
        assert first.token_ids == again.token_ids == [s.token_id for s in gpt2.generate(own, ids, params)]
        np.testing.assert_allclose(first.steps[0].raw_probs, probs[first.steps[0].top_ids].numpy(), rtol=1e-4)
        assert f" · {key} · " in first.label  # the record names the precision too
    (fp32, _), (int8, _) = made.values()
    assert not np.allclose(fp32.steps[0].raw_probs, int8.steps[0].raw_probs)  # two different models
