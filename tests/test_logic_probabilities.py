"""The Probabilities tab's logic (``ui.logic.probabilities``): sampler stages from kept logits, the
recompute path, following the latest generation, text analysis, LoRA, and the tab's API."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import drain, make_ctx, random_model

import gpt2
from gpt2.inspection import score
from gpt2.lora import LoRAAdapter, LoRAConfig, install_lora
from ui import figures
from ui.figures import _gltr_bucket
from ui.inputs import ADVANCED_OFF, LATEST, UserError
from ui.logic import probabilities as logic
from ui.logic import records
from ui.logic.generate import stream
from ui.session import MAX_RECORDS, GenerationRecord, Session
from ui.updates import KEEP

LONG_PROMPT = "hello" + " hello" * 59  # 60 tokens: a 12-token generation slides the tiny model's 64-token window
NO_SETTINGS = dict(temperature=None, top_k=None, top_p=None, repetition_penalty=None)  # the generation's own


def shown(outputs: tuple) -> dict:
    """``show_record``'s outputs (after the picker, for ``follow``/``open_latest``) by name."""
    return dict(zip(logic.SHOWN, outputs[len(outputs) - len(logic.SHOWN):], strict=True))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    model = random_model(gpt2.GPTConfig.preset("tiny"), seed=1)
    with torch.no_grad():  # peaked predictions, like a trained model's (random init is near uniform)
        model.transformer.wte.weight.mul_(20)
    return str(model.save_pretrained(tmp_path_factory.mktemp("prob") / "tiny"))


@pytest.fixture(scope="module")
def ctx(model_dir):
    return make_ctx(model_dir)


def run(ctx, session: Session, prompt: str = "The meaning of life is", **params) -> GenerationRecord:
    """Drive the Generate tab's stream to the end; returns the record it kept."""
    params = {"max_new_tokens": 8, "seed": 0, "stop_at_eos": False, **params}
    drain(stream(ctx, session, prompt, gpt2.SamplingParams(**params)))
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
    with pytest.raises(UserError, match="No generation yet"):
        logic.step_probabilities(ctx, session, None, 0, 0.8, 40, 1.0, 1.0)
    with pytest.raises(UserError, match="text is empty"):
        logic.text_probabilities(ctx, session, "")
    with pytest.raises(UserError, match="no longer kept"):
        logic.step_probabilities(ctx, gens.session, gens.sampled.id + 1000, 0, **NO_SETTINGS)
    with pytest.raises(UserError, match="step must be a whole number from 0 to 5"):
        logic.step_probabilities(ctx, gens.session, gens.sampled.id, 6, **NO_SETTINGS)
    with pytest.raises(UserError, match="top_k must be a whole number"):
        logic.step_probabilities(ctx, gens.session, gens.sampled.id, 0, 0.8, 2.5, 1.0, 1.0)
    # nothing to show yet is not an error when the tab opens: the step info says what to do
    outputs = logic.open_latest(ctx, session)
    out = shown(outputs)
    assert outputs[0]["value"] == LATEST and "No generation yet" in out["info"] and out["kept"] is None
    assert all(w is KEEP for name, w in out.items() if name not in ("info", "kept"))


def test_the_picker_follows_the_latest_unless_a_generation_was_chosen(ctx):
    session = ctx.new_session()
    first = run(ctx, session, max_new_tokens=3, temperature=0.7)
    outputs = logic.follow(ctx, session, LATEST)
    out = shown(outputs)
    assert outputs[0]["value"] == LATEST and outputs[0]["choices"] == records.choices(session)
    assert out["step"]["maximum"] == 2 and out["temperature"]["value"] == 0.7
    assert f"generation #{first.id}" in out["info"]
    newer = run(ctx, session, max_new_tokens=5, temperature=1.3, top_k=7, min_p=0.05)
    out = shown(logic.follow(ctx, session, LATEST))  # following the latest: the new one, its range and settings
    assert out["step"]["maximum"] == 4 and (out["temperature"]["value"], out["top_k"]["value"]) == (1.3, 7)
    assert out["min_p"]["value"] == 0.05 and out["typical_p"]["value"] == 1.0
    assert f"generation #{newer.id}" in out["info"] and out["candidates"].data
    assert out["token"]["choices"] and "none yet" in out["lineage"]
    run(ctx, session, max_new_tokens=2)
    outputs = logic.follow(ctx, session, first.id)  # the user's own choice stays (its tree is refreshed)
    out = shown(outputs)
    assert outputs[0]["value"] == first.id and out["family"]["value"] == first.id
    assert all(w is KEEP for name, w in out.items() if name not in ("kept", "lineage", "family"))
    for _ in range(MAX_RECORDS):
        run(ctx, session, max_new_tokens=2)
    outputs = logic.follow(ctx, session, first.id)  # ...while it is kept
    assert outputs[0]["value"] == LATEST and f"generation #{session.records[-1].id}" in shown(outputs)["info"]
    outputs = logic.open_latest(ctx, session)  # "Inspect probabilities ›"
    assert outputs[0]["value"] == LATEST and f"generation #{session.records[-1].id}" in shown(outputs)["info"]
    out = shown(logic.show_record(ctx, session, str(session.records[0].id)))  # a typed id is text
    assert out["step"]["value"] == 0 and f"**Step 0** of 2 (generation #{session.records[0].id})" in out["info"]


def test_reset_and_use_generation(ctx, gens):
    record = gens.sampled
    *settings, fig, info, kept = logic.reset(ctx, gens.session, record.id, 3)
    assert [u["value"] for u in settings] == [0.9, 8, 0.9, 1.2, 0.0, 1.0, 0.0, 0.0, 0]
    assert "**Step 3**" in info and kept is None
    text, *analysed = logic.use_generation(ctx, gens.session, gens.greedy.id)
    assert text == gpt2.get_tokenizer().decode(gens.greedy.prompt_ids + gens.greedy.token_ids)
    assert analysed[1] == logic.text_probabilities(ctx, gens.session, text)[1]


def test_greedy_chosen_token_is_the_processed_argmax(gens):
    record = gens.greedy
    for step in range(len(record.token_ids)):
        labels, probs, chosen = logic.step_stages(record, step, record.params)
        assert list(probs) == list(gpt2.sampling.STAGES)
        assert len(labels) in (logic.TOP_K, logic.TOP_K + 1)
        assert labels[chosen] == gpt2.token_display([record.token_ids[step]])[0]
        assert int(np.argmax(probs["top-p"])) == chosen and probs["top-p"][chosen] == pytest.approx(1.0)
        assert np.all(np.diff(probs["raw"][: logic.TOP_K]) <= 0)  # ordered by raw probability


def test_sampled_chosen_token_has_its_generation_probability(ctx, gens):
    record = gens.sampled
    model = ctx.store.get(record.model_key)
    for step, details in enumerate(record.steps):
        _, probs, chosen = logic.step_stages(record, step, record.params)
        assert probs["top-p"][chosen] > 0
        assert probs["raw"][chosen] == pytest.approx(details.chosen_raw_prob, abs=2e-3)  # kept logits are fp16
        # from fp32 logits the stages give exactly what the sampler drew from (fp16 can move a top-p cut)
        logits = logic.next_logits(model, logic.step_window(record, step, model.config.block_size))
        exact = logic.step_stages(record, step, record.params, logits=logits)[1]
        assert exact["top-p"][chosen] == pytest.approx(details.chosen_prob, rel=1e-4)


def test_stages_are_softmax_of_sampler_stages(gens):
    record, step = gens.sampled, 4
    params = gpt2.SamplingParams(temperature=1.3, top_k=20, top_p=0.5, repetition_penalty=0.8)
    labels, probs, chosen = logic.step_stages(record, step, params, k=6)
    logits = torch.from_numpy(record.steps[step].logits.astype(np.float32))
    seen = torch.tensor(record.prompt_ids + record.token_ids[:step])
    expected = {name: x.softmax(-1) for name, x in gpt2.sampler_stages(logits, seen, params)}
    ids = expected["raw"].topk(6).indices.tolist()
    if record.token_ids[step] not in ids:
        ids.append(record.token_ids[step])
    assert labels == gpt2.token_display(ids) and chosen == ids.index(record.token_ids[step])
    for name, p in expected.items():
        np.testing.assert_allclose(probs[name], p[ids].numpy(), rtol=1e-6, atol=1e-9)


def trace(fig, stage: str):
    """The figure's bars of one sampler stage (named "top-k · 3 kept", or "top-p (off)")."""
    return next(t for t in fig.data if t.name.split(" ·")[0].removesuffix(" (off)") == stage)


EVERY_STAGE = dict(temperature=0.7, top_k=30, top_p=0.95, repetition_penalty=1.3, min_p=0.01, typical_p=0.9,
                   epsilon_cutoff=0.0003, eta_cutoff=0.0005, no_repeat_ngram_size=2)


def test_every_stage_against_process_logits(gens):
    """The last stage is what the sampler draws from (``gpt2.process_logits``), each stage applies one
    processor to the one before, and the figure draws all of them in order."""
    record, step = gens.sampled, 5
    params = gpt2.SamplingParams(**EVERY_STAGE)
    logits = record.steps[step].logits.astype(np.float32)
    probs = logic.stage_probs(record, step, params, logits)
    assert list(probs) == list(gpt2.sampling.STAGES)
    context = logic.step_history(record, step)
    expected = gpt2.process_logits(torch.from_numpy(logits), context, params).softmax(-1)
    torch.testing.assert_close(probs["eta"], expected)
    counts = logic.kept_counts(probs)
    assert counts["raw"] == logits.size and counts["top-k"] <= 30
    filters = gpt2.sampling.STAGES[3:]  # from the temperature on, each stage only removes tokens
    assert all(counts[a] >= counts[b] for a, b in zip(filters, filters[1:], strict=False))
    assert logic.off_stages(params) == [] and logic.off_stages(gpt2.SamplingParams()) == list(gpt2.sampling.STAGES[1:])
    labels, shown_probs, chosen = logic.candidates(record, step, probs)
    fig = figures.candidates_bar(labels, shown_probs, chosen, kept=counts, off=[])
    assert [t.name for t in fig.data] == [f"{name} · {counts[name]:,} kept" for name in gpt2.sampling.STAGES]


def test_the_new_stage_sliders_change_the_figure_without_the_model(ctx, gens, monkeypatch):
    record = gens.sampled
    monkeypatch.setattr(ctx.store.get(record.model_key), "forward", no_model)
    own, own_info, _ = logic.step_probabilities(ctx, gens.session, record.id, 4, **NO_SETTINGS)
    for stage in ("min-p", "typical", "epsilon", "eta", "no-repeat n-gram"):  # off in the generation's settings
        assert trace(own, stage).visible == "legendonly" and trace(own, stage).name == f"{stage} (off)"
        assert f"{stage} off" in own_info
    assert trace(own, "top-k").visible is True and "top-k **8**" in own_info
    for name, value, stage in (("min_p", 0.3, "min-p"), ("typical_p", 0.3, "typical"),
                               ("epsilon_cutoff", 0.2, "epsilon"), ("eta_cutoff", 0.2, "eta"),
                               ("no_repeat_ngram_size", 1, "no-repeat n-gram")):
        fig, info, _ = logic.step_probabilities(ctx, gens.session, record.id, 4, **{**NO_SETTINGS, name: value})
        bars = trace(fig, stage)
        assert bars.visible is True and "kept" in bars.name and f"{stage} off" not in info
        before = gpt2.sampling.STAGES[gpt2.sampling.STAGES.index(stage) - 1]
        assert (np.asarray(bars.x) > 0).sum() < (np.asarray(trace(fig, before).x) > 0).sum(), stage  # it cut some
        assert not np.allclose(trace(fig, "eta").x, trace(own, "eta").x)  # and the final distribution moved
    with pytest.raises(UserError, match="typical_p must be a number above 0"):
        logic.step_probabilities(ctx, gens.session, record.id, 4, **NO_SETTINGS, typical_p=0)
    with pytest.raises(UserError, match="no_repeat_ngram_size must be a whole number"):
        logic.step_probabilities(ctx, gens.session, record.id, 4, **NO_SETTINGS, no_repeat_ngram_size=1.5)


def test_an_empty_prompt_read_end_of_text(ctx):
    session = ctx.new_session()
    record = run(ctx, session, "", max_new_tokens=3, repetition_penalty=1.5)
    assert record.prompt_ids == [] and logic.step_history(record, 2) == [gpt2.EOT_ID, *record.token_ids[:2]]
    model = ctx.store.get(record.model_key)
    logits = logic.next_logits(model, logic.step_window(record, 2, model.config.block_size))
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1),
                               torch.from_numpy(record.steps[2].logits.astype(np.float32)).softmax(-1), atol=2e-3)


def test_moving_a_slider_reruns_only_the_sampler(ctx, gens, monkeypatch):
    record = gens.sampled
    monkeypatch.setattr(ctx.store.get(record.model_key), "forward", no_model)
    loose = gpt2.SamplingParams(temperature=0.9, top_k=0, repetition_penalty=1.2)
    before = logic.step_stages(record, 2, loose)[1]
    after = logic.step_stages(record, 2, gpt2.SamplingParams(temperature=0.9, top_k=3, repetition_penalty=1.2))[1]
    for stage in ("raw", "repetition penalty", "temperature"):
        np.testing.assert_array_equal(before[stage], after[stage])
    assert (after["top-k"] > 0).sum() == 3 < (before["top-k"] > 0).sum()
    assert not np.allclose(before["top-p"], after["top-p"])
    fig, summary, kept = logic.step_probabilities(ctx, gens.session, record.id, 2, 0.9, 3, 1.0, 1.2)
    assert kept is None and "run again" not in summary and "Step 2" in summary
    np.testing.assert_allclose(trace(fig, "top-k").x, after["top-k"])  # the figure's top-k trace
    assert trace(fig, "top-k").name == "top-k · 3 kept"


def test_dropped_logits_are_recomputed_in_the_steps_window(ctx, gens, monkeypatch):
    record = gens.slid
    assert any(d.window_start > 0 for d in record.steps)  # the window slid: the recompute must follow it
    assert all(d.logits is None for d in record.steps)  # dropped when two newer records came
    with pytest.raises(ValueError, match="no kept logits"):
        logic.step_stages(record, 0, record.params)
    model = ctx.store.get(record.model_key)
    for step in (0, 3, 4, 11):
        logits = logic.next_logits(model, logic.step_window(record, step, model.config.block_size))
        np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1),
                                   torch.from_numpy(gens.slid_logits[step]).softmax(-1), atol=2e-3)
    _, summary, kept = logic.step_probabilities(ctx, gens.session, record.id, 11, **NO_SETTINGS)
    assert "run again" in summary and (kept.record_id, kept.step) == (record.id, 11)
    monkeypatch.setattr(model, "forward", no_model)  # the next slider move re-uses the recomputed logits
    _, summary, kept_again = logic.step_probabilities(ctx, gens.session, record.id, 11, 0.5, 5, 1.0, 1.0, kept=kept)
    assert kept_again is kept and "run again" not in summary


def test_text_probabilities(ctx):
    session = ctx.new_session()
    model = ctx.store.get(session.model_key)
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer " * 3
    ids = gpt2.encode(text)[-model.config.block_size :]  # cropped to the context, with a notice
    highlights, summary, surprisal, lens = logic.text_probabilities(ctx, session, text)
    expected = score(model, ids)
    assert f"Perplexity {expected.perplexity:.2f}" in summary and f"{len(ids)} tokens" in summary
    assert "cropped to its last 64 tokens" in summary
    assert "".join(piece for piece, _ in highlights) == gpt2.get_tokenizer().decode(ids)
    assert [bucket for _, bucket in highlights] == [_gltr_bucket(int(r)) for r in expected.ranks]
    assert len({bucket for _, bucket in highlights}) > 1  # the test would be weak on one colour
    np.testing.assert_allclose(surprisal.data[0].x, -expected.logprobs, rtol=1e-5)
    np.testing.assert_allclose(surprisal.data[1].x, expected.entropies, rtol=1e-5)
    n_rows = model.config.n_layer + 1
    assert np.asarray(lens.data[0].z).shape == (logic.LENS_TOKENS, n_rows)
    first = len(ids) - logic.LENS_TOKENS  # the lens's positions are the text's, as in the surprisal chart
    assert list(lens.data[0].y) == list(surprisal.data[0].y)[first:]
    assert f"last {logic.LENS_TOKENS} tokens only (positions {first} to {len(ids) - 1})" in summary
    short = logic.text_probabilities(ctx, session, "Hello there")
    assert np.asarray(short[3].data[0].z).shape == (2, n_rows) and "logit lens shows" not in short[1]
    assert list(short[3].data[0].y) == list(short[2].data[0].y)


def test_any_text_draws_all_its_views_from_one_model_call(ctx, monkeypatch):
    """The "Any text" section has no per-view control that reruns the model (issue 13's instant redraws):
    its one event (Analyse, or the Enter key; /text_probabilities takes only the text) draws the GLTR
    colours, the surprisal chart and the logit lens from a single job."""
    session, ran, call = ctx.new_session(), [], ctx.gpu.call
    monkeypatch.setattr(ctx.gpu, "call", lambda job, *args, **kw: ran.append(job.__name__) or call(job, *args, **kw))
    highlights, summary, surprisal, lens = logic.text_probabilities(ctx, session, "To be, or not to be.")
    assert ran == ["analyse_text"] and highlights and "Perplexity" in summary
    assert surprisal.data and lens.data


def test_lora_session_differs_and_leaves_the_base_alone(model_dir):
    ctx = make_ctx(model_dir)  # its own store: installing LoRA changes this model object
    base_session, tuned = ctx.new_session(), ctx.new_session()
    text = "The quick brown fox jumps over the lazy dog."
    before = logic.text_probabilities(ctx, base_session, text)[2].data[0].x
    base = ctx.store.get(tuned.model_key)
    install_lora(base)
    adapter = LoRAAdapter(base, LoRAConfig(rank=4), seed=0)
    with torch.no_grad():
        for b in adapter.lora_B.values():
            b.normal_(0, 0.5)
    tuned.adapter, tuned.adapter_base, tuned.use_finetuned = adapter, tuned.model_key, True
    tuned_surprisal = logic.text_probabilities(ctx, tuned, text)
    assert not np.allclose(tuned_surprisal[2].data[0].x, before, atol=1e-3)
    assert "fine-tuned" in tuned_surprisal[1]
    np.testing.assert_array_equal(logic.text_probabilities(ctx, base_session, text)[2].data[0].x, before)
    # a fine-tuned generation whose logits were dropped is recomputed with its adapter
    record = run(ctx, tuned, max_new_tokens=3, temperature=1.0)
    kept_logits = record.steps[2].logits.astype(np.float32)
    record.steps[2].logits = None
    _, summary, kept = logic.step_probabilities(ctx, tuned, record.id, 2, **NO_SETTINGS)
    assert "run again" in summary and "no longer has" not in summary
    np.testing.assert_allclose(torch.from_numpy(kept.logits).softmax(-1), torch.from_numpy(kept_logits).softmax(-1),
                               atol=2e-3)
    # once the session has lost its fine-tuned model, the base stands in and the step info says so
    tuned.adapter = None
    _, summary, kept = logic.step_probabilities(ctx, tuned, record.id, 2, **NO_SETTINGS)
    assert "run again" in summary and f"#{record.id} came from a fine-tuned" in summary
    base_logits = logic.next_logits(base, logic.step_window(record, 2, base.config.block_size))
    np.testing.assert_allclose(kept.logits, base_logits, rtol=1e-5, atol=1e-5)
    _, summary, _ = logic.step_probabilities(ctx, tuned, record.id, 2, 0.5, 5, 1.0, 1.0, kept=kept)  # slider moved
    assert "came from a fine-tuned" in summary and "run again" not in summary


def test_the_tab_publishes_its_endpoints_with_their_parameters(ctx):
    from ui.layout import probabilities as layout
    from ui.layout.links import Links
    from ui.layout.page import Page
    from ui.layout.wiring import Wiring

    with gr.Blocks() as demo:
        state = gr.State(None)
        layout.build(Page(ctx, state, Wiring(ctx, state), Links()))
    endpoints = demo.get_api_info()["named_endpoints"]
    step, text = endpoints["/step_probabilities"], endpoints["/text_probabilities"]
    assert [p["parameter_name"] for p in step["parameters"]] == ["record", "step", "temperature", "top_k", "top_p",
                                                                 "repetition_penalty", "min_p", "typical_p",
                                                                 "epsilon_cutoff", "eta_cutoff",
                                                                 "no_repeat_ngram_size"]
    defaults = {p["parameter_name"]: p["parameter_default"] for p in step["parameters"]}
    assert [defaults[name] for name in ADVANCED_OFF] == list(ADVANCED_OFF.values())  # the new stages: off
    assert [r["label"] for r in step["returns"]] == ["Candidates", "step info"]
    assert [p["parameter_name"] for p in text["parameters"]] == ["text"]
    assert [r["label"] for r in text["returns"]] == ["Rank of each token", "text info", "Surprisal and entropy",
                                                     "Logit lens"]
