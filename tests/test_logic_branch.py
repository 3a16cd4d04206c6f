"""Branching (``ui.logic.branch``) and the tree of records it makes (``ui.logic.records``): a branch with
the parent's own token repeats the parent, another token is forced where asked and the rest is what
``gpt2.generate`` makes from there; refusals name the parameter; labels, lineage and the tab's wiring."""

from __future__ import annotations

import math

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import drain, make_ctx, random_model

import gpt2
from ui.inputs import LATEST, UserError
from ui.logic import branch as logic
from ui.logic import probabilities, records
from ui.logic.generate import stream
from ui.session import MAX_RECORDS, GenerationRecord, Session

PROMPT = "The meaning of life is"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    model = random_model(gpt2.GPTConfig.preset("tiny"), seed=3)
    with torch.no_grad():  # peaked but not one-hot predictions: samples vary, a seed matters
        model.transformer.wte.weight.mul_(8)
    return str(model.save_pretrained(tmp_path_factory.mktemp("branch") / "tiny"))


@pytest.fixture(scope="module")
def ctx(model_dir):
    return make_ctx(model_dir)


def run(ctx, session: Session, prompt: str = PROMPT, **params) -> GenerationRecord:
    params = {"max_new_tokens": 10, "seed": 5, "stop_at_eos": False, "temperature": 1.0, **params}
    drain(stream(ctx, session, prompt, gpt2.SamplingParams(**params)))
    return session.records[-1]


def branch(ctx, session: Session, record, step, token) -> GenerationRecord:
    text, info = drain(logic.branch(ctx, session, record, step, token))
    made = session.records[-1]
    assert text == made.text and f"**Branch #{made.id}**" in info
    return made


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.8, top_k=30, top_p=0.95,
                                                                   repetition_penalty=1.3, min_p=0.02),
                                      dict(temperature=0.0)], ids=["sampled", "every stage", "greedy"])
def test_the_parents_own_token_repeats_the_parent(ctx, settings):
    session = ctx.new_session()
    parent = run(ctx, session, **settings)
    for step in (0, 4, 9):
        made = branch(ctx, session, parent.id, step, parent.token_ids[step])
        assert made.token_ids == parent.token_ids and made.text == parent.text
        assert (made.parent, made.branch_step, made.forced_token) == (parent.id, step, parent.token_ids[step])
        assert made.params == parent.params and made.prompt_ids == parent.prompt_ids
        assert made.decoding == parent.decoding and made.model_key == parent.model_key
        for mine, theirs in zip(made.steps, parent.steps, strict=True):  # the same distributions, step by step
            np.testing.assert_allclose(mine.probs, theirs.probs, rtol=1e-5, atol=1e-7)


def test_another_token_is_forced_and_the_rest_follows_from_it(ctx):
    session = ctx.new_session()
    parent = run(ctx, session)
    step, token = 4, next(t for t in parent.steps[4].top_ids.tolist() if t != parent.token_ids[4])
    made = branch(ctx, session, parent.id, step, token)
    assert made.token_ids[: step + 1] == [*parent.token_ids[:step], token]
    assert len(made.token_ids) == parent.params.max_new_tokens
    # the reference: the core's own forced generation with the same seed
    model = ctx.store.get(parent.model_key)
    expected = [s.token_id for s in gpt2.generate(model, parent.prompt_ids, parent.params,
                                                  forced_ids=[*parent.token_ids[:step], token])]
    assert made.token_ids == expected and made.token_ids != parent.token_ids
    assert made.steps[step].chosen_raw_prob == pytest.approx(
        float(parent.steps[step].raw_probs[parent.steps[step].top_ids.tolist().index(token)]), rel=1e-3)
    # a branch of a branch, and "latest" (the branch just made) as the parent
    deeper = branch(ctx, session, LATEST, 7, 11)
    assert deeper.parent == made.id and deeper.token_ids[:8] == [*made.token_ids[:7], 11]


def test_a_branch_streams(ctx, monkeypatch):
    from ui.logic import generate

    monkeypatch.setattr(generate, "STREAM_INTERVAL_S", 0.0)  # every token its own update
    session = ctx.new_session()
    parent = run(ctx, session, max_new_tokens=6)
    updates = list(logic.branch(ctx, session, parent.id, 1, 42))
    made = session.records[-1]
    texts = [text for text, _ in updates]
    assert len(updates) == 6 + 1 and texts[-1] == made.text  # one per token, then the kept branch's number
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))
    assert updates[0][1].startswith("**Branch** from #1 at step 1") and "1 tokens" in updates[0][1]
    assert updates[-1][1].startswith(f"**Branch #{made.id}** from #1 at step 1")


def test_an_empty_prompt_branches_too(ctx):
    session = ctx.new_session()
    parent = run(ctx, session, "")
    made = branch(ctx, session, parent.id, 0, parent.token_ids[0])
    assert parent.prompt_ids == [] and made.token_ids == parent.token_ids


def test_a_beam_searchs_record_branches_into_sampling(ctx):
    """A beam search is kept as its best sequence replayed (``generate.beam_stream``); a branch of it
    samples on from the token, and is labelled and noted so."""
    session = ctx.new_session()
    sampled = run(ctx, session, max_new_tokens=6)
    replay = gpt2.SamplingParams(max_new_tokens=6, seed=0)
    drain(stream(ctx, session, PROMPT, replay, forced_ids=sampled.token_ids, decoding="beam search"))
    beam = session.records[-1]
    text, info = drain(logic.branch(ctx, session, beam.id, 2, 7))
    made = session.records[-1]
    assert made.decoding == "sampling" and made.token_ids[:3] == [*beam.token_ids[:2], 7]
    assert "The parent was a beam search" in info
    assert logic.info(session, drain(logic.branch_stream(ctx, session, sampled.id, 0, 5))).count("beam") == 0


@pytest.mark.parametrize(("record", "step", "token", "message"), [
    (None, 10, 5, r"step must be a whole number from 0 to 9 \(generation #1 has 10 tokens"),
    (None, -1, 5, r"step must be a whole number from 0 to 9"),
    (None, math.nan, 5, r"step must be"),
    (None, "third", 5, r"step must be"),
    (None, 2.5, 5, r"step must be"),
    (None, 0, 50257, r"token must be a token id, a whole number from 0 to 50256"),
    (None, 0, -1, r"token must be"),
    (None, 0, math.nan, r"token must be"),
    (None, 0, "the", r"token must be"),
    (None, 0, None, r"token must be"),
    (None, 0, True, r"token must be"),
    (99, 0, 5, r"Generation #99 is no longer kept"),
    ("newest", 0, 5, r"record must be"),
])
def test_refusals_name_the_parameter(ctx, record, step, token, message):
    session = ctx.new_session()
    with pytest.raises(UserError, match="No generation yet"):
        drain(logic.branch(ctx, session, None, 0, 5))
    run(ctx, session)
    with pytest.raises(UserError, match=message):
        drain(logic.branch(ctx, session, record, step, token))
    assert len(session.records) == 1  # nothing was made


def test_a_branch_needs_the_parents_model(ctx, tmp_path):
    other = random_model(gpt2.GPTConfig.preset("tiny"), seed=9).save_pretrained(tmp_path / "other")
    session = ctx.new_session()
    parent = run(ctx, session)
    session.model_key = str(other)  # as if the header had switched model
    with pytest.raises(UserError, match=f"#{parent.id} was made by .*switch back"):
        drain(logic.branch(ctx, session, parent.id, 0, 5))


def test_the_picker_lists_branches_under_their_parent(ctx):
    session = ctx.new_session()
    a = run(ctx, session, max_new_tokens=6)
    b = run(ctx, session, max_new_tokens=6, seed=6)
    a1 = branch(ctx, session, a.id, 2, 100)
    a11 = branch(ctx, session, a1.id, 4, 200)
    a2 = branch(ctx, session, a.id, 0, 300)
    ids = [rid for _, rid in records.choices(session)]
    assert ids == [LATEST, b.id, a.id, a1.id, a11.id, a2.id]  # trees newest first, each parent before its branches
    labels = dict((rid, text) for text, rid in records.choices(session))
    assert labels[a.id] == a.label and labels[b.id] == b.label
    assert labels[a1.id].startswith(f"{records.INDENT}↳ #{a1.id} from #{a.id} at step 2: {records.token_text(100)} · ")
    assert labels[a11.id].startswith(f"{records.INDENT * 2}↳ #{a11.id} from #{a1.id} at step 4: ")
    assert labels[a11.id].endswith(a11.label.partition(" · ")[2])  # then the usual: size, settings, text
    # the session keeps its last MAX_RECORDS: a branch whose parent went stays, and says so
    for _ in range(MAX_RECORDS - 4):
        run(ctx, session, max_new_tokens=2)
    assert session.record(a.id) is None and session.record(a1.id) is not None
    labels = dict((rid, text) for text, rid in records.choices(session))
    assert labels[a1.id].startswith(f"↳ #{a1.id} from #{a.id} (no longer kept) at step 2")  # a root now
    assert labels[a11.id].startswith(f"{records.INDENT}↳ #{a11.id} from #{a1.id} at step 4")
    assert [rid for _, rid in records.choices(session)][-4:] == [a2.id, a1.id, a11.id, b.id]  # orphans: roots


def test_lineage_shows_the_tree_and_the_way_to_it(ctx):
    session = ctx.new_session()
    root = run(ctx, session, max_new_tokens=6)
    text, radio = records.lineage(session, root)
    assert "none yet" in text and radio["visible"] is False
    child = branch(ctx, session, root.id, 1, 100)
    sibling = branch(ctx, session, root.id, 3, 200)
    grandchild = branch(ctx, session, child.id, 2, 300)
    text, radio = records.lineage(session, grandchild)
    assert f"lineage #{root.id} → #{child.id} → #{grandchild.id}" in text and "0 branch(es)" in text
    rows = text.split("\n\n", 1)[1].splitlines()
    assert [len(r) - len(r.lstrip()) for r in rows] == [0, 2, 4, 2]  # root, child, grandchild, sibling
    assert rows[2].strip().startswith(f"- **\\#{grandchild.id} from \\#{child.id} at step 2")
    assert rows[2].endswith("← this one")
    assert rows[3].strip().startswith(f"- \\#{sibling.id} from \\#{root.id} at step 3")
    assert [v for _, v in radio["choices"]] == [root.id, child.id, grandchild.id, sibling.id]
    assert radio["value"] == grandchild.id and radio["visible"] is True
    assert records.ancestors(session, grandchild) == [child, root]
    assert records.children(session, root.id) == [child, sibling]
    text, _ = records.lineage(session, root)  # from the root: the same tree, the root in bold
    assert "2 branch(es) from this one" in text and f"**\\#{root.id} ·" in text


def test_the_step_candidates_to_continue_with(ctx):
    session = ctx.new_session()
    parent = run(ctx, session, top_k=5)
    choices = logic.token_choices(ctx, session, parent.id, 3)
    details, chosen = parent.steps[3], parent.token_ids[3]
    assert [t for _, t in choices["choices"]][: len(details.top_ids)] == details.top_ids.tolist()
    marked = [label for label, t in choices["choices"] if t == chosen]
    assert len(marked) == 1 and marked[0].startswith("▶ ") and f"id {chosen}" in marked[0]
    first, token = choices["choices"][0]
    assert f"{details.raw_probs[0]:.1%} raw, {details.probs[0]:.1%} sampled" in first
    assert gpt2.token_display([token])[0] in first
    assert choices["value"] != chosen and choices["value"] in details.top_ids.tolist()
    picked = choices["choices"][5][1]  # the user's pick stays while the step's list has it
    assert logic.token_choices(ctx, session, parent.id, 3, current=picked)["value"] == picked
    assert logic.token_choices(ctx, session, parent.id, 3, current=-5)["value"] == choices["value"]
    with pytest.raises(UserError, match="step must be"):
        logic.token_choices(ctx, session, parent.id, 10)


def test_the_tab_shows_the_branch_it_made(ctx):
    session = ctx.new_session()
    parent = run(ctx, session, max_new_tokens=6)
    outputs = dict(zip(probabilities.SHOWN, probabilities.show_record(ctx, session, parent.id), strict=True))
    assert outputs["token"]["value"] != parent.token_ids[0] and "none yet" in outputs["lineage"]
    made = branch(ctx, session, parent.id, 2, outputs["token"]["value"])
    picker, *shown = probabilities.show_branch(ctx, session)
    shown = dict(zip(probabilities.SHOWN, shown, strict=True))
    assert picker["value"] == made.id and picker["choices"] == records.choices(session)
    assert f"generation #{made.id})" in shown["info"] and shown["family"]["value"] == made.id
    assert f"lineage #{parent.id} → #{made.id}" in shown["lineage"]
    picker, *shown = probabilities.go_to(ctx, session, parent.id)  # back up the tree
    assert picker["value"] == parent.id and f"generation #{parent.id})" in shown[probabilities.SHOWN.index("info")]
    # a branch is an ordinary record: the step view reads it (the forced step's chosen token is the forced one)
    _, info, _ = probabilities.step_probabilities(ctx, session, made.id, 2, *(None,) * 4)
    assert f"chose **`{gpt2.token_display([made.forced_token])[0]}`**" in info
    assert "forced: the token this branch was made with" in info
    assert f"forced: #{parent.id}'s own" in probabilities.step_probabilities(ctx, session, made.id, 1, *(None,) * 4)[1]
    assert "forced" not in probabilities.step_probabilities(ctx, session, made.id, 3, *(None,) * 4)[1]


def test_the_tab_publishes_branch(ctx):
    from ui.layout import probabilities as layout
    from ui.layout.links import Links
    from ui.layout.page import Page
    from ui.layout.wiring import Wiring

    with gr.Blocks() as demo:
        state = gr.State(None)
        layout.build(Page(ctx, state, Wiring(ctx, state), Links()))
    endpoint = demo.get_api_info()["named_endpoints"]["/branch"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == ["record", "step", "token"]
    assert [r["label"] for r in endpoint["returns"]] == ["Branch text", "branch info"]
