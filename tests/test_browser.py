"""A real browser on the whole app: headless Chromium (Debian's ``chromium``, driven by Playwright for
Python) opens every tab, generates, inspects, fine-tunes briefly, and saves a screenshot of each tab.

The app runs in-process on a local port. ``BROWSER_TEST_MODEL`` picks its model: ``tiny`` (the default, a
random model: fast, gibberish text) or anything ``app.py --model`` takes, e.g. the bundled
``shakespeare-small`` for readable screenshots. With ``SCREENSHOT_DIR`` set the screenshots are also
written there (the README's come from
``SCREENSHOT_DIR=assets/screenshots BROWSER_TEST_MODEL=shakespeare-small pytest tests/test_browser*.py``, the
other tabs' screenshots coming from the other ``test_browser_*.py`` files).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import gpt2
from ui.logic.attention import EXAMPLE

CHROMIUM = Path("/usr/bin/chromium")
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install playwright)"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)"),
]

MODEL = os.environ.get("BROWSER_TEST_MODEL", "tiny")
TINY = MODEL == "tiny"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update"]
WIDTH, HEIGHT = 1280, 900
PHONE_WIDTH = 390
TIMEOUT_MS = 60_000  # per wait: the cores may be shared with a training job
PROMPT = "ROMEO:\nBut soft, what light"
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer."
TRAIN_TEXT = "\n".join(f"JULIET: O Romeo, Romeo! wherefore art thou Romeo, for the {i}th time?"
                       for i in range(150))
# Fine-tuning: a handful of tiny steps for the test; enough for a visible loss curve with a real model.
TRAIN_STEPS, TRAIN_BATCH, TRAIN_BLOCK = (5, 2, 16) if TINY else (30, 8, 32)


@pytest.fixture(scope="module")
def url(request, launch_app):
    """The app (as ``app.main`` builds it) on a free local port: the shared ``served`` app for ``tiny``,
    else one launched with ``BROWSER_TEST_MODEL``."""
    if TINY:
        yield request.getfixturevalue("served").url
        return
    with launch_app(MODEL) as served:
        yield served.url


@pytest.fixture()
def browser_page(url):
    """A fresh page on the app, and the list its uncaught script errors go to."""
    errors: list = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
            context.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)  # assertions have their own default (5 s)
            # Offline and quick: only the app itself is reached (no web fonts, no CDNs).
            context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
            page = context.new_page()
            page.on("pageerror", lambda error: errors.append(error))
            page.goto(url)
            yield page, errors
        finally:
            browser.close()


def shoot(page, name: str, folders: list[Path]) -> None:
    """A full-page screenshot of the current tab into each folder."""
    page.wait_for_timeout(500)  # let plots finish their transitions
    data = page.screenshot(full_page=True, animations="disabled")
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.png").write_bytes(data)


def visible(locator):
    return locator.filter(visible=True)


def open_tab(page, name: str) -> None:
    tab = page.get_by_role("tab", name=name, exact=True)
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")


def set_slider(page, label: str, value: int) -> None:
    """Type into a gr.Slider's number box and check that the slider took the value."""
    box = visible(page.get_by_label(f"number input for {label}", exact=True))
    box.fill(str(value))
    box.press("Tab")  # commit: the click that follows must send the new value
    expect(visible(page.get_by_label(f"range slider for {label}", exact=True))).to_have_value(str(value))


def wait_for_slider_range(page, label: str, maximum: int) -> None:
    """Wait until the server has refitted a slider (its new range is there) and nothing else is still
    running: typing into it earlier would race the refit, which puts the old value back."""
    slider = visible(page.get_by_label(f"range slider for {label}", exact=True))
    expect(slider).to_have_attribute("max", str(maximum))
    wait_idle(page)


def wait_idle(page) -> None:
    """No event of the page is pending (every component's status tracker is hidden)."""
    expect(page.locator('[data-testid="status-tracker"]:not(.hide)')).to_have_count(0)


def wait_for_plot(page, label: str) -> None:
    """The gr.Plot with this label has drawn a plotly figure."""
    block = visible(page.locator(".block").filter(has=page.get_by_text(label, exact=True)))
    expect(block.locator(".js-plotly-plot").first).to_be_visible()


def no_error_toast(page) -> None:
    expect(page.locator(".toast-body.error")).to_have_count(0)


def test_every_tab_in_a_real_browser(browser_page, tmp_path):
    page, errors = browser_page
    folders = [tmp_path] + ([Path(os.environ["SCREENSHOT_DIR"])] if os.environ.get("SCREENSHOT_DIR") else [])
    for name in ("Generate", "Attention", "Probabilities", "Fine-tune"):
        expect(page.get_by_role("tab", name=name, exact=True)).to_be_visible()

    # Generate: stream a continuation
    open_tab(page, "Generate")
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    set_slider(page, "max new tokens", 60)
    page.get_by_role("button", name="Generate", exact=True).click()
    stats = page.get_by_text(re.compile(r"finished: (length|end of text|stop)"))
    expect(stats).to_be_visible()
    view = page.locator("#generated-view")  # the prompt, then the generated part, told apart
    expect(view.locator(".prompt")).to_have_text(PROMPT)
    expect(view.locator(".generated")).to_have_text(re.compile(r"\S"))
    page.get_by_text("Generated text only (to copy)").click()
    # This textbox has a copy button, and gradio then leaves its label unattached: find it by its block.
    output = page.locator(".block").filter(has=page.get_by_text("Generated text", exact=True)).locator("textarea")
    expect(output).to_have_value(re.compile(r"\S"))
    expect(stats).to_be_visible()
    n_generated = int(re.match(r"(\d+) tokens", stats.inner_text())[1])
    generated = output.input_value()
    no_error_toast(page)
    shoot(page, "generate", folders[:1])  # the README's comes from test_browser_generate.py (coloured tokens)

    # Attention: the example text's heatmap and the head table
    open_tab(page, "Attention")
    wait_for_slider_range(page, "query token", len(gpt2.encode(EXAMPLE)) - 1)  # refitted on opening the tab
    set_slider(page, "layer", 1)  # a more focused layer than the first
    page.get_by_role("button", name="Show attention", exact=True).click()
    wait_for_plot(page, "attention")
    expect(visible(page.get_by_text(re.compile(r"Text: \d+ tokens")))).to_be_visible()
    expect(visible(page.locator(".gtitle"))).to_have_text("Layer 1, head 0")  # the plot's title
    no_error_toast(page)
    shoot(page, "attention", folders)

    # Probabilities: a step of the generation above, then any text
    open_tab(page, "Probabilities")
    wait_for_slider_range(page, "step", max(n_generated - 1, 1))  # refitted to the generation above
    set_slider(page, "step", 2)
    page.get_by_role("button", name="Show step", exact=True).click()
    wait_for_plot(page, "Candidates")
    expect(page.get_by_text(re.compile(r"Step 2 of \d+"))).to_be_visible()
    visible(page.get_by_label("Text", exact=True)).fill(TEXT)
    page.get_by_role("button", name="Analyse text", exact=True).click()
    expect(page.get_by_text(re.compile(r"Perplexity [\d.]+"))).to_be_visible()
    wait_for_plot(page, "Surprisal and entropy")
    wait_for_plot(page, "Logit lens")
    no_error_toast(page)
    shoot(page, "probabilities", folders[:1])  # the README's: test_browser_branch.py (every stage)

    # Fine-tune: a short LoRA run on pasted text, then the loss curve and before/after samples
    open_tab(page, "Fine-tune")
    page.get_by_label("Training text", exact=True).fill(TRAIN_TEXT)
    set_slider(page, "steps", TRAIN_STEPS)
    set_slider(page, "batch size", TRAIN_BATCH)
    set_slider(page, "block size (tokens)", TRAIN_BLOCK)
    page.get_by_label("Sample prompt", exact=True).fill("JULIET:")
    page.get_by_role("button", name="Start fine-tuning", exact=True).click()
    expect(page.get_by_text(f"Finished all {TRAIN_STEPS} steps.")).to_be_visible(timeout=3 * TIMEOUT_MS)
    wait_for_plot(page, "loss")
    expect(page.get_by_label("After (fine-tuned, same seed)", exact=True)).to_have_value(re.compile(r"\S"))
    expect(page.get_by_role("button", name=re.compile("Download the fine-tuned model"))).to_be_visible()
    expect(page.get_by_label("use my fine-tuned model")).to_be_checked()
    no_error_toast(page)
    shoot(page, "finetune", folders)

    assert generated and not errors
    for name in ("generate", "attention", "probabilities", "finetune"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_a_model_that_cannot_be_had_leaves_the_page_usable(browser_page, offline):
    """Offline, choosing a hub model says why it cannot be had; the picker goes back to the model in use,
    its description stays, and nothing on the page is covered by error badges."""
    page, errors = browser_page
    picker = page.get_by_role("combobox", name="Model")
    before = picker.input_value()
    picker.click()
    page.get_by_role("option", name=re.compile("gpt2-medium")).click()
    expect(page.locator(".toast-body").filter(has_text="Cannot download")).to_be_visible()
    expect(picker).to_have_value(before)
    expect(page.get_by_text(re.compile(r"parameters · \d+ layers"))).to_be_visible()
    wait_idle(page)
    expect(page.locator('[data-testid="status-tracker"]').filter(has_text="Error")).to_have_count(0)
    picker.click()  # still usable: the list opens again
    expect(page.get_by_role("option", name=re.compile("gpt2-medium"))).to_be_visible()
    assert not errors


TAB_NAMES = ["Generate", "Attention", "Probabilities", "Fine-tune", "Chat", "Beams", "Diversity", "Lab"]


@pytest.mark.parametrize("tab", TAB_NAMES)
def test_every_tab_is_usable_at_phone_width(browser_page, tab):
    """At 390 px every tab's name is in the tab bar (none behind a "⋯" menu), and the tab's columns stack:
    each, with the plots in it, takes the whole width instead of being squeezed beside another."""
    page, errors = browser_page
    page.set_viewport_size({"width": PHONE_WIDTH, "height": 800})
    for name in TAB_NAMES:  # laid out
        expect(page.get_by_role("tab", name=name, exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="More tabs")).to_be_hidden()
    open_tab(page, tab)
    panel = page.locator('[role="tabpanel"]').filter(visible=True)
    widths = [box["width"] for box in (c.bounding_box() for c in panel.locator(".column").filter(visible=True).all())
              if box and box["height"] > 0]
    assert widths and min(widths) >= PHONE_WIDTH * 0.75, f"{tab}: columns {widths} px wide at {PHONE_WIDTH} px"
    assert not errors
