"""The estimate under each tab's Quantization dropdown, in headless Chromium on the tiny studio: shown on load,
remade when the width, height or quant change."""

from __future__ import annotations

import pytest

from tests.browser_fixtures import (  # noqa: F401  (browser and page are fixtures)
    BROWSER_MARKS, SHOTS, TABS, browser, choose_quant, open_tab, page, shot)
from tests.ui_fixtures import web_studio  # noqa: F401

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module", autouse=True)
def shots_folder():
    SHOTS.mkdir(parents=True, exist_ok=True)


def estimate_text(page, tool: str) -> str:
    return page.locator(f"#{tool}-estimate").inner_text()


def wait_for_text(page, tool: str, wanted: str) -> str:
    page.wait_for_function("([id, wanted]) => (document.querySelector(`#${id}`)?.innerText || '').includes(wanted)",
                           arg=[f"{tool}-estimate", wanted])
    return estimate_text(page, tool)


def set_slider(page, tool: str, name: str, value: int) -> None:
    box = page.locator(f"#{tool}-{name} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_the_estimate_follows_size_and_quant(page):
    text = wait_for_text(page, "schnell", "128×128")
    assert "Auto → None" in text and "8-bit" in text and "4-bit" in text and "Fits" in text
    assert page.locator("#schnell-estimate tr.ff-chosen").get_attribute("data-quant") == "auto"
    before = page.locator("#schnell-estimate table").inner_html()

    set_slider(page, "schnell", "width", 1024)
    set_slider(page, "schnell", "height", 768)
    text = wait_for_text(page, "schnell", "1024×768")
    assert page.locator("#schnell-estimate table").inner_html() != before  # bigger image: a larger peak
    shot(page, "estimate-generate-1024x768")

    choose_quant(page, "schnell", "4-bit")
    page.wait_for_selector("#schnell-estimate tr.ff-chosen[data-quant='4bit']")
    assert page.locator("#schnell-estimate tr.ff-chosen").count() == 1


@pytest.mark.parametrize("label", [label for label in TABS if label != "Generate"])
def test_every_tool_tab_shows_its_estimate(page, label):
    tool = TABS[label]
    open_tab(page, label)
    text = wait_for_text(page, tool, "Auto")
    assert "Quantization" in text and "Peak" in text and "available RAM" in text
    choose_quant(page, tool, "8-bit")
    page.wait_for_selector(f"#{tool}-estimate tr.ff-chosen[data-quant='8bit']")


def test_the_caption_and_the_table_use_one_unit_rule_and_the_runs_size(page):
    """The tiny model's few MiB read as MiB in the table and in the caption alike (never "~0.0 GiB"); a width off the
    step is estimated at the size a run snaps it to, and the caption says so; a width past the slider's maximum is
    the maximum, in the box and in the caption."""
    import re

    text = wait_for_text(page, "schnell", "128×128")
    caption = text.splitlines()[-1]
    assert "Auto picks none: needs ~" in caption and "Auto: Auto" not in caption
    assert not re.search(r"\b0\.0 GiB", text), text
    table = page.locator("#schnell-estimate table").inner_text()
    assert re.search(r"\d+ MiB", table) and re.search(r"needs ~\d+ MiB", caption), (table, caption)

    set_slider(page, "schnell", "width", 1000)
    text = wait_for_text(page, "schnell", "992×128")
    assert "Width 1000 snapped to 992 (a multiple of 16), as a run takes it." in text
    set_slider(page, "schnell", "width", 5000)
    page.locator("#schnell-width input[type=number]").blur()
    text = wait_for_text(page, "schnell", "2048×128")
    assert page.locator("#schnell-width input[type=number]").input_value() == "2048"
    shot(page, "estimate-units-and-sizes")


def test_an_estimate_out_of_range_says_why_in_one_line():
    from ui.estimates import render

    class Runner:  # never asked: the size is refused first
        def plan(self, *args):
            raise AssertionError("planned an out-of-range size")

        options = type("Options", (), {"offload": "none"})()

    note = render(Runner(), "schnell", "auto", 5000, 128)
    assert note == "<div class='ff-muted'>No estimate: width=5000 is out of range; use 64..2048.</div>"
