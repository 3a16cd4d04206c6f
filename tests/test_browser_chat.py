"""The Chat tab in a real browser (headless Chromium, as ``tests/test_browser.py``, the same
``BROWSER_TEST_MODEL``): the hint, a reply streamed into the conversation, Regenerate, Clear, and the tab bar
at phone width with the Chat tab in it. (The README's ``chat.png``, a chat with a tuned model, is taken by
``tests/test_browser_instructions.py``.)"""

from __future__ import annotations

import re

from test_browser import (  # noqa: F401 - fixtures used by name
    PHONE_WIDTH,
    browser_page,
    no_error_toast,
    open_tab,
    pytestmark,
    set_slider,
    shoot,
    url,
    wait_idle,
)

from ui.layout.page import TABS
from ui.logic.chat import HINT

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - pytestmark skips the module
    expect = None

MESSAGES = ("Give three tips for staying healthy.", "Write a short poem about the sea.")
LONG = " word" * 2_000  # more tokens than any GPT-2's context (and under the server's character limit)


def _bubbles(page, role: str):
    """The conversation's messages of one side (the chatbot marks them ``user`` and ``bot``)."""
    return page.locator(f"#chat-conversation .message.{role}")


def _send(page, text: str, n_before: int) -> None:
    box = page.locator("#chat-message textarea")
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")  # taken at once
    expect(_bubbles(page, "bot")).to_have_count(n_before + 1)
    wait_idle(page)


def test_chat_streams_regenerates_and_clears(browser_page, tmp_path):  # noqa: F811 - the fixtures
    page, errors = browser_page
    open_tab(page, "Chat")
    notice = page.locator("#chat-notice")
    expect(notice).to_contain_text(HINT[:60])  # the base model: not instruction-tuned
    set_slider(page, "max new tokens", 24)
    _send(page, MESSAGES[0], 0)
    _send(page, MESSAGES[1], 1)
    expect(_bubbles(page, "user")).to_have_count(2)
    expect(_bubbles(page, "user").nth(1)).to_contain_text("short poem")
    last = _bubbles(page, "bot").nth(1)
    expect(last).to_have_text(re.compile(r"\S"))
    no_error_toast(page)
    shoot(page, "chat", [tmp_path])

    # Regenerate: the same messages, the last reply made again (a random seed)
    page.locator("#chat-regenerate").click()
    wait_idle(page)
    expect(_bubbles(page, "user")).to_have_count(2)
    expect(_bubbles(page, "bot")).to_have_count(2)

    # Clear: an empty conversation, the hint still there
    page.locator("#chat-clear").click()
    expect(_bubbles(page, "user")).to_have_count(0)
    expect(notice).to_contain_text(HINT[:60])

    # Clear during a long reply cancels it: the reply does not write the conversation back
    box = page.locator("#chat-message textarea")
    set_slider(page, "max new tokens", 256)
    box.fill(MESSAGES[0])
    box.press("Enter")
    expect(_bubbles(page, "user")).to_have_count(1)
    page.locator("#chat-clear").click()
    wait_idle(page)
    page.wait_for_timeout(1_000)
    expect(_bubbles(page, "user")).to_have_count(0)
    no_error_toast(page)

    # A message too long for the context is refused with a message, and given back to edit
    box.fill(LONG)
    box.press("Enter")
    expect(page.locator(".toast-body.error").first).to_contain_text("shorten the message")
    expect(box).to_have_value(LONG)
    expect(_bubbles(page, "user")).to_have_count(0)
    assert not errors


def test_every_tab_name_fits_at_phone_width_with_chat(browser_page):  # noqa: F811 - the fixture
    """At 390 px every tab's name, Chat's too, is in the tab bar (none behind a "⋯" menu), and the Chat tab's
    columns stack, each the whole width."""
    page, errors = browser_page
    open_tab(page, "Chat")  # at full width: at 390 px the name may sit in the "⋯" menu, re-measured as it loads
    page.set_viewport_size({"width": PHONE_WIDTH, "height": 800})
    for tab in TABS:
        expect(page.get_by_role("tab", name=tab.title, exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="More tabs")).to_be_hidden()
    panel = page.locator('[role="tabpanel"]').filter(visible=True)
    widths = [box["width"] for box in (c.bounding_box() for c in panel.locator(".column").filter(visible=True).all())
              if box and box["height"] > 0]
    assert widths and min(widths) >= PHONE_WIDTH * 0.75, f"columns {widths} px wide at {PHONE_WIDTH} px"
    assert not errors
