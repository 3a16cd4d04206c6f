"""The Fine-tune tab's logic (``ui.logic.finetune``, ``finetune_data``, ``finetune_plan``), driven as plain
generators on a tiny random model (no browser), plus one gradio_client round trip through the launched
app. Runs are a few steps of 2 x 16 tokens."""

from __future__ import annotations

import math
import re
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch
from conftest import make_ctx, random_model

import gpt2
from gpt2.lora import LoRAAdapter, merge_lora, use_adapter
from training import StepRecord, prepare_data
from ui.gpu import ModelRef
from ui.inputs import UserError
from ui.logic import finetune as logic
from ui.logic import finetune_data as files
from ui.logic import finetune_plan as plan
from ui.logic import header
from ui.logic.generate import stream
from ui.models import Entry
from ui.session import Session
from ui.updates import KEEP

TEXT_A = " ".join(f"The cat number {i} sat on the mat." for i in range(120))
TEXT_B = "\n".join(f"ROMEO: O {i}, thy love is {i * 7} roses." for i in range(120))
IDS = torch.tensor([gpt2.encode("The cat number 7 sat on")])
FAST = dict(text=TEXT_A, file=None, column="text", mode="LoRA", steps=4, learning_rate=1e-2, batch_size=2,
            block_size=16, lora_rank=4, sample_prompt="The cat", seed=0)
CAPS = dict(max_train_steps=20, max_new_tokens=12, max_upload_bytes=20_000)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ctx(tiny_dir):
    return make_ctx(tiny_dir, **CAPS)


def run(ctx, session: Session | None = None, **kw) -> tuple[Session, list[tuple]]:
    """Drive /finetune to the end: the session and every output tuple it yielded."""
    session = session or ctx.new_session()
    return session, list(logic.finetune(ctx, session, **(FAST | kw)))


def refused(ctx, session: Session | None = None, **kw) -> str:
    """The message of a run refused before its first output (the page is left as it was)."""
    with pytest.raises(UserError) as e:
        next(logic.finetune(ctx, session or ctx.new_session(), **(FAST | kw)))
    return str(e.value)


def snapshot(model: gpt2.GPT2) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(model: gpt2.GPT2, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def tokens(ctx, session: Session, prompt: str = "The cat") -> list[int]:
    """A seeded generation through the Generate tab's stream, with the session's current model."""
    params = gpt2.SamplingParams(temperature=0.8, top_k=40, max_new_tokens=12, seed=5, stop_at_eos=False)
    return list(stream(ctx, session, prompt, params))[-1].record.token_ids


def step_of(markdown: str) -> int | None:
    m = re.search(r"\*\*step (\d+) / \d+\*\*", markdown)
    return int(m.group(1)) if m else None


def unzip(path: str, to: Path) -> gpt2.GPT2:
    with zipfile.ZipFile(path) as z:
        assert set(z.namelist()) == {"config.json", "model.safetensors"}
        z.extractall(to)
    return gpt2.GPT2.from_pretrained(to, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def lora_run(ctx):
    """One LoRA run, with another session generating before and after it."""
    base = ctx.store.get(ctx.default_key)
    weights = snapshot(base)
    other = ctx.new_session()
    other_before = tokens(ctx, other)
    session, outs = run(ctx)
    return dict(base=base, weights=weights, other=other, other_before=other_before, other_after=tokens(ctx, other),
                outs=outs, session=session)


# ---------------------------------------------------------------- runs


def test_lora_run_streams_progress_and_keeps_the_adapter(ctx, lora_run):
    outs, session = lora_run["outs"], lora_run["session"]
    assert len(outs) >= 4 and all(isinstance(o[0], go.Figure) for o in outs)
    assert "Training starts" in outs[0][1] and "expected" in outs[0][1]
    assert step_of(outs[-1][1]) == 4 and "Finished all 4 steps" in outs[-1][1]
    assert any("ETA" in o[1] for o in outs if step_of(o[1]) not in (None, 4))
    train = next(t for t in outs[-1][0].data if t.name == "train")
    assert list(train.x) == [1, 2, 3, 4] and any(t.name == "validation" for t in outs[-1][0].data)
    assert any(t.name == "validation accuracy" for t in outs[-1][0].data) and "perplexity" in outs[-1][1]
    key = ctx.store.key(ctx.default_key)  # the default model in its default precision: a new session's
    assert isinstance(session.adapter, LoRAAdapter) and session.adapter_base == key == session.model_key
    assert session.use_finetuned and session.finetuned_model is None
    assert ctx.ref(session) == ModelRef(key, adapter=session.adapter)
    before, after = outs[-1][2], outs[-1][3]
    assert before and after and before != after  # same seed, different model


def test_lora_leaves_the_base_and_other_sessions_alone(ctx, lora_run):
    assert same_weights(lora_run["base"], lora_run["weights"])
    assert not any(p.requires_grad for p in lora_run["base"].parameters()) and not lora_run["base"].training
    assert lora_run["other_after"] == lora_run["other_before"]
    assert tokens(ctx, lora_run["session"]) != lora_run["other_before"]  # the fine-tuned session differs


def test_nothing_is_zipped_until_the_download_is_asked_for(ctx, lora_run, tmp_path):
    session, outs = lora_run["session"], lora_run["outs"]
    assert not list(session.workdir.glob("*.zip"))  # the run packed nothing
    assert outs[-1][4].props == {"value": None, "visible": False} and all(o[4] is KEEP for o in outs[:-1])
    download = files.export(ctx, session)
    assert download["visible"] and Path(download["value"]).parent == session.workdir
    assert "MB" in download["label"] or "bytes" in download["label"]
    loaded = unzip(download["value"], tmp_path)
    base, adapter = lora_run["base"], session.adapter
    with torch.no_grad():
        assert torch.equal(loaded(IDS), merge_lora(base, adapter)(IDS))
        with use_adapter(adapter):
            assert torch.allclose(loaded(IDS), base(IDS), atol=1e-5)
    made = Path(download["value"]).stat().st_mtime_ns
    assert Path(files.export(ctx, session)["value"]).stat().st_mtime_ns == made  # packed once per result


def test_a_new_result_replaces_the_old_download(ctx):
    session, _ = run(ctx, steps=2)
    zip_path = Path(files.export(ctx, session)["value"])
    first = session.adapter
    run(ctx, session, steps=2, seed=1)
    assert session.adapter is not first and not zip_path.exists()  # the zip of the replaced model is gone
    with pytest.raises(UserError, match="Nothing fine-tuned yet"):
        files.export(ctx, ctx.new_session())


def test_full_fine_tuning_trains_a_private_copy(ctx, tmp_path):
    base = ctx.store.get(ctx.default_key)
    weights = snapshot(base)
    session, _ = run(ctx, mode="full", learning_rate=1e-3)
    copy = session.finetuned_model
    assert copy is not None and copy is not base and session.adapter is None and session.use_finetuned
    assert not same_weights(copy, weights) and same_weights(base, weights)
    assert not any(p.requires_grad for p in copy.parameters())
    assert ctx.ref(session) == ModelRef(session.model_key, model=copy)
    assert ctx.ref(session, finetuned=False) == ModelRef(session.model_key)
    with torch.no_grad():
        assert torch.equal(unzip(files.export(ctx, session)["value"], tmp_path)(IDS), copy(IDS))


def test_stop_ends_promptly_keeps_what_was_learned_and_packs_nothing(ctx):
    session, outs, stopped_at = ctx.new_session(), [], None
    for out in logic.finetune(ctx, session, **(FAST | {"steps": 20})):
        outs.append(out)
        step = step_of(out[1])
        if step and stopped_at is None:  # Stop pressed from another thread (as Gradio runs it)
            stopped_at = step
            presser = threading.Thread(target=logic.stop, args=(ctx, session))
            presser.start()
            presser.join()
    assert step_of(outs[-1][1]) <= stopped_at + 1 < 20  # the step in progress finishes, no more
    assert "Stopped at step" in outs[-1][1]
    assert session.adapter is not None and session.use_finetuned and outs[-1][3]
    assert not list(session.workdir.glob("*.zip"))
    _, again = run(ctx, session)  # a new Start clears the stop request
    assert "Finished all 4 steps" in again[-1][1]
    logic.stop(ctx, ctx.new_session())  # Stop before any run: nothing to do, no error


def test_training_wall_clock_is_capped_on_the_server(tiny_dir):
    capped = make_ctx(tiny_dir, **(CAPS | {"max_train_steps": 100_000, "max_train_seconds": 1}))
    t0 = time.perf_counter()
    session, outs = run(capped, steps=100_000)
    assert time.perf_counter() - t0 < 30 and "time limit for training (1 s)" in outs[-1][1]
    assert session.adapter is not None


# ---------------------------------------------------------------- refusals leave the last good run


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
def test_bad_files_say_what_is_wrong(ctx, tmp_path, case):
    name, data, message = BAD_FILES[case]
    text = refused(ctx, file=_write(tmp_path, name, data))
    assert re.search(message, text) and "Nothing was trained: this session still uses the base model" in text


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"text": ""}, "No training data: paste some text, or upload"),
        ({"text": "  \n "}, "No training data"),
        ({"text": "word " * 5000}, "The pasted text is 25,000 bytes"),
        ({"text": "The cat sat. " * 40, "block_size": 64}, r"The pasted text is too small.*block size of \d+ or less"),
        ({"text": "a\x00b " * 50}, "NUL characters"),
        ({"steps": 0}, "steps must be a whole number from 1 to 20"),
        ({"steps": 21}, r"from 1 to 20 \(this server's limit\)"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"learning_rate": 10}, "learning_rate must be a number above 0 and at most 1"),
        ({"learning_rate": 0}, "learning_rate must be a number above 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be a number"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
        ({"block_size": 65}, r"block_size must be a whole number from 8 to 64 \(the model's context\)"),
        ({"block_size": 4}, "block_size must be a whole number from 8"),
        ({"batch_size": 0}, "batch_size must be a whole number from 1 to 32"),
        ({"lora_rank": 0}, "lora_rank must be"),
        ({"mode": "adam"}, "mode must be one of 'LoRA', 'full'"),
        ({"seed": 1.5}, "seed must be a whole number"),
    ],
)
def test_bad_values_say_what_to_do(ctx, kw, message):
    assert re.search(message, refused(ctx, **kw))


def test_full_fine_tuning_of_a_big_model_is_refused(ctx, monkeypatch):
    monkeypatch.setattr(logic, "FULL_MAX_PARAMS", 1000)  # the tiny model stands in for a large one
    assert re.search("Full fine-tuning is limited to models of up to 0M parameters.*choose LoRA",
                     refused(ctx, mode="full"))


def test_refused_data_leaves_the_last_good_run_and_says_which_model_is_used(ctx, tmp_path):
    """A wrong CSV column or a broken JSONL line is refused before the page changes: the last run's plot,
    samples and download stay, and the message says the fine-tuned model from it is still in use."""
    session, _ = run(ctx, steps=2)
    adapter, zip_path = session.adapter, Path(files.export(ctx, session)["value"])
    for name, data in (("t.csv", b"a,b\n" + b"x,y\n" * 50), ("t.jsonl", b'{"text": "ok"}\n{"text": oops}\n'),
                       ("e.txt", b"")):
        text = refused(ctx, session, file=_write(tmp_path, name, data))
        assert "Nothing was trained: this session still uses your fine-tuned model from the last run" in text
    assert refused(ctx, session, steps=0).endswith("still uses your fine-tuned model from the last run.")
    assert session.adapter is adapter and session.use_finetuned and zip_path.is_file()
    session.use_finetuned = False  # the header's switch turned off: the base is what it uses
    assert f"still uses the base model ({session.model_key})" in refused(ctx, session, text="")


def test_huge_upload_is_refused_without_reading_it(ctx, tmp_path):
    path = tmp_path / "huge.txt"
    with path.open("wb") as f:
        f.truncate(10**9)  # sparse: reading it would take seconds
    t0 = time.perf_counter()
    assert "1000.0 MB" in refused(ctx, file=str(path))
    assert time.perf_counter() - t0 < 2


def test_uploaded_names_never_become_paths(ctx, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd.txt").write_text(TEXT_B)
    tricky = str(tmp_path / "a" / "b" / ".." / ".." / "etc" / "passwd.txt")
    listing = sorted(tmp_path.rglob("*"))
    session, outs = run(ctx, file=tricky, text="ignored paste")
    assert sorted(tmp_path.rglob("*")) == listing and (tmp_path / "etc" / "passwd.txt").read_text() == TEXT_B
    assert (session.workdir / "upload.txt").read_text() == TEXT_B  # read as data, under our own name
    assert not any("passwd" in p.name for p in session.workdir.rglob("*"))
    assert "training on the uploaded file" in outs[-1][1]


def test_csv_column_and_instruction_jsonl(ctx, tmp_path):
    rows = "".join(f'{i},"Line {i}: the cat sat on the mat."\n' for i in range(150))
    session, outs = run(ctx, file=_write(tmp_path, "t.csv", f"id,body\n{rows}".encode()), column="body", steps=2)
    assert step_of(outs[-1][1]) == 2 and not session.instruction_tuned
    records = "".join(f'{{"instruction": "Add {i} and 1", "output": "{i + 1}"}}\n' for i in range(60))
    _, outs = run(ctx, session, file=_write(tmp_path, "q.jsonl", records.encode()), steps=2)
    assert step_of(outs[-1][1]) == 2 and session.instruction_tuned  # the chat hint knows the records' template
    data = prepare_data(tmp_path / "q.jsonl", 16, cache_dir=tmp_path / "cache")
    prompt = files.data_prompt(data)  # the default sample prompt: a record's prompt, without its answer
    assert "Add" in prompt and not prompt.rstrip().endswith(tuple("0123456789"))


def test_two_sessions_train_at_once_and_keep_their_own_adapters(ctx):
    base = ctx.store.get(ctx.default_key)
    weights = snapshot(base)
    with ThreadPoolExecutor(2) as pool:
        runs = {name: pool.submit(run, ctx, text=text, steps=6) for name, text in (("a", TEXT_A), ("b", TEXT_B))}
        results = {name: r.result() for name, r in runs.items()}  # re-raises a run's error
    assert same_weights(base, weights)
    (sa, outs_a), (sb, outs_b) = results["a"], results["b"]
    assert sa is not sb and sa.adapter is not sb.adapter and sa.workdir != sb.workdir
    ids = gpt2.encode(FAST["sample_prompt"])
    params = logic.sample_params(ctx.caps.max_new_tokens, FAST["seed"])
    for s, outs in ((sa, outs_a), (sb, outs_b)):  # each "after" sample came from that session's own adapter
        with use_adapter(s.adapter):
            assert outs[-1][3] == logic.sample_text(base, ids, params)
    assert outs_a[-1][3] != outs_b[-1][3]


# ---------------------------------------------------------------- a session on another precision


def in_precision(ctx, precision: str) -> Session:
    """A new session switched (as the header does) to the default model in ``precision``."""
    session = ctx.new_session()
    header.load_model(ctx, session, ctx.default_key, precision)
    return session


@pytest.fixture(scope="module")
def int8_run(ctx):
    """One LoRA run on the int8 version of the model: an fp32 adapter over the shared int8 base."""
    session = in_precision(ctx, "int8")
    base = ctx.store.get(session.model_key)
    weights, before = snapshot(base), tokens(ctx, session)
    _, outs = run(ctx, session)
    return dict(session=session, base=base, weights=weights, before=before, outs=outs)


def test_lora_fine_tunes_an_int8_model_and_leaves_its_base_alone(ctx, int8_run):
    session, base = int8_run["session"], int8_run["base"]
    assert base.quantization == "int8" and session.model_key == ctx.store.key(ctx.default_key, "int8")
    assert "Finished all 4 steps" in int8_run["outs"][-1][1]
    assert session.adapter_base == session.model_key and session.use_finetuned
    assert ctx.ref(session) == ModelRef(session.model_key, adapter=session.adapter)
    assert all(p.dtype == torch.float32 for p in session.adapter.parameters())
    assert same_weights(base, int8_run["weights"]) and not base.training
    assert tokens(ctx, session) != int8_run["before"]  # the adapter changes what the int8 model says
    assert ctx.store.get(ctx.default_key) is not base  # the fp32 model is another one, untouched


def test_an_adapter_applies_only_to_the_precision_it_was_trained_on(ctx, int8_run):
    trained = int8_run["session"]
    session = Session(model_key=trained.model_key, adapter=trained.adapter, adapter_base=trained.adapter_base,
                      use_finetuned=True)
    header.load_model(ctx, session, ctx.default_key, "fp32")
    assert not session.use_finetuned and not session.has_finetuned()
    value, message = header.use_finetuned(session, True)
    assert value is False and f"trained on {trained.model_key}" in message and "precision" in message
    header.load_model(ctx, session, ctx.default_key, "int8")
    assert header.use_finetuned(session, True) == (True, None) and ctx.ref(session).adapter is trained.adapter


def test_full_fine_tuning_needs_fp32_or_bf16_weights(ctx):
    session = in_precision(ctx, "int8")
    message = refused(ctx, session, mode="full", learning_rate=1e-3)
    assert "Full fine-tuning needs fp32 or bf16 weights" in message
    assert "choose LoRA, or switch the precision to fp32" in message and "Nothing was trained" in message
    assert session.adapter is None and session.finetuned_model is None
    bf16 = in_precision(ctx, "bf16")
    _, outs = run(ctx, bf16, mode="full", learning_rate=1e-3, steps=2)
    assert "Finished all 2 steps" in outs[-1][1] and bf16.finetuned_model.dtype == torch.bfloat16


# ---------------------------------------------------------------- defaults, ETA and the model's context


def test_defaults_finish_within_the_time_limit_for_the_models_size():
    """The bundled model keeps 60 steps of 8 x 64; a 124M model gets fewer, shorter steps planned well
    inside the limit (the user's 124M run of 60 x 8 x 64 stopped at step 17 of 60 on 180 s)."""
    small = plan.defaults(7_300_000, 256, 180, 500)
    assert (small.steps, small.batch_size, small.block_size) == (60, 8, 64)
    big = plan.defaults(124_400_000, 1024, 180, 500)
    assert big.steps >= plan.MIN_DEFAULT_STEPS and big.block_size < 64
    assert plan.planned_seconds(124_400_000, big.steps, big.batch_size, big.block_size) <= 180 / 3
    assert plan.planned_seconds(124_400_000, 60, 8, 64) > 180 / 3  # the old defaults did not fit
    huge = plan.defaults(1_557_000_000, 1024, 180, 500)
    assert plan.planned_seconds(1_557_000_000, huge.steps, huge.batch_size, huge.block_size) <= 180 / 3
    assert plan.defaults(7_300_000, 8, 180, 20) == plan.Defaults(20, 8, 8)  # the server's step cap, the context


def record(step: int, elapsed: float, steps: int = 100) -> StepRecord:
    return StepRecord(step=step, steps=steps, train_loss=3.0, lr=1e-3, grad_norm=1.0, tokens=step * 32,
                      tokens_per_s=100.0, elapsed_s=elapsed, eta_s=0.0)


def test_the_eta_says_where_the_time_limit_will_stop_the_run():
    settings = logic.parse_settings(500, 64, "LoRA", 100, 1e-3, 2, 16, 4, 0)
    progress = logic.Progress(settings, time_limit=60, estimate_s=200, fallback="the base model")
    assert "the time limit will stop it at about step 30 of 100" in progress.markdown()  # from the plan
    for step in range(1, 5):
        progress.add(record(step, elapsed=2.0 * step))  # 2 s a step: 30 steps fit in 60 s
    assert "ETA 52 s: the time limit will stop it at about step 30 of 100" in progress.markdown()
    fits = logic.Progress(settings, time_limit=600, estimate_s=50, fallback="the base model")
    fits.add(record(1, elapsed=5.0))  # the first step sets up too: the plan's pace (0.5 s a step) still holds
    assert "ETA 50 s" in fits.markdown()
    fits.add(record(2, elapsed=6.0))  # from then on, the measured pace
    assert "ETA 1 min 38 s" in fits.markdown() and "time limit" not in fits.markdown()


def test_progress_shows_validation_accuracy_and_perplexity():
    settings = logic.parse_settings(500, 64, "LoRA", 100, 1e-3, 2, 16, 4, 0)
    progress = logic.Progress(settings, time_limit=600, estimate_s=50, fallback="the base model")
    progress.add(record(1, elapsed=1.0))
    assert "accuracy" not in progress.markdown()  # nothing evaluated yet
    evaluated = record(2, elapsed=2.0)
    evaluated.val_loss, evaluated.val_accuracy, evaluated.val_perplexity = math.log(20.0), 0.25, 20.0
    progress.add(evaluated)
    assert "val loss 2.996 · accuracy 25.0% · perplexity 20.0 (step 2)" in progress.markdown()
    acc = next(t for t in progress.figure().data if t.name == "validation accuracy")
    assert (list(acc.x), list(acc.y), acc.yaxis) == ([2], [0.25], "y2")


def test_the_controls_follow_the_sessions_model(ctx, tmp_path):
    """On a model change (or opening the tab) the block size slider's range and hint follow the model's
    context and the defaults fit it; the same model leaves the user's settings alone."""
    ctx.store.entries["ctx32"] = Entry("ctx32", "ctx32", str(random_model(gpt2.GPTConfig(
        block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16)).save_pretrained(tmp_path / "ctx32")))
    session = ctx.new_session()
    same = logic.refit(ctx, session, fitted=session.model_key)
    assert same == (KEEP, KEEP, KEEP, session.model_key, same[4]) and same[4]["visible"] is False
    session.model_key = "ctx32"
    steps, batch, block, fitted, prepare = logic.refit(ctx, session, fitted=ctx.default_key)
    assert block["maximum"] == 32 and block["value"] <= 32 and "(32 here)" in block["info"] and fitted == "ctx32"
    assert steps["value"] == plan.defaults(ctx.base("ctx32").num_params(), 32, ctx.caps.max_train_seconds,
                                           ctx.caps.max_train_steps).steps and batch["value"] >= 1
    run(ctx, session, block_size=32, steps=2)
    assert logic.refit(ctx, session, fitted="ctx32")[4]["visible"] is True  # a result to download


# ---------------------------------------------------------------- the page


def test_the_page_wires_the_endpoints_and_the_training_queue(app_ctx):
    from ui.layout.page import build_demo

    demo = build_demo(app_ctx)
    fn = next(f for f in demo.fns.values() if f.api_name == "finetune")
    assert (fn.concurrency_limit, fn.concurrency_id) == (1, "train")
    endpoints = demo.get_api_info()["named_endpoints"]
    assert [p["parameter_name"] for p in endpoints["/finetune"]["parameters"]] == list(FAST)
    assert len(endpoints["/finetune"]["returns"]) == 5 and "/download_finetuned" in endpoints


@pytest.mark.slow
def test_finetune_then_download_with_gradio_client(served, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(served.url, verbose=False)
    upload = gradio_client.handle_file(_write(tmp_path, "poem.txt", TEXT_B.encode()))
    _, progress, before, after, _ = client.predict(*(FAST | {"file": upload, "text": ""}).values(),
                                                   api_name="/finetune")
    assert "Finished all 4 steps" in progress and before != after
    download = client.predict(api_name="/download_finetuned")  # the same client: its session's model
    path = download["value"] if isinstance(download, dict) else download
    assert unzip(path, tmp_path / "model").config == served.ctx.store.get(served.key).config
