"""The Diversity tab in a real browser (headless Chromium, as ``tests/test_browser.py``): draw samples with a
temperature sweep, see the metrics, the samples and the trade-off plot with the current setting starred,
and save the screenshot ``diversity``.

The README's screenshot: ``SCREENSHOT_DIR=assets/screenshots BROWSER_TEST_MODEL=shakespeare-small
python -m pytest tests/test_browser_diversity.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from test_browser import (  # noqa: F401 - fixtures and pytestmark are used by name
    PHONE_WIDTH,
    TIMEOUT_MS,
    TINY,
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
    wait_idle,
)

PROMPT = "ROMEO:\nBut soft, what light"
TAB = "Diversity"
SAMPLES, NEW_TOKENS = (4, 12) if TINY else (8, 40)


def test_a_diversity_sweep_in_a_real_browser(browser_page, tmp_path):  # noqa: F811 - the fixture
    page, errors = browser_page
    folders = [tmp_path] + ([Path(os.environ["SCREENSHOT_DIR"])] if os.environ.get("SCREENSHOT_DIR") else [])
    open_tab(page, TAB)
    visible(page.get_by_label("Prompt", exact=True)).fill(PROMPT)
    set_slider(page, "samples (N)", SAMPLES)
    set_slider(page, "max new tokens", NEW_TOKENS)
    visible(page.get_by_label("temperature 0.2 to 1.6", exact=True)).check()
    visible(page.get_by_role("button", name="Draw samples", exact=True)).click()

    # the plot's title loses its "(k of 8 points)" when the sweep is done
    title = page.locator("#diversity-plot .gtitle")
    expect(title).to_have_text("Quality and diversity: sweep of temperature", timeout=5 * TIMEOUT_MS)
    wait_for_plot(page, "trade-off plot")
    wait_idle(page)
    expect(page.locator("#diversity-plot .scatterlayer .point")).to_have_count(8 + 1)  # the sweep and the star
    legend = page.locator("#diversity-plot .legendtext")
    expect(legend.filter(has_text="current setting (temperature 0.8, top-k 40)")).to_have_count(1)

    metrics = page.locator("#diversity-metrics")
    for name in ("distinct-1", "distinct-2", "distinct-3", "self-BLEU", "repetition rate", "mean log-prob"):
        expect(metrics.get_by_role("cell", name=name, exact=True)).to_be_visible()
    expect(metrics.get_by_text(f"{SAMPLES} samples,")).to_be_visible()
    expect(metrics.get_by_text("Sweep of temperature")).to_be_visible()
    expect(metrics.get_by_role("cell", name="1.6", exact=True)).to_be_visible()  # the sweep's last row
    samples = page.locator("#diversity-samples")
    expect(samples.get_by_text(re.compile(r"^Sample \d+$"))).to_have_count(SAMPLES)
    expect(samples.locator("pre").first).to_have_text(re.compile(r"\S"))
    no_error_toast(page)
    shoot(page, "diversity", folders)
    assert not errors
    assert (tmp_path / "diversity.png").stat().st_size > 10_000


def test_the_diversity_tab_stacks_at_phone_width(browser_page):  # noqa: F811 - the fixture
    """At 390 px the tab's two columns stack, each the whole width. (Whether every tab's name fits in the
    bar at that width is ``tests/test_browser.py``'s check of the whole page.)"""
    page, errors = browser_page
    open_tab(page, TAB)
    page.set_viewport_size({"width": PHONE_WIDTH, "height": 800})
    panel = page.locator('[role="tabpanel"]').filter(visible=True)
    expect(panel.get_by_role("button", name="Draw samples", exact=True)).to_be_visible()
    widths = [box["width"] for box in (c.bounding_box() for c in panel.locator(".column").filter(visible=True).all())
              if box and box["height"] > 0]
    assert len(widths) >= 2 and min(widths) >= PHONE_WIDTH * 0.75, f"columns {widths} px wide at {PHONE_WIDTH} px"
    assert not errors
