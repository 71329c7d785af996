"""Live previews and batches in headless Chromium on the tiny model: previews show before the final image, and a
batch of N gives N images with N seeds.

Screenshots (1280x800) go to test-artifacts/browser/.
"""

from __future__ import annotations

import pytest

from pipelines.images import read_metadata
from tests.browser_fixtures import (  # noqa: F401  (browser and page are fixtures)
    BROWSER_MARKS, RUN_TIMEOUT_MS, SHOTS, browser, page, shot, wait_for_run)
from tests.ui_fixtures import web_studio  # noqa: F401

pytestmark = BROWSER_MARKS

# Records every picture the result image shows and every status line, in order, from before the click on.
OBSERVE = """() => {
  window.ffShown = [];
  window.ffStatus = [];
  const result = document.querySelector('#generate-result');
  const status = document.querySelector('#generate-status');
  const record = () => {
    const img = result.querySelector('img');
    const src = img && img.getAttribute('src');
    if (src && window.ffShown[window.ffShown.length - 1] !== src) window.ffShown.push(src);
    const line = status.innerText.trim();
    if (line && window.ffStatus[window.ffStatus.length - 1] !== line) window.ffStatus.push(line);
  };
  for (const node of [result, status]) {
    new MutationObserver(record).observe(node, {subtree: true, childList: true, characterData: true,
                                                attributes: true, attributeFilter: ['src']});
  }
}"""


@pytest.fixture(scope="module", autouse=True)
def shots_folder():
    SHOTS.mkdir(parents=True, exist_ok=True)


def set_number(page, elem_id: str, value) -> None:
    """Type a value into a slider's number box (as a user would) and leave it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def start_generate(page, steps: int, count: int = 1) -> None:
    page.locator("#generate-prompt textarea").fill("a lighthouse at dusk")
    set_number(page, "schnell-steps", steps)
    set_number(page, "schnell-count", count)
    page.evaluate(OBSERVE)
    page.locator("#generate-run").click()


def test_previews_show_before_the_final_image(page, web_studio):  # noqa: F811
    assert page.locator("#schnell-previews input").is_checked()  # on by default
    start_generate(page, steps=30)
    try:  # a picture of a preview on the page, for the record (the assertions below do not depend on it)
        page.locator("#generate-status .ff-preview").wait_for(timeout=RUN_TIMEOUT_MS)
        shot(page, "previews-in-progress")
    except Exception:  # noqa: BLE001  (the run may have finished first)
        pass
    wait_for_run(page, "generate")
    page.wait_for_timeout(300)  # the last mutation is recorded
    shown = page.evaluate("window.ffShown")
    statuses = page.evaluate("window.ffStatus")
    final = page.locator("#generate-result img").get_attribute("src")
    assert shown and shown[-1] == final, shown
    previews = [src for src in shown[:-1] if src != final]
    assert len(previews) >= 1, shown  # at least one preview came before the final image
    assert any(line.startswith("Preview · step") for line in statuses), statuses
    assert "transformer" in statuses[-1]  # then the full status of the finished run
    shot(page, "previews-generate")


def test_a_batch_makes_n_images_with_n_seeds(page, web_studio):  # noqa: F811
    before = set(web_studio.output_dir.glob("fluxforge-*.png"))
    start_generate(page, steps=12, count=3)
    wait_for_run(page, "generate")
    made = sorted(set(web_studio.output_dir.glob("fluxforge-*.png")) - before)
    seeds = sorted(read_metadata(path)["seed"] for path in made)
    assert len(made) == 3 and len(set(seeds)) == 3, made
    assert page.locator("#generate-history img").count() == 3
    statuses = page.evaluate("window.ffStatus")
    for index in (1, 2, 3):  # the preview says which image of the batch it is
        assert any(line.startswith(f"Preview · image {index}/3 · step") for line in statuses), statuses
    assert "3 images" in page.locator("#generate-status").inner_text()
    shot(page, "batch-generate")
