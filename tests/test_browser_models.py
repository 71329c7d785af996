"""The studio as a Space starts it (no arguments, a fresh cache, the hub reachable): the official model downloads on
the first run with its progress in the tab, the System tab lists every tool's model with its download button, and a
gated model says in one line how to get it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.browser_fixtures import BROWSER_MARKS, RUN_TIMEOUT_MS, browser, open_tab, shot, wait_for_run  # noqa: F401
from tests.test_hub import ROOT, closed_port
from ui.models import download_id

pytestmark = [*BROWSER_MARKS, pytest.mark.slow]
SCHNELL = "black-forest-labs/FLUX.1-schnell"


@pytest.fixture
def space(hub_home, local_hub, tmp_path):
    """`python app.py` as a Space runs it: no arguments, SPACE_ID and the port from the environment."""
    port = closed_port()
    env = {**hub_home, "SPACE_ID": "someone/fluxforge", "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "FLUXFORGE_OUTPUT_DIR": str(tmp_path / "outputs")}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(proc.stderr.read())
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_space_started_bare_downloads_the_official_model_with_progress_in_the_tab(browser, space, local_hub):  # noqa: F811
    local_hub.rate = 1_000_000  # 1 MB/s, so the download lasts long enough to be seen
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(space, wait_until="load")
        page.wait_for_selector("#generate-run")
        assert page.locator("#ff-demo-banner").count() == 0  # real weights, not the demo model
        assert page.locator("#schnell-model input").input_value().startswith("FLUX.1 [schnell] (official")
        page.locator("#generate-prompt textarea").fill("a lighthouse at dusk")
        for name, value in (("width", "128"), ("height", "128"), ("steps", "2")):
            box = page.locator(f"#schnell-{name} input[type=number]")
            box.fill(value)
            box.press("Enter")
        page.locator("#generate-run").click()
        page.get_by_text(f"Downloading {SCHNELL}").first.wait_for(timeout=RUN_TIMEOUT_MS)
        shot(page, "download-progress")
        # the first report is at 0 bytes, before any speed is known; bytes, speed and time left follow while it runs
        expect(page.locator("#generate-notices")).to_contain_text(re.compile(r"of 3 MiB · [\d.]+ [KMG]iB/s · \d+ s left"),
                                                                  timeout=RUN_TIMEOUT_MS)
        wait_for_run(page, "generate")
        local_hub.rate = None
        assert SCHNELL in page.locator("#generate-status").inner_text() or page.locator("#generate-status .ff-chips")
        open_tab(page, "System")
        table = page.locator("#system-models")
        table.get_by_text("black-forest-labs/FLUX.1-dev").first.wait_for()
        rows = table.inner_text()
        assert SCHNELL in rows and "yes" in rows and "licence and login" in rows
        button = page.locator(f"#{download_id('black-forest-labs/FLUX.1-dev')}")
        button.wait_for()
        assert page.locator(f"#{download_id(SCHNELL)}").is_hidden()
        button.click()
        message = page.get_by_text("is gated: accept its licence on https://huggingface.co/black-forest-labs/FLUX.1-dev")
        message.first.wait_for(timeout=RUN_TIMEOUT_MS)
        shot(page, "download-gated")
        assert "Traceback" not in page.content()
    finally:
        context.close()
