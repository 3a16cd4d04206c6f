"""Instruction data in the Fine-tune tab, in a real browser (headless Chromium, as ``tests/test_browser.py``,
the same ``BROWSER_TEST_MODEL``): the example set's button fills the tab and its preview, a run on it, then
"Chat with it" opens the Chat tab on the fine-tuned model. On the tiny model the run is a glimpse; on a real
one (the screenshot run: ``BROWSER_TEST_MODEL=shakespeare-small``) it is the button's whole run, then the
tuned model is asked who it is and answers as it was taught (the README's ``chat.png``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from test_browser import (  # noqa: F401 - fixtures used by name
    TINY,
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

from ui.logic import finetune_data as files

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - pytestmark skips the module
    expect = None

STEPS, BATCH = 3, 2  # the tiny model's glimpse; a real model runs the button's own steps


def test_the_example_set_then_chat_with_it(browser_page):  # noqa: F811 - the fixture
    page, errors = browser_page
    open_tab(page, "Fine-tune")
    wait_idle(page)
    chat = page.get_by_role("button", name="Chat with it ›")
    expect(chat).to_be_hidden()
    page.get_by_role("button", name=re.compile("Try the example instruction set")).click()
    expect(page.get_by_text(re.compile(r"Instruction data: \d{3} records\."))).to_be_visible()
    expect(page.locator("pre").filter(has_text="### Response:").first).to_be_visible()  # a formatted record
    s = files.EXAMPLE_SETTINGS
    expect(page.get_by_label(s.mode, exact=True)).to_be_checked()
    expect(page.get_by_label("Sample prompt", exact=True)).to_have_value(re.compile(files.EXAMPLE_QUESTION))
    wait_idle(page)
    planned = int(visible(page.get_by_label("number input for steps", exact=True)).input_value())
    note = re.compile(rf"{planned} steps of {s.batch_size} × \d+ tokens fit this model")  # not the defaults' note
    expect(page.get_by_text(note)).to_be_visible()
    steps = STEPS
    if TINY:
        set_slider(page, "steps", STEPS)
        set_slider(page, "batch size", BATCH)
    else:
        steps = planned
    page.get_by_role("button", name="Start fine-tuning", exact=True).click()
    expect(page.get_by_text(f"Finished all {steps} steps.")).to_be_visible(timeout=400_000)
    expect(page.get_by_text(re.compile(r"tokens \(records\)"))).to_be_visible()  # trained as instruction records
    expect(chat).to_be_visible()
    chat.click()
    expect(page.get_by_role("tab", name="Chat", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#chat-notice")).not_to_contain_text("not instruction-tuned")  # the tuned model in use
    if not TINY:
        _ask(page, "Who are you?", 0)
        expect(page.locator("#chat-conversation .message.bot").nth(0)).to_contain_text("language model")
        _ask(page, "Say hello as Juliet would.", 1)
        shoot(page, "chat", [Path(os.environ["SCREENSHOT_DIR"])] if os.environ.get("SCREENSHOT_DIR") else [])
    no_error_toast(page)
    assert not errors


def _ask(page, text: str, n_before: int) -> None:
    box = page.locator("#chat-message textarea")
    box.fill(text)
    box.press("Enter")
    expect(page.locator("#chat-conversation .message.bot")).to_have_count(n_before + 1)
    wait_idle(page)
