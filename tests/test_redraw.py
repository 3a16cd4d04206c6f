"""ui.redraw: the Attention tab's kept queries and keys. Redraws equal the model's own attention without
running it; another text, model, adapter or step past what is kept runs it again; the per-session cap and
the server's budget (least recently used session out) hold; a closed session frees its share; sessions
never read each other's entries."""

from __future__ import annotations

import gc
import inspect

import numpy as np
import pytest
import torch
from conftest import drain, make_ctx, random_model

import gpt2
from gpt2.inspection import attention_maps, head_scores
from gpt2.lora import LoRAAdapter, LoRAConfig, install_lora, use_adapter
from ui import budget, redraw
from ui.logic import attention as logic
from ui.logic.generate import stream
from ui.models import Entry

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "The cat sat on the mat. The cat sat on the mat."
OTHER_TEXT = "A dog ran in the park, and the dog ran home."
GRID, FOCUS = logic.VIEWS[1], logic.VIEWS[2]


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory) -> str:
    model = random_model(gpt2.GPTConfig.preset("tiny", n_layer=3, n_head=4), seed=1)
    return str(model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "other"))


@pytest.fixture()
def ctx(tiny_dir, other_dir):
    """A fresh context (its own store: LoRA is installed on its base) also offering ``other``."""
    ctx = make_ctx(tiny_dir)
    ctx.store.entries["other"] = Entry("other", "other", other_dir)
    return ctx


@pytest.fixture()
def server(monkeypatch):
    """A fresh server-wide budget (other tests' sessions are not counted), its limit large by default."""
    fresh = budget.RedrawBudget(10**9)
    monkeypatch.setattr(budget, "REDRAW", fresh)
    return fresh


@pytest.fixture()
def calls(ctx, monkeypatch) -> list[str]:
    """The names of the ``ui.gpu`` jobs run, in order (redraws should add none)."""
    ran, call = [], ctx.gpu.call

    def counted(job, ref, *args, **kwargs):
        ran.append(job.__name__)
        return call(job, ref, *args, **kwargs)

    monkeypatch.setattr(ctx.gpu, "call", counted)
    return ran


def page(ctx, session, fn=logic.redraw, **changes):
    """A drawing event of the page (``redraw`` by default) with the page's defaults, some changed."""
    values = dict(text=TEXT, source="text", record="latest", layer=0, head=0, view="one head", query=None,
                  step=0, scale=logic.FITTED, width=None) | changes
    names = list(inspect.signature(fn).parameters)[2:]  # after ctx and session
    return fn(ctx, session, **{name: values[name] for name in names})


def z(fig) -> np.ndarray:
    return np.asarray(fig.data[0].z)


def tuned(ctx, session, seed: int = 1) -> LoRAAdapter:
    """Give ``session`` a LoRA adapter with non-zero updates (it changes every projection)."""
    base = install_lora(ctx.store.get(session.model_key))
    adapter = LoRAAdapter(base, LoRAConfig(rank=4), seed=0)
    with torch.no_grad():
        for b in adapter.lora_B.values():
            b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
    session.adapter, session.adapter_base, session.use_finetuned = adapter, session.model_key, True
    return adapter


def test_patterns_from_kept_queries_and_keys_are_the_models(tiny_model):
    ids = gpt2.encode(TEXT)
    qk = redraw.queries_keys(tiny_model, ids)
    cfg = tiny_model.config
    assert qk.q.shape == qk.k.shape == (cfg.n_layer, len(ids), cfg.n_embd) and qk.q.dtype == np.float32
    assert qk.nbytes == redraw.qk_bytes(cfg, len(ids))
    want = attention_maps(tiny_model, ids).patterns  # (L, nh, T, T)
    n = len(ids)
    np.testing.assert_allclose(redraw.patterns(qk, slice(None), range(n), n).numpy(), want, atol=1e-6)
    rows = redraw.patterns(qk, slice(1, 2), range(5, 9), 9).numpy()  # some rows of one layer, keys up to them
    np.testing.assert_allclose(rows[0], want[1, :, 5:9, :9], atol=1e-6)


def test_kept_queries_and_keys_carry_the_adapter(ctx):
    session = ctx.new_session()
    adapter = tuned(ctx, session)
    base, ids = ctx.store.get(session.model_key), gpt2.encode(TEXT)
    with use_adapter(adapter):
        want = attention_maps(base, ids).patterns
    qk = ctx.gpu.call(redraw.queries_keys, ctx.ref(session), ids)
    np.testing.assert_allclose(redraw.patterns(qk, slice(None), range(len(ids)), len(ids)).numpy(), want,
                               atol=1e-6)
    assert not np.allclose(want, attention_maps(base, ids).patterns, atol=1e-3)  # the adapter mattered


def test_redraws_equal_the_model_without_running_it(ctx, server, calls):
    session = ctx.new_session()
    model, ids = ctx.store.get(session.model_key), gpt2.encode(TEXT)
    full = attention_maps(model, ids).patterns
    fig, table, *_ = page(ctx, session, logic.show, layer=1, head=1)
    assert calls == ["queries_keys"]  # one job for the figure and the table
    np.testing.assert_allclose(z(fig), full[1, 1], atol=1e-6)
    scores = head_scores(attention_maps(model, ids[: logic.TABLE_TOKENS]))
    np.testing.assert_allclose(table["entropy"], scores.entropy.ravel(), atol=6e-4)
    assert session.redraw.nbytes == redraw.qk_bytes(model.config, len(ids)) == server.used_bytes
    for changes in (dict(layer=0, head=1), dict(head=0), dict(query=5), dict(view=GRID), dict(view=FOCUS, query=7)):
        fig, *_ = page(ctx, session, **changes)
    assert calls == ["queries_keys"]  # no redraw ran the model
    np.testing.assert_allclose(z(fig), full[:, :, 7, :8].reshape(-1, 8), atol=1e-6)
    np.testing.assert_allclose(z(page(ctx, session, layer=1, head=0, query=3)[0]), full[1, 0], atol=1e-6)
    np.testing.assert_allclose(z(page(ctx, session, view=GRID, layer=1)[0]), full[1, 0], atol=1e-6)
    assert calls == ["queries_keys"]


def test_replaying_a_generation_reads_a_prefix_until_a_step_slides_the_window(ctx, server, calls):
    session = ctx.new_session()
    model = ctx.store.get(session.model_key)
    block = model.config.block_size
    drain(stream(ctx, session, TEXT, gpt2.SamplingParams(temperature=0, max_new_tokens=8)))
    record = session.records[-1]
    full = record.prompt_ids + record.token_ids
    gen = dict(source="a generation", record=record.id, layer=1)
    page(ctx, session, logic.show, **gen, step=2)  # an early step first: the whole generation is kept
    for step in (0, 5, 7, 3):
        fig, *_ = page(ctx, session, logic.replay, **gen, step=step)
        end = len(record.prompt_ids) + step + 1
        np.testing.assert_allclose(z(fig), attention_maps(model, full[:end], [1]).patterns[0, 0], atol=1e-6)
    assert calls == ["queries_keys"]
    drain(stream(ctx, session, TEXT * 5, gpt2.SamplingParams(temperature=0, max_new_tokens=8)))
    record = session.records[-1]
    assert len(record.prompt_ids) == block  # cropped: every step slides the window past the context
    full = record.prompt_ids + record.token_ids
    for step in (7, 6):  # each step past the context is another window: computed again, never a stale one
        fig, *_ = page(ctx, session, logic.replay, source="a generation", record=record.id, layer=1, step=step)
        end = len(record.prompt_ids) + step + 1
        np.testing.assert_allclose(z(fig), attention_maps(model, full[end - block : end], [1]).patterns[0, 0],
                                   atol=1e-6)
    assert calls.count("queries_keys") == 3


def test_another_text_model_or_adapter_is_never_read_from_the_kept_entry(ctx, server, calls):
    session = ctx.new_session()
    base = ctx.store.get(session.model_key)
    page(ctx, session, logic.show)
    fig, *_ = page(ctx, session, text=OTHER_TEXT, layer=1)  # another text
    np.testing.assert_allclose(z(fig), attention_maps(base, gpt2.encode(OTHER_TEXT), [1]).patterns[0, 0], atol=1e-6)
    prefix = " ".join(TEXT.split()[:4])  # a text that starts the kept one would be served: not this one
    fig, *_ = page(ctx, session, text=prefix)
    np.testing.assert_allclose(z(fig), attention_maps(base, gpt2.encode(prefix), [0]).patterns[0, 0], atol=1e-6)
    assert calls == ["queries_keys"] * 3
    adapter = tuned(ctx, session)  # fine-tuned: the same text, other weights
    fig, *_ = page(ctx, session, text=prefix)
    with use_adapter(adapter):
        np.testing.assert_allclose(z(fig), attention_maps(base, gpt2.encode(prefix), [0]).patterns[0, 0], atol=1e-6)
    tuned(ctx, session, seed=2)  # a new fine-tune (a new adapter object), then back to the base
    page(ctx, session, text=prefix)
    session.use_finetuned = False
    fig, *_ = page(ctx, session, text=prefix)
    np.testing.assert_allclose(z(fig), attention_maps(base, gpt2.encode(prefix), [0]).patterns[0, 0], atol=1e-6)
    session.model_key = "other"  # another model, 3 layers
    fig, *_ = page(ctx, session, text=prefix, layer=2)
    other = ctx.store.get("other")
    np.testing.assert_allclose(z(fig), attention_maps(other, gpt2.encode(prefix), [2]).patterns[0, 0], atol=1e-6)
    assert calls == ["queries_keys"] * 7


def test_a_text_over_the_caps_is_drawn_right_and_not_kept(tiny_dir, tiny_model, server):
    model, ids, short = tiny_model, gpt2.encode(TEXT * 2), gpt2.encode(OTHER_TEXT)
    ctx = make_ctx(tiny_dir)
    server.limit_bytes = redraw.qk_bytes(model.config, len(ids)) - 1  # the short text fits, the long one not
    session = ctx.new_session()
    fig, *_ = page(ctx, session, logic.show, text=TEXT * 2, layer=1)
    np.testing.assert_allclose(z(fig), attention_maps(model, ids, [1]).patterns[0, 0], atol=1e-6)
    assert session.redraw.nbytes == 0 and server.used_bytes == 0
    fig, *_ = page(ctx, session, text=TEXT * 2, view=FOCUS)  # drawn by the model, view by view
    np.testing.assert_allclose(z(fig), attention_maps(model, ids).patterns[:, :, -1].reshape(-1, len(ids)),
                               atol=1e-6)
    page(ctx, session, logic.show, text=OTHER_TEXT)
    assert session.redraw.nbytes == redraw.qk_bytes(model.config, len(short))
    capped = make_ctx(tiny_dir, max_redraw_mb=0)  # the per-session cap: nothing kept at all
    off = capped.new_session()
    fig, *_ = page(capped, off, logic.show, text=OTHER_TEXT, layer=1)
    np.testing.assert_allclose(z(fig), attention_maps(model, short, [1]).patterns[0, 0], atol=1e-6)
    assert off.redraw.nbytes == 0


def test_the_server_budget_drops_the_least_recently_used_session(ctx, server):
    size = redraw.qk_bytes(ctx.base(ctx.default_key).config, len(gpt2.encode(TEXT)))
    server.limit_bytes = 2 * size
    a, b, c = (ctx.new_session() for _ in range(3))
    page(ctx, a, logic.show)
    page(ctx, b, logic.show)
    page(ctx, a)  # a redraw: `a` is now the most recently used, `b` the least
    page(ctx, c, logic.show)
    assert (a.redraw.nbytes, b.redraw.nbytes, c.redraw.nbytes) == (size, 0, size)
    assert server.used_bytes == 2 * size and len(server) == 2
    fig, *_ = page(ctx, b, layer=1)  # dropped: drawn again (right), kept again, and `a` goes now
    model = ctx.store.get(ctx.default_key)
    np.testing.assert_allclose(z(fig), attention_maps(model, gpt2.encode(TEXT), [1]).patterns[0, 0], atol=1e-6)
    assert (a.redraw.nbytes, b.redraw.nbytes, c.redraw.nbytes) == (0, size, size)


def test_a_closed_or_forgotten_session_frees_its_share(ctx, server):
    a, b = ctx.new_session(), ctx.new_session()
    page(ctx, a, logic.show)
    page(ctx, b, logic.show)
    size = a.redraw.nbytes
    assert size > 0 and server.used_bytes == 2 * size
    a.close()
    assert a.redraw.nbytes == 0 and server.used_bytes == size and len(server) == 1
    del b
    gc.collect()
    assert server.used_bytes == 0 and len(server) == 0


def test_sessions_never_read_each_others_entry(ctx, server, calls):
    plain, other = ctx.new_session(), ctx.new_session()
    base, ids = ctx.store.get(plain.model_key), gpt2.encode(TEXT)
    page(ctx, plain, logic.show)
    adapter = tuned(ctx, other)
    fig, *_ = page(ctx, other, logic.show, layer=1)  # same text and base: its own entry, with its adapter
    with use_adapter(adapter):
        np.testing.assert_allclose(z(fig), attention_maps(base, ids, [1]).patterns[0, 0], atol=1e-6)
    third = ctx.new_session()
    page(ctx, third, logic.show)
    assert calls == ["queries_keys"] * 3  # each session computed its own
    assert plain.redraw is not other.redraw
    np.testing.assert_allclose(z(page(ctx, plain, layer=1)[0]), attention_maps(base, ids, [1]).patterns[0, 0],
                               atol=1e-6)
    assert calls == ["queries_keys"] * 3
