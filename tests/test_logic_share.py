"""Share links (``ui.logic.share``): the Generate tab's prompt and settings as URL query parameters, and
back; a bad link restores what it can and says what it could not, never an error page."""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qsl, urlsplit

import pytest

from ui.context import Caps
from ui.logic import share

CAPS = Caps(max_prompt_chars=200, max_new_tokens=100, max_beams=6)
VALUES = dict(prompt="ROMEO: a&b=c #1 ?x\n  “quoted” 🌹 %20 +plus", max_new_tokens=40.0, temperature=0.75,
              top_k=40.0, top_p=0.95, repetition_penalty=1.1, seed=12345.0, stop="\\n\\n\nEND", min_p=0.05,
              typical_p=0.9, epsilon_cutoff=0.0003, eta_cutoff=0.0009, no_repeat_ngram_size=3.0,
              decoding="beam search", num_beams=5.0, length_penalty=-0.5, early_stopping="never")


def opened(url: str) -> dict[str, str]:
    """The query parameters a server sees when the browser opens ``url``."""
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def test_a_link_restores_every_setting_exactly():
    url = share.share_link(None, "https://user-space.hf.space/app/", **VALUES)
    assert url.startswith("https://user-space.hf.space/app/?prompt=ROMEO%3A%20a%26b%3Dc%20%231")
    assert list(opened(url)) == list(share.FIELDS)  # every setting, in /generate's order
    found = share.from_query(opened(url), CAPS)
    assert found.values == VALUES and not found.notes  # whole numbers as ints: 40.0 == 40
    assert all(type(found.values[k]) is int for k in share.INTEGERS) and found.values["seed"] == 12345
    assert share.note_markdown(found) == "Settings restored from the link: press Generate."
    # the page's own query (an old link opened, then shared again) is replaced, not appended to
    assert share.link("http://127.0.0.1:7860/?temperature=2", {"top_k": 3}) == "http://127.0.0.1:7860/?top_k=3"


@pytest.mark.parametrize(("seed", "expected"), [(None, None), (-1, None), (2**62 + 1, 2**62 + 1), (0, 0)])
def test_seeds_round_trip_exactly_and_random_stays_random(seed, expected):
    assert share.from_query(opened(share.link("http://x/", {"seed": seed})), CAPS).values == {"seed": expected}


def test_unknown_keys_are_ignored_and_a_plain_page_restores_nothing():
    found = share.from_query({"utm_source": "mail", "__theme": "dark", "Temperature": "9"}, CAPS)
    assert found.values == {} and found.notes == [] and share.note_markdown(found) == ""


def test_bad_values_are_left_out_one_by_one_with_a_note_naming_each():
    query = {"temperature": "hot", "top_k": "2.5", "top_p": "nan", "repetition_penalty": "0.1",
             "typical_p": "0", "epsilon_cutoff": "0.5", "no_repeat_ngram_size": "true", "decoding": "beam",
             "num_beams": "7", "length_penalty": "3.5", "early_stopping": "maybe", "max_new_tokens": "101",
             "seed": "-5", "stop": "\n".join("x" * 5 for _ in range(17)), "min_p": "1e400",
             "eta_cutoff": "0.001", "prompt": "Hello"}
    found = share.from_query(query, CAPS)
    assert found.values == {"prompt": "Hello", "eta_cutoff": 0.001}  # the good ones still come through
    bad = [name for name in share.FIELDS if name in query and name not in found.values]
    assert len(found.notes) == len(bad) == 15
    for name, note in zip(bad, found.notes, strict=True):  # in /generate's order, each naming its parameter
        assert note.startswith(f"{name} must be") and note.endswith("(left as it was)"), note
    assert "from 2 to 6" in found.notes[bad.index("num_beams")]  # this server's cap on beams
    assert "from 1 to 100" in found.notes[bad.index("max_new_tokens")]
    assert "from 0.5 to 2" in found.notes[bad.index("repetition_penalty")]  # the widgets' ranges
    assert "from -2 to 3" in found.notes[bad.index("length_penalty")]
    for text, shown in (("TRUE", "true"), ("false", "false"), (" never ", "never")):
        assert share.from_query({"early_stopping": text}, CAPS).values == {"early_stopping": shown}
    text = share.note_markdown(found)
    assert text.startswith("Settings restored from the link") and text.count("\n- ") == 15


def test_hostile_values_are_cut_short_fast_and_escaped():
    long_number = "9" * 100_000
    start = time.perf_counter()
    found = share.from_query({"prompt": "p" * 10_000 + "END", "top_k": long_number, "decoding": "<img src=x>*[a](b)"},
                             CAPS)
    assert time.perf_counter() - start < 1
    assert found.values == {"prompt": "p" * 197 + "END"}  # as a generation crops it: the last characters
    assert found.notes[0] == "prompt cropped to its last 200 characters."
    assert len(found.notes[1]) < 200 and found.notes[1].startswith("top_k must be")
    text = share.note_markdown(found)
    assert "\\<img src=x\\>\\*\\[a\\]\\(b\\)" in text and not re.search(r"(?<!\\)[<>\[\]*]", text)  # as text
    assert share.from_query({"prompt": "lone \ud800"}, CAPS).values == {"prompt": "lone \ufffd"}
