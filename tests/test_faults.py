"""Faults, end to end: the app launched by the shared ``served`` fixture (conftest.py) and driven with
``gradio_client`` (or raw HTTP, where a browser does something the client cannot) while things go wrong:

* Stop pressed during fine-tuning: the session keeps a complete, working fine-tuned model.
* The client goes away (``job.cancel()``, or a browser tab closed: its event stream dropped) during a
  generation or a fine-tuning run: the server-side work ends soon after, the app keeps serving; a
  closed tab's session (its fine-tuned model, records and files) is freed.
* A NaN loss during fine-tuning: the run stops, says so, and keeps what it learned before.
* The process killed while a checkpoint is written: the model picker still offers the previous
  checkpoint, loadable, and nothing half-written.
* Out of GPU memory (``torch.OutOfMemoryError``, injected on the CPU): a message that says what to do,
  the app keeps serving, the session and other clients are unaffected.

The app runs in this process, so faults are injected by patching the library it calls (``gpt2``,
``training``) for one test, and the work it does is watched the same way.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import gpt2
import training
import ui.models
from gpt2.lora import use_adapter, with_adapter
from training.trainer import Trainer
from ui.inputs import sampling
from ui.logic import finetune as finetune_logic

gradio_client = pytest.importorskip("gradio_client")
AppError = gradio_client.exceptions.AppError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The cat sat"
# /generate inputs after the prompt: max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop
SAMPLED = (24, 1.0, 0, 1.0, 1.0, 7, "")
# the later /generate inputs (advanced samplers, decoding, beams) that a raw join must send too
RAW_DEFAULTS = (0.0, 1.0, 0.0, 0.0, 0, "sampling", 4, 1.0, "false")
TEXT = "The cat sat on the mat. The cat sat on the mat."
TEXT_A = " ".join(f"The cat number {i} sat on the mat." for i in range(120))
TEXT_B = "\n".join(f"ROMEO: O {i}, thy love is {i * 7} roses." for i in range(120))
OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity; 77.80 GiB already "
       "allocated; 1.02 GiB free; 78.00 GiB reserved in total by PyTorch)")  # torch's own wording
OOM_MESSAGE = r"(?i)out of (gpu )?memory"
OOM_ADVICE = r"(?i)shorter|fewer|smaller|try again"


# ---------------------------------------------------------------- clients and calls


def client(served) -> gradio_client.Client:
    """A new API client: its own session (gradio_client keeps one session hash per Client)."""
    return gradio_client.Client(served.url, verbose=False)


def generate(cl: gradio_client.Client, args: tuple = SAMPLED) -> str:
    text, _stats, _view = cl.predict(PROMPT, *args, api_name="/generate")
    return text


def finetune_args(text: str, steps: int) -> tuple:
    """/finetune inputs: text, file, column, mode, steps, lr, batch, block, rank, sample prompt, seed."""
    return text, None, "text", "LoRA", steps, 1e-2, 2, 16, 4, "The", 0


def step_of(progress: str) -> int:
    m = re.search(r"\*\*step (\d+) / \d+\*\*", progress)
    return int(m.group(1)) if m else 0


def shown_step(job) -> int:
    """The training step the latest streamed /finetune output shows (0 before the first)."""
    outputs = job.outputs()
    return step_of(outputs[-1][1]) if outputs else 0


def plot_values(values) -> list[float]:
    """A plotly trace's x or y as numbers: a list, or a typed array ``{"dtype", "bdata"}`` (base64)."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting until {what}"
        time.sleep(0.02)


def dependency(cl: gradio_client.Client, api_name: str) -> dict:
    return next(d for d in cl.config["dependencies"] if d.get("api_name") == api_name.lstrip("/"))


def press_stop(cl: gradio_client.Client) -> None:
    """The Fine-tune tab's Stop button as the page sends it: the button's event is not an API endpoint
    (gradio_client refuses private events), so call it directly for this client's session."""
    comps = {c["id"]: c for c in cl.config["components"]}
    start = dependency(cl, "finetune")["targets"][0][0]  # the "Start fine-tuning" button
    button = min(i for i, c in comps.items() if i > start and c.get("props", {}).get("value") == "Stop")
    dep = next(d for d in cl.config["dependencies"] if [button, "click"] in d["targets"])
    r = httpx.post(cl.src_prefixed + "run/predict", timeout=30,
                   json={"data": [None] * len(dep["inputs"]), "fn_index": dep["id"], "trigger_id": button,
                         "session_hash": cl.session_hash, "event_data": None})
    assert r.status_code == 200, r.text


class Tab:
    """A browser tab of the app, as gradio's page talks to the server: a session of its own with a
    heartbeat connection open while the page is there, events joined to the queue and their results read
    from the session's event stream. ``close()`` is closing the tab: its connections drop."""

    def __init__(self, cl: gradio_client.Client) -> None:
        self.cl, self.session = cl, uuid.uuid4().hex
        url = httpx.URL(cl.src_prefixed + f"heartbeat/{self.session}")
        self.heartbeat = socket.create_connection((url.host, url.port), timeout=30)
        self.heartbeat.sendall(f"GET {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
                               "Accept: text/event-stream\r\n\r\n".encode())
        received = b""
        while b"ALIVE" not in received:
            chunk = self.heartbeat.recv(4096)
            assert chunk, f"no heartbeat: {received!r}"
            received += chunk

    def join(self, api_name: str, args: tuple) -> None:
        """Start an event, as a click does (``args``: the endpoint's API inputs; the session's state is
        the server's)."""
        dep = dependency(self.cl, api_name)
        types = {c["id"]: c["type"] for c in self.cl.config["components"]}
        values = iter(args)
        data = [None if types[i] == "state" else next(values) for i in dep["inputs"]]
        r = httpx.post(self.cl.src_prefixed + "queue/join", timeout=30,
                       json={"data": data, "fn_index": dep["id"], "trigger_id": dep["targets"][0][0],
                             "session_hash": self.session, "event_data": None})
        assert r.status_code == 200, r.text

    @contextlib.contextmanager
    def messages(self) -> Iterator[Iterator[dict]]:
        """The session's event stream, message by message; leaving the block drops the connection."""
        with httpx.stream("GET", self.cl.src_prefixed + "queue/data", params={"session_hash": self.session},
                          timeout=30) as s:
            yield (json.loads(line[len("data:"):]) for line in s.iter_lines() if line.startswith("data:"))

    def run(self, api_name: str, args: tuple) -> list:
        """An event to its end: its outputs."""
        self.join(api_name, args)
        with self.messages() as messages:
            for msg in messages:
                if msg.get("msg") == "process_completed":
                    assert msg.get("success"), msg
                    return msg["output"]["data"]
        raise AssertionError("the event stream ended without a result")

    def close(self) -> None:
        self.heartbeat.close()


def close_tab(cl: gradio_client.Client, api_name: str, args: tuple, until: Callable[[], bool]) -> None:
    """Open a tab, start an event in it, read its stream until ``until()``, then close the tab."""
    tab = Tab(cl)
    tab.join(api_name, args)
    deadline = time.monotonic() + 60
    try:
        with tab.messages() as messages:
            for msg in messages:
                assert msg.get("msg") != "process_completed", f"the event ended before the tab was closed: {msg}"
                if until():
                    return
                assert time.monotonic() < deadline, "the event never got going"
        raise AssertionError("the event stream ended before the tab was closed")
    finally:
        tab.close()


# ---------------------------------------------------------------- looking inside the server


class Watched:
    """A server-side generator function (``gpt2.generate``, ``training.train``), wrapped to count what it
    yields and note when it is closed; ``delay`` seconds per item make the work long enough to abandon."""

    def __init__(self, fn: Callable, delay: float = 0.0) -> None:
        self.fn, self.delay = fn, delay
        self.items, self.calls = 0, 0
        self.closed_at: float | None = None

    def __call__(self, *args, **kwargs):
        self.calls += 1
        items = self.fn(*args, **kwargs)
        try:
            for item in items:
                time.sleep(self.delay)
                self.items += 1
                yield item
        finally:
            items.close()
            self.closed_at = time.monotonic()


@dataclass
class Kept:
    session: object
    adapter: object
    model: object


@pytest.fixture
def kept(monkeypatch) -> list[Kept]:
    """Every fine-tuning result the app keeps as a session's model, in order."""
    results: list[Kept] = []
    keep = finetune_logic.keep_result

    def keep_and_note(session, key, adapter, model, **kw):
        keep(session, key, adapter, model, **kw)
        results.append(Kept(session, adapter, model))

    monkeypatch.setattr(finetune_logic, "keep_result", keep_and_note)
    return results


def library_text(served, adapter, args: tuple = SAMPLED) -> str:
    """What ``gpt2.generate`` makes with the shared base and ``adapter`` for /generate's inputs."""
    base = served.ctx.store.get(served.key)
    params = sampling(*args, max_tokens=served.ctx.caps.max_new_tokens)
    return "".join(s.text for s in with_adapter(gpt2.generate(base, gpt2.encode(PROMPT), params), adapter))


def assert_complete_model(served, found: Kept, cl: gradio_client.Client, download: dict, tmp_path: Path) -> None:
    """The session holds the kept adapter, every weight of it finite; the client's generations come from
    exactly that adapter, and its download is the same model."""
    assert found.session.adapter is found.adapter and found.session.use_finetuned
    assert all(torch.isfinite(p).all() for p in found.adapter.parameters())
    assert generate(cl) == library_text(served, found.adapter)
    with zipfile.ZipFile(download["value"]) as z:
        z.extractall(tmp_path / "download")
    loaded = gpt2.GPT2.from_pretrained(tmp_path / "download", device="cpu", dtype=torch.float32)
    assert all(torch.isfinite(t).all() for t in loaded.state_dict().values())
    ids = torch.tensor([gpt2.encode(TEXT)])
    base = served.ctx.store.get(served.key)
    with torch.no_grad(), use_adapter(found.adapter):
        expected = base(ids)
    with torch.no_grad():
        assert torch.allclose(loaded(ids), expected, atol=1e-5)


# ---------------------------------------------------------------- Stop


def test_stop_mid_fine_tuning_keeps_a_complete_working_model(served, monkeypatch, kept, tmp_path):
    other = client(served)
    base_text = generate(other)
    watched = Watched(training.train)
    monkeypatch.setattr(training, "train", watched)
    cl = client(served)
    steps = served.ctx.caps.max_train_steps
    job = cl.submit(*finetune_args(TEXT_A, steps), api_name="/finetune")
    wait_until(lambda: shown_step(job) >= 2, 60, "the run shows step 2")
    pressed = watched.items  # steps finished when Stop is pressed
    press_stop(cl)
    done = watched.items  # steps finished once the stop request is in
    t0 = time.monotonic()
    _, progress, before, after, _ = job.result(timeout=60)
    assert time.monotonic() - t0 < 30  # the step in progress and the samples (no zip): not the whole run
    stopped_at = step_of(progress)
    assert f"Stopped at step {stopped_at} of {steps}" in progress and "is kept" in progress
    # the step in progress, and the next if the previous one had checked for a stop just before (it evaluates
    # before handing on its record): no more
    assert pressed <= stopped_at <= done + 2 < steps
    assert before and after and before != after
    assert len(kept) == 1
    assert_complete_model(served, kept[0], cl, cl.predict(api_name="/download_finetuned"), tmp_path)
    assert generate(cl) != base_text
    assert generate(other) == base_text  # the shared base is untouched


# ---------------------------------------------------------------- the client goes away


@pytest.mark.parametrize("how", ["cancel", "tab closed"])
def test_client_gone_mid_generation_ends_the_generation(served, monkeypatch, how):
    other = client(served)
    before = generate(other)
    long = (served.ctx.caps.max_new_tokens, *SAMPLED[1:])
    watched = Watched(gpt2.generate, delay=0.05)  # the longest generation takes >= 12 s
    monkeypatch.setattr(gpt2, "generate", watched)
    cl = client(served)
    if how == "cancel":
        job = cl.submit(PROMPT, *long, api_name="/generate")
        wait_until(lambda: watched.items >= 5, 60, "5 tokens are generated")
        assert job.cancel()
    else:
        close_tab(cl, "/generate", (PROMPT, *long, *RAW_DEFAULTS), until=lambda: watched.items >= 5)
    gone, made = time.monotonic(), watched.items
    wait_until(lambda: watched.closed_at is not None, 10, "the server closes the abandoned generation")
    assert watched.closed_at - gone < 5 and watched.items <= made + 10 < long[0]
    time.sleep(0.3)
    assert watched.items <= made + 10  # and it stays closed
    monkeypatch.undo()
    assert generate(other) == before  # the app keeps serving, other clients as before
    if how == "cancel":
        assert generate(cl) == before  # the same client too


@pytest.mark.parametrize("how", ["cancel", "tab closed"])
def test_client_gone_mid_fine_tuning_ends_the_run_and_frees_the_trainer(served, monkeypatch, how):
    other = client(served)
    before = generate(other)
    steps = served.ctx.caps.max_train_steps
    watched = Watched(training.train, delay=0.2)  # the whole run would take >= 100 s
    monkeypatch.setattr(training, "train", watched)
    cl = client(served)
    if how == "cancel":
        job = cl.submit(*finetune_args(TEXT_A, steps), api_name="/finetune")
        wait_until(lambda: watched.items >= 3, 60, "3 training steps are done")
        assert job.cancel()
    else:
        close_tab(cl, "/finetune", finetune_args(TEXT_A, steps), until=lambda: watched.items >= 3)
    gone, made = time.monotonic(), watched.items
    wait_until(lambda: watched.closed_at is not None, 15, "the server closes the abandoned run")
    assert watched.closed_at - gone < 10 and watched.items <= made + 10 < steps
    # One run at a time trains (the "train" queue): another client's run would wait behind an abandoned one.
    t0 = time.monotonic()
    progress = client(served).predict(*finetune_args(TEXT_B, 3), api_name="/finetune")[1]
    assert "Finished all 3 steps" in progress and time.monotonic() - t0 < 45
    assert watched.calls == 2 and watched.items <= made + 10 + 3  # the abandoned run stayed closed
    monkeypatch.undo()
    assert generate(other) == before
    if how == "cancel":
        assert generate(cl)  # the client that went away can come back


def test_closed_tab_frees_its_session(served, kept):
    """A closed tab's session (its fine-tuned model, generation records and private folder) is freed when
    the tab closes: nobody can come back to it (a new page is a new session)."""
    tab = Tab(client(served))
    progress = tab.run("/finetune", finetune_args(TEXT_A, 2))[1]
    assert "Finished all 2 steps" in progress and len(kept) == 1
    session = kept[0].session
    workdir = session.workdir
    assert workdir.is_dir() and session.adapter is not None
    tab.close()
    wait_until(lambda: session.adapter is None and not workdir.exists(), 10, "the closed tab's session is freed")


# ---------------------------------------------------------------- NaN


def test_nan_during_fine_tuning_stops_the_run_and_says_so(served, monkeypatch, kept, tmp_path):
    other = client(served)
    base_text = generate(other)
    loss_sum, training_batches = Trainer._loss_sum, []

    def nan_on_third_step(self, forward, x, y):
        loss = loss_sum(self, forward, x, y)
        if torch.is_grad_enabled():  # a training step (evaluations run without gradients)
            training_batches.append(len(x))
            if len(training_batches) == 3:
                return loss * math.nan
        return loss

    monkeypatch.setattr(Trainer, "_loss_sum", nan_on_third_step)
    cl = client(served)
    fig, progress, before, after, _ = cl.predict(*finetune_args(TEXT_A, 6), api_name="/finetune")
    assert len(training_batches) == 3  # the run stopped at the NaN
    assert re.search(r"(?i)not finite at step 3\b.*stopped", progress), progress
    assert "lower learning rate" in progress and "What it learned before that step is kept" in progress
    train = next(t for t in json.loads(fig["plot"])["data"] if t["name"] == "train")
    assert plot_values(train["x"]) == [1, 2] and all(math.isfinite(v) for v in plot_values(train["y"]))
    assert len(kept) == 1 and after and after != before
    assert_complete_model(served, kept[0], cl, cl.predict(api_name="/download_finetuned"), tmp_path)
    assert generate(other) == base_text


# ---------------------------------------------------------------- killed while saving a checkpoint

PAUSE = """
import os, sys, time
sys.path.insert(0, {repo!r})
import gpt2, gpt2.weights
def pause(*args, **kwargs):
    print("paused", flush=True)
    time.sleep(120)
"""
KILL_POINTS = {
    # safetensors' writer: the temporary directory holds no weights yet
    "writing the weights": "gpt2.weights.save_file = pause",
    # the weights written, config.json half written: a directory with both files, not loadable
    "writing the config": textwrap.dedent("""
        import pathlib
        write_text = pathlib.Path.write_text
        def half_write(path, text, *args, **kwargs):
            if path.name == "config.json":
                write_text(path, text[: len(text) // 2], *args, **kwargs)
                pause()
            return write_text(path, text, *args, **kwargs)
        pathlib.Path.write_text = half_write
        """),
    # the old checkpoint renamed aside, the new one not yet renamed in
    "mid-swap": textwrap.dedent("""
        replace = os.replace
        def pausing_replace(src, dst):
            if os.path.basename(dst) == "ckpt" and os.path.basename(src).startswith(".ckpt.tmp-"):
                pause()
            replace(src, dst)
        os.replace = pausing_replace
        """),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_mid_save_the_picker_offers_the_previous_checkpoint_only(tiny_dir, tmp_path, monkeypatch, point):
    """A checkpoint under ``checkpoints/`` (which the model picker lists) is overwritten by a process that is
    killed mid-save: the picker still offers it, it loads the previous weights, and no half-written or
    temporary directory is offered as a model. (``gpt2.weights`` itself: test_weights.py.)"""
    root = tmp_path / "checkpoints"
    root.mkdir()
    shutil.copytree(tiny_dir, root / "ckpt")
    code = PAUSE.format(repo=str(REPO)) + KILL_POINTS[point] + textwrap.dedent(f"""
        import torch
        torch.manual_seed(1)
        gpt2.GPT2(gpt2.GPTConfig.preset("tiny")).save_pretrained({str(root / "ckpt")!r})
        print("saved", flush=True)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "paused"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    monkeypatch.setattr(ui.models, "CHECKPOINTS", root)
    entries = ui.models.catalog()
    offered = sorted(k for k, e in entries.items() if Path(e.source).parent == root)
    assert offered == ["ckpt"], f"the picker offers {offered}; left in checkpoints/: {sorted(os.listdir(root))}"
    loaded = ui.models.ModelStore(entries).get("ckpt")
    previous = gpt2.GPT2.from_pretrained(tiny_dir)
    assert all(torch.equal(v, previous.state_dict()[k]) for k, v in loaded.state_dict().items())


# ---------------------------------------------------------------- out of GPU memory


class OutOfMemory:
    """Patches ``GPT2.residual`` (every pass through the blocks: ``forward`` and the attention views):
    once armed, a pass raises ``torch.OutOfMemoryError`` (once)."""

    def __init__(self) -> None:
        self.residual = gpt2.GPT2.residual
        self.when: Callable[[], bool] | None = None
        self.raised = 0

    def arm(self, skip: int = 0, training_only: bool = False) -> None:
        """Fail the first forward pass after ``skip`` others (counting training passes only, if asked)."""
        seen = [0]

        def when() -> bool:
            if training_only and not torch.is_grad_enabled():
                return False
            seen[0] += 1
            return seen[0] > skip

        self.when = when

    def __call__(self, model, *args, **kwargs):
        if self.when is not None and self.when():
            self.when = None
            self.raised += 1
            raise torch.OutOfMemoryError(OOM)
        return self.residual(model, *args, **kwargs)


@pytest.fixture
def oom(monkeypatch) -> OutOfMemory:
    fault = OutOfMemory()
    monkeypatch.setattr(gpt2.GPT2, "residual", lambda model, *a, **k: fault(model, *a, **k))
    return fault


def assert_oom_message(error: pytest.ExceptionInfo) -> None:
    message = str(error.value)
    assert re.search(OOM_MESSAGE, message), f"no out-of-memory message: {message!r}"
    assert re.search(OOM_ADVICE, message), f"the message does not say what to do: {message!r}"


CALLS = {
    "generate": lambda cl: generate(cl),  # the text (the stats say how fast it went)
    "attention": lambda cl: cl.predict(TEXT, "text", None, 0, 1, "one head", 5, 0, api_name="/attention"),
    "text_probabilities": lambda cl: cl.predict(TEXT, api_name="/text_probabilities"),
}


@pytest.mark.parametrize("endpoint", list(CALLS))
def test_out_of_memory_is_a_clear_message_and_the_app_keeps_serving(served, oom, endpoint):
    call = CALLS[endpoint]
    other = client(served)
    expected, other_before = call(other), generate(other)
    cl = client(served)
    oom.arm()
    with pytest.raises(AppError) as error:
        call(cl)
    assert oom.raised == 1
    assert_oom_message(error)
    assert call(cl) == expected  # the next ordinary request of the same client works
    assert generate(other) == other_before and call(other) == expected  # other clients are unaffected


def test_out_of_memory_mid_fine_tuning_keeps_the_sessions_model(served, oom, kept, tmp_path):
    other = client(served)
    other_before = generate(other)
    cl = client(served)
    cl.predict(*finetune_args(TEXT_A, 3), api_name="/finetune")
    tuned = generate(cl)
    assert len(kept) == 1 and tuned != other_before
    oom.arm(skip=1, training_only=True)  # the second training step runs out of memory
    with pytest.raises(AppError) as error:
        cl.predict(*finetune_args(TEXT_B, 6), api_name="/finetune")
    assert oom.raised == 1
    assert_oom_message(error)
    # Nothing half-applied: the session's model is a complete kept result (here: the earlier one).
    assert kept[-1].session is kept[0].session
    assert generate(cl) == library_text(served, kept[-1].adapter)
    progress = cl.predict(*finetune_args(TEXT_B, 3), api_name="/finetune")[1]  # training works again
    assert "Finished all 3 steps" in progress and generate(cl) not in (tuned, other_before)
    assert generate(other) == other_before
