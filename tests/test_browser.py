"""The studio in headless Chromium on the tiny model: tabs, runs, a drawn mask, errors and a forced fallback.

Screenshots (1280x800) go to test-artifacts/browser/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.browser_fixtures import (  # noqa: F401  (browser and page are fixtures)
    BROWSER_MARKS, RUN_TIMEOUT_MS, SHOTS, TABS, browser, choose_quant, open_tab, page, quant_options, shot, upload,
    upload_to_editor, wait_for_run)
from tests.ui_fixtures import asset, web_studio  # noqa: F401

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module", autouse=True)
def clean_shots():
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True, exist_ok=True)


def check_status(page, tab: str) -> str:
    status = page.locator(f"#{tab}-status").inner_text()
    assert "transformer" in status and "peak" in status and "total" in status
    assert page.locator(f"#{tab}-history img").count() >= 1
    assert page.locator(f"#{tab}-download").is_visible()
    return status


def test_every_tab_renders_with_the_four_modes(page):
    assert page.locator("#ff-demo-banner").inner_text().startswith("Demo model.")
    for label, tool in TABS.items():
        open_tab(page, label)
        run = page.locator(f"#{'generate' if label == 'Generate' else tool}-run")
        run.wait_for(state="visible")
        page.wait_for_timeout(300)
        shot(page, f"tab-{label.lower()}")
        opened = "quantization-dropdown" if label == "Generate" else None
        assert quant_options(page, tool, opened) == ["Auto", "None", "8-bit", "4-bit"]
        assert "On this CPU" in page.locator(f"#{tool}-quant").inner_text()
        page.evaluate("window.scrollTo(0, 0)")
    open_tab(page, "System")
    page.wait_for_selector("#system-backends table")
    text = page.locator("#system-backends").inner_text()
    assert "quanto" in text and "bitsandbytes" in text and "torchao" in text
    assert "torch" in page.locator("#system-machine").inner_text()
    shot(page, "tab-system")


def test_generate(page):
    page.locator("#generate-prompt textarea").fill("a lighthouse at dusk")
    page.locator("#generate-run").click()
    wait_for_run(page, "generate")
    assert "FLUX.1 [schnell]" in check_status(page, "generate")
    shot(page, "run-generate")


def test_fill_needs_a_drawn_mask(page):
    open_tab(page, "Fill")
    upload_to_editor(page, asset("example-room.png"))
    page.locator("#fill-editor").get_by_text("Upload an image").wait_for(state="hidden")
    page.locator("#fill-prompt textarea").fill("a potted plant")
    page.locator("#fill-run").click()
    page.get_by_text("No mask drawn").first.wait_for()
    assert page.locator("#fill-status .ff-chips").count() == 0
    shot(page, "error-fill-no-mask")


def draw_stroke(page) -> None:
    """Drag the brush across the middle of the image in the Fill editor."""
    editor = page.locator("#fill-editor")
    editor.get_by_text("Upload an image").wait_for(state="hidden")
    page.wait_for_timeout(800)  # the image is placed on the canvas
    editor.locator("canvas").first.scroll_into_view_if_needed()
    box = editor.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] * 0.42, box["y"] + box["height"] * 0.5
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(12):
        page.mouse.move(x + step * 8, y + (step % 3) * 6, steps=3)
    page.mouse.up()
    page.wait_for_timeout(500)  # the editor sends its layers after a short pause


def test_fill_with_a_drawn_mask(page):
    open_tab(page, "Fill")
    upload_to_editor(page, asset("example-room.png"))
    draw_stroke(page)
    page.locator("#fill-prompt textarea").fill("a potted plant")
    page.locator("#fill-run").click()
    wait_for_run(page, "fill")
    assert "FLUX.1 Fill" in check_status(page, "fill")
    shot(page, "run-fill")


def test_kontext_needs_an_image(page):
    open_tab(page, "Edit")
    page.locator("#kontext-prompt textarea").fill("make it night")
    page.locator("#kontext-run").click()
    page.get_by_text("upload an input image first").first.wait_for()
    shot(page, "error-kontext-no-image")


def test_canny_shows_its_map_and_runs(page):
    open_tab(page, "Canny")
    upload(page, "#canny-image", asset("example-boat.png"))
    page.wait_for_selector("#canny-map img")  # computed beside the photo
    page.locator("#canny-prompt textarea").fill("a watercolor boat")
    page.locator("#canny-run").click()
    wait_for_run(page, "canny")
    assert "FLUX.1 Canny" in check_status(page, "canny")
    shot(page, "run-canny")


def test_redux(page):
    open_tab(page, "Redux")
    upload(page, "#redux-image", asset("example-boat.png"))
    page.wait_for_selector("#redux-image img")
    page.locator("#redux-run").click()
    wait_for_run(page, "redux")
    assert "FLUX.1 Redux" in check_status(page, "redux")
    shot(page, "run-redux")


def test_forced_fallback_shows_a_warning(page, web_studio, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FLUXFORGE_DISABLE_BACKENDS", "bitsandbytes,torchao,quanto")
    try:
        open_tab(page, "System")
        page.locator("#system-unload").click()
        page.get_by_text("Unloaded all models").first.wait_for()
        open_tab(page, "Generate")
        choose_quant(page, "schnell", "8-bit")
        page.locator("#generate-prompt textarea").fill("a lighthouse at dusk")
        page.locator("#generate-run").click()
        wait_for_run(page, "generate")
        warning = page.locator("#generate-warning .ff-warning")
        warning.wait_for(state="visible")
        text = warning.inner_text()
        assert "Quantization fell back" in text and "disabled by FLUXFORGE_DISABLE_BACKENDS" in text
        page.get_by_text("Quantization fell back:").first.wait_for()  # the toast as well
        shot(page, "fallback-warning")
        open_tab(page, "System")
        page.locator("#system-refresh").click()
        page.wait_for_selector("#system-loaded table")
        assert "transformer" in page.locator("#system-loaded").inner_text()
        assert "cache" in page.locator("#system-cache").inner_text() and page.locator("#system-cache-clear").is_visible()
        shot(page, "system-loaded")
    finally:
        web_studio.demo.studio_manager.unload()


# ---- the limits, seen from the page ---------------------------------------------------------------------------

KEEP = 2


@pytest.fixture(scope="module")
def keep_studio(tmp_path_factory):
    """A studio with the HTTP API open (--api) that keeps only KEEP images in its output folder."""
    import os

    from tests.ui_fixtures import start_studio

    os.environ["FLUXFORGE_OUTPUT_KEEP"] = str(KEEP)
    try:
        running = start_studio(tmp_path_factory.mktemp("keep-outputs"), api=True)
    finally:
        os.environ.pop("FLUXFORGE_OUTPUT_KEEP", None)
    yield running
    running.close()


def loaded_images(page, selector: str) -> list[int]:
    """naturalWidth of every <img> under `selector` (0 for one that failed to load)."""
    return page.locator(f"{selector} img").evaluate_all(
        "imgs => Promise.all(imgs.map(i => i.decode().then(() => i.naturalWidth, () => 0)))")


def test_a_long_session_keeps_every_result_and_no_dead_history(browser, keep_studio):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(keep_studio.url, wait_until="load")
        page.wait_for_selector("#generate-run")
        page.locator("#generate-prompt textarea").fill("a lighthouse at dusk")
        for index in range(2 * KEEP):
            before = page.locator("#generate-status").inner_text()
            page.locator("#generate-run").click()
            page.wait_for_function(  # the final result's status (a live preview changes the image before it)
                "b => { const s = document.querySelector('#generate-status');"
                " return s && s.querySelector('.ff-chips') && s.innerText !== b; }",
                arg=before, timeout=RUN_TIMEOUT_MS)
            page.wait_for_timeout(500)
            assert page.locator("#generate-history .thumbnail-item").count() == min(index + 1, KEEP), index
            assert all(width > 0 for width in loaded_images(page, "#generate-result")), index
            widths = loaded_images(page, "#generate-history")
            assert len(widths) == min(index + 1, KEEP) and all(w > 0 for w in widths), (index, widths)
            assert len(list(keep_studio.output_dir.glob("fluxforge-*.png"))) <= KEEP
        assert page.locator(".toast-body.error").count() == 0
        shot(page, "long-session-history")
    finally:
        context.close()


def test_a_file_that_is_not_an_image_gets_one_readable_line(page, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("hello, not an image")
    open_tab(page, "Edit")
    upload(page, "#kontext-image", str(fake))
    page.locator("#kontext-prompt textarea").fill("make it night")
    page.locator("#kontext-run").click()
    message = page.get_by_text("this file is not an image we can read").first
    message.wait_for()
    text = message.inner_text()
    assert "notes.png" in text and "/tmp/" not in text and "Could not preprocess" not in text, text
    assert "Original error" not in page.content()
    shot(page, "error-not-an-image")


def post_from_the_page(page, path: str) -> tuple[int, str]:
    return page.evaluate(
        "async p => { const r = await fetch(p, {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({data: []})}); return [r.status, await r.text()]; }", path)


def test_the_page_gets_404_for_a_direct_or_unknown_route(page, browser, keep_studio):
    for path in ("gradio_api/run/predict", "gradio_api/run/generate"):  # API closed: every by-name route
        status, body = post_from_the_page(page, path)
        assert status == 404 and "HTTP API is closed" in body, (path, status, body)
    context = browser.new_context()
    api_page = context.new_page()
    try:
        api_page.goto(keep_studio.url, wait_until="load")
        api_page.wait_for_selector("#generate-run")
        for path, expected in (("gradio_api/run/predict", "No API endpoint named /predict"),
                               ("gradio_api/run/generate", "Use POST /gradio_api/call/generate")):
            status, body = post_from_the_page(api_page, path)
            assert status == 404 and expected in body and "Traceback" not in body, (path, status, body)
    finally:
        context.close()


def test_fill_with_a_reference_records_every_input(page, web_studio):  # noqa: F811
    import hashlib

    from pipelines.images import read_metadata

    open_tab(page, "Fill")
    upload_to_editor(page, asset("example-room.png"))
    draw_stroke(page)
    page.get_by_text("Reference image (optional").click()
    upload(page, "#fill-reference", asset("example-boat.png"))
    page.wait_for_selector("#fill-reference img")
    page.locator("#fill-prompt textarea").fill("a potted plant")
    page.locator("#fill-run").click()
    wait_for_run(page, "fill")
    newest = max(web_studio.output_dir.glob("fluxforge-*-fill-*.png"), key=lambda p: p.stat().st_mtime)
    inputs = read_metadata(newest)["inputs"]
    assert set(inputs) == {"image", "mask", "reference"}, inputs
    boat = Path(asset("example-boat.png"))
    assert inputs["reference"]["name"] == "example-boat.png"
    assert inputs["reference"]["sha256"] == hashlib.sha256(boat.read_bytes()).hexdigest()
    assert inputs["image"]["name"] == "editor background" and inputs["mask"]["name"] == "painted mask"
    shot(page, "run-fill-reference")


def test_a_history_thumbnail_shows_its_own_image_download_and_status(page, web_studio):  # noqa: F811
    from pipelines.images import read_metadata

    page.locator("#generate-prompt textarea").fill("a lighthouse at dusk")
    page.locator("#schnell-randomize input").uncheck()
    page.locator("#schnell-seed input").fill("321")
    box = page.locator("#schnell-count input[type=number]")
    box.fill("2")
    box.press("Enter")
    page.locator("#schnell-previews input").uncheck()
    page.locator("#generate-run").click()
    page.wait_for_function("() => document.querySelectorAll('#generate-history .thumbnail-item').length >= 2",
                           timeout=RUN_TIMEOUT_MS)
    page.wait_for_selector("#generate-status .ff-chips")
    assert "seed 322" in page.locator("#generate-status").inner_text()  # the newest of the two
    page.locator("#generate-history .thumbnail-item").nth(1).click()  # the older one: seed 321
    page.wait_for_function("() => (document.querySelector('#generate-status')?.innerText || '').includes("
                           "'From the history')")
    status = page.locator("#generate-status").inner_text()
    assert "seed 321" in status and "seed 322" not in status and "transformer" in status, status
    shown = page.locator("#generate-result img").get_attribute("src")
    name = shown.split("/")[-1].split("?")[0]
    assert read_metadata(web_studio.output_dir / name)["seed"] == 321 and name in status
    with page.expect_download() as download:  # the download is that image too
        page.locator("#generate-download").click()
    assert download.value.suggested_filename == name
    shot(page, "history-click-status")


def test_a_refused_lora_upload_is_named_as_uploaded_on_the_upload_box(page, tmp_path):
    long_name = "a-lora-file-with-a-rather-long-name-that-was-downloaded-twice-and-cut-short.safetensors"
    bad = tmp_path / long_name
    header = b"[1, 2, 3, 4, 5, 6]"  # valid JSON, but not an object
    bad.write_bytes(len(header).to_bytes(8, "little") + header)
    page.locator("#generate-prompt textarea").fill("a lighthouse at dusk")
    page.get_by_text("LoRAs", exact=True).click()
    upload(page, "#schnell-lora-upload", str(bad))
    page.wait_for_timeout(1000)
    page.locator("#generate-run").click()
    message = page.locator("#schnell-lora-upload .validation-error")
    message.wait_for()
    text = message.inner_text()
    assert text.startswith(f"lora='{long_name}'") and "not an object" in text, text
    assert "/tmp/" not in text and page.locator("#schnell-loras .validation-error").count() == 0
    fits = message.evaluate("e => { const box = e.closest('#schnell-lora-upload').getBoundingClientRect();"
                            " const r = e.getBoundingClientRect(); return [e.scrollWidth <= e.clientWidth + 1,"
                            " r.left >= box.left - 1 && r.right <= box.right + 1, r.top >= box.top - 1"
                            " && r.bottom <= box.bottom + 1]; }")
    assert fits == [True, True, True], fits
    page.locator("#schnell-lora-upload").scroll_into_view_if_needed()
    shot(page, "lora-refused-on-the-upload-box")


def test_a_16_bit_depth_map_uploaded_in_the_page_keeps_its_levels(page, web_studio, tmp_path):  # noqa: F811
    """A ready-made depth map saved as a 16-bit PNG (as depth tools write them) reaches the pipeline with its grey
    levels, not clipped to black and white."""
    import numpy as np
    from PIL import Image

    ramp = np.tile(np.linspace(0, 65535, 128), (96, 1)).round().astype(np.uint16)
    depth = tmp_path / "depth16.png"
    Image.fromarray(ramp).save(depth)
    engine = web_studio.demo.studio_runner.engine
    seen, original = [], engine.generate

    def record(request, progress=None, **options):
        seen.append(request)
        return original(request, progress, **options)

    engine.generate = record
    try:
        open_tab(page, "Depth")
        page.locator("#depth-source").get_by_text("Upload a ready-made map").click()
        upload(page, "#depth-map", str(depth))
        page.wait_for_selector("#depth-map img")
        page.locator("#depth-prompt textarea").fill("a cozy room")
        page.locator("#depth-run").click()
        wait_for_run(page, "depth")
    finally:
        engine.generate = original
    levels = np.unique(np.asarray(seen[-1].control_image)[..., 0])
    assert len(levels) >= 100 and levels.min() <= 2 and levels.max() >= 253, levels
