"""Browser test helpers: headless Chromium (Debian's), a page on the shared tiny studio, screenshots, tab and
dropdown helpers. A browser test module sets `pytestmark = BROWSER_MARKS` and imports what it uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.ui_fixtures import ARTIFACTS, web_studio  # noqa: F401

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ARTIFACTS / "browser"
RUN_TIMEOUT_MS = 90_000
TABS = {"Generate": "schnell", "Fill": "fill", "Edit": "kontext", "Depth": "depth", "Canny": "canny",
        "Redux": "redux"}

REQUIRED = os.environ.get("FLUXFORGE_REQUIRE_BROWSER") == "1"  # CI: a missing browser fails, not skips
MISSING = "Debian's Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)"
BROWSER_MARKS = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists() and not REQUIRED, reason=MISSING)]


@pytest.fixture(scope="module")
def browser():
    if REQUIRED and not CHROMIUM.exists():
        pytest.fail(MISSING)
    if REQUIRED:
        import playwright.sync_api as sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, web_studio):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(web_studio.url)
    page.wait_for_selector("#generate-run")
    yield page
    context.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def open_tab(page, label: str) -> None:
    page.get_by_role("tab", name=label, exact=True).click()


def quant_options(page, tool: str, screenshot: str | None = None) -> list[str]:
    page.locator(f"#{tool}-quant input").click()
    options = page.get_by_role("option")
    options.first.wait_for()
    texts = [t.replace("✓", "").strip() for t in options.all_inner_texts()]
    if screenshot:
        page.wait_for_timeout(500)  # the list fades in
        shot(page, screenshot)
    page.keyboard.press("Escape")
    return texts


def choose_quant(page, tool: str, label: str) -> None:
    page.locator(f"#{tool}-quant input").click()
    page.get_by_role("option", name=label).click()


def upload(page, selector: str, path: str) -> None:
    page.locator(f"{selector} input[type=file]").first.set_input_files(path)


def upload_to_editor(page, path: str) -> None:
    """Upload into the Fill editor; the canvas sometimes drops a file set while it starts up: set it again."""
    placeholder = page.locator("#fill-editor").get_by_text("Upload an image")
    page.locator("#fill-editor canvas").first.wait_for(state="attached")
    page.wait_for_timeout(500)  # the canvas starts up
    for _ in range(3):
        page.locator("#fill-editor input[type=file]").first.set_input_files([])  # the same file again fires
        upload(page, "#fill-editor", path)
        try:
            placeholder.wait_for(state="hidden", timeout=10_000)
            return
        except Exception:  # noqa: BLE001
            continue
    placeholder.wait_for(state="hidden")


def wait_for_run(page, tab: str) -> None:
    """The status line of a finished run (backends per component) and the result image."""
    try:
        page.wait_for_selector(f"#{tab}-status .ff-chips", timeout=RUN_TIMEOUT_MS)
        page.wait_for_selector(f"#{tab}-result img", timeout=RUN_TIMEOUT_MS)
    except Exception:
        shot(page, f"FAILED-{tab}")
        raise
