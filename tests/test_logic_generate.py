"""The Generate tab's logic (``ui.logic.generate``), without a browser."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from conftest import drain, make_ctx

import gpt2
from ui.inputs import UserError
from ui.logic import generate as logic
from ui.logic.generate import stream
from ui.session import LOGIT_RECORDS, Session


@pytest.fixture()
def ctx(tiny_dir):
    return make_ctx(tiny_dir, max_new_tokens=50, max_prompt_chars=500)


def run(ctx, session, prompt, **kw):
    params = gpt2.SamplingParams(**({"max_new_tokens": 12, "seed": 0, "stop_at_eos": False} | kw))
    return drain(stream(ctx, session, prompt, params))


SETTINGS = dict(prompt="Hello", max_new_tokens=10, temperature=0.8, top_k=40, top_p=1.0, repetition_penalty=1.0,
                seed=0, stop="")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((10, -1, 40, 1, 1, 0), "temperature"),
        ((10, math.nan, 40, 1, 1, 0), "temperature"),
        ((10, 1, 2.5, 1, 1, 0), "top_k"),
        ((10, 1, 40, 2, 1, 0), "top_p"),
        ((10, 1, 40, 1, 0, 0), "repetition_penalty"),
        ((51, 1, 40, 1, 1, 0), "from 1 to 50"),
        ((0, 1, 40, 1, 1, 0), "max_new_tokens"),
        ((10, 1, 40, 1, 1, 1.5), "seed"),
        ((10, "hot", 40, 1, 1, 0), "temperature must be a number"),
    ],
)
def test_bad_settings_are_refused_before_anything_changes(ctx, values, message):
    session = ctx.new_session()
    drain(logic.generate(ctx, session, **SETTINGS))
    settings = dict(zip(("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed"), values,
                        strict=True))
    with pytest.raises(UserError, match=message):
        next(logic.generate(ctx, session, **(SETTINGS | settings)))
    assert len(session.records) == 1  # nothing started, the last generation is still the latest


def test_generate_streams_the_text_the_prompt_view_and_stats(ctx, tiny_model):
    session = ctx.new_session()
    outputs = list(logic.generate(ctx, session, **(SETTINGS | {"temperature": 0})))
    text, stats, view = outputs[-1]
    expected = gpt2.generate_text(tiny_model, "Hello", gpt2.SamplingParams(temperature=0, max_new_tokens=10))
    assert text == expected and "10 tokens" in stats
    assert shown(view) == ("Hello", text)  # the prompt shown, told apart from the generated text
    assert logic.view_html("<b>", "&") == ('<div class="generation"><span class="prompt">&lt;b&gt;</span>'
                                           '<span class="generated">&amp;</span></div>')
    assert session.record(None).text == text


def test_stop_ends_the_stream_and_says_so(ctx):
    session = ctx.new_session()
    steps = logic.generate(ctx, session, **(SETTINGS | {"max_new_tokens": 40, "stop": ""}))
    next(steps)
    logic.stop(ctx, session)
    *_, (text, stats, _) = steps
    assert "finished: stopped" in stats and len(session.record(None).token_ids) < 40


def test_compare_names_the_b_settings_and_shares_the_seed(ctx):
    session = ctx.new_session()
    a = dict(temperature_a=1.0, top_k_a=0, top_p_a=1.0, repetition_penalty_a=1.0)
    with pytest.raises(UserError, match="top_k_b"):
        next(logic.compare(ctx, session, prompt="Hi", max_new_tokens=5, **a, temperature_b=1.0, top_k_b=2.5,
                           top_p_b=1.0, repetition_penalty_b=1.0, seed=0, stop=""))
    text_a, text_b, stats = drain(logic.compare(ctx, session, prompt="Hi", max_new_tokens=5, **a,
                                                **{k.replace("_a", "_b"): v for k, v in a.items()}, seed=3, stop=""))
    assert text_a == text_b and stats.startswith("A:") and "B:" in stats  # same settings and seed: same text
    assert len(session.records) == 2


def test_stream_keeps_a_record_with_step_details(ctx, tiny_model):
    session = ctx.new_session()
    last = run(ctx, session, "Hello", temperature=0)
    record = session.record(None)
    assert record is last.record and len(record.token_ids) == 12
    expected = [s.token_id for s in gpt2.generate(tiny_model, gpt2.encode("Hello"), record.params)]
    assert record.token_ids == expected
    assert record.text == gpt2.get_tokenizer().decode(expected)
    assert all(d.logits is not None and d.logits.dtype.name == "float16" for d in record.steps)
    assert "12 tokens" in last.stats() and "finished: length" in last.stats()


def test_kept_logits_are_each_steps_raw_logits_in_half_precision(ctx, tiny_model):
    """Shared blocks of rows (``LOGITS_BLOCK`` steps each) hold exactly numpy's float16 cast of each step's
    own logits; a run that ends early leaves the block's unused rows unread."""
    n = logic.LOGITS_BLOCK + 4  # crosses a block boundary
    params = gpt2.SamplingParams(temperature=0.9, max_new_tokens=n, seed=5, stop_at_eos=False)
    steps = list(logic.generate_job(tiny_model, gpt2.encode("Hello"), params))
    ref = list(gpt2.generate(tiny_model, gpt2.encode("Hello"), params, keep_logits=True))
    assert [s.token_id for s in steps] == [s.token_id for s in ref] and len(steps) == n
    for got, want in zip(steps, ref, strict=True):
        assert got.details.logits.dtype == np.float16 and got.details.logits.shape == want.details.logits.shape
        assert np.array_equal(got.details.logits, want.details.logits.astype(np.float16))
    rows = {s.details.logits.__array_interface__["data"][0] for s in steps}
    assert len(rows) == n  # every step its own row
    assert [s.details.logits.base.shape[0] for s in steps[:: logic.LOGITS_BLOCK]] == [logic.LOGITS_BLOCK, 4]
    extremes = np.array([0, 1e-8, -3.14159, 65504, 7e4, -1e9, np.inf, 1234.5678], np.float32)
    half = np.empty(len(extremes), np.float16)
    torch.from_numpy(half).copy_(torch.from_numpy(extremes))
    with np.errstate(over="ignore"):  # beyond float16's range: inf in both
        assert np.array_equal(half, extremes.astype(np.float16))  # torch's cast rounds as numpy's does


def test_only_the_latest_records_keep_logits(ctx):
    session = ctx.new_session()
    for i in range(LOGIT_RECORDS + 2):
        run(ctx, session, f"text {i}")
    kept = [all(d.logits is not None for d in r.steps) for r in session.records]
    assert kept == [False, False] + [True] * LOGIT_RECORDS


def test_sessions_are_independent_and_seeds_reproduce(ctx):
    a, b = ctx.new_session(), ctx.new_session()
    ra = run(ctx, a, "Once", temperature=1.0).record
    rb = run(ctx, b, "Once", temperature=1.0).record
    assert ra.token_ids == rb.token_ids and len(a.records) == len(b.records) == 1
    assert ra.id == rb.id == 1  # each session numbers its own generations: no id is shared, none guessable
    assert [run(ctx, b, "Twice").record.id for _ in range(2)] == [2, 3] and a.record(None).id == 1


def test_session_close_stops_work_and_frees_records(ctx):
    session = ctx.new_session()
    run(ctx, session, "Hi")
    session.close()
    assert session.stop.is_set() and not session.records


def test_stop_mid_stream_keeps_the_partial_record(ctx):
    session = Session(model_key=ctx.default_key)
    params = gpt2.SamplingParams(max_new_tokens=40, seed=0, stop_at_eos=False)
    it = stream(ctx, session, "Hi", params)
    for _ in range(5):
        next(it)
    it.close()  # what Gradio does when the user leaves or the stream is cancelled
    assert len(session.record(None).token_ids) == 5


# ---- the coloured view, decoding choices and advanced samplers (issue 11)


class _View(HTMLParser):
    """The output view's parts: the prompt's text, the generated text, and each token span's class and
    tooltip (with its text)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: dict[str, str] = {"prompt": "", "generated": ""}
        self.tokens: list[tuple[str, str, str]] = []  # (class, title, text)
        self._open: list[dict] = []

    def handle_starttag(self, tag, attrs):
        self._open.append(dict(attrs))
        if "tok" in (self._open[-1].get("class") or "").split() and self._in("generated"):
            self.tokens.append((self._open[-1]["class"], self._open[-1].get("title", ""), ""))

    def handle_endtag(self, tag):
        self._open.pop()

    def _in(self, cls: str) -> bool:
        return any(cls in (a.get("class") or "").split() for a in self._open)

    def handle_data(self, data):
        for part in self.parts:
            if self._in(part):
                self.parts[part] += data
        if self._in("tok") and self._in("generated"):
            cls, title, text = self.tokens[-1]
            self.tokens[-1] = (cls, title, text + data)


def parse_view(view: str) -> _View:
    parser = _View()
    parser.feed(view)
    return parser


def shown(view: str) -> tuple[str, str]:
    """(prompt, generated text) as the page shows them."""
    parts = parse_view(view).parts
    return parts["prompt"], parts["generated"]


def test_throttled_updates_end_with_the_whole_text_and_every_tokens_details(ctx, monkeypatch):
    """However few updates the throttle lets through, the last one is the whole generation, every token
    with its tooltip, and the record has every step."""
    monkeypatch.setattr(logic, "STREAM_INTERVAL_S", 3600)  # only the first token's update, then the end
    session = ctx.new_session()
    outputs = list(logic.generate(ctx, session, **(SETTINGS | {"max_new_tokens": 20})))
    record = session.record(None)
    assert outputs[0] == ("", "", "") and len(outputs) == 3  # cleared, the first token, the end
    text, stats, view = outputs[-1]
    assert text == record.text and "**20 tokens**" in stats and "finished: length" in stats
    assert len(record.steps) == len(record.token_ids) == 20 and shown(view)[1] == record.text
    assert sum(1 for _, title, piece in parse_view(view).tokens if title and piece) == sum(
        1 for t in record.token_ids if gpt2.get_tokenizer().decode([t]))  # each token that shows, its tooltip
    monkeypatch.setattr(logic, "STREAM_INTERVAL_S", 0)
    assert len(list(logic.generate(ctx, session, **(SETTINGS | {"max_new_tokens": 20})))) == 21  # every token


def test_the_view_colours_each_token_by_its_probability_with_alternatives_on_hover(ctx, monkeypatch):
    session = ctx.new_session()
    monkeypatch.setattr(logic, "STREAM_INTERVAL_S", 0)  # every update, to see them all
    *streamed, (text, _, view) = logic.generate(ctx, session, **(SETTINGS | {"prompt": "a <b> & 'c'",
                                                                             "max_new_tokens": 12}))
    # while it streams, the tokens are coloured but carry no tooltips (sent again each update); at the end they do
    assert len(streamed) == 12 and all(" title=" not in v for _, _, v in streamed) and " title=" in view
    assert [t[0] for t in parse_view(streamed[-1][2]).tokens] == [t[0] for t in parse_view(view).tokens][:11]
    record = session.record(None)
    parsed = parse_view(view)
    assert parsed.parts == {"prompt": "a <b> & 'c'", "generated": record.text} and text == record.text
    assert "legend" in view and "before the sampler" in view  # the legend says which probability colours
    tok = gpt2.get_tokenizer()
    visible = [(i, tok.decode([t])) for i, t in enumerate(record.token_ids)]
    assert len(parsed.tokens) == len(record.token_ids) == 12  # every token made text here (plain ASCII ids)
    for (cls, title, piece), (i, decoded), details in zip(parsed.tokens, visible, record.steps, strict=True):
        assert piece == decoded
        assert cls.split()[1] == logic.band(details.chosen_raw_prob)
        assert title.startswith(f"'{gpt2.token_display([record.token_ids[i]])[0]}': "
                                f"{logic.percent(details.chosen_raw_prob)} under the model")
        alternatives = title.split("top alternatives:\n")[1].splitlines()
        assert len(alternatives) == logic.ALTERNATIVES
        for line, t, p in zip(alternatives, details.top_ids, details.raw_probs, strict=False):
            assert line.endswith(f"'{gpt2.token_display([int(t)])[0]}' {logic.percent(float(p))}")
            assert line.startswith("▸" if t == record.token_ids[i] else "·")


def test_token_spans_escape_text_and_tooltips():
    details = gpt2.StepDetails(top_ids=np.array([27, 1279]), raw_probs=np.array([0.6, 0.3]),
                               probs=np.array([0.7, 0.3]), chosen_raw_prob=0.6, chosen_prob=0.7, entropy=1.0,
                               window_start=0)
    span = logic.token_span('<"&', 27, details)  # 27 is "<"
    assert span.startswith('<span class="tok p50" title="&#x27;&lt;&#x27;: 60.0% under the model, 70.0% after')
    assert span.endswith(">&lt;&quot;&amp;</span>") and "<" not in span[1:-7].replace("</", "")
    assert parse_view(f'<span class="generated">{span}</span>').tokens[0][1].splitlines()[2] == "▸ '<' 60.0%"
    assert logic.token_span("", 27, details) == ""  # a step whose character is still pending shows nothing
    assert logic.token_span("\n", 198, details).startswith('<span class="tok p50 nl"')  # marked: a box to hover
    assert [logic.band(p) for p in (1, 0.5, 0.3, 0.05, 0.02, 0.001)] == ["p50", "p50", "p20", "p5", "p1", "p0"]
    assert logic.percent(0.123) == "12.3%" and logic.percent(2e-5) == "0.002%"


def test_a_stop_string_cut_shows_exactly_the_visible_text(ctx, tiny_model):
    unstopped = gpt2.generate_text(tiny_model, "Hi", gpt2.SamplingParams(temperature=0, max_new_tokens=20))
    stop = unstopped[len(unstopped) // 2: len(unstopped) // 2 + 4]  # spans tokens: held back, then cut
    session = ctx.new_session()
    *_, (text, stats, view) = logic.generate(ctx, session, **(SETTINGS | {"prompt": "Hi", "temperature": 0,
                                                                          "max_new_tokens": 20, "stop": stop}))
    record = session.record(None)
    assert "finished: stop" in stats and text == record.text == unstopped[: unstopped.index(stop)]
    assert shown(view) == ("Hi", record.text)
    assert "".join(t for *_, t in parse_view(view).tokens) == record.text


def test_greedy_is_temperature_zero_with_the_penalty_and_ngram_ban(ctx, tiny_model):
    session = ctx.new_session()
    settings = SETTINGS | {"temperature": 1.3, "repetition_penalty": 1.5, "no_repeat_ngram_size": 2,
                           "max_new_tokens": 20, "decoding": " Greedy"}
    *_, (text, _, _) = logic.generate(ctx, session, **settings)
    record = session.record(None)
    reference = gpt2.SamplingParams(temperature=0, repetition_penalty=1.5, no_repeat_ngram_size=2, max_new_tokens=20,
                                    top_k=40, seed=0)
    assert record.token_ids == [s.token_id for s in gpt2.generate(tiny_model, gpt2.encode("Hello"), reference)]
    assert record.decoding == "greedy" and record.params.temperature == 0 and text == record.text
    sampled = drain(logic.generate(ctx, session, **(settings | {"decoding": "sampling"})))
    assert sampled[0] != text and session.record(None).decoding == "sampling"


def test_advanced_samplers_reach_the_sampling_params(ctx, tiny_model):
    session = ctx.new_session()
    advanced = dict(min_p=0.05, typical_p=0.9, epsilon_cutoff=0.0003, eta_cutoff=0.0004, no_repeat_ngram_size=3)
    drain(logic.generate(ctx, session, **SETTINGS, **advanced))
    record = session.record(None)
    assert {k: getattr(record.params, k) for k in advanced} == advanced
    expected = gpt2.SamplingParams(**advanced, max_new_tokens=10, temperature=0.8, top_k=40, seed=0)
    assert record.token_ids == [s.token_id for s in gpt2.generate(tiny_model, gpt2.encode("Hello"), expected)]
    drain(logic.generate(ctx, session, **SETTINGS, min_p=None, no_repeat_ngram_size=None))  # None: off
    assert session.record(None).params.min_p == 0 and session.record(None).params.no_repeat_ngram_size == 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"typical_p": 0}, r"typical_p must be a number above 0"),
        ({"min_p": math.nan}, r"min_p must be"),
        ({"epsilon_cutoff": 1}, r"epsilon_cutoff must be .*not including, 1"),
        ({"no_repeat_ngram_size": True}, r"no_repeat_ngram_size must be a whole number"),
        ({"decoding": "beam"}, r"decoding must be one of 'sampling', 'greedy', 'beam search'; got 'beam'"),
        ({"decoding": None}, r"decoding must be one of"),
        ({"num_beams": 9}, r"num_beams must be a whole number from 2 to 8 \(this server's limit\); got 9"),
        ({"num_beams": 1}, r"num_beams must be .* from 2"),
        ({"num_beams": True}, r"num_beams must be a whole number"),
        ({"length_penalty": math.inf}, r"length_penalty must be a number from -10 to 10"),
        ({"length_penalty": "long"}, r"length_penalty must be a number"),
        ({"early_stopping": "yes"}, r"early_stopping must be one of 'false', 'true', 'never'; got 'yes'"),
        ({"early_stopping": 1}, r"early_stopping must be one of"),
    ],
)
def test_bad_new_settings_are_refused_naming_them(ctx, values, message):
    session = ctx.new_session()
    with pytest.raises(UserError, match=message):
        next(logic.generate(ctx, session, **(SETTINGS | values)))
    assert not session.records


def test_beam_search_becomes_an_ordinary_record_of_its_best_sequence(ctx, tiny_model):
    params = gpt2.BeamParams(num_beams=3, max_new_tokens=8, length_penalty=1.0, early_stopping=False,
                        no_repeat_ngram_size=2, num_return_sequences=1)
    best = gpt2.beam_search(tiny_model, gpt2.encode("Hello"), params).sequences[0]
    session = ctx.new_session()
    *_, (text, stats, view) = logic.generate(ctx, session, **(SETTINGS | {
        "max_new_tokens": 8, "decoding": "beam search", "num_beams": 3, "length_penalty": 1.0,
        "early_stopping": "false", "no_repeat_ngram_size": 2, "temperature": 1.7, "top_k": 3}))
    record = session.record(None)
    assert record.token_ids == best and record.decoding == "beam search"
    assert len(record.steps) == len(best) and all(d.logits is not None for d in record.steps)  # like any record
    assert text == record.text == gpt2.get_tokenizer().decode([t for t in best if t != gpt2.EOT_ID])
    assert record.params.no_repeat_ngram_size == 2 and record.params.temperature == 1.0  # what the search scored
    assert "Beam search: 3 beams" in stats and shown(view) == ("Hello", text)
    for d, t in zip(record.steps, best, strict=True):  # each step's probability is the model's, of the beam's token
        assert d.chosen_raw_prob == pytest.approx(float(softmax(d.logits.astype(np.float32))[t]), rel=1e-2)
    # an empty prompt: the search, like a generation, starts from <|endoftext|>
    drain(logic.generate(ctx, session, **(SETTINGS | {"prompt": "", "max_new_tokens": 8, "decoding": "beam search",
                                                      "num_beams": 2})))
    empty = gpt2.beam_search(tiny_model, [gpt2.EOT_ID], gpt2.BeamParams(num_beams=2, max_new_tokens=8))
    assert session.record(None).token_ids == empty.sequences[0] and session.record(None).prompt_ids == []


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize(("value", "expected"), [(True, True), (np.bool_(False), False), ("NEVER", "never"),
                                                 (" true", True), ("false", False)])
def test_early_stopping_takes_booleans_and_the_widget_texts(value, expected):
    assert logic.parse_early_stopping(value) == expected and type(logic.parse_early_stopping(value)) is type(expected)
