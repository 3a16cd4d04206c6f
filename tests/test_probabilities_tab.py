"""ui.probabilities_tab: sampler stages from kept logits, the recompute path, text analysis, LoRA, API."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import random_model

import gpt2
from gpt2.inspection import score
from training.lora import LoRAAdapter, LoRAConfig, install_lora
from ui import probabilities_tab as pt
from ui.context import AppContext
from ui.figures import _gltr_bucket
from ui.generate_tab import stream
from ui.models import ModelStore, catalog
from ui.session import GenerationRecord, Session

LONG_PROMPT = "hello" + " hello" * 59  # 60 tokens: a 12-token generation slides the tiny model's 64-token window


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    model = random_model(gpt2.GPTConfig.preset("tiny"), seed=1)
    with torch.no_grad():  # peaked predictions, like a trained model's (random init is near uniform)
        model.transformer.wte.weight.mul_(20)
    return str(model.save_pretrained(tmp_path_factory.mktemp("prob") / "tiny"))


def make_ctx(model_dir: str) -> AppContext:
    """As app.make_context does, with its own store (so a test may change its model)."""
    return AppContext(ModelStore(catalog(extra=model_dir)), default_key=model_dir)


@pytest.fixture(scope="module")
def ctx(model_dir) -> AppContext:
    return make_ctx(model_dir)


def run(ctx: AppContext, session: Session, prompt: str = "The meaning of life is", **params) -> GenerationRecord:
    """Drive the Generate tab's stream to the end; returns the record it kept."""
    params = {"max_new_tokens": 8, "seed": 0, "stop_at_eos": False, **params}
    for _ in stream(ctx, session, prompt, gpt2.SamplingParams(**params)):
        pass
    return session.records[-1]


def no_model(*args, **kwargs):
    raise AssertionError("the model must not be called")


@dataclass
class Generated:
    """One session's records, oldest first: ``slid`` (its window slid past the context; its logits were
    dropped when the next two came), ``greedy`` and ``sampled``."""

    session: Session
    slid: GenerationRecord
    slid_logits: list[np.ndarray]  # its kept logits before they were dropped
    greedy: GenerationRecord
    sampled: GenerationRecord


@pytest.fixture(scope="module")
def gens(ctx) -> Generated:
    session = ctx.new_session()
    slid = run(ctx, session, LONG_PROMPT, max_new_tokens=12, temperature=1.0)
    slid_logits = [d.logits.astype(np.float32) for d in slid.steps]
    greedy = run(ctx, session, max_new_tokens=6, temperature=0.0, repetition_penalty=1.5)
    sampled = run(ctx, session, max_new_tokens=6, temperature=0.9, top_k=8, top_p=0.9, repetition_penalty=1.2)
    return Generated(session, slid, slid_logits, greedy, sampled)


def test_errors_say_what_to_do(ctx, gens):
    session = ctx.new_session()
    with pytest.raises(gr.Error, match="generate some text"):
        pt.show_step(ctx, session, None, 0, 0.8, 40, 1.0, 1.0)
    with pytest.raises(gr.Error, match="Enter a text"):
        pt.text_probabilities(ctx, session, "")
    with pytest.raises(gr.Error, match="no longer kept"):
        pt.get_record(gens.session, gens.sampled.id + 1000)
    with pytest.raises(gr.Error, match="from 0 to 5"):
        pt.show_step(ctx, gens.session, gens.sampled.id, 6, None, None, None, None)
    with pytest.raises(gr.Error, match="top_k must be a whole number"):
        pt.show_step(ctx, gens.session, gens.sampled.id, 0, 0.8, 2.5, 1.0, 1.0)


def test_record_choices_newest_first_and_picker_updates(ctx, gens):
    assert pt.refresh_picker(None, ctx.new_session())["value"] is None
    assert pt.record_choices(gens.session) == [(r.label, r.id) for r in (gens.sampled, gens.greedy, gens.slid)]
    assert pt.refresh_picker(gens.slid.id, gens.session)["value"] == gens.slid.id  # keeps the user's pick
    assert pt.refresh_picker(None, gens.session)["value"] == gens.sampled.id
    assert pt.select_latest(gens.session)["value"] == gens.sampled.id
    assert pt.get_record(gens.session, None) is gens.sampled
    assert pt.get_record(gens.session, str(gens.greedy.id)) is gens.greedy  # a typed custom value is text
    prompt_and_generated = gpt2.get_tokenizer().decode(gens.greedy.prompt_ids + gens.greedy.token_ids)
    assert pt.generation_text(gens.session, gens.greedy.id) == prompt_and_generated


def test_greedy_chosen_token_is_the_processed_argmax(gens):
    record = gens.greedy
    for step in range(len(record.token_ids)):
        labels, probs, chosen = pt.step_stages(record, step, record.params)
        assert list(probs) == list(gpt2.sampling.STAGES)
        assert len(labels) in (pt.TOP_K, pt.TOP_K + 1)
        assert labels[chosen] == gpt2.token_display([record.token_ids[step]])[0]
        assert int(np.argmax(probs["top-p"])) == chosen and probs["top-p"][chosen] == pytest.approx(1.0)
        assert np.all(np.diff(probs["raw"][: pt.TOP_K]) <= 0)  # ordered by raw probability


def test_sampled_chosen_token_has_its_generation_probability(ctx, gens):
    record = gens.sampled
    model = ctx.store.get(record.model_key)
    for step, details in enumerate(record.steps):
        _, probs, chosen = pt.step_stages(record, step, record.params)
        assert probs["top-p"][chosen] > 0
        assert probs["raw"][chosen] == pytest.approx(details.chosen_raw_prob, abs=2e-3)  # kept logits are fp16
        # from fp32 logits the stages give exactly what the sampler drew from (fp16 can move a top-p cut)
        logits = pt.next_logits(model, pt.step_window(record, step, model.config.block_size))
        exact = pt.step_stages(record, step, record.params, logits=logits)[1]
        assert exact["top-p"][chosen] == pytest.approx(details.chosen_prob, rel=1e-4)


def test_stages_are_softmax_of_sampler_stages(gens):
    record, step = gens.sampled, 4
    params = gpt2.SamplingParams(temperature=1.3, top_k=20, top_p=0.5, repetition_penalty=0.8)
    labels, probs, chosen = pt.step_stages(record, step, params, k=6)
    logits = torch.from_numpy(record.steps[step].logits.astype(np.float32))
    seen = torch.tensor(record.prompt_ids + record.token_ids[:step])
    expected = {name: x.softmax(-1) for name, x in gpt2.sampler_stages(logits, seen, params)}
    ids = expected["raw"].topk(6).indices.tolist()
    if record.token_ids[step] not in ids:
        ids.append(record.token_ids[step])
    assert labels == gpt2.token_display(ids) and chosen == ids.index(record.token_ids[step])
    for name, p in expected.items():
        np.testing.assert_allclose(probs[name], p[ids].numpy(), rtol=1e-6, atol=1e-9)


def test_moving_a_slider_reruns_only_the_sampler(ctx, gens, monkeypatch):
    record = gens.sampled
    monkeypatch.setattr(ctx.store.get(record.model_key), "forward", no_model)
    loose = gpt2.SamplingParams(temperature=0.9, top_k=0, repetition_penalty=1.2)
    before = pt.step_stages(record, 2, loose)[1]
    after = pt.step_stages(record, 2, gpt2.SamplingParams(temperature=0.9, top_k=3, repetition_penalty=1.2))[1]
    for stage in ("raw", "repetition penalty", "temperature"):
        np.testing.assert_array_equal(before[stage], after[stage])
    assert (after["top-k"] > 0).sum() == 3 < (before["top-k"] > 0).sum()
    assert not np.allclose(before["top-p"], after["top-p"])
    fig, summary, kept = pt.show_step(ctx, gens.session, record.id, 2, 0.9, 3, 1.0, 1.2)
    assert kept is None and "run again" not in summary and "Step 2" in summary
    np.testing.assert_allclose(fig.data[3].x, after["top-k"])  # the figure's top-k trace


def test_dropped_logits_are_recomputed_in_the_steps_window(ctx, gens, monkeypatch):
    record = gens.slid
    assert any(d.window_start > 0 for d in record.steps)  # the window slid: the recompute must follow it
    assert all(d.logits is None for d in record.steps)  # dropped when two newer records came
    with pytest.raises(ValueError, match="no kept logits"):
        pt.step_stages(record, 0, record.params)
    model = ctx.store.get(record.model_key)
    for step in (0, 3, 4, 11):
        logits = pt.next_logits(model, pt.step_window(record, step, model.config.block_size))
        np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1),
                                   torch.from_numpy(gens.slid_logits[step]).softmax(-1), atol=2e-3)
    _, summary, kept = pt.show_step(ctx, gens.session, record.id, 11, None, None, None, None)
    assert "run again" in summary and (kept.record_id, kept.step) == (record.id, 11)
    monkeypatch.setattr(model, "forward", no_model)  # the next slider move re-uses the recomputed logits
    _, summary, kept_again = pt.show_step(ctx, gens.session, record.id, 11, 0.5, 5, 1.0, 1.0, kept)
    assert kept_again is kept and "run again" not in summary


def test_text_probabilities(ctx):
    session = ctx.new_session()
    model = ctx.store.get(session.model_key)
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer " * 3
    ids = gpt2.encode(text)[-model.config.block_size :]  # cropped to the context, with a notice
    highlights, summary, surprisal, lens = pt.text_probabilities(ctx, session, text)
    expected = score(model, ids)
    assert f"Perplexity {expected.perplexity:.2f}" in summary and f"{len(ids)} tokens" in summary
    assert "cropped to its last 64 tokens" in summary
    assert "".join(piece for piece, _ in highlights) == gpt2.get_tokenizer().decode(ids)
    assert [bucket for _, bucket in highlights] == [_gltr_bucket(int(r)) for r in expected.ranks]
    assert len({bucket for _, bucket in highlights}) > 1  # the test would be weak on one colour
    np.testing.assert_allclose(surprisal.data[0].y, -expected.logprobs, rtol=1e-5)
    np.testing.assert_allclose(surprisal.data[1].y, expected.entropies, rtol=1e-5)
    n_rows = model.config.n_layer + 1
    assert np.asarray(lens.data[0].z).shape == (n_rows, pt.LENS_TOKENS)
    assert f"last {pt.LENS_TOKENS} tokens" in summary
    short = pt.text_probabilities(ctx, session, "Hello there")
    assert np.asarray(short[3].data[0].z).shape == (n_rows, 2) and "logit lens shows" not in short[1]


def test_lora_session_differs_and_leaves_the_base_alone(model_dir):
    ctx = make_ctx(model_dir)  # its own store: installing LoRA changes this model object
    base_session, tuned = ctx.new_session(), ctx.new_session()
    text = "The quick brown fox jumps over the lazy dog."
    before = pt.text_probabilities(ctx, base_session, text)[2].data[0].y
    base = ctx.store.get(tuned.model_key)
    install_lora(base)
    adapter = LoRAAdapter(base, LoRAConfig(rank=4), seed=0)
    with torch.no_grad():
        for b in adapter.lora_B.values():
            b.normal_(0, 0.5)
    tuned.adapter, tuned.adapter_base, tuned.use_finetuned = adapter, tuned.model_key, True
    tuned_surprisal = pt.text_probabilities(ctx, tuned, text)
    assert not np.allclose(tuned_surprisal[2].data[0].y, before, atol=1e-3)
    assert "fine-tuned" in tuned_surprisal[1]
    np.testing.assert_array_equal(pt.text_probabilities(ctx, base_session, text)[2].data[0].y, before)
    # a fine-tuned generation whose logits were dropped is recomputed with its adapter
    record = run(ctx, tuned, max_new_tokens=3, temperature=1.0)
    kept_logits = record.steps[2].logits.astype(np.float32)
    record.steps[2].logits = None
    _, summary, kept = pt.show_step(ctx, tuned, record.id, 2, None, None, None, None)
    assert "run again" in summary
    np.testing.assert_allclose(torch.from_numpy(kept.logits).softmax(-1), torch.from_numpy(kept_logits).softmax(-1),
                               atol=2e-3)


def test_build_names_the_api_endpoints(ctx):
    with gr.Blocks() as demo:
        tab = pt.build(ctx, gr.State(None))
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert {"step_probabilities", "text_probabilities"} <= names
    assert isinstance(tab.record_picker, gr.Dropdown) and isinstance(tab.highlights, gr.HighlightedText)
