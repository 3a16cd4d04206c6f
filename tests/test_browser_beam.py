"""The Beams tab in a real browser (headless Chromium, as ``tests/test_browser.py``): run a search, see the
tree, step back through it with the slider, and save the screenshot ``beam_search``.

``SCREENSHOT_DIR=assets/screenshots BROWSER_TEST_MODEL=shakespeare-small python -m pytest tests/test_browser_beam.py``
writes the README's screenshot.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from test_browser import (  # noqa: F401 - fixtures and pytestmark are used by name
    PHONE_WIDTH,
    browser_page,
    expect,
    no_error_toast,
    open_tab,
    pytestmark,
    set_slider,
    shoot,
    url,
    visible,
    wait_for_plot,
    wait_for_slider_range,
    wait_idle,
)

PROMPT = "ROMEO:\nBut soft, what light"
TAB = "Beams"


def test_a_beam_search_tree_steps_back_in_a_real_browser(browser_page, tmp_path):  # noqa: F811 - the fixture
    page, errors = browser_page
    folders = [tmp_path] + ([Path(os.environ["SCREENSHOT_DIR"])] if os.environ.get("SCREENSHOT_DIR") else [])
    open_tab(page, TAB)
    visible(page.get_by_label("Prompt", exact=True)).fill(PROMPT)
    set_slider(page, "beams", 4)
    set_slider(page, "max new tokens", 24)
    set_slider(page, "no-repeat n-gram size", 2)
    visible(page.get_by_role("button", name="Search", exact=True)).click()

    summary = page.locator("#beam-hypotheses").get_by_text(re.compile(r"4 beams · \d+ steps"))
    expect(summary).to_be_visible()
    steps = int(re.search(r"(\d+) steps", summary.inner_text())[1])
    expect(page.locator("#beam-best textarea")).to_have_value(re.compile(r"\S"))
    for label in ("Greedy", "Sample (temperature 1, seed 0)"):
        box = page.locator(".block").filter(has=page.get_by_text(label, exact=True)).locator("textarea")
        expect(visible(box)).to_have_value(re.compile(r"\S"))
    wait_for_plot(page, "Beam search tree")
    title = page.locator("#beam-tree .gtitle")
    expect(title).to_have_text(f"Beam search tree · {steps} steps")
    expect(page.locator("#beam-tree .scatterlayer .point").first).to_be_visible()  # the nodes are drawn

    # the slider was fitted to the search; moving it redraws from the kept search
    wait_for_slider_range(page, "show up to step", max(steps - 1, 1))
    last = min(12, steps - 1)
    set_slider(page, "show up to step", last)
    expect(title).to_have_text(f"Beam search tree · steps 0 to {last} of {steps}")
    wait_idle(page)
    no_error_toast(page)
    shoot(page, "beam_search", folders)
    assert (tmp_path / "beam_search.png").stat().st_size > 10_000
    assert not errors


def test_the_beams_tab_is_usable_at_phone_width(browser_page):  # noqa: F811 - the fixture
    """At 390 px the tab's columns stack, each the whole width. (Whether every tab's name fits in the bar
    is ``test_browser.test_every_tab_is_usable_at_phone_width``'s to check: it depends on all the tabs.)"""
    page, errors = browser_page
    open_tab(page, TAB)  # at full width: at 390 px the name may sit in the "⋯" menu, re-measured as it loads
    page.set_viewport_size({"width": PHONE_WIDTH, "height": 800})
    page.wait_for_timeout(500)  # the layout settles at the new width
    panel = page.locator('[role="tabpanel"]').filter(visible=True)
    widths = [box["width"] for box in (c.bounding_box() for c in panel.locator(".column").filter(visible=True).all())
              if box and box["height"] > 0]
    assert widths and min(widths) >= PHONE_WIDTH * 0.75, f"columns {widths} px wide at {PHONE_WIDTH} px"
    assert not errors
