"""The Generate tab's decoding choices, advanced samplers, coloured output and share links in a real
browser (headless Chromium, as ``tests/test_browser.py``; the same ``BROWSER_TEST_MODEL`` and
``SCREENSHOT_DIR``: the README's ``generate.png`` is taken here too, with the coloured output)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from test_browser import (  # noqa: F401 - fixtures used by name
    PROMPT,
    browser_page,
    no_error_toast,
    open_tab,
    pytestmark,
    set_slider,
    shoot,
    url,
    visible,
    wait_idle,
)

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - pytestmark skips the module
    expect = None

FINISHED = re.compile(r"finished: (length|end of text|stop)")


def _generate(page) -> None:
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#generate-stats").get_by_text(FINISHED)).to_be_visible()
    wait_idle(page)


def _set_fresh_slider(page, label: str, value: float) -> None:
    """``set_slider`` on a slider an accordion has just mounted: a value typed before the slider is wired
    up is lost, so type it again until it holds."""
    box = visible(page.get_by_label(f"number input for {label}", exact=True))
    slider = visible(page.get_by_label(f"range slider for {label}", exact=True))
    for _ in range(10):
        box.fill(str(value))
        box.press("Tab")
        try:
            expect(slider).to_have_value(str(value), timeout=1_000)
            return
        except AssertionError:
            continue
    expect(slider).to_have_value(str(value))


def _link_box(page):
    return page.locator("#share-link").locator("textarea, input").first


def test_decoding_samplers_colours_and_share_links(browser_page, url, tmp_path):  # noqa: F811 - the fixtures
    page, errors = browser_page
    folders = [tmp_path] + ([Path(os.environ["SCREENSHOT_DIR"])] if os.environ.get("SCREENSHOT_DIR") else [])
    open_tab(page, "Generate")
    expect(page.locator("#share-note")).to_be_hidden()  # a plain page: nothing restored, nothing said

    # Sampling with an advanced sampler: each token coloured, its alternatives in its tooltip
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    set_slider(page, "max new tokens", 40)
    page.get_by_text("Advanced samplers", exact=True).click()
    _set_fresh_slider(page, "min-p", 0.02)
    _set_fresh_slider(page, "no-repeat n-gram size", 3)
    _generate(page)
    view = page.locator("#generated-view")
    tokens = view.locator(".generated .tok")
    expect(tokens.first).to_be_visible()
    assert tokens.count() >= 10
    word = tokens.filter(has_text=re.compile(r"\w")).nth(2)
    word.hover()
    title = word.get_attribute("title")
    assert re.search(r"under the model.*after the sampler\ntop alternatives:\n[▸·] '", title, re.S), title
    expect(view.locator(".legend")).to_contain_text("before the sampler")
    page.get_by_text("Generated text only (to copy)").click()
    output = page.locator("#generated-text textarea")
    expect(output).to_have_value(re.compile(r"\S"))
    # the spans hold exactly the text (a line break's faint mark, a CSS ::before, is no part of it)
    assert view.locator(".generated").text_content() == output.input_value()
    no_error_toast(page)
    shoot(page, "generate", folders)

    # Greedy, then beam search (its settings open when it is chosen)
    page.get_by_role("radio", name="greedy", exact=True).check()
    _generate(page)
    greedy = output.input_value()
    _generate(page)
    assert output.input_value() == greedy  # greedy: the same text every time
    page.get_by_role("radio", name="beam search", exact=True).check()
    expect(visible(page.get_by_label("number input for beams", exact=True))).to_be_visible()
    _set_fresh_slider(page, "beams", 3)
    _generate(page)
    expect(page.locator("#generate-stats")).to_contain_text("Beam search: 3 beams")
    expect(view.locator(".generated .tok").first).to_have_attribute("title", re.compile("top alternatives"))
    no_error_toast(page)

    # Share: the link carries everything; opening it restores the widgets
    page.get_by_role("button", name="Share settings", exact=True).click()
    expect(_link_box(page)).to_have_value(re.compile(r"^http://127\.0\.0\.1:\d+/\?prompt="))
    link = _link_box(page).input_value()
    query = parse_qs(urlsplit(link).query, keep_blank_values=True)
    assert query["prompt"] == [PROMPT] and query["decoding"] == ["beam search"] and query["num_beams"] == ["3"]
    assert query["min_p"] == ["0.02"] and query["no_repeat_ngram_size"] == ["3"]
    page.goto(link)
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(PROMPT)
    expect(page.get_by_role("radio", name="beam search", exact=True)).to_be_checked()
    expect(page.locator("#share-note")).to_contain_text("Settings restored from the link")
    # the accordions whose settings the link uses are open
    expect(visible(page.get_by_label("number input for beams", exact=True))).to_have_value("3")
    expect(visible(page.get_by_label("number input for no-repeat n-gram size", exact=True))).to_have_value("3")
    expect(visible(page.get_by_label("number input for min-p", exact=True))).to_have_value("0.02")
    expect(visible(page.get_by_label("number input for max new tokens", exact=True))).to_have_value("40")

    # A link with bad and unknown values: the good ones restored, each bad one named, no error page
    page.goto(f"{url}?prompt=Hi%20there&temperature=hot&decoding=greedy&num_beams=99&utm_source=mail")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("Hi there")
    expect(page.get_by_role("radio", name="greedy", exact=True)).to_be_checked()
    note = page.locator("#share-note")
    expect(note).to_contain_text("temperature must be a number")
    expect(note).to_contain_text("num_beams must be a whole number from 2 to")
    expect(visible(page.get_by_label("number input for temperature", exact=True))).to_have_value("0.8")
    no_error_toast(page)
    assert not errors
