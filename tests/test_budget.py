"""The server-wide memory budgets (``ui.budget``): kept logits, full fine-tuned copies and downloads, least
recently used first out, on a tiny model (no app launched)."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import drain, make_ctx

import gpt2
from ui import budget
from ui.inputs import UserError
from ui.logic import finetune as finetune_logic
from ui.logic import finetune_data as files
from ui.logic import probabilities as prob
from ui.logic.generate import stream
from ui.session import GenerationRecord

pytestmark = pytest.mark.usefixtures("one_thread")

TOKENS = 4
NO_SETTINGS = dict(temperature=None, top_k=None, top_p=None, repetition_penalty=None)
TEXT = " ".join(f"The cat number {i} sat on the mat." for i in range(120))
FULL = dict(text=TEXT, file=None, column="text", mode="full", steps=1, learning_rate=1e-3, batch_size=2,
            block_size=16, lora_rank=4, sample_prompt="The cat", seed=0)


@pytest.fixture(scope="module")
def ctx(tiny_dir):
    return make_ctx(tiny_dir, max_new_tokens=12, max_train_steps=4)


@pytest.fixture()
def logits_budget(monkeypatch):
    """A fresh logits budget for the test; its limit set by the test."""
    fresh = budget.LogitBudget(limit_bytes=0)
    monkeypatch.setattr(budget, "LOGITS", fresh)
    return fresh


def generate(ctx, session) -> GenerationRecord:
    params = gpt2.SamplingParams(max_new_tokens=TOKENS, seed=0, stop_at_eos=False)
    drain(stream(ctx, session, "The meaning of life is", params))
    return session.records[-1]


def has_logits(record: GenerationRecord) -> bool:
    return all(d.logits is not None for d in record.steps)


def test_over_budget_the_least_recently_used_logits_go_first(ctx, logits_budget):
    sessions = [ctx.new_session() for _ in range(4)]
    first = generate(ctx, sessions[0])
    one = budget.record_logit_bytes(first)
    assert one > 0 and logits_budget.used_bytes == one
    logits_budget.limit_bytes = 2 * one  # room for two records
    records = [first, *(generate(ctx, s) for s in sessions[1:3])]
    assert [has_logits(r) for r in records] == [False, True, True]  # the oldest session's went
    assert sessions[1].record(None) is records[1]  # read (as the Probabilities tab does): used again
    records.append(generate(ctx, sessions[3]))
    assert [has_logits(r) for r in records] == [False, True, False, True]  # the read one stayed
    assert logits_budget.used_bytes == 2 * one and len(logits_budget) == 2
    assert all(r.text and r.token_ids for r in records)  # the light data stays


def test_one_record_over_the_budget_keeps_its_own(ctx, logits_budget):
    record = generate(ctx, ctx.new_session())  # limit 0
    assert has_logits(record) and len(logits_budget) == 1


def test_a_closed_session_frees_its_share(ctx, logits_budget):
    logits_budget.limit_bytes = 10**9
    a, b = ctx.new_session(), ctx.new_session()
    generate(ctx, a)
    kept = generate(ctx, b)
    assert len(logits_budget) == 2
    a.close()
    assert len(logits_budget) == 1 and logits_budget.used_bytes == budget.record_logit_bytes(kept)
    del b, kept  # a session dropped without close (its State expired): its records go with it
    gc.collect()
    assert len(logits_budget) == 0 and logits_budget.used_bytes == 0


def test_the_per_session_rule_still_frees_older_records(ctx, logits_budget):
    logits_budget.limit_bytes = 10**9
    session = ctx.new_session()
    records = [generate(ctx, session) for _ in range(3)]
    assert [has_logits(r) for r in records] == [False, True, True]  # LOGIT_RECORDS = 2
    assert len(logits_budget) == 2


def test_the_probabilities_tab_recomputes_a_dropped_record(ctx, logits_budget):
    session = ctx.new_session()
    record = generate(ctx, session)
    own = record.steps[1].logits.astype(np.float32)
    logits_budget.limit_bytes = 0
    generate(ctx, ctx.new_session())  # another session's newer record takes the budget
    assert not has_logits(record)
    _, summary, kept = prob.step_probabilities(ctx, session, record.id, 1, **NO_SETTINGS)
    assert prob.RECOMPUTED in summary
    np.testing.assert_allclose(torch.from_numpy(kept.logits).softmax(-1), torch.from_numpy(own).softmax(-1),
                               atol=2e-3)


def test_a_download_is_removed_after_its_ttl_and_packed_again_on_request(ctx, monkeypatch):
    monkeypatch.setattr(budget.DOWNLOADS, "ttl_s", 0.3)
    session = ctx.new_session()
    list(finetune_logic.finetune(ctx, session, **(FULL | {"mode": "LoRA", "learning_rate": 1e-2})))
    path = Path(files.export(ctx, session)["value"])
    assert path.is_file()
    deadline = time.monotonic() + 10
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not path.exists()  # gone after the TTL, though the session lives on
    again = Path(files.export(ctx, session)["value"])
    assert again == path and again.is_file()  # packed again when asked for
    monkeypatch.setattr(budget.DOWNLOADS, "ttl_s", 300)
    files.export(ctx, session)  # asked for again: the earlier timer no longer removes it
    time.sleep(0.6)
    assert again.is_file()
    session.close()


def test_full_copies_over_the_limit_drop_the_least_recently_used(ctx, monkeypatch):
    monkeypatch.setattr(budget, "FULL_COPIES", budget.FullCopies(limit=2))
    a, b, c = (ctx.new_session() for _ in range(3))
    for s in (a, b):
        list(finetune_logic.finetune(ctx, s, **FULL))
    assert a.finetuned_model is not None and b.finetuned_model is not None
    assert a.has_finetuned()  # a used its copy: b's is now the least recently used
    tuned = generate(ctx, b)  # a generation by b's copy, for the Probabilities tab below
    assert tuned.finetuned
    assert a.has_finetuned()
    list(finetune_logic.finetune(ctx, c, **FULL))
    assert c.finetuned_model is not None and a.finetuned_model is not None
    assert b.finetuned_model is None and not b.has_finetuned() and len(budget.FULL_COPIES) == 2
    # b is told once, the next time it uses its model; then it goes on with the base
    with pytest.raises(UserError, match="dropped to make room.*at most 2"):
        generate(ctx, b)
    assert not b.use_finetuned and not generate(ctx, b).finetuned
    with pytest.raises(UserError, match="dropped to make room"):
        files.export(ctx, b)
    # b's fine-tuned generation is shown with the base, and said so
    tuned.steps[0].logits = None
    _, summary, _ = prob.step_probabilities(ctx, b, tuned.id, 0, **NO_SETTINGS)
    assert "no longer has" in summary
    # LoRA is not counted; a closed session frees its place
    list(finetune_logic.finetune(ctx, b, **(FULL | {"mode": "LoRA", "learning_rate": 1e-2})))
    assert b.adapter is not None and b.dropped_note is None and len(budget.FULL_COPIES) == 2
    c.close()
    assert len(budget.FULL_COPIES) == 1 and a.finetuned_model is not None
