"""ui.finetune_tab: the /finetune handler driven as a generator on a tiny random model (no browser), plus
one gradio_client round trip through a launched app. Runs are a few steps of 2 x 16 tokens."""

from __future__ import annotations

import re
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go
import pytest
import torch
from conftest import free_port

import gpt2
from training import LoRAAdapter, merge_lora, prepare_data, use_adapter
from ui import finetune_tab as ft
from ui.context import AppContext, Caps
from ui.generate_tab import stream
from ui.gpu import ModelRef
from ui.models import ModelStore, catalog
from ui.session import Session

TEXT_A = " ".join(f"The cat number {i} sat on the mat." for i in range(120))
TEXT_B = "\n".join(f"ROMEO: O {i}, thy love is {i * 7} roses." for i in range(120))
IDS = torch.tensor([gpt2.encode("The cat number 7 sat on")])
FAST = dict(text=TEXT_A, file=None, column="text", mode="LoRA", steps=4, learning_rate=1e-2, batch_size=2,
            block_size=16, lora_rank=4, sample_prompt="The cat", seed=0)


def make_ctx(model_dir: str, **caps) -> AppContext:
    caps = Caps(**({"max_train_steps": 20, "max_new_tokens": 12, "max_upload_bytes": 20_000} | caps))
    return AppContext(ModelStore(catalog(extra=model_dir)), default_key=model_dir, caps=caps)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ctx(tiny_dir) -> AppContext:
    return make_ctx(tiny_dir)


@pytest.fixture(scope="module")
def h(ctx) -> ft.Handlers:
    return ft.make_handlers(ctx)


def run(h: ft.Handlers, session: Session | None = None, **kw) -> list[tuple]:
    """Drive /finetune to the end; every output tuple it yielded."""
    args = FAST | kw
    return list(h.finetune(*args.values(), session))


def snapshot(model: gpt2.GPT2) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(model: gpt2.GPT2, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def tokens(ctx: AppContext, session: Session, prompt: str = "The cat") -> list[int]:
    """A seeded generation through the Generate tab's stream, with the session's current model."""
    params = gpt2.SamplingParams(temperature=0.8, top_k=40, max_new_tokens=12, seed=5, stop_at_eos=False)
    return list(stream(ctx, session, prompt, params))[-1].record.token_ids


def step_of(markdown: str) -> int | None:
    m = re.search(r"\*\*step (\d+) / \d+\*\*", markdown)
    return int(m.group(1)) if m else None


@pytest.fixture(scope="module")
def lora_run(ctx, h):
    """One LoRA run, with another session generating before and after it."""
    base = ctx.store.get(ctx.default_key)
    weights = snapshot(base)
    other = ctx.new_session()
    other_before = tokens(ctx, other)
    outs = run(h)
    session = outs[-1][-1]
    return dict(base=base, weights=weights, other=other, other_before=other_before, other_after=tokens(ctx, other),
                outs=outs, session=session)


def test_lora_run_streams_progress_and_keeps_the_adapter(ctx, lora_run):
    outs, session = lora_run["outs"], lora_run["session"]
    assert len(outs) >= 4 and all(isinstance(o[0], go.Figure) for o in outs)
    assert step_of(outs[-1][1]) == 4 and "Finished all 4 steps" in outs[-1][1] and "ETA" in outs[2][1]
    train = next(t for t in outs[-1][0].data if t.name == "train")
    assert list(train.x) == [1, 2, 3, 4] and any(t.name == "validation" for t in outs[-1][0].data)
    assert isinstance(session.adapter, LoRAAdapter) and session.adapter_base == ctx.default_key
    assert session.use_finetuned and session.finetuned_model is None
    assert ctx.ref(session) == ModelRef(ctx.default_key, adapter=session.adapter)
    before, after = outs[-1][2], outs[-1][3]
    assert before and after and before != after  # same seed, different model


def test_lora_leaves_the_base_and_other_sessions_alone(ctx, lora_run):
    assert same_weights(lora_run["base"], lora_run["weights"])
    assert not any(p.requires_grad for p in lora_run["base"].parameters()) and not lora_run["base"].training
    assert lora_run["other_after"] == lora_run["other_before"]
    assert tokens(ctx, lora_run["session"]) != lora_run["other_before"]  # the fine-tuned session differs


def test_zip_is_the_merged_model_in_hf_layout(tmp_path, lora_run):
    download = lora_run["outs"][-1][4]
    assert download["visible"] and Path(download["value"]).parent == lora_run["session"].workdir
    with zipfile.ZipFile(download["value"]) as z:
        assert set(z.namelist()) == {"config.json", "model.safetensors"}
        z.extractall(tmp_path)
    loaded = gpt2.GPT2.from_pretrained(tmp_path, device="cpu", dtype=torch.float32)
    base, adapter = lora_run["base"], lora_run["session"].adapter
    with torch.no_grad():
        assert torch.equal(loaded(IDS), merge_lora(base, adapter)(IDS))
        with use_adapter(adapter):
            assert torch.allclose(loaded(IDS), base(IDS), atol=1e-5)


def test_full_fine_tuning_trains_a_private_copy(ctx, h, tmp_path):
    base = ctx.store.get(ctx.default_key)
    weights = snapshot(base)
    outs = run(h, mode="full", learning_rate=1e-3)
    session = outs[-1][-1]
    copy = session.finetuned_model
    assert copy is not None and copy is not base and session.adapter is None and session.use_finetuned
    assert not same_weights(copy, weights) and same_weights(base, weights)
    assert not any(p.requires_grad for p in copy.parameters())
    assert ctx.ref(session) == ModelRef(ctx.default_key, model=copy)
    assert ctx.ref(session, finetuned=False) == ModelRef(ctx.default_key)
    with zipfile.ZipFile(outs[-1][4]["value"]) as z:
        z.extractall(tmp_path)
    with torch.no_grad():
        assert torch.equal(gpt2.GPT2.from_pretrained(tmp_path, device="cpu", dtype=torch.float32)(IDS), copy(IDS))


def test_stop_ends_promptly_and_keeps_what_was_learned(h):
    outs, stopped_at = [], None
    for out in h.finetune(*(FAST | {"steps": 20}).values(), None):
        outs.append(out)
        step = step_of(out[1])
        if step and stopped_at is None:  # Stop pressed from another thread (as Gradio runs it)
            stopped_at = step
            presser = threading.Thread(target=out[-1].train_stop.set)
            presser.start()
            presser.join()
    session = outs[-1][-1]
    assert step_of(outs[-1][1]) <= stopped_at + 1 < 20  # the step in progress finishes, no more
    assert "Stopped at step" in outs[-1][1]
    assert session.adapter is not None and session.use_finetuned and outs[-1][3] and outs[-1][4]["value"]
    again = run(h, session)  # a new Start clears the stop request
    assert "Finished all 4 steps" in again[-1][1]


def test_training_wall_clock_is_capped_on_the_server(tiny_dir):
    ctx = make_ctx(tiny_dir, max_train_steps=100_000, max_train_seconds=1)
    t0 = time.perf_counter()
    outs = run(ft.make_handlers(ctx), steps=100_000)
    assert time.perf_counter() - t0 < 30 and "time limit (1 s)" in outs[-1][1] and outs[-1][-1].adapter is not None


def test_toggle_switches_between_base_and_fine_tuned(ctx, h, lora_run):
    with pytest.warns(UserWarning, match="Nothing fine-tuned yet"):
        value, fresh = h.toggle(True, None)
    assert value is False and not fresh.use_finetuned
    session = lora_run["session"]
    assert h.toggle(False, session)[0] is False and ctx.ref(session).adapter is None
    assert h.toggle(True, session)[0] is True and ctx.ref(session).adapter is session.adapter
    h.stop(None)  # Stop before any run: nothing to do, no error


def _write(tmp: Path, name: str, data: bytes) -> str:
    (tmp / name).write_bytes(data)
    return str(tmp / name)


BAD_FILES = {
    "empty": ("empty.txt", b"", "The uploaded file is empty"),
    "binary": ("blob.txt", b"\x00\x01\x02binary" * 50, "binary file"),
    "extension": ("notes.pdf", b"%PDF-1.4", r"Upload a \.txt, \.csv or \.jsonl file; this one is a '\.pdf' file"),
    "oversize": ("big.txt", b"a" * 20_001, "20,001 bytes; this server accepts at most 20,000 bytes"),
    "csv column": ("t.csv", b"a,b\n" + b"x,y\n" * 50, "has no column 'text'; its columns are: 'a', 'b'"),
    "jsonl line": ("t.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n',
                   "The uploaded file, line 3: not valid JSON"),
    "no extension": ("README", b"some text " * 100, "this one is a file without an extension"),
    "tiny text": ("t.txt", b"Hello there.", "The uploaded file is too small.*use more text"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_say_what_is_wrong(h, tmp_path, case):
    name, data, message = BAD_FILES[case]
    with pytest.raises(gr.Error, match=message):
        run(h, file=_write(tmp_path, name, data))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"text": ""}, "No training data: paste some text, or upload"),
        ({"text": "  \n "}, "No training data"),
        ({"text": "word " * 5000}, "The pasted text is 25,000 bytes"),
        ({"text": "The cat sat. " * 40, "block_size": 64}, r"The pasted text is too small.*block size of \d+ or less"),
        ({"steps": 0}, "Steps must be a whole number from 1 to 20"),
        ({"steps": 21}, r"from 1 to 20 \(this server's limit\)"),
        ({"steps": 2.5}, "Steps must be a whole number"),
        ({"learning_rate": 10}, "Learning rate must be above 0 and at most 1"),
        ({"learning_rate": 0}, "Learning rate must be above 0"),
        ({"learning_rate": float("nan")}, "Learning rate must be a finite number"),
        ({"learning_rate": "fast"}, "Learning rate must be a number"),
        ({"block_size": 65}, r"Block size must be a whole number from 8 to 64 \(the model's context\)"),
        ({"block_size": 4}, "Block size must be a whole number from 8"),
        ({"batch_size": 0}, "Batch size must be a whole number from 1 to 32"),
        ({"lora_rank": 0}, "LoRA rank must be"),
        ({"mode": "adam"}, "Mode must be 'LoRA' or 'full'"),
        ({"seed": 1.5}, "Seed must be a whole number"),
    ],
)
def test_bad_values_say_what_to_do(h, kw, message):
    with pytest.raises(gr.Error, match=message):
        run(h, **kw)


def test_full_fine_tuning_of_a_big_model_is_refused(h, monkeypatch):
    monkeypatch.setattr(ft, "FULL_MAX_PARAMS", 1000)  # the tiny model stands in for a large one
    with pytest.raises(gr.Error, match="Full fine-tuning is limited to models of up to 0M parameters.*choose LoRA"):
        run(h, mode="full")


def test_a_failed_request_keeps_the_earlier_result(h, lora_run):
    session = lora_run["session"]
    adapter = session.adapter
    with pytest.raises(gr.Error):
        run(h, session, steps=0)
    with pytest.raises(gr.Error):
        run(h, session, text="")
    assert session.adapter is adapter and session.use_finetuned


def test_huge_upload_is_refused_without_reading_it(h, tmp_path):
    path = tmp_path / "huge.txt"
    with path.open("wb") as f:
        f.truncate(10**9)  # sparse: reading it would take seconds
    t0 = time.perf_counter()
    with pytest.raises(gr.Error, match="1000.0 MB"):
        run(h, file=str(path))
    assert time.perf_counter() - t0 < 2


def test_uploaded_names_never_become_paths(h, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd.txt").write_text(TEXT_B)
    tricky = str(tmp_path / "a" / "b" / ".." / ".." / "etc" / "passwd.txt")
    listing = sorted(tmp_path.rglob("*"))
    outs = run(h, file=tricky, text="ignored paste")
    session = outs[-1][-1]
    assert sorted(tmp_path.rglob("*")) == listing and (tmp_path / "etc" / "passwd.txt").read_text() == TEXT_B
    assert (session.workdir / "upload.txt").read_text() == TEXT_B  # read as data, under our own name
    assert not any("passwd" in p.name for p in session.workdir.rglob("*"))
    assert "training on the uploaded file" in outs[-1][1]


def test_csv_column_and_instruction_jsonl(h, tmp_path):
    rows = "".join(f'{i},"Line {i}: the cat sat on the mat."\n' for i in range(150))
    outs = run(h, file=_write(tmp_path, "t.csv", f"id,body\n{rows}".encode()), column="body", steps=2)
    assert step_of(outs[-1][1]) == 2
    records = "".join(f'{{"instruction": "Add {i} and 1", "output": "{i + 1}"}}\n' for i in range(60))
    data = prepare_data(_write(tmp_path, "q.jsonl", records.encode()), 16, cache_dir=tmp_path / "cache")
    prompt = ft.data_prompt(data)  # the default sample prompt: a record's prompt, without its answer
    assert "Add" in prompt and not prompt.rstrip().endswith(tuple("0123456789"))


def test_two_sessions_train_at_once_and_keep_their_own_adapters(ctx, h):
    base = ctx.store.get(ctx.default_key)
    weights = snapshot(base)
    with ThreadPoolExecutor(2) as pool:
        runs = {name: pool.submit(run, h, text=text, steps=6) for name, text in (("a", TEXT_A), ("b", TEXT_B))}
        results = {name: r.result() for name, r in runs.items()}  # re-raises a run's error
    assert same_weights(base, weights)
    sa, sb = results["a"][-1][-1], results["b"][-1][-1]
    assert sa is not sb and sa.adapter is not sb.adapter and sa.workdir != sb.workdir
    ids = gpt2.encode(FAST["sample_prompt"])
    params = ft.sample_params(ctx.caps, FAST["seed"])
    for name, s in (("a", sa), ("b", sb)):  # each "after" sample came from that session's own adapter
        with use_adapter(s.adapter):
            assert results[name][-1][3] == ft.sample_text(base, ids, params)
    assert results["a"][-1][3] != results["b"][-1][3]


def test_build_wires_the_endpoint_queue_and_header_toggle(ctx):
    with gr.Blocks() as demo:
        state = gr.State(None)
        checkbox = gr.Checkbox(False)
        tab = ft.build(ctx, state, checkbox)
    fn = next(f for f in demo.fns.values() if f.api_name == "finetune")
    assert (fn.concurrency_limit, fn.concurrency_id) == (1, "train")
    assert tab.done and "/finetune" in demo.get_api_info()["named_endpoints"]


@pytest.mark.slow
def test_finetune_endpoint_with_gradio_client(tiny_dir, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    ctx = make_ctx(tiny_dir)
    with gr.Blocks() as demo:
        state = gr.State(None)
        ft.build(ctx, state)
    demo.queue()
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        upload = gradio_client.handle_file(_write(tmp_path, "poem.txt", TEXT_B.encode()))
        args = FAST | {"file": upload, "text": ""}
        _, progress, before, after, download = client.predict(*args.values(), api_name="/finetune")
        assert "Finished all 4 steps" in progress and before != after and download["visible"]
        with zipfile.ZipFile(download["value"]) as z:  # the client downloaded the zip
            assert set(z.namelist()) == {"config.json", "model.safetensors"}
    finally:
        demo.close()
