"""Instruction data in the Fine-tune tab (``ui.logic.finetune_data``): the example instruction set in
``assets/instructions/`` (its records, and that the bundled model knows its words), the preview of the first
records as training sees them, the example's one-click loading, and "Chat with it". Runs are a few steps
of a tiny random model."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import make_ctx

import gpt2
from gpt2.prompts import format_prompt, format_turn
from training.tokens import read_jsonl
from ui.logic import finetune as logic
from ui.logic import finetune_data as files

BUNDLED = Path(__file__).resolve().parents[1] / "checkpoints" / "shakespeare-small"
CAPS = dict(max_train_steps=3, max_new_tokens=8, max_upload_bytes=200_000)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ctx(tiny_dir):
    return make_ctx(tiny_dir, **CAPS)


@pytest.fixture(scope="module")
def records() -> list[tuple[str, str, str]]:
    kind, items = read_jsonl(files.EXAMPLE)
    assert kind == "instruction"
    return items


def write(tmp_path: Path, name: str, lines: list) -> str:
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def text_of(preview: str) -> str:
    """The preview's text, tags removed and entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", preview))


# ---------------------------------------------------------------- the example set


def test_the_example_set_is_a_few_hundred_distinct_records(records):
    assert 300 <= len(records) <= 450
    assert all(instruction.strip() and output.strip() for instruction, _, output in records)
    assert len({(i, x) for i, x, _ in records}) == len(records)  # no task asked twice
    with_input = sum(bool(x) for _, x, _ in records)
    assert 50 <= with_input <= len(records) - 150  # transformations with an input, and plain questions
    assert "### " not in "".join(i + x + o for i, x, o in records)  # nothing that reads as a turn header


def test_every_example_record_fits_the_example_block(records):
    longest = max(len(gpt2.encode(format_prompt(i, x))) + len(gpt2.encode(o.strip())) + 1 for i, x, o in records)
    assert longest <= files.EXAMPLE_SETTINGS.block_size + 1  # no record is cropped


def test_the_bundled_model_knows_the_example_answers(records):
    """The bundled model has its own embedding only for tinyshakespeare's token types; every other token
    shares one row, and fine-tuning cannot teach those tokens. At least 97% of the answers' tokens are known."""
    model = gpt2.GPT2.from_pretrained(BUNDLED, device="cpu", dtype=torch.float32)
    wte = model.transformer.wte.weight
    rows, counts = torch.unique(wte, dim=0, return_counts=True)
    known = (wte != rows[counts.argmax()]).any(dim=1)
    assert 11_000 < int(known.sum()) < 12_000  # the compact vocabulary, as its README says
    answers = [t for _, _, o in records for t in gpt2.encode(o.strip())]
    assert known[answers].float().mean().item() >= 0.97


def test_the_example_teaches_who_the_model_is(records):
    answers = {i: o for i, x, o in records if not x}
    assert "language model" in answers[files.EXAMPLE_QUESTION]
    assert {"What can you do?", "Who is Romeo?", "Say hello as Juliet would."} <= set(answers)


# ---------------------------------------------------------------- the preview


def test_preview_formats_the_first_records_as_training_does(ctx, tmp_path):
    recs = [{"instruction": "Reverse this list.", "input": "a, b", "output": " b, a "},
            {"instruction": "Who is <b>Romeo</b>?", "output": "A Montague & a lover."},
            {"instruction": "Third", "output": "3"}, {"instruction": "Fourth, not shown", "output": "4"}]
    shown = files.preview(ctx, "ignored: the file wins", write(tmp_path, "d.jsonl", recs))
    assert "4 records" in shown and "Fourth" not in shown
    assert "<b>Romeo</b>" not in shown and "&lt;b&gt;Romeo&lt;/b&gt;" in shown  # the data is text, never markup
    pres = re.findall(r"<pre[^>]*>(.*?)</pre>", shown, re.S)
    assert [text_of(p) for p in pres] == [format_turn(r["instruction"], r.get("input", ""), r["output"])
                                          for r in recs[:3]]
    for pre, r in zip(pres, recs[:3], strict=True):  # the answer (trained on) is highlighted, apart from the prompt
        prompt, answer = (text_of(s) for s in re.findall(r"<span[^>]*>(.*?)</span>", pre, re.S))
        assert prompt == format_prompt(r["instruction"], r.get("input", ""))
        assert answer == r["output"].strip() + gpt2.EOT_TOKEN
    first = format_prompt("Reverse this list.", "a, b")
    answer = len(gpt2.encode("b, a")) + 1  # the answer, stripped, and <|endoftext|>
    assert f"{len(gpt2.encode(first))} prompt tokens (not trained on) · {answer} answer tokens (trained on)" in shown


@pytest.mark.parametrize(("name", "lines", "says"), [
    ("notes.txt", ["plain words"], "Plain text: trained on every token"),
    ("table.csv", ["text", "a row"], "CSV rows: trained on every token"),
    ("texts.jsonl", [{"text": "a"}, {"text": "b"}], "Text records"),
    ("broken.jsonl", [{"instruction": "a", "output": "b"}, "{not json"], "the uploaded file line 2: not valid JSON"),
    ("mixed.jsonl", [{"instruction": "a", "output": "b"}, {"text": "c"}], "line 2: a text record"),
])
def test_preview_of_other_data_says_what_is_trained_on(ctx, tmp_path, name, lines, says):
    shown = text_of(files.preview(ctx, None, write(tmp_path, name, lines)))
    assert says in shown and str(tmp_path) not in shown  # our paths never reach the page


def test_preview_of_pasted_text(ctx):
    assert files.preview(ctx, "  \n", None) == "" and files.preview(ctx, None, None) == ""
    assert "Plain text: trained on every token" in text_of(files.preview(ctx, "To be or not to be", None))
    pasted = json.dumps({"instruction": "Hi", "output": "Hello"})
    assert "upload it to train on the answers only" in text_of(files.preview(ctx, pasted, None))


def test_preview_refuses_nothing_and_reads_no_big_file(ctx, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text('{"instruction": "a", "output": "b"}\n' * 10_000)  # over the 200,000-byte cap
    assert "over this server's limit of 0.2 MB" in text_of(files.preview(ctx, None, str(big)))
    assert files.preview(ctx, None, str(tmp_path / "gone.jsonl")) == ""
    assert files.preview(ctx, None, write(tmp_path, "paper.pdf", ["%PDF"])) == ""


# ---------------------------------------------------------------- the one-click example and "Chat with it"


def test_example_fills_the_tab_within_the_servers_limits(ctx):
    session = ctx.new_session()
    path, mode, lr, steps, batch, block, prompt = files.example(ctx, session)
    assert Path(path).parent == session.workdir and Path(path).name == "instructions.jsonl"
    assert Path(path).read_bytes() == files.EXAMPLE.read_bytes()
    s = files.EXAMPLE_SETTINGS
    assert (mode, lr, batch) == (s.mode, s.learning_rate, s.batch_size)
    assert steps["value"] == CAPS["max_train_steps"] < s.steps  # the server's limit wins
    # the slider's note follows the example's settings, not the plain defaults it replaced
    assert f"{steps['value']} steps of {batch} × {block} tokens" in steps["info"]
    assert block == min(s.block_size, ctx.base(session.model_key).config.block_size)
    assert prompt == format_prompt(files.EXAMPLE_QUESTION)


def test_example_settings_shrink_for_a_big_model(tiny_dir):
    big = gpt2.GPT2(gpt2.GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=1, n_embd=512))
    s = files.example_settings(make_ctx(tiny_dir, max_train_steps=500, max_train_seconds=20), big)  # 26M parameters
    # LoRA, fewer steps, the model's context
    assert s.mode == "LoRA" and s.learning_rate == logic.DEFAULT_LR["LoRA"]
    assert 1 <= s.steps < files.EXAMPLE_SETTINGS.steps and s.block_size == 32


def test_a_run_on_the_example_then_chat_with_it(ctx):
    session = ctx.new_session()
    assert files.chat_ready(ctx, session)["visible"] is False
    path, mode, lr, steps, batch, block, prompt = files.example(ctx, session)
    steps = steps["value"]
    outs = list(logic.finetune(ctx, session, text=None, file=path, column="text", mode=mode, steps=steps,
                               learning_rate=lr, batch_size=2, block_size=block, lora_rank=4, sample_prompt=prompt,
                               seed=0))
    assert f"Finished all {steps} steps" in outs[-1][1] and "(records)" in outs[-1][1]
    assert session.finetuned_model is not None and session.use_finetuned
    assert files.chat_ready(ctx, session)["visible"] is True
