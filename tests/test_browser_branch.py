"""Branching in a real browser (headless Chromium, as ``tests/test_browser.py``): generate, open the
Probabilities tab, turn on more sampler stages, pick a step and another candidate, continue from it, see
the branch picked with its lineage, and move back to the parent through the tree. Saves the screenshots
``probabilities`` (the step view with several stages on) and ``branching``.

``SCREENSHOT_DIR=assets/screenshots BROWSER_TEST_MODEL=shakespeare-small python -m pytest tests/test_browser_branch.py``
writes the README's screenshots.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from test_browser import (  # noqa: F401 - fixtures and pytestmark are used by name
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
STEP = 2


def generate(page) -> int:
    """Generate a continuation in the Generate tab; the number of tokens made."""
    open_tab(page, "Generate")
    visible(page.get_by_label("Prompt", exact=True)).fill(PROMPT)
    set_slider(page, "max new tokens", 24)
    visible(page.get_by_role("button", name="Generate", exact=True)).click()
    stats = page.locator("#generate-stats").get_by_text(re.compile(r"finished: (length|end of text|stop)"))
    expect(stats).to_be_visible()
    wait_idle(page)
    return int(re.search(r"(\d+) tokens", stats.inner_text())[1])


def test_branch_from_a_candidate_in_a_real_browser(browser_page, tmp_path):  # noqa: F811 - the fixture
    page, errors = browser_page
    folders = [tmp_path] + ([Path(os.environ["SCREENSHOT_DIR"])] if os.environ.get("SCREENSHOT_DIR") else [])
    n = generate(page)
    assert n > STEP + 1

    # the step view: more stages on, every stage in the legend (off ones marked so)
    open_tab(page, "Probabilities")
    wait_for_slider_range(page, "step", n - 1)
    set_slider(page, "step", STEP)
    page.get_by_text("More samplers: min-p, typical, epsilon, eta, no-repeat n-gram").click()
    set_slider(page, "min-p", 0.02)
    set_slider(page, "no-repeat n-gram size", 3)
    visible(page.get_by_role("button", name="Show step", exact=True)).click()
    wait_for_plot(page, "Candidates")
    info = page.locator("#step-info")
    expect(info).to_contain_text(re.compile(rf"Step {STEP} of {n}"))
    for counted in (r"min-p \d[\d,]*", r"no-repeat n-gram \d[\d,]*", "typical off"):  # kept counts, in order
        expect(info).to_contain_text(re.compile(counted))
    legend = page.locator(".legendtext")
    expect(legend).to_have_count(10)  # all ten stages, in order
    expect(legend.nth(6)).to_have_text(re.compile(r"min-p · [\d,]+ kept"))
    expect(legend.nth(7)).to_have_text("typical (off)")
    wait_idle(page)
    no_error_toast(page)
    shoot(page, "probabilities", folders)

    # pick the third candidate of the step, and continue from it
    token = visible(page.locator("#branch-token input"))
    token.click()
    options = page.get_by_role("option")
    expect(options.nth(2)).to_be_visible()
    picked = options.nth(2).inner_text()
    options.nth(2).click()
    expect(token).to_have_value(picked.strip())
    token_id = int(re.search(r"id (\d+)", picked)[1])
    visible(page.get_by_role("button", name="Continue from this token", exact=True)).click()
    branch_info = page.locator("#branch-info")
    expect(branch_info).to_contain_text(re.compile(rf"Branch #2 from #1 at step {STEP}"))
    expect(branch_info).to_contain_text(re.compile(r"finished: (length|end of text|stop)"))
    expect(page.locator("#branch-text textarea")).to_have_value(re.compile(r"\S"))

    # the branch is picked and drawn, its lineage shown; the tree moves between generations
    record = page.locator("#probabilities-record input")
    expect(record).to_have_value(re.compile(rf"↳ #2 from #1 at step {STEP}: "))
    expect(info).to_contain_text(re.compile(r"Step 0 of \d+ \(generation #2\)"))
    lineage = page.locator("#branch-lineage")
    expect(lineage).to_contain_text("lineage #1 → #2")
    expect(lineage.locator("li li strong")).to_contain_text(f"#2 from #1 at step {STEP}")  # under #1, in bold
    family = page.locator("#branch-family")
    expect(family.get_by_label("#1", exact=True)).to_be_visible()
    expect(family.get_by_label(re.compile(r"↳ #2"))).to_be_checked()
    wait_idle(page)
    set_slider(page, "step", STEP)  # the forced step of the branch: the picked token was its choice
    visible(page.get_by_role("button", name="Show step", exact=True)).click()
    expect(info).to_contain_text(re.compile(rf"Step {STEP} of \d+ \(generation #2\)"))
    assert f"id {token_id}" in picked
    wait_idle(page)
    no_error_toast(page)
    shoot(page, "branching", folders)

    family.get_by_label("#1", exact=True).check()  # back up the tree
    expect(record).to_have_value(re.compile(r"^#1 · "))
    expect(info).to_contain_text(re.compile(r"Step 0 of \d+ \(generation #1\)"))
    expect(lineage).to_contain_text("1 branch(es) from this one")
    wait_idle(page)
    no_error_toast(page)
    assert not errors
