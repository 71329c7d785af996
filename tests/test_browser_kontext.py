"""The Kontext tab in headless Chromium on the tiny model: an input image with a reference image, run, and the
result naming both; a reference that is not an image gets one readable line.

Screenshots (1280x800) go to test-artifacts/browser/.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from PIL import Image, ImageDraw

from tests.browser_fixtures import (  # noqa: F401  (browser and page are fixtures)
    BROWSER_MARKS, SHOTS, browser, open_tab, page, shot, upload, wait_for_run)
from tests.ui_fixtures import asset, web_studio  # noqa: F401

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module", autouse=True)
def shots_folder():
    SHOTS.mkdir(parents=True, exist_ok=True)


@pytest.fixture
def ball(tmp_path):
    path = tmp_path / "red-ball.png"
    image = Image.new("RGB", (96, 128), (30, 110, 220))
    ImageDraw.Draw(image).ellipse((8, 24, 88, 104), fill=(240, 40, 30))
    image.save(path)
    return path


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_an_input_image_and_a_reference_are_joined_and_both_named(page, ball):
    open_tab(page, "Edit")
    upload(page, "#kontext-image", asset("example-house.png"))
    page.wait_for_selector("#kontext-image img")
    upload(page, "#kontext-references", str(ball))
    page.locator("#kontext-references").get_by_text("red-ball.png").first.wait_for()
    page.locator("#kontext-prompt textarea").fill("put the red ball in front of the house")
    page.locator("#kontext-run").click()
    wait_for_run(page, "kontext")
    status = page.locator("#kontext-status").inner_text()
    assert "2 images concatenated side by side: example-house.png + red-ball.png" in status, status
    shot(page, "run-kontext-references")

    source = page.locator("#kontext-result img").first.get_attribute("src")
    response = page.request.get(source)  # the served PNG, metadata intact
    assert response.ok
    with Image.open(io.BytesIO(response.body())) as result:
        meta, text = json.loads(result.text["fluxforge"]), result.text["parameters"]
    assert {name: (item["name"], item["sha256"]) for name, item in meta["inputs"].items()} == {
        "image": ("example-house.png", sha256(asset("example-house.png"))),
        "image_2": ("red-ball.png", sha256(ball))}
    assert meta["conditioning"]["method"] == "concatenated"
    assert f"image_2 red-ball.png sha256 {sha256(ball)[:16]}" in text


def test_a_reference_that_is_not_an_image_gets_one_readable_line(page, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("hello, not an image")
    open_tab(page, "Edit")
    upload(page, "#kontext-image", asset("example-house.png"))
    page.wait_for_selector("#kontext-image img")
    upload(page, "#kontext-references", str(fake))
    page.locator("#kontext-prompt textarea").fill("make it night")
    page.locator("#kontext-run").click()
    message = page.get_by_text("references: this file is not an image we can read").first
    message.wait_for()
    text = message.inner_text()
    assert "notes.png" in text and "/tmp/" not in text and "\n" not in text.strip(), text
    assert "Original error" not in page.content() and "Could not preprocess" not in page.content()
    shot(page, "error-kontext-reference-not-an-image")
