"""The command line: ``python -m gpt2 generate | score | chat`` on a tiny random checkpoint.

Most tests call ``gpt2.cli.main`` in-process (a subprocess costs seconds of imports); a few run the real
``python -m gpt2`` to check what a user sees: streamed text, exit codes, no tracebacks.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import gpt2
from gpt2 import cli, prompts
from gpt2.tokenizer import get_tokenizer

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli") / "tiny"
    gpt2.GPT2(gpt2.GPTConfig.preset("tiny")).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model(model_dir) -> gpt2.GPT2:
    return gpt2.GPT2.from_pretrained(model_dir, device="cpu")


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2", *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=120)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def generate_json(capsys, model_dir: str, *flags: str) -> dict:
    code, out, err = run_main(capsys, "generate", "--model", model_dir, "--prompt", PROMPT, "--json", *flags)
    assert code == 0, err
    return json.loads(out)  # exactly one JSON document on stdout, nothing else


# ------------------------------------------------------------------------------------------- generate


def test_generate_json_is_reproducible_with_seed(capsys, model_dir):
    flags = ("--max-new-tokens", "6", "--seed", "123", "--no-stop-at-eos")
    first = generate_json(capsys, model_dir, *flags)
    assert first == generate_json(capsys, model_dir, *flags)
    assert set(first) == {"prompt_ids", "token_ids", "text", "finish_reason"}
    assert first["prompt_ids"] == gpt2.encode(PROMPT)
    assert len(first["token_ids"]) == 6  # generated tokens only, not the prompt
    assert first["finish_reason"] == "length"
    assert first["text"] == get_tokenizer().decode(first["token_ids"])
    other = generate_json(capsys, model_dir, "--max-new-tokens", "6", "--seed", "124", "--no-stop-at-eos")
    assert other["token_ids"] != first["token_ids"]  # the seed really drives the draws


def test_generate_greedy_matches_library(capsys, model_dir, model):
    result = generate_json(capsys, model_dir, "--temperature", "0", "--max-new-tokens", "5")
    params = gpt2.SamplingParams(temperature=0, max_new_tokens=5)
    steps = list(gpt2.generate(model, gpt2.encode(PROMPT), params))
    assert result["token_ids"] == [s.token_id for s in steps]
    assert result["text"] == "".join(s.text for s in steps)
    assert result["finish_reason"] == steps[-1].finish_reason


def test_generate_passes_sampling_flags(capsys, model_dir, monkeypatch):
    seen = {}

    def fake_generate(model, ids, params):
        seen["params"] = params
        yield gpt2.Step(0, 11, ",", "stop")

    monkeypatch.setattr(cli, "generate", fake_generate)
    code, out, _ = run_main(capsys, "generate", "--model", model_dir, "--prompt", "a", "--temperature", "0.7",
                            "--top-k", "40", "--top-p", "0.9", "--repetition-penalty", "1.3", "--seed", "5",
                            "--stop", "\n\n", "--stop", "END", "--max-new-tokens", "3", "--no-stop-at-eos")
    assert code == 0 and out == "a,\n"
    assert seen["params"] == gpt2.SamplingParams(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.3,
                                                 seed=5, stop=("\n\n", "END"), max_new_tokens=3,
                                                 stop_at_eos=False)


def test_generate_streams_prompt_then_text_and_notices(capsys, model_dir, monkeypatch):
    writes: list[str] = []
    monkeypatch.setattr(cli, "_out", writes.append)

    def fake_generate(model, ids, params):
        yield gpt2.Step(0, 1, " one", notice="context full")
        yield gpt2.Step(1, 2, "", None)  # text held back (a possible stop string): nothing to write
        yield gpt2.Step(2, 3, " two", "length")

    monkeypatch.setattr(cli, "generate", fake_generate)
    code, _, err = run_main(capsys, "generate", "--model", model_dir, "--prompt", "Start")
    assert code == 0
    assert writes == ["Start", " one", "", " two", "\n"]  # one write (and flush) per step, as it arrives
    assert "context full" in err


def test_generate_passes_new_sampler_flags(capsys, model_dir, monkeypatch):
    seen = {}

    def fake_generate(model, ids, params):
        seen["params"] = params
        yield gpt2.Step(0, 11, ",", "length")

    monkeypatch.setattr(cli, "generate", fake_generate)
    code, _, err = run_main(capsys, "generate", "--model", model_dir, "--prompt", "a", "--min-p", "0.05",
                            "--typical-p", "0.9", "--epsilon-cutoff", "0.001", "--eta-cutoff", "0.002",
                            "--no-repeat-ngram-size", "3", "--max-new-tokens", "4")
    assert code == 0, err
    assert seen["params"] == gpt2.SamplingParams(min_p=0.05, typical_p=0.9, epsilon_cutoff=0.001, eta_cutoff=0.002,
                                                 no_repeat_ngram_size=3, max_new_tokens=4)


def test_generate_beam_search_matches_library(capsys, model_dir, model):
    result = generate_json(capsys, model_dir, "--num-beams", "3", "--max-new-tokens", "5", "--length-penalty", "2",
                           "--early-stopping", "never", "--no-repeat-ngram-size", "2")
    res = gpt2.beam_search(model, gpt2.encode(PROMPT), gpt2.BeamParams(3, 5, 2.0, "never", 2))
    assert result["token_ids"] == res.sequences[0] and result["score"] == pytest.approx(res.scores[0])
    ids, eos = res.sequences[0], res.sequences[0][-1] == gpt2.EOT_ID
    assert result["text"] == get_tokenizer().decode(ids[:-1] if eos else ids)
    assert result["finish_reason"] == ("eos" if eos else "length")


def test_generate_beam_search_prints_best_text_cut_at_stop(capsys, model_dir, monkeypatch):
    seen = {}

    def fake_beam_search(model, ids, params):
        seen["params"] = params
        ids = gpt2.encode(" one two. three") + [gpt2.EOT_ID]
        return gpt2.BeamResult([ids, [11]], [-0.5, -0.9], [], [[], []], notice="cropped")

    monkeypatch.setattr(cli, "beam_search", fake_beam_search)
    args = ("generate", "--model", model_dir, "--prompt", "Start", "--num-beams", "4", "--max-new-tokens", "7",
            "--early-stopping", "true")
    code, out, err = run_main(capsys, *args)
    assert code == 0 and out == "Start one two. three\n" and "cropped" in err  # the best one, without EOT
    assert seen["params"] == gpt2.BeamParams(4, 7, 1.0, True, 0)
    code, out, _ = run_main(capsys, *args, "--stop", ".", "--json")
    assert json.loads(out)["text"] == " one two" and json.loads(out)["finish_reason"] == "stop"
    code, out, _ = run_main(capsys, *args, "--json")
    assert json.loads(out)["finish_reason"] == "eos" and json.loads(out)["score"] == -0.5


@pytest.mark.slow
def test_generate_subprocess_streams_text(model_dir):
    proc = run_cli("generate", "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "4",
                   "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(PROMPT)
    assert len(proc.stdout) > len(PROMPT) + 1  # the continuation followed the prompt


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        (("--top-p", "1.5"), "top_p"),
        (("--temperature", "-1"), "temperature"),
        (("--top-k", "-3"), "top_k"),
        (("--repetition-penalty", "0"), "repetition_penalty"),
        (("--max-new-tokens", "0"), "max_new_tokens"),
        (("--min-p", "2"), "min_p"),
        (("--typical-p", "0"), "typical_p"),
        (("--epsilon-cutoff", "1"), "epsilon_cutoff"),
        (("--eta-cutoff", "-0.1"), "eta_cutoff"),
        (("--no-repeat-ngram-size", "-1"), "no_repeat_ngram_size"),
        (("--num-beams", "0"), "num_beams"),
        (("--num-beams", "2", "--length-penalty", "nan"), "length_penalty"),
        (("--num-beams", "2", "--temperature", "0.5"), "--temperature applies to sampling"),
        (("--num-beams", "3", "--seed", "1"), "--seed applies to sampling"),
        (("--early-stopping", "true"), "--early-stopping applies to beam search"),
    ],
)
def test_invalid_sampling_flags_exit_2(capsys, flags, name):
    # bad values are rejected before any model is loaded: the model name here does not even exist
    code, out, err = run_main(capsys, "generate", "--model", "no-such-model", "--prompt", "x", *flags)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and name in err


@pytest.mark.slow
def test_invalid_flag_subprocess_has_no_traceback(model_dir):
    proc = run_cli("generate", "--model", model_dir, "--prompt", "x", "--top-p", "1.5")
    assert proc.returncode == 2
    assert "top_p" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_model_exits_2(capsys):
    code, out, err = run_main(capsys, "score", "--model", "no-such-model", "--text", "hi")
    assert code == 2 and out == ""
    assert "error: Unknown model 'no-such-model'" in err


def test_bad_device_exits_2(capsys, model_dir):
    code, _, err = run_main(capsys, "score", "--model", model_dir, "--text", "hi", "--device", "nonsense")
    assert code == 2 and "device" in err and "nonsense" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------- score


def test_score_table_and_perplexity(capsys, model_dir, model):
    text = "Hello world, hello again."
    code, out, _ = run_main(capsys, "score", "--model", model_dir, "--text", text)
    assert code == 0
    expected = gpt2.inspection.score(model, gpt2.encode(text))
    lines = out.splitlines()
    assert lines[-1].startswith("perplexity: ") and f"tokens: {len(expected.token_ids)}" in lines
    printed = float(lines[-1].split(": ")[1])
    assert printed == pytest.approx(math.exp(-expected.logprobs.mean()), rel=1e-6)
    assert printed == pytest.approx(expected.perplexity, rel=1e-6)
    rows = lines[1 : 1 + len(expected.token_ids)]
    assert [row.split()[1] for row in rows] == expected.labels  # display labels, e.g. "␣world"
    assert [float(row.split()[2]) for row in rows] == pytest.approx(expected.logprobs.tolist(), abs=1e-4)


def test_score_json_from_file(capsys, model_dir, model, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("To be, or not to be\n", encoding="utf-8")
    code, out, _ = run_main(capsys, "score", "--model", model_dir, "--file", str(path), "--json")
    assert code == 0
    result = json.loads(out)
    expected = gpt2.inspection.score(model, gpt2.encode(path.read_text()))
    assert result["tokens"] == expected.labels
    assert result["ranks"] == expected.ranks.tolist()
    assert result["logprobs"] == pytest.approx(expected.logprobs.tolist(), abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(-sum(result["logprobs"]) / len(result["logprobs"])))


@pytest.mark.parametrize("source", ["text", "file"])
def test_score_empty_or_missing_input_is_a_clear_error(capsys, model_dir, tmp_path, source):
    if source == "text":
        args = ("--text", "")
        expected = "empty"
    else:
        args = ("--file", str(tmp_path / "missing.txt"))
        expected = "cannot read"
    code, out, err = run_main(capsys, "score", "--model", model_dir, *args)
    assert code == 2 and out == "" and expected in err


# ------------------------------------------------------------------------------------------------ chat


class Inputs:
    """Feeds lines to the chat loop like a user, then Ctrl-D (EOFError) or another exception."""

    def __init__(self, *lines: str, end: type[BaseException] = EOFError) -> None:
        self.lines, self.end, self.prompts = list(lines), end, []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.lines:
            raise self.end
        return self.lines.pop(0)


def test_chat_builds_prompt_and_keeps_history(model):
    calls = []

    def fake_generate(model, ids, params):
        calls.append((get_tokenizer().decode(ids), params))
        yield gpt2.Step(0, 1, " Hi", None)
        yield gpt2.Step(1, 2, " there", "eos")

    out: list[str] = []
    params = gpt2.SamplingParams(max_new_tokens=8, stop=("END",))
    history = cli.chat_loop(model, params, input_fn=Inputs("hello", "", "how are you?"), write=out.append,
                            warn=out.append, generate_fn=fake_generate)
    assert history == [("hello", "Hi there"), ("how are you?", "Hi there")]
    assert len(calls) == 2  # the empty line asked nothing
    assert calls[0][0] == prompts.chat_prompt([], "hello")
    assert calls[1][0] == prompts.chat_prompt([("hello", "Hi there")], "how are you?")
    assert calls[0][1].stop == ("END", *prompts.STOP_STRINGS) and calls[0][1].stop_at_eos
    text = "".join(out)
    assert "### Instruction:" in text and "exit" in text and "Ctrl-D" in text  # the banner
    assert "Hi there\n" in text


@pytest.mark.parametrize("word", ["exit", "quit", "  EXIT "])
def test_chat_exit_words_quit(model, word):
    inputs = Inputs("hi", word, "never read")

    def fake_generate(model, ids, params):
        yield gpt2.Step(0, 1, "ok", "eos")

    history = cli.chat_loop(model, gpt2.SamplingParams(), input_fn=inputs, write=lambda s: None,
                            warn=lambda s: None, generate_fn=fake_generate)
    assert history == [("hi", "ok")]
    assert inputs.lines == ["never read"]


def test_chat_ctrl_c_at_prompt_quits(model):
    out: list[str] = []
    history = cli.chat_loop(model, gpt2.SamplingParams(), input_fn=Inputs(end=KeyboardInterrupt),
                            write=out.append, warn=out.append, generate_fn=None)
    assert history == [] and out[-1] == "\n"


def test_chat_ctrl_c_stops_only_the_reply(model):
    closed = []

    def interrupted(model, ids, params):
        try:
            yield gpt2.Step(0, 1, " partial", None)
            raise KeyboardInterrupt  # as if Ctrl-C arrived while the next token was computed
        finally:
            closed.append(True)

    out: list[str] = []
    inputs = Inputs("first", "second")
    history = cli.chat_loop(model, gpt2.SamplingParams(), input_fn=inputs, write=out.append, warn=out.append,
                            generate_fn=interrupted)
    assert history == [("first", "partial"), ("second", "partial")]  # the loop went on after the interrupt
    assert len(inputs.prompts) == 3 and len(closed) == 2
    assert "partial\n" in "".join(out)


def test_chat_drops_oldest_turns_to_fit_context(model):
    block = model.config.block_size  # 64 for the tiny preset
    prompts_seen = []

    def fake_generate(model, ids, params):
        prompts_seen.append(ids)
        yield gpt2.Step(0, 1, "word " * 10, "length")

    out: list[str] = []
    messages = [f"message number {i}" for i in range(4)]
    history = cli.chat_loop(model, gpt2.SamplingParams(max_new_tokens=16), input_fn=Inputs(*messages),
                            write=out.append, warn=out.append, generate_fn=fake_generate)
    assert all(len(ids) + 16 <= block for ids in prompts_seen)
    assert history[-1][0] == "message number 3" and len(history) < 4
    last = get_tokenizer().decode(prompts_seen[-1])
    assert "message number 0" not in last and "message number 2" in last
    assert "dropped" in "".join(out)


def test_chat_keeps_replies_as_the_app_does(model):
    """The CLI's history holds each reply cleaned by ``gpt2.prompts.clean_reply``, the Chat tab's cleanup."""

    def fake_generate(model, ids, params):
        yield gpt2.Step(0, 1, "\n", None)
        yield gpt2.Step(1, 2, " Hi there \n", "stop")

    history = cli.chat_loop(model, gpt2.SamplingParams(), input_fn=Inputs("hello"), write=lambda s: None,
                            warn=lambda s: None, generate_fn=fake_generate)
    assert history == [("hello", prompts.clean_reply("\n Hi there \n"))] == [("hello", "Hi there")]


@pytest.mark.slow
def test_chat_subprocess_exits_cleanly(model_dir):
    proc = run_cli("chat", "--model", model_dir, "--max-new-tokens", "4", "--seed", "0", stdin="hello\nexit\n")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "### Instruction:" in proc.stdout  # banner
    assert proc.stdout.count("you> ") == 2 and "gpt2> " in proc.stdout


def test_default_model_constant():
    local = ROOT / "checkpoints" / "shakespeare-small"
    assert cli.DEFAULT_MODEL == (str(local) if local.is_dir() else "gpt2")
    assert cli.build_parser().parse_args(["score", "--text", "x"]).model == cli.DEFAULT_MODEL
