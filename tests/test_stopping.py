"""Stopping a job from outside: gradio_client's cancel with live previews on or off, a page that goes away, and the
Stop button of each tab. A stopped run ends at its next denoising step, no further image of its batch starts, and
the next job reaches the device only once it is free."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
from gradio_client import Client

from pipelines.errors import Cancelled
from tests.browser_fixtures import BROWSER_MARKS, RUN_TIMEOUT_MS, browser, shot  # noqa: F401
from tests.ui_fixtures import start_studio

pytestmark = pytest.mark.slow

STEPS = 8
HOLD_S = 120
BATCH = dict(tool="dev", prompt="a lighthouse", steps=STEPS, guidance=3.5, quant="none", width=128, height=128, seed=5,
             randomize=False, count=3)


@dataclass
class Run:
    tool: str
    seed: int
    began: float
    steps: list = field(default_factory=list)
    ended: float | None = None
    outcome: str = "running"


class Recorder:
    """Wraps Engine.generate: when each run began and ended, the denoising steps it reached, how it ended.

    Armed (``hold()``), the next run waits after its second step until its job is stopped (ui.runner.JOB_STOP), for at
    most HOLD_S: however fast the CPU, the run is still denoising when the stop comes, and it must end at the next
    step."""

    def __init__(self, generate):
        self.generate = generate
        self.runs: list[Run] = []
        self.stepping = threading.Event()  # the armed run has made two denoising steps
        self.armed = False

    def hold(self) -> None:
        self.runs.clear()
        self.stepping.clear()
        self.armed = True

    def __call__(self, request, progress=None, **options):
        from ui.runner import JOB_STOP

        run = Run(request.tool, request.seed, time.monotonic())
        self.runs.append(run)
        held, self.armed = self.armed, False

        def watched(stage, done, total):
            if stage == "denoise" and done:
                run.steps.append(done)
                if held and done == 2:
                    self.stepping.set()
                    stop = JOB_STOP.get()
                    assert stop is not None and stop.wait(timeout=HOLD_S), "the job was not stopped"
            if progress is not None:
                progress(stage, done, total)

        try:
            result = self.generate(request, watched, **options)
            run.outcome = "finished"
            return result
        except Cancelled:
            run.outcome = "stopped"
            raise
        finally:
            run.ended = time.monotonic()


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    running = start_studio(tmp_path_factory.mktemp("stop-outputs"), api=True)
    engine = running.demo.studio_runner.engine
    running.recorder = engine.generate = Recorder(engine.generate)
    yield running
    running.close()


def outputs(studio) -> set:
    return set(studio.output_dir.glob("fluxforge-*.png"))


def wait_until(condition, timeout: float = 120, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


@pytest.mark.parametrize("previews", [False, True], ids=["previews off", "previews on"])
def test_a_cancelled_batch_stops_at_its_next_step_and_the_next_job_waits_for_the_device(studio, previews):
    recorder = studio.recorder
    client, bystander = Client(studio.url, verbose=False), Client(studio.url, verbose=False)
    client.predict(**dict(BATCH, steps=1, count=1), previews=False, api_name="/generate")  # loaded and warm
    recorder.hold()
    before = outputs(studio)
    job = client.submit(**BATCH, previews=previews, api_name="/generate")
    assert recorder.stepping.wait(timeout=180), "the batch never started denoising"
    waiting = bystander.submit(**dict(BATCH, count=1, steps=2, seed=99), previews=previews, api_name="/generate")
    time.sleep(1.0)  # the bystander's job waits in the queue behind the batch
    job.cancel()
    result = waiting.result(timeout=300)
    stopped, *others = recorder.runs
    assert stopped.seed == BATCH["seed"] and stopped.outcome == "stopped", recorder.runs
    assert max(stopped.steps) == 2, stopped.steps  # no step after the stop (it came while step 2 ended)
    assert [run.seed for run in others] == [99], others  # no further image of the batch started
    assert others[0].began >= stopped.ended  # one job on the device at a time: the next came once it was free
    made = outputs(studio) - before
    assert [path.name for path in made] == [__import__("pathlib").Path(result[0]).name]  # the batch wrote nothing


def test_a_page_that_goes_away_stops_its_batch(studio):
    """A raw HTTP client that closes the job's event stream (as a closed tab does): the batch stops (previews off:
    the job yields nothing until its end, so nothing reaches the client to notice it otherwise)."""
    import json

    import httpx

    recorder = studio.recorder
    Client(studio.url, verbose=False).predict(**dict(BATCH, steps=1, count=1), previews=False, api_name="/generate")
    recorder.hold()
    before = outputs(studio)
    data = [BATCH[k] for k in ("tool", "prompt", "steps", "guidance", "quant", "width", "height", "seed",
                               "randomize")] + [[], None, 1.0, BATCH["count"], False, None, None, 0.6,
                                                1.0, 0.35, 0, "Lanczos", []]  # model, image, strength, hires (off), history
    event_id = httpx.post(f"{studio.url}gradio_api/call/generate", json={"data": data}, timeout=60).json()["event_id"]
    with httpx.stream("GET", f"{studio.url}gradio_api/call/generate/{event_id}", timeout=120) as stream:
        lines = stream.iter_lines()
        next(lines)
        assert recorder.stepping.wait(timeout=180), "the batch never started denoising"
    # the stream is closed: Gradio notices at its next heartbeat (ui.studio.HEARTBEAT_S), the job stops at its next step
    wait_until(lambda: recorder.runs and recorder.runs[-1].ended is not None, message=json.dumps(
        [run.__dict__ for run in recorder.runs], default=str))
    (stopped,) = recorder.runs
    assert stopped.outcome == "stopped" and max(stopped.steps) == 2, stopped
    time.sleep(2.0)
    assert len(recorder.runs) == 1 and outputs(studio) == before


# ---- the Stop button, in Chromium ----------------------------------------------------------------------------------

@pytest.fixture
def page(browser, studio):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(studio.url, wait_until="load")
    page.wait_for_selector("#generate-run")
    yield page
    context.close()


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


@pytest.mark.browser
@BROWSER_MARKS[1]
def test_the_stop_button_shows_while_its_job_waits_or_runs_and_stops_that_job_only(page, studio):
    from tests.browser_fixtures import open_tab, upload
    from tests.ui_fixtures import asset

    recorder = studio.recorder
    Client(studio.url, verbose=False).predict(**dict(BATCH, steps=1, count=1), previews=False, api_name="/generate")
    assert not page.locator("#generate-stop").is_visible()
    page.locator("#generate-run").click()  # no prompt: refused before it is queued; no Stop button for it
    page.get_by_text("Write a prompt first").first.wait_for()
    page.wait_for_timeout(500)
    assert not page.locator("#generate-stop").is_visible()

    open_tab(page, "Redux")  # a second job, from another tab of the same page, made ready first
    upload(page, "#redux-image", asset("example-boat.png"))
    page.wait_for_selector("#redux-image img")
    set_number(page, "redux-steps", 2)
    open_tab(page, "Generate")
    recorder.hold()
    before = outputs(studio)
    page.locator("#generate-prompt textarea").fill("a lighthouse")
    set_number(page, "schnell-steps", STEPS)
    set_number(page, "schnell-count", 2)
    page.locator("#generate-run").click()
    page.locator("#generate-stop").wait_for(state="visible")
    assert recorder.stepping.wait(timeout=180)
    open_tab(page, "Redux")
    page.locator("#redux-run").click()
    page.locator("#redux-stop").wait_for(state="visible")  # shown while it waits for the device, too
    shot(page, "stop-button-waiting")
    open_tab(page, "Generate")
    page.locator("#generate-stop").click()
    # The job stops at its next step (the server side). The button itself is not waited on here: on a loaded
    # machine it has been seen to stay shown after its job had stopped and the next job had run (an open defect).
    wait_until(lambda: recorder.runs and recorder.runs[0].ended is not None, timeout=RUN_TIMEOUT_MS / 1000,
               message=f"the stopped job did not end: {recorder.runs}")
    page.get_by_text("Stopped.").first.wait_for()
    assert "Stopped" in page.locator("#generate-status").inner_text()
    open_tab(page, "Redux")
    page.wait_for_selector("#redux-status .ff-chips", timeout=RUN_TIMEOUT_MS)  # the other job ran to its end
    page.locator("#redux-stop").wait_for(state="hidden")
    (stopped, redux) = recorder.runs  # the batch's first image, stopped; no second image started
    assert (stopped.tool, stopped.outcome) == ("schnell", "stopped") and max(stopped.steps) == 2
    assert (redux.tool, redux.outcome) == ("redux", "finished") and redux.began >= stopped.ended
    made = outputs(studio) - before
    assert len(made) == 1 and "-redux-" in next(iter(made)).name
    shot(page, "stop-button-stopped")


@pytest.mark.browser
@BROWSER_MARKS[1]
def test_closing_the_tab_stops_its_batch(browser, studio):  # noqa: F811
    recorder = studio.recorder
    Client(studio.url, verbose=False).predict(**dict(BATCH, steps=1, count=1), previews=False, api_name="/generate")
    recorder.hold()
    before = outputs(studio)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(studio.url, wait_until="load")
    page.wait_for_selector("#generate-run")
    page.locator("#generate-prompt textarea").fill("a lighthouse")
    set_number(page, "schnell-steps", STEPS)
    set_number(page, "schnell-count", 3)
    page.locator("#schnell-previews input").uncheck()
    page.locator("#generate-run").click()
    assert recorder.stepping.wait(timeout=180)
    context.close()
    wait_until(lambda: recorder.runs and recorder.runs[-1].ended is not None, message="the run did not stop")
    (stopped,) = recorder.runs
    assert stopped.outcome == "stopped" and max(stopped.steps) == 2, stopped
    time.sleep(2.0)
    assert len(recorder.runs) == 1 and outputs(studio) == before
