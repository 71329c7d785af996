"""FLUX.2 [klein] in headless Chromium on the tiny model, under none, 8-bit and 4-bit: Generate's klein variant, the
Edit tab's klein with an input image and a reference (each named with its sha256), and Fill's klein inpaint.

Screenshots (1280x800) go to test-artifacts/browser/.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from PIL import Image

from tests.browser_fixtures import (  # noqa: F401  (browser and page are fixtures)
    BROWSER_MARKS, SHOTS, browser, choose_quant, open_tab, page, shot, upload, upload_to_editor, wait_for_run)
from tests.test_browser import draw_stroke
from tests.ui_fixtures import asset, web_studio  # noqa: F401

pytestmark = BROWSER_MARKS
QUANTS = {"none": "None", "8bit": "8-bit", "4bit": "4-bit"}


@pytest.fixture(scope="module", autouse=True)
def shots_folder():
    SHOTS.mkdir(parents=True, exist_ok=True)


def served_metadata(page, tab: str) -> dict:
    source = page.locator(f"#{tab}-result img").first.get_attribute("src")
    response = page.request.get(source)  # the served PNG, metadata intact
    assert response.ok
    with Image.open(io.BytesIO(response.body())) as result:
        return json.loads(result.text["fluxforge"])


def choose(page, radio: str, label: str) -> None:
    page.locator(radio).get_by_text(label, exact=True).click()


@pytest.mark.parametrize("quant", list(QUANTS))
def test_klein_runs_in_generate_and_edit(page, quant):
    open_tab(page, "Generate")
    choose(page, "#generate-variant", "FLUX.2 [klein]")
    page.wait_for_timeout(500)  # the settings and the Model dropdown follow the variant
    choose_quant(page, "schnell", QUANTS[quant])
    page.locator("#generate-prompt textarea").fill("a lighthouse at dusk")
    page.locator("#generate-run").click()
    wait_for_run(page, "generate")
    meta = served_metadata(page, "generate")
    assert meta["tool"] == "klein" and meta["quantization"]["resolved"] == quant
    assert set(meta["quantization"]["components"]) == {"transformer", "text_encoder", "vae"}
    shot(page, f"run-klein-generate-{quant}")

    open_tab(page, "Edit")
    choose(page, "#kontext-editor", "FLUX.2 [klein]")
    page.wait_for_timeout(500)
    choose_quant(page, "kontext", QUANTS[quant])
    upload(page, "#kontext-image", asset("example-house.png"))
    page.wait_for_selector("#kontext-image img")
    upload(page, "#kontext-references", asset("example-boat.png"))
    page.locator("#kontext-references").get_by_text("example-boat.png").first.wait_for()
    page.locator("#kontext-prompt textarea").fill("put the boat in front of the house")
    page.locator("#kontext-run").click()
    wait_for_run(page, "kontext")
    meta = served_metadata(page, "kontext")
    assert meta["tool"] == "klein" and meta["conditioning"]["method"] == "references"
    assert {name: (item["name"], item["sha256"]) for name, item in meta["inputs"].items()} == {
        "image": ("example-house.png", hashlib.sha256(open(asset("example-house.png"), "rb").read()).hexdigest()),
        "image_2": ("example-boat.png", hashlib.sha256(open(asset("example-boat.png"), "rb").read()).hexdigest())}
    assert meta["quantization"]["resolved"] == quant
    shot(page, f"run-klein-edit-{quant}")


def test_klein_inpaints_in_fill(page):
    open_tab(page, "Fill")
    choose(page, "#fill-filler", "FLUX.2 [klein] Inpaint")
    page.wait_for_timeout(500)
    choose_quant(page, "fill", "8-bit")
    upload_to_editor(page, asset("example-room.png"))
    draw_stroke(page)
    page.locator("#fill-prompt textarea").fill("a potted plant")
    page.locator("#fill-run").click()
    wait_for_run(page, "fill")
    meta = served_metadata(page, "fill")
    assert meta["tool"] == "klein_inpaint" and meta["quantization"]["resolved"] == "8bit"
    shot(page, "run-klein-inpaint")
