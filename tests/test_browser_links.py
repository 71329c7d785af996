"""Results that flow on in the page: PNG info restores a PNG's parameters into its tab; Send to puts a result into
another tab's input."""

from __future__ import annotations

from PIL import Image, PngImagePlugin

from tests.browser_fixtures import (  # noqa: F401  (browser and page are fixtures)
    BROWSER_MARKS, browser, open_tab, page, shot, upload, wait_for_run)
from tests.ui_fixtures import web_studio  # noqa: F401

pytestmark = BROWSER_MARKS

FORGE = ("a glass teapot on a windowsill\nSteps: 6, Sampler: Euler, Schedule type: Simple, CFG scale: 1, "
         "Distilled CFG Scale: 4.5, Seed: 4242, Size: 256x192, Model hash: 275ef623d3, Model: flux1-dev-bnb-nf4, "
         "Version: f2.0.1v1.10.1")


def test_png_info_shows_a_forge_png_and_restores_it_into_generate(page, tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", FORGE)
    path = tmp_path / "forge.png"
    Image.new("RGB", (64, 48), (90, 120, 200)).save(path, pnginfo=info)
    open_tab(page, "PNG info")
    upload(page, "#pnginfo-file", str(path))
    fields = page.locator("#pnginfo-fields")
    fields.get_by_text("Made by").wait_for()
    assert "Forge" in fields.inner_text() and "a glass teapot" in fields.inner_text()
    page.locator("#pnginfo-restore").click()
    page.locator("#generate-prompt textarea").wait_for(state="visible")  # the Generate tab, now shown
    page.wait_for_function("document.querySelector('#generate-prompt textarea').value.includes('teapot')")
    assert page.locator("#generate-prompt textarea").input_value() == "a glass teapot on a windowsill"
    assert page.locator("#generate-variant input[value=dev]").is_checked()
    assert page.locator("#schnell-seed input").input_value() == "4242"
    assert not page.locator("#schnell-randomize input").is_checked()
    assert page.locator("#schnell-steps input[type=number]").input_value() == "6"
    assert page.locator("#schnell-guidance input[type=number]").input_value() == "4.5"
    assert page.locator("#schnell-width input[type=number]").input_value() == "256"
    assert page.locator("#schnell-height input[type=number]").input_value() == "192"
    shot(page, "pnginfo-restored")
    open_tab(page, "PNG info")
    assert "model flux1-dev-bnb-nf4" in page.locator("#pnginfo-fields").inner_text()  # what was not restored


def test_a_result_is_sent_to_kontext_and_to_fill(page):
    page.locator("#generate-prompt textarea").fill("a red barn in a field")
    page.locator("#generate-run").click()
    wait_for_run(page, "generate")
    page.locator("#generate-send-kontext").click()
    page.locator("#kontext-image img").wait_for(state="visible")
    assert page.locator("#kontext-prompt").is_visible()
    shot(page, "send-to-kontext")
    open_tab(page, "Generate")
    page.locator("#generate-send-fill").click()
    page.locator("#fill-editor").get_by_text("Upload an image").wait_for(state="hidden")
    for name in ("redux", "depth", "canny"):
        open_tab(page, "Generate")
        page.locator(f"#generate-send-{name}").click()
        page.locator(f"#{name}-image img").wait_for(state="visible")


def test_a_result_sent_to_image_to_image_is_refined_from_it(page, web_studio):  # noqa: F811
    import json

    page.locator("#generate-prompt textarea").fill("a small boat")
    page.locator("#generate-run").click()
    wait_for_run(page, "generate")
    first = page.locator("#generate-result img").first.get_attribute("src")
    page.locator("#generate-send-generate").click()
    page.locator("#generate-image img").wait_for(state="visible")  # its accordion opened with the image in it
    page.locator("#generate-strength input[type=number]").fill("0.5")
    page.locator("#generate-strength input[type=number]").press("Enter")
    page.locator("#generate-run").click()
    page.wait_for_function(f"(() => {{ const i = document.querySelector('#generate-result img'); "
                           f"return i && i.src !== {json.dumps(first)}; }})()", timeout=90_000)
    wait_for_run(page, "generate")
    source = page.locator("#generate-result img").first.get_attribute("src")
    response = page.request.get(source)
    import io

    with Image.open(io.BytesIO(response.body())) as result:
        meta = json.loads(result.text["fluxforge"])
        text = result.text["parameters"]
    assert meta["strength"] == 0.5 and "image" in meta["inputs"] and "Denoising strength: 0.5" in text
    shot(page, "image-to-image")
