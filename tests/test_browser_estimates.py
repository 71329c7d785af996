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
