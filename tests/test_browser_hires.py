"""The hires fix in the page, in headless Chromium on the tiny studio: the Hires fix accordion with an upscaler file
from the upscaler folder, its estimate of both passes, and a result at the larger size."""

from __future__ import annotations

import io
import json

from PIL import Image

from tests.browser_fixtures import (  # noqa: F401  (browser and page are fixtures)
    BROWSER_MARKS, RUN_TIMEOUT_MS, SHOTS, browser, page, shot, wait_for_run)
from tests.ui_fixtures import web_studio  # noqa: F401

pytestmark = BROWSER_MARKS


def set_slider(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_a_hires_fix_with_an_upscaler_file_makes_the_larger_image(page, upscaler_dir):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#generate-variant input[value=dev]").check()
    page.locator("#generate-prompt textarea").fill("a lighthouse on a cliff")
    page.wait_for_function("document.querySelector('#schnell-steps input[type=number]').value !== '4'")  # dev's
    set_slider(page, "schnell-steps", 2)  # the tiny model's size: 128x128
    page.get_by_text("Hires fix (optional)").click()
    page.locator("#generate-hires-scale input[type=number]").wait_for(state="visible")
    set_slider(page, "generate-hires-scale", 2)
    set_slider(page, "generate-hires-steps", 3)
    page.locator("#generate-hires-upscaler input").click()  # the folder is read again as the list opens
    page.get_by_role("option", name="tiny-esrgan-2x.safetensors").click()
    # The estimate reads the upscaler file (spandrel's first import included) after the estimates the sliders asked
    # for: on a busy machine that takes longer than a click's default wait.
    page.wait_for_function("(document.querySelector('#schnell-estimate')?.innerText || '')"
                           ".includes('128×128 then 256×256 (hires fix: both passes, the upscaler')",
                           timeout=RUN_TIMEOUT_MS)
    shot(page, "hires-fix-settings")
    page.locator("#generate-run").click()
    wait_for_run(page, "generate")
    source = page.locator("#generate-result img").first.get_attribute("src")
    with Image.open(io.BytesIO(page.request.get(source).body())) as result:
        assert result.size == (256, 256)
        meta = json.loads(result.text["fluxforge"])
        text = result.text["parameters"]
    assert meta["hires"]["upscaler"] == "tiny-esrgan-2x.safetensors" and meta["hires"]["first_pass"]["size"] == [128, 128]
    assert "Hires upscaler: tiny-esrgan-2x.safetensors" in text and "Size: 256x256" in text
    assert "hires fix from 128×128 (tiny-esrgan-2x.safetensors, 3 steps at 0.35" in page.locator(
        "#generate-status").inner_text()
    assert "upscaled (tiny-esrgan-2x.safetensors, ESRGAN 2x) to 256x256" in page.locator("#generate-notices").inner_text()
    shot(page, "hires-fix-result")
