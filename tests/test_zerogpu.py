"""ZeroGPU: the app's model work runs in another process and still works.

On a ZeroGPU Space, ``spaces.GPU`` runs each decorated call in a forked worker: arguments and results (or
each yielded item) are pickled across, nothing else comes back, and closing a generator stops the worker
at its next item. ``ForkingSpaces`` below does exactly that (without a GPU), so these tests prove the
handlers keep no state in the jobs and pass only picklable values. The real ``spaces`` package, when
installed, must leave the functions unchanged off ZeroGPU hardware.
"""

from __future__ import annotations

import inspect
import multiprocessing
import pickle
import threading
import traceback

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import drain
from conftest import make_ctx as app_context

import gpt2
from ui import gpu
from ui.context import AppContext
from ui.inputs import UserError
from ui.logic import attention as attention_logic
from ui.logic import finetune as ft
from ui.logic import probabilities
from ui.logic.generate import stream

FORK = multiprocessing.get_context("fork")
TEXT = " ".join(f"The cat number {i} sat on the mat." for i in range(60))
FAST = dict(text=TEXT, file=None, column="text", mode="LoRA", steps=4, learning_rate=1e-2, batch_size=2,
            block_size=16, lora_rank=4, sample_prompt="The cat", seed=0)


def _worker(fn, payload: bytes, conn, stop) -> None:
    """The forked side: run ``fn`` on the unpickled arguments, send back pickled results."""
    torch.set_num_threads(1)
    try:
        args, kwargs = pickle.loads(payload)
        if inspect.isgeneratorfunction(fn):
            for item in fn(*args, **kwargs):
                if stop.is_set():
                    break
                conn.send(("item", pickle.dumps(item)))
        else:
            conn.send(("item", pickle.dumps(fn(*args, **kwargs))))
    except gr.Error as e:
        conn.send(("gr.Error", e.message))
    except Exception:  # noqa: BLE001 - reported to the parent, as spaces does
        conn.send(("error", traceback.format_exc()))
    conn.send(("end", None))


class ForkingSpaces:
    """A stand-in for the ``spaces`` package on ZeroGPU hardware (see the module docstring)."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.calls = 0

    def GPU(self, task=None, *, duration=None):  # noqa: N802 - the name spaces uses
        def decorate(fn):
            gen = inspect.isgeneratorfunction(fn)

            def run(*args, **kwargs):
                self.calls += 1
                self.durations.append(duration(*args, **kwargs) if callable(duration) else duration)
                payload = pickle.dumps((args, kwargs))  # what spaces does: unpicklable arguments fail here
                parent, child = FORK.Pipe()
                stop = FORK.Event()
                proc = FORK.Process(target=_worker, args=(fn, payload, child, stop), daemon=True)
                proc.start()
                try:
                    while True:
                        kind, value = parent.recv()
                        if kind == "end":
                            return
                        if kind == "gr.Error":
                            raise gr.Error(value)
                        if kind == "error":
                            raise RuntimeError(f"GPU worker failed:\n{value}")
                        yield pickle.loads(value)
                finally:
                    stop.set()  # a closed generator stops the worker at its next item
                    proc.join(timeout=30)

            if gen:
                return run
            return lambda *args, **kwargs: next(run(*args, **kwargs))

        return decorate(task) if task is not None else decorate


pytestmark = pytest.mark.usefixtures("one_thread")


def make_ctx(model_dir: str) -> AppContext:
    return app_context(model_dir, max_train_steps=20, max_new_tokens=12, max_train_seconds=60)


@pytest.fixture(scope="module")
def fake():
    return ForkingSpaces()


@pytest.fixture(scope="module")
def remote(tiny_dir, fake) -> AppContext:
    """An app context whose jobs run in forked workers, as on ZeroGPU."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpu, "spaces", fake)
        mp.setenv("SPACES_ZERO_GPU", "true")
        ctx = make_ctx(tiny_dir)
    assert ctx.gpu.remote
    ctx.store.get(ctx.default_key)  # loaded before the workers fork, as on a Space at startup
    return ctx


@pytest.fixture(scope="module")
def local(tiny_dir) -> AppContext:
    return make_ctx(tiny_dir)


def generated(ctx: AppContext, session, **kw) -> list[int]:
    params = gpt2.SamplingParams(**({"temperature": 0.9, "max_new_tokens": 10, "seed": 3, "stop_at_eos": False}
                                    | kw))
    return list(stream(ctx, session, "The cat", params))[-1].record.token_ids


def first_logits(ctx: AppContext, session) -> np.ndarray:
    """The raw logits behind the first generated token (kept in the session's record)."""
    generated(ctx, session)
    return session.records[-1].steps[0].logits.astype(np.float32)


def test_generation_in_a_worker_equals_local_and_keeps_the_record_here(remote, local, fake):
    calls = fake.calls
    session = remote.new_session()
    assert generated(remote, session) == generated(local, local.new_session())
    assert fake.calls == calls + 1 and len(session.records) == 1  # one job; the record lives in this process
    assert session.records[-1].steps[0].logits is not None  # the details the other tabs need came back


def test_closing_a_stream_ends_its_worker(remote):
    session = remote.new_session()
    it = stream(remote, session, "Hi", gpt2.SamplingParams(max_new_tokens=12, seed=0, stop_at_eos=False))
    for _ in range(3):
        next(it)
    it.close()  # what Gradio does when the page goes away or Stop is pressed
    assert len(session.records[-1].token_ids) == 3 and not multiprocessing.active_children()


def test_inspection_tabs_in_a_worker_equal_local(remote, local):
    figures = []
    for ctx in (remote, local):
        view = dict(text=TEXT[:80], source="text", record=None, layer=1, head=0, step=0)
        fig, table, _ = attention_logic.attention(ctx, ctx.new_session(), **view, view="one head", query=None)
        focus, _, _ = attention_logic.attention(ctx, ctx.new_session(), **view, view="token focus", query=5)
        _, summary, surprisal, _ = probabilities.text_probabilities(ctx, ctx.new_session(), TEXT[:80])
        figures.append((np.asarray(fig.data[0].z), table, np.asarray(focus.data[0].z), summary,
                        np.asarray(surprisal.data[0].x)))
    (z, table, focus, summary, surprisal), (z0, table0, focus0, summary0, surprisal0) = figures
    np.testing.assert_allclose(z, z0, atol=1e-6)
    np.testing.assert_allclose(focus, focus0, atol=1e-6)
    np.testing.assert_allclose(table["entropy"], table0["entropy"], atol=1e-6)
    np.testing.assert_allclose(surprisal, surprisal0, atol=1e-5)
    assert summary.split("·")[0] == summary0.split("·")[0]  # the same perplexity


def test_dropped_logits_are_recomputed_in_a_worker(remote):
    session = remote.new_session()
    for _ in range(3):  # the oldest record drops its logits
        generated(remote, session)
    record = session.records[0]
    assert record.steps[0].logits is None
    _, summary, kept = probabilities.step_probabilities(remote, session, record.id, 2, None, None, None, None)
    assert "run again" in summary and kept.logits.shape == (50257,)


def test_fine_tuning_in_a_worker_hands_the_result_back(remote, local, fake):
    session = remote.new_session()
    outs = list(ft.finetune(remote, session, **FAST))
    assert "Finished all 4 steps" in outs[-1][1] and outs[-1][3]  # an "after" sample
    assert session.adapter is not None and session.use_finetuned
    assert all(p.device.type == "cpu" for p in session.adapter.parameters())  # it left the worker on the CPU
    assert fake.durations[-1] >= remote.caps.max_train_seconds - 5  # asked ZeroGPU for the training time
    # the session's next jobs use the adapter, and give what the same adapter gives in this process
    tuned = generated(remote, session)
    local_session = local.new_session()
    local_session.adapter, local_session.adapter_base, local_session.use_finetuned = (
        session.adapter, session.adapter_base, True)
    assert tuned == generated(local, local_session)
    np.testing.assert_allclose(first_logits(remote, session), first_logits(local, local_session), atol=1e-2)
    base = first_logits(remote, remote.new_session())  # others still get the base
    np.testing.assert_allclose(base, first_logits(local, local.new_session()), atol=1e-2)
    assert np.abs(first_logits(remote, session) - base).max() > 0.1


def test_full_fine_tuning_in_a_worker(remote):
    session = remote.new_session()
    drain(ft.finetune(remote, session, **(FAST | {"mode": "full", "learning_rate": 1e-3})))
    assert session.finetuned_model is not None and session.adapter is None and session.use_finetuned
    assert np.abs(first_logits(remote, session) - first_logits(remote, remote.new_session())).max() > 0.1


def test_stop_reaches_training_in_a_worker(remote):
    session = remote.new_session()
    outs, pressed = [], False
    for out in ft.finetune(remote, session, **(FAST | {"steps": 20})):
        outs.append(out)
        if not pressed and "**step" in out[1]:  # Stop pressed (in this process) once training runs
            pressed = True
            presser = threading.Thread(target=ft.stop, args=(remote, session))
            presser.start()
            presser.join()
    assert "Stopped at step" in outs[-1][1] and session.adapter is not None


def test_out_of_memory_in_a_worker_is_a_clear_message(remote, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    session = remote.new_session()
    with monkeypatch.context() as mp:
        mp.setattr(gpt2.GPT2, "forward", oom)  # the worker forks with this in place
        with pytest.raises(UserError, match="ran out of memory.*Try a shorter text"):
            generated(remote, session)
    assert len(generated(remote, session)) == 10  # the next request works


def test_real_spaces_package_leaves_jobs_in_this_process(tiny_dir, monkeypatch):
    spaces = pytest.importorskip("spaces")
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert gpu.spaces is spaces
    ctx = make_ctx(tiny_dir)
    assert not ctx.gpu.remote and ctx.gpu._call == ctx.gpu._run_call  # spaces.GPU returned it unchanged
    assert len(generated(ctx, ctx.new_session())) == 10
