"""Settings that persist, in headless Chromium on the tiny studio: a tab's settings come back after a reload, and
"Reset to defaults" brings back the defaults, which a reload keeps."""

from __future__ import annotations

from pipelines import defaults
from pipelines.tools import get_tool
from tests.browser_fixtures import (  # noqa: F401  (browser and page are fixtures)
    BROWSER_MARKS, browser, choose_quant, open_tab, page, shot)
from tests.ui_fixtures import web_studio  # noqa: F401

pytestmark = BROWSER_MARKS


def expect():
    from playwright.sync_api import expect

    return expect


def restore_event(demo, tab: str) -> int:
    """The fn_index of the event that restores ``tab``'s settings when the page loads."""
    key = f"fluxforge-settings-{tab}"
    found = [index for index, fn in demo.fns.items()
             if fn.fn and [getattr(block, "storage_key", None) for block in fn.inputs] == [key]]
    assert len(found) == 1, found
    return found[0]


def stored(page, tab: str):
    return page.evaluate("key => localStorage.getItem(key)", f"fluxforge-settings-{tab}")


def saved_after(page, tab: str, change) -> None:
    """Make ``change`` and wait until the page has stored the tab's settings again."""
    before = stored(page, tab)
    change()
    page.wait_for_function("([key, before]) => localStorage.getItem(key) !== before",
                           arg=[f"fluxforge-settings-{tab}", before])


def reload(page, demo, tabs: tuple[str, ...]) -> None:
    """Reload the page and wait until the tabs' settings have been restored (their restore events answered)."""
    wanted = {restore_event(demo, tab) for tab in tabs}
    answered: set = set()

    def on_response(response):
        if "/run/predict" in response.url:
            try:
                answered.add((response.request.post_data_json or {}).get("fn_index"))
            except Exception:  # noqa: BLE001  (not JSON: not ours)
                pass

    page.on("response", on_response)
    page.reload(wait_until="load")
    page.wait_for_selector("#generate-run")
    deadline = 300
    while not wanted <= answered and deadline:
        page.wait_for_timeout(100)
        deadline -= 1
    page.remove_listener("response", on_response)
    assert wanted <= answered, f"restore events {wanted - answered} not answered"


def set_number(page, selector: str, value) -> None:
    box = page.locator(f"{selector} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def value(page, selector: str) -> str:
    return page.locator(selector).input_value()


def test_settings_come_back_after_a_reload_and_reset_restores_the_defaults(page, web_studio):  # noqa: F811
    demo, check = web_studio.demo, expect()
    schnell, dev = get_tool("schnell").defaults("tiny"), get_tool("dev").defaults("tiny")
    canny_steps = get_tool("canny").defaults("tiny").steps
    reload(page, demo, ("generate", "canny"))  # the settings are restored (none stored yet) before anything changes

    # Generate: the dev variant, its steps, 8-bit, a fixed seed and a prompt
    page.locator("#generate-variant").get_by_text(get_tool("dev").title, exact=True).click()
    check(page.locator("#schnell-steps input[type=number]")).to_have_value(str(dev.steps))  # the variant's defaults
    set_number(page, "#schnell-steps", 12)
    choose_quant(page, "schnell", "8-bit")
    page.locator("#schnell-randomize input").uncheck()
    set_number(page, "#schnell-seed", 777)
    saved_after(page, "generate", lambda: page.locator("#generate-prompt textarea").fill("a kept lighthouse"))

    # Canny: a threshold, the control LoRA form, 4-bit and a prompt
    open_tab(page, "Canny")
    set_number(page, "#canny-low", 42)
    page.locator("#canny-form").get_by_text("Control LoRA on FLUX.1 [dev]", exact=True).click()
    choose_quant(page, "canny", "4-bit")
    saved_after(page, "canny", lambda: page.locator("#canny-prompt textarea").fill("kept edges"))

    reload(page, demo, ("generate", "canny"))
    check(page.locator("#generate-prompt textarea")).to_have_value("a kept lighthouse")
    check(page.locator("#generate-variant input[value=dev]")).to_be_checked()
    check(page.locator("#schnell-steps input[type=number]")).to_have_value("12")
    check(page.locator("#schnell-quant input")).to_have_value("8-bit")
    check(page.locator("#schnell-seed input")).to_have_value("777")
    check(page.locator("#schnell-randomize input")).not_to_be_checked()
    reload(page, demo, ("generate", "canny"))  # again, Canny not opened since: what it keeps is kept
    check(page.locator("#generate-prompt textarea")).to_have_value("a kept lighthouse")
    open_tab(page, "Canny")
    check(page.locator("#canny-prompt textarea")).to_have_value("kept edges")
    check(page.locator("#canny-low input[type=number]")).to_have_value("42")
    check(page.locator("#canny-form input[value=lora]")).to_be_checked()
    check(page.locator("#canny-quant input")).to_have_value("4-bit")
    check(page.locator("#canny-model input")).to_be_disabled()  # the LoRA form runs the Dev model
    shot(page, "settings-restored-canny")

    # Reset to defaults: Canny's now, Generate's next; each reload keeps them
    saved_after(page, "canny", lambda: page.locator("#canny-reset").click())
    check(page.locator("#canny-prompt textarea")).to_have_value("")
    check(page.locator("#canny-low input[type=number]")).to_have_value(str(defaults.CANNY_LOW))
    check(page.locator("#canny-form input[value=model]")).to_be_checked()
    check(page.locator("#canny-quant input")).to_have_value("Auto")
    check(page.locator("#canny-steps input[type=number]")).to_have_value(str(canny_steps))
    open_tab(page, "Generate")
    saved_after(page, "generate", lambda: page.locator("#schnell-reset").click())

    def defaults_shown():
        check(page.locator("#generate-prompt textarea")).to_have_value("")
        check(page.locator("#generate-variant input[value=schnell]")).to_be_checked()
        check(page.locator("#schnell-steps input[type=number]")).to_have_value(str(schnell.steps))
        check(page.locator("#schnell-guidance input[type=number]")).to_have_value(f"{schnell.guidance:g}")
        check(page.locator("#schnell-quant input")).to_have_value("Auto")
        check(page.locator("#schnell-seed input")).to_have_value("0")
        check(page.locator("#schnell-randomize input")).to_be_checked()

    defaults_shown()
    shot(page, "settings-reset-generate")
    reload(page, demo, ("generate", "canny"))
    defaults_shown()
    open_tab(page, "Canny")
    check(page.locator("#canny-prompt textarea")).to_have_value("")
    check(page.locator("#canny-form input[value=model]")).to_be_checked()
    check(page.locator("#canny-quant input")).to_have_value("Auto")
