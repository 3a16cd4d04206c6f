"""The Lab tab in a real browser (headless Chromium, as ``tests/test_browser.py``): each tool's section run
once, with its screenshot (``lab_ablate``, …).

The README's screenshots: ``SCREENSHOT_DIR=assets/screenshots BROWSER_TEST_MODEL=shakespeare-small
python -m pytest tests/test_browser_lab.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from test_browser import (  # noqa: F401 - fixtures and pytestmark are used by name
    TIMEOUT_MS,
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

TAB = "Lab"


def _folders(tmp_path: Path) -> list[Path]:
    return [tmp_path] + ([Path(os.environ["SCREENSHOT_DIR"])] if os.environ.get("SCREENSHOT_DIR") else [])


def _section(page, name: str) -> None:
    """Open the Lab and one of its tools' inner tabs."""
    open_tab(page, TAB)
    inner = page.locator("#lab-tools").get_by_role("tab", name=name, exact=True)
    inner.click()
    expect(inner).to_have_attribute("aria-selected", "true")


# ---------------------------------------------------------------- knock out heads


def test_knocking_out_heads_in_a_real_browser(browser_page, tmp_path):  # noqa: F811 - the fixture
    page, errors = browser_page
    _section(page, "Knock out heads")
    wait_idle(page)  # the toggles are refitted to the session's model when the tab opens
    preset = visible(page.get_by_label("preset", exact=True))
    preset.click()
    page.get_by_role("option", name="all heads of layer 1", exact=True).click()
    toggles = page.locator("#ablate-heads")
    expect(toggles.get_by_label("L1.H0", exact=True)).to_be_checked()
    expect(toggles.get_by_label("L0.H0", exact=True)).not_to_be_checked()
    set_slider(page, "max new tokens", 12)
    visible(page.get_by_role("button", name="Knock out and compare", exact=True)).click()

    summary = page.locator("#ablate-summary")
    expect(summary).to_contain_text("Mean loss", timeout=3 * TIMEOUT_MS)
    expect(summary).to_contain_text(re.compile(r"Knocked out \(zero\): L1\.H0, L1\.H1"))
    wait_idle(page)
    wait_for_plot(page, "next-token candidates")
    wait_for_plot(page, "loss per token")
    expect(page.locator("#ablate-loss .legendtext").filter(has_text="after")).not_to_have_count(0)
    for box in ("#ablate-plain", "#ablate-edited"):
        expect(page.locator(f"{box} textarea")).to_have_value(re.compile(r"\S"))
    no_error_toast(page)
    shoot(page, "lab_ablate", _folders(tmp_path))
    assert not errors
    assert (tmp_path / "lab_ablate.png").stat().st_size > 10_000


def test_the_induction_demo_loses_the_second_copy_without_its_induction_heads(browser_page, tmp_path):  # noqa: F811
    """The bundled induction demo on repeated random tokens, its top induction heads knocked out (the preset):
    the summary shows the second copy's loss jump (screenshot ``lab_induction``)."""
    page, errors = browser_page
    picker = page.get_by_role("combobox", name="Model")
    picker.click()
    page.get_by_role("option", name=re.compile("induction-demo")).click()
    expect(picker).to_have_value(re.compile("induction-demo"))
    wait_idle(page)
    _section(page, "Knock out heads")
    wait_idle(page)
    preset = visible(page.get_by_label("preset", exact=True))
    preset.click()
    page.get_by_role("option", name="top 3 induction heads", exact=True).click()
    wait_idle(page)  # the preset's own event first: a click while it runs can meet the session's request cap
    text = page.locator("#ablate-text textarea")
    before = text.input_value()
    visible(page.get_by_role("button", name="use repeated random tokens", exact=True)).click()  # this model's probe
    expect(text).not_to_have_value(before)
    wait_idle(page)
    set_slider(page, "max new tokens", 12)
    visible(page.get_by_role("button", name="Knock out and compare", exact=True)).click()
    summary = page.locator("#ablate-summary")
    expect(summary).to_contain_text("Second copy", timeout=3 * TIMEOUT_MS)
    rise = re.search(r"Second copy of the repeated text: ([\d.]+) → ([\d.]+) nats", summary.inner_text())
    assert rise and float(rise.group(2)) - float(rise.group(1)) >= 2.0, summary.inner_text()
    wait_idle(page)
    wait_for_plot(page, "loss per token")
    no_error_toast(page)
    shoot(page, "lab_induction", _folders(tmp_path))
    assert not errors


def test_the_attention_tab_sends_its_head_to_the_lab(browser_page):  # noqa: F811 - the fixture
    page, errors = browser_page
    _section(page, "Attribution")  # the Lab left on another tool: the link must bring its section back
    open_tab(page, "Attention")
    set_slider(page, "layer", 1)
    set_slider(page, "head", 1)
    visible(page.get_by_role("button", name="Knock out this head in the Lab ›", exact=True)).click()
    expect(page.get_by_role("tab", name=TAB, exact=True)).to_have_attribute("aria-selected", "true")
    inner = page.locator("#lab-tools").get_by_role("tab", name="Knock out heads", exact=True)
    expect(inner).to_have_attribute("aria-selected", "true")
    toggles = page.locator("#ablate-heads")
    expect(toggles.get_by_label("L1.H1", exact=True)).to_be_checked()
    expect(toggles.get_by_label("L0.H0", exact=True)).not_to_be_checked()
    no_error_toast(page)
    assert not errors


# ---------------------------------------------------------------- attribution


def test_attribution_in_a_real_browser(browser_page, tmp_path):  # noqa: F811 - the fixture
    """A typed text and target, integrated gradients: the summary, the coloured text (a span per token, its
    value on hover, the target outlined) and both charts (a bar per token; the heads' heatmap and MLP bars)."""
    import gpt2
    from ui.logic.attribution import EXAMPLE, EXAMPLE_TARGET

    page, errors = browser_page
    _section(page, "Attribution")
    page.locator("#attribute-text").get_by_role("textbox").fill(EXAMPLE)
    page.locator("#attribute-target").get_by_role("textbox").fill(EXAMPLE_TARGET)
    visible(page.get_by_label("integrated gradients", exact=True)).check()
    set_slider(page, "steps", 8)
    visible(page.get_by_role("button", name="Attribute", exact=True)).click()

    summary = page.locator("#attribute-summary")
    expect(summary).to_contain_text("integrated gradients, 8 steps", timeout=3 * TIMEOUT_MS)
    expect(summary).to_contain_text("Top tokens")
    wait_idle(page)
    n = len(gpt2.encode(EXAMPLE))
    view = page.locator("#attribute-text-view")
    expect(view.locator(".attr-tok")).to_have_count(n)
    expect(view.locator(".attr-tok").first).to_have_attribute("title", re.compile(r"^0: 'Now' · [+-]\d"))
    expect(view.locator(".attr-target")).to_have_text(EXAMPLE_TARGET)
    wait_for_plot(page, "Attribution per token")
    wait_for_plot(page, "Direct logit attribution")
    expect(page.locator("#attribute-bars .bars .point")).to_have_count(n)
    expect(page.locator("#attribute-dla .hm")).to_have_count(1)  # the layer × head heatmap
    expect(page.locator("#attribute-dla .bars .point")).not_to_have_count(0)  # a bar per MLP
    expect(page.locator("#attribute-dla .gtitle")).to_contain_text("actual:")
    no_error_toast(page)
    shoot(page, "lab_attribute", _folders(tmp_path))
    assert not errors
    assert (tmp_path / "lab_attribute.png").stat().st_size > 10_000


# ---------------------------------------------------------------- patching


def test_patching_in_a_real_browser(browser_page, tmp_path):  # noqa: F811 - the fixture
    """The default pair: the token view (differing tokens marked; a live message when the counts differ),
    target and foil filled from the top predictions, then the heatmap of every (layer, position) cell with
    its numbers on hover."""
    from ui.logic.patching import CLEAN, CORRUPTED, FOIL, TARGET

    page, errors = browser_page
    _section(page, "Patching")
    view = page.locator("#patch-diff")
    expect(view).to_contain_text("9 tokens each; 2 differ (positions 2, 3)")
    expect(view.locator(".patch-diff")).to_have_count(4)  # "thou hast" / "he hath", in both rows
    corrupted = page.locator("#patch-corrupted").get_by_role("textbox")
    corrupted.fill("O, he hath slain my brother")
    expect(view).to_contain_text("clean has 9 tokens, corrupted has 7")
    corrupted.fill(CORRUPTED)
    expect(view).to_contain_text("9 tokens each")

    target = page.locator("#patch-target").get_by_role("textbox")
    foil = page.locator("#patch-foil").get_by_role("textbox")
    visible(page.get_by_role("button", name="Fill from the top predictions", exact=True)).click()
    expect(page.locator("#patch-summary")).to_contain_text("the clean prompt's top prediction")
    wait_idle(page)
    expect(target).not_to_have_value("")
    target.fill(TARGET)
    foil.fill(FOIL)
    assert page.locator("#patch-clean").get_by_role("textbox").input_value() == CLEAN
    visible(page.get_by_role("button", name="Patch", exact=True)).click()

    summary = page.locator("#patch-summary")
    expect(summary).to_contain_text("Best cell", timeout=3 * TIMEOUT_MS)
    expect(summary).to_contain_text(re.compile(r"clean -?\d+\.\d{3}, corrupted -?\d+\.\d{3}"))
    wait_idle(page)
    wait_for_plot(page, "recovered fraction")
    plot = page.locator("#patch-plot")
    expect(plot.locator(".hm")).to_have_count(1)
    expect(plot.locator(".ytick").filter(has_text="embeddings")).to_have_count(1)
    expect(plot.locator(".ytick").filter(has_text="after layer 0")).to_have_count(1)
    cells = plot.locator(".nsewdrag").first
    cells.scroll_into_view_if_needed()
    box = cells.bounding_box()
    cells.hover(position={"x": box["width"] * 2.5 / 9, "y": box["height"] * 0.05})  # "thou", embeddings
    hover = plot.locator(".hoverlayer .hovertext")
    expect(hover).to_contain_text(re.compile(r"embeddings · position 2: ␣thou → ␣he.*recovered -?\d\.\d{3}"))
    expect(hover).to_contain_text(re.compile(r"patched LD -?\d"))
    no_error_toast(page)
    shoot(page, "lab_patch", _folders(tmp_path))
    assert not errors
    assert (tmp_path / "lab_patch.png").stat().st_size > 10_000
