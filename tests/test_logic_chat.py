"""The Chat tab's logic (``ui.logic.chat``) without a browser, and end to end: a tiny model fine-tuned on one
instruction answers it through the tab's logic, through ``/chat`` and through ``python -m gpt2 chat``."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import drain, make_ctx

import gpt2
from gpt2 import cli, prompts
from ui.inputs import UserError
from ui.logic import chat as logic

pytestmark = pytest.mark.usefixtures("one_thread")

INSTRUCTION, ANSWER = "What is the capital of France?", "Paris is the capital of France."
GREEDY = dict(max_new_tokens=8, temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=0)


@pytest.fixture()
def ctx(tiny_dir):
    return make_ctx(tiny_dir, max_prompt_chars=2_000)


def said(history: list[dict]) -> list[tuple[str, str]]:
    """The conversation's (user, reply) turns, as the chatbot shows them."""
    return logic.turns(history)


def test_messages_and_turns_round_trip_text_exactly():
    conversation = [("  indented\n  lines", " reply "), ("<|endoftext|> typed", "")]
    assert logic.turns(logic.messages(conversation)) == conversation
    # plain strings too, an unanswered message, a reply without a message
    plain = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"},
             {"role": "assistant", "content": "d"}]
    assert logic.turns(plain) == [("a", ""), ("b", "c"), ("", "d")]


@pytest.mark.parametrize("history", [
    "hello", [{"role": "system", "content": "x"}], [{"role": "robot", "content": "x"}], ["hi"],
    [{"role": "user", "content": [{"type": "file", "file": {"path": "/etc/passwd"}}]}], [{"role": "user"}],
])
def test_history_not_in_the_chatbot_format_is_refused_by_name(ctx, history):
    with pytest.raises(UserError, match=r"^history must be a list of messages .*'user' or 'assistant'"):
        next(logic.chat(ctx, ctx.new_session(), "Hi", history, **GREEDY))


@pytest.mark.parametrize(("message", "expected"), [
    ("", "message is empty"), ("  \n ", "message is empty"), (None, "message is empty"),
    ("a" * 2_001, r"message must be at most 2,000 characters \(this server's limit\); got 2,001"),
    (" word" * 60, r"message is \d+ tokens .* context of 64 tokens leaves room for at most 56 \(8 are kept"),
    (3, "message must be text"),
])
def test_bad_messages_are_refused_before_anything_runs(ctx, message, expected):
    session = ctx.new_session()
    session.stop.set()
    with pytest.raises(UserError, match=expected):
        next(logic.chat(ctx, session, message, None, **GREEDY))
    assert session.stop.is_set()  # refused before it started


def test_a_reply_streams_after_the_message_shows(ctx, tiny_model):
    outputs = list(logic.chat(ctx, ctx.new_session(), "Hello", None, **GREEDY))
    first_reply, first_history, _ = outputs[0]
    assert first_reply == "" and first_history == [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    reply, history, notice = outputs[-1]
    # the same greedy reply as the library's, on the shared prompt format
    params = prompts.chat_params(gpt2.SamplingParams(temperature=0, max_new_tokens=8))
    expected = "".join(s.text for s in gpt2.generate(tiny_model, prompts.chat_prompt_ids([], "Hello"), params))
    assert reply == prompts.clean_reply(expected) and reply
    assert said(history) == [("Hello", reply)]
    assert logic.HINT in notice  # the base model was not instruction-tuned


def test_a_reply_in_a_zerogpu_worker_equals_local(ctx, tiny_dir):
    """The reply is a ``ui.gpu`` job: in a forked worker (as on ZeroGPU) it is the same, in one call."""
    from test_zerogpu import ForkingSpaces

    from ui import gpu

    fake = ForkingSpaces()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpu, "spaces", fake)
        mp.setenv("SPACES_ZERO_GPU", "true")
        remote = make_ctx(tiny_dir)
    assert remote.gpu.remote
    remote.store.get(remote.default_key)  # loaded before the worker forks, as on a Space
    there = drain(logic.chat(remote, remote.new_session(), "Hello", None, **GREEDY))
    assert there[:2] == drain(logic.chat(ctx, ctx.new_session(), "Hello", None, **GREEDY))[:2]
    assert fake.calls == 1


def test_the_oldest_turns_are_left_out_to_fit_the_context_with_a_notice(ctx, monkeypatch):
    seen = []

    def job(model, ids, params):
        seen.append(ids)
        yield gpt2.Step(0, 1, " ok", "eos")

    monkeypatch.setattr(logic, "reply_job", job)
    earlier = [(f"message number {i}", f"reply number {i}") for i in range(6)]
    reply, history, notice = drain(logic.chat(ctx, ctx.new_session(), "the newest", logic.messages(earlier),
                                              **GREEDY))
    assert len(seen[0]) + 8 <= 64  # 8 tokens of the tiny model's 64 kept for the reply
    text = gpt2.get_tokenizer().decode(seen[0])
    assert text.endswith(prompts.format_prompt("the newest")) and "reply number 5" in text
    assert "message number 0" not in text
    kept = text.count("### Instruction:") - 1
    assert f"reads only the last {kept} of the 6 earlier turns: the {6 - kept} oldest were left out" in notice
    assert said(history) == [*earlier, ("the newest", "ok")]  # the page still shows the whole conversation


def test_step_notices_are_said_once_and_an_empty_reply_is_explained(ctx, monkeypatch):
    def job(model, ids, params):
        yield gpt2.Step(0, 1, " ", None, notice="Context full.")
        yield gpt2.Step(1, gpt2.EOT_ID, "", "eos", notice="Context full.")

    monkeypatch.setattr(logic, "reply_job", job)
    reply, history, notice = drain(logic.chat(ctx, ctx.new_session(), "Hi", None, **GREEDY))
    assert reply == "" and notice.count("Context full.") == 1 and "ended its turn without a reply" in notice
    assert said(history) == [("Hi", "")]


def test_the_history_read_stays_within_the_character_limit(tiny_dir, monkeypatch):
    """A huge history (an API caller's) costs no more than the server's character limit to read."""
    ctx = make_ctx(tiny_dir, max_prompt_chars=300)
    read, fit = [], prompts.fit_history
    monkeypatch.setattr(logic.prompts, "fit_history", lambda turns, *args: read.append(turns) or fit(turns, *args))
    huge = logic.messages([("x" * 50, "y" * 50)] * 5_000)
    reply, history, notice = drain(logic.chat(ctx, ctx.new_session(), "Hi", huge, **GREEDY))
    assert sum(len(u) + len(r) + logic.TURN_CHARS for u, r in read[0]) <= 300 - len("Hi") and read[0]
    assert "of the 5000 earlier turns" in notice and len(history) == 10_002


def test_shared_fit_history_leaves_the_callers_list_alone():
    history = [("a", "b")] * 30
    ids, dropped = prompts.fit_history(history, "c", 64, 16)
    assert len(history) == 30 and 0 < dropped < 30
    assert ids == prompts.chat_prompt_ids(history[dropped:], "c") and len(ids) + 16 <= 64
    assert len(prompts.chat_prompt_ids(history[dropped - 1:], "c")) + 16 > 64  # no turn more would fit


def test_stop_keeps_the_partial_reply(ctx):
    session = ctx.new_session()
    full = drain(logic.chat(ctx, session, "Hello", None, **GREEDY))[0]
    stream = logic.chat(ctx, session, "Hello", None, **GREEDY)
    next(stream)  # the message is shown; the reply starts
    logic.stop(ctx, session)
    reply, history, notice = drain(stream)
    assert "Stopped" in notice and full.startswith(reply) and len(reply) < len(full)
    assert said(history) == [("Hello", reply)]


def test_regenerate_answers_the_last_message_again(ctx):
    session = ctx.new_session()
    first = drain(logic.chat(ctx, session, "Hello", None, **(GREEDY | {"temperature": 1.0, "seed": 1})))[1]
    second = drain(logic.chat(ctx, session, "Again", first, **(GREEDY | {"temperature": 1.0, "seed": 1})))[1]
    sampled = GREEDY | {"temperature": 1.0}
    same = drain(logic.regenerate(ctx, session, second, **(sampled | {"seed": 1})))[1]
    assert same == second  # the same seed: the same reply
    other = [drain(logic.regenerate(ctx, session, second, **(sampled | {"seed": None})))[1] for _ in range(3)]
    assert all(said(h)[:-1] == said(second)[:-1] and said(h)[-1][0] == "Again" for h in other)
    assert any(said(h)[-1][1] != said(second)[-1][1] for h in other)  # a random seed: another reply
    with pytest.raises(UserError, match="Nothing to regenerate"):
        next(logic.regenerate(ctx, session, [], **GREEDY))


def test_clear_and_the_hint_follow_the_model_in_use(ctx, tiny_model):
    session = ctx.new_session()
    assert logic.clear(ctx, session) == ("", [], f"> {logic.HINT}", True) and session.stop.is_set()
    assert logic.settle(ctx, session, True) == ("", [], f"> {logic.HINT}", False)  # a reply ended after Clear
    assert [u.props for u in logic.settle(ctx, session, False)[:3]] == [{}, {}, {}]  # else: unchanged
    session.keep_finetuned(None, copy.deepcopy(tiny_model), session.model_key)  # not on instruction records
    session.use_finetuned = True
    assert logic.HINT in logic.hint(ctx, session)
    session.keep_finetuned(None, copy.deepcopy(tiny_model), session.model_key, instructions=True)
    assert logic.hint(ctx, session) == ""
    session.use_finetuned = False  # the header's switch: the base again
    assert logic.HINT in logic.hint(ctx, session)


# ---------------------------------------------------------------- end to end: one instruction learned


@pytest.fixture(scope="module")
def instructed(tmp_path_factory):
    """The tiny random model fully fine-tuned on one instruction record (repeated) until it answers it
    greedily; saved as a checkpoint too."""
    training = pytest.importorskip("training")
    from conftest import CONFIGS, random_model

    folder = tmp_path_factory.mktemp("instructed")
    data_file = folder / "qa.jsonl"
    data_file.write_text("".join(json.dumps({"instruction": INSTRUCTION, "output": ANSWER}) + "\n"
                                 for _ in range(16)))
    data = training.prepare_data(data_file, block_size=32, cache_dir=folder / "cache")
    model = random_model(CONFIGS["tiny"])
    params = prompts.chat_params(gpt2.SamplingParams(temperature=0, max_new_tokens=16))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(4):  # rounds of a few steps, until the answer comes out
            config = training.TrainConfig(steps=15, batch_size=4, lr=1e-2, weight_decay=0.0, eval_interval=0,
                                          eval_batches=1)
            drain(training.train(model, data, config))
            model.eval()
            ids = prompts.chat_prompt_ids([], INSTRUCTION)
            if "".join(s.text for s in gpt2.generate(model, ids, params)).strip() == ANSWER:
                break
        else:
            pytest.fail("the tiny model did not learn the answer")
    finally:
        torch.set_num_threads(threads)
    return model, model.save_pretrained(folder / "model")


def test_the_fine_tuned_model_answers_through_the_chat_tab(ctx, instructed):
    model, _ = instructed
    session = ctx.new_session()
    session.keep_finetuned(None, model, session.model_key, instructions=True)
    session.use_finetuned = True
    reply, history, notice = drain(logic.chat(ctx, session, INSTRUCTION, None, **(GREEDY | {"max_new_tokens": 16})))
    assert reply == ANSWER and said(history) == [(INSTRUCTION, ANSWER)]
    assert logic.HINT not in notice  # instruction-tuned: no hint


def test_the_fine_tuned_model_answers_through_the_cli_chat(instructed):
    model, _ = instructed
    lines = [INSTRUCTION]

    def typed(prompt: str) -> str:
        if not lines:
            raise EOFError  # Ctrl-D
        return lines.pop()

    out: list[str] = []
    history = cli.chat_loop(model, gpt2.SamplingParams(temperature=0, max_new_tokens=16), input_fn=typed,
                            write=out.append, warn=out.append)
    assert history == [(INSTRUCTION, ANSWER)]
    assert f"gpt2> {ANSWER}\n" in "".join(out)


@pytest.mark.slow
def test_the_fine_tuned_model_answers_through_the_chat_endpoint(instructed, launch_app):
    gradio_client = pytest.importorskip("gradio_client")
    _, model_dir = instructed
    with launch_app(model_dir) as served:
        client = gradio_client.Client(served.url, verbose=False)
        reply, conversation, notice = client.predict(INSTRUCTION, [], 16, 0, api_name="/chat")
        assert reply == ANSWER
        assert logic.HINT in notice  # the app's base model: the session's toggle says base
        # the conversation comes back as it went out, and goes back in for the next turn
        reply2, conversation2, _ = client.predict(INSTRUCTION, conversation, 16, 0, api_name="/chat")
        assert said(conversation2)[0] == (INSTRUCTION, ANSWER) and len(said(conversation2)) == 2
