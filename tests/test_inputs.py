"""Every widget and API value is parsed in one place (``ui.inputs``): widget floats are accepted, and a
bad value is refused with a message that names the input and what is allowed."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpt2
from ui import inputs
from ui.inputs import UserError


@pytest.mark.parametrize("value", ["many", None, math.nan, math.inf, 2.5, "1e400", [], 10**400])
def test_integers_refuse_what_is_not_a_whole_number(value):
    with pytest.raises(UserError, match=r"^steps must be a whole number from 1 to 9; got"):
        inputs.integer("steps", value, 1, 9)


def test_widget_values_are_converted():
    assert inputs.integer("top_k", 40.0, 0) == 40 and inputs.number("top_p", "0.5", 0, 1) == 0.5
    p = inputs.sampling(20.0, 0.7, 40.0, 0.9, 1.1, -1, "END\n\\n\\n", max_tokens=64)
    assert (p.max_new_tokens, p.top_k, p.seed, p.stop) == (20, 40, None, ("END", "\n\n"))
    assert inputs.sampling(20, 0, 0, 1, 1, None, max_tokens=64).seed is None
    assert inputs.choice("mode", " lora ", ("LoRA", "full")) == "LoRA"


@pytest.mark.parametrize(("changes", "name"), [
    ({"max_new_tokens": 65}, r"max_new_tokens must be a whole number from 1 to 64 \(this server's limit\)"),
    ({"temperature": -1}, "temperature_b"), ({"top_k": 2.5}, "top_k_b"), ({"top_p": 1.5}, "top_p_b"),
    ({"repetition_penalty": 0}, r"repetition_penalty_b must be a number above 0"), ({"seed": "x"}, "seed"),
])
def test_sampling_errors_name_the_parameter_as_the_api_does(changes, name):
    values = dict(max_new_tokens=8, temperature=1, top_k=0, top_p=1, repetition_penalty=1, seed_value=0) | changes
    values["seed_value"] = values.pop("seed", values["seed_value"])
    with pytest.raises(UserError, match=name):
        inputs.sampling(**values, max_tokens=64, suffix="_b")


def test_choices_and_indices_say_what_is_allowed():
    with pytest.raises(UserError, match=r"mode must be one of 'LoRA', 'full'; got 'qlora'"):
        inputs.choice("mode", "qlora", ("LoRA", "full"))
    with pytest.raises(UserError, match=r"layer must be a whole number from 0 to 3 \(4 layers\); got 4"):
        inputs.index("layer", 4, 4, "4 layers")
    assert inputs.record_id(inputs.LATEST) is None and inputs.record_id("") is None and inputs.record_id(3.0) == 3
    with pytest.raises(UserError, match="record"):
        inputs.record_id("#3")


def test_stops_are_capped():
    with pytest.raises(UserError, match=f"at most {inputs.MAX_STOPS} sequences"):
        inputs.stops("\n".join("x" * (inputs.MAX_STOPS + 1)))


def test_prompts_are_cleaned_and_cropped():
    ids, notice = inputs.prompt_ids("x" * 1000, max_chars=100, block_size=1024)
    assert "100 characters" in notice and gpt2.get_tokenizer().decode(ids) == "x" * 100
    ids, notice = inputs.prompt_ids("hello " * 15, max_chars=100, block_size=8)
    assert len(ids) == 8 and "8 tokens" in notice
    ids, notice = inputs.prompt_ids("bad \ud800 surrogate", max_chars=100, block_size=64)
    assert notice is None and "\ufffd" in gpt2.get_tokenizer().decode(ids)
    assert inputs.prompt_ids(None, 100, 64) == ([], None)
    assert inputs.model_input([]) == [gpt2.EOT_ID] and inputs.model_input([5]) == [5]


@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_booleans_are_not_numbers(value):
    """``True`` is not 1: a boolean is refused wherever a number is parsed (a record, a step, a setting)."""
    for parse in (lambda v: inputs.integer("steps", v, 0, 9), lambda v: inputs.number("top_p", v, 0, 1),
                  lambda v: inputs.seed("seed", v), inputs.record_id):
        with pytest.raises(UserError, match=r"^(steps|top_p|seed|record) must be .*; got"):
            parse(value)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "1e400", 10**400, 1.5, 0, "newest"])
def test_record_ids_refuse_what_is_no_id_and_name_the_record(value):
    with pytest.raises(UserError, match=r"^record must be a generation id of this session .*'latest'"):
        inputs.record_id(value)


def test_whole_numbers_stay_exact_and_refusals_quote_values_short():
    assert inputs.seed("seed", 2**63 - 1) == 2**63 - 1 and inputs.integer("n", 2**62 + 1) == 2**62 + 1
    with pytest.raises(UserError, match=r"got 'xxxx+…\.$") as refused:
        inputs.integer("steps", "x" * 10_000)
    assert len(str(refused.value)) < 200  # a megabyte sent is not a megabyte echoed
    assert inputs.shown(10**5000) == "a number too long to print"  # repr() itself would raise
