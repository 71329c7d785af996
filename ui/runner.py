"""Runs one job for a tab: checks the request, drives the engine with progress, saves, reports.

Every error a user can see passes through here: a UserError becomes a gr.Error with its message,
anything unexpected a gr.Error with a short line (the traceback stays in the server log).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import queue
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from pipelines import defaults
from pipelines.engine import Engine, GenerationResult
from pipelines.errors import Cancelled, UserError
from pipelines.images import MAX_PIXELS
from pipelines.request import GenerationRequest, batch_seed
from pipelines.tools import get_tool

from . import text
from .outputs import OutputFolder
from .settings import HISTORY_LIMIT

log = logging.getLogger(__name__)

STAGE_TEXT = {"load": "Loading model", "quantize": "Quantizing weights", "denoise": "Denoising"}
# The stop of the job running in this context (set by `stoppable`): Runner.batch stops at the next denoising step
# once it is set, and starts no further image.
JOB_STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("fluxforge_job_stop", default=None)
# While a job is checked before it joins the queue: images are read from their headers only (sizes and modes),
# so a check holding the queue's join lock stays quick; pixels are decoded, and rules on them applied, in the job.
HEADERS_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("fluxforge_headers_only", default=False)
# While a job joins the queue: the inputs refused on the way ((block id, message) pairs), so that a refusal Gradio
# raises while reading an input reaches every client as a validation message on that input (ui.studio).
REFUSALS: contextvars.ContextVar[list | None] = contextvars.ContextVar("fluxforge_refusals", default=None)
CLIENT_POLL_S = 0.5  # how often a job checks that whoever asked for it is still there


@dataclass
class Outcome:
    """One finished run, ready for a tab's result panel."""

    path: Path
    result: GenerationResult
    request: GenerationRequest

    @property
    def caption(self) -> str:
        q = self.result.report["quantization"]
        return f"{self.request.tool} · seed {self.request.seed} · {text.QUANT_LABELS.get(q['resolved'], q['resolved'])}"

    @property
    def status(self) -> str:
        """The status line of this image's run."""
        return text.status_html(self.result.report, self.path.name)


@dataclass
class Preview:
    """A live preview of image ``index`` of ``count`` (1-based) in one job, after ``step`` of ``steps``."""

    image: Image.Image
    step: int
    steps: int
    index: int = 1
    count: int = 1

    @property
    def label(self) -> str:
        image = f"image {self.index}/{self.count} · " if self.count > 1 else ""
        return f"Preview · {image}step {self.step}/{self.steps}"


def hires_on(scale) -> bool:
    """True when a tab's hires scale asks for a hires fix (1, the slider's low end, or nothing: off)."""
    try:
        return scale is not None and scale != "" and float(scale) > 1
    except (TypeError, ValueError):
        return True  # refused by the request, naming it


def hires_fields(scale, strength, steps, upscaler) -> dict:
    """A tab's hires fix controls as the request's fields: none when the scale is 1 (off); steps 0: the run's."""
    if not hires_on(scale):
        return {}
    return dict(hires_scale=scale, hires_strength=strength, hires_steps=steps or None,
                hires_upscaler=upscaler or None)


def pick_seed(seed, randomize: bool) -> int | None:
    """The seed to use: a fresh one when `randomize`, else the number given (checked by the request)."""
    if randomize or seed is None or seed == "":
        return secrets.randbelow(defaults.SEED_MAX + 1)
    return seed


class Invalid(gr.Error):
    """Bad input: a readable message, and the input it is about (e.g. 'prompt', 'mask', 'steps')."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message, print_exception=False)
        if field is None:
            match = re.match(r"[a-z_]+", message)
            field = match.group(0) if match else None
        self.field = field

    def __str__(self) -> str:  # the message itself (Gradio's own quotes it)
        return self.message


def user_error(message: str, field: str | None = None) -> Invalid:
    return Invalid(message, field)


def batch_count(count) -> int:
    """The number of images a click asks for, checked (1..BATCH_MAX)."""
    number = count
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    elif isinstance(number, str) and number.strip().isdigit():
        number = int(number.strip())
    if isinstance(number, bool) or not isinstance(number, int):
        raise user_error(f"count={count!r} is not a whole number of images.", "count")
    if not 1 <= number <= defaults.BATCH_MAX:
        raise user_error(f"count={number} is out of range; a click makes 1..{defaults.BATCH_MAX} images.", "count")
    return number


class Runner:
    """Shared by every tab of one studio: the engine, the model of each tool (pipelines.models.catalog.Assignment)
    and the output folder."""

    def __init__(self, engine: Engine, assignment, output: OutputFolder):
        self.engine = engine
        self.assignment = assignment
        self.models = assignment.models
        self.output = output

    def request(self, tool: str, model: str | None = None, **fields) -> GenerationRequest:
        """A checked request; bad input raises gr.Error with the request's message. ``model``: the tab's Model choice
        (None: the studio's model for the tool)."""
        for name, value in fields.items():
            if isinstance(value, Image.Image) and value.width * value.height > MAX_PIXELS:
                raise user_error(f"{name} is too large ({value.width}x{value.height}); the limit is "
                                 f"{MAX_PIXELS // 2**20} MPixels.", name)
        try:
            runs = get_tool(tool).lora_base().name if fields.get("control") == "lora" else tool
            model, transformer = self.model_choice(runs, model)  # a control LoRA runs on the Dev model
            if transformer and not fields.get("transformer"):
                fields["transformer"] = transformer
            return GenerationRequest(tool=tool, model=model, header_only=HEADERS_ONLY.get(), **fields)
        except UserError as error:
            raise user_error(str(error)) from None

    # ---- models ------------------------------------------------------------------------------------------------
    def model_for(self, tool: str) -> str:
        """What the tab's Model dropdown shows first: the studio's model for ``tool`` (or its transformer file)."""
        return self.assignment.transformers.get(tool) or self.models[tool]

    def model_choices(self, tool: str) -> list:
        """The models ``tool`` can run now (pipelines.models.catalog.Choice), the studio's first."""
        from pipelines.models.catalog import choices

        return choices(get_tool(tool), self.model_for(tool))

    def model_choice(self, tool: str, value) -> tuple[str, str | None]:
        """(model, single-file transformer) of a Model choice; one the tool is not offered is refused."""
        from pipelines.models.single_file import is_transformer_file

        if value is None or (isinstance(value, str) and not value.strip()):
            return self.models[tool], self.assignment.transformers.get(tool)
        always = {self.model_for(tool), self.models[tool], get_tool(tool).model_id, defaults.TINY_MODEL}
        if not isinstance(value, str) or (value not in always and value not in {c.value for c in
                                                                                 self.model_choices(tool)}):
            raise UserError(f"model={value!r} is not one of the {tool} tool's models; choose one from its Model list "
                            "(the official model, the demo model 'tiny', or one in FLUXFORGE_MODEL_DIR).")
        if is_transformer_file(value):
            return self.models[tool], value
        return value, None

    def hub_models(self) -> list[str]:
        """The hub models the tools run or would run (each tool's model, or its official one while the demo model
        stands in, and their auxiliary models)."""
        from pipelines.models.sources import is_path
        from pipelines.tools import all_tools

        repos = []
        for tool in all_tools():
            model = tool.model_id if tool.name in self.assignment.demo else self.models[tool.name]
            if model != defaults.TINY_MODEL:
                repos += [model, *tool.aux_models]
        return [r for r in dict.fromkeys(repos) if r != defaults.TINY_MODEL and not is_path(r)]

    def model_rows(self) -> list[dict]:
        """Every tool's model (pipelines.models.catalog.tool_rows), from what is known here (the hub is not asked)."""
        from pipelines.models.catalog import tool_rows
        from pipelines.tools import all_tools

        return tool_rows(self.assignment, all_tools(), online=False)

    def download(self, repo: str, progress=None) -> None:
        """Fetch ``repo`` into the local cache (progress in the page); hub failures become one line."""
        from pipelines.models import hub

        try:
            hub.download(repo, _progress_adapter(progress, ""))
        except UserError as error:
            raise user_error(str(error)) from None

    # ---- what the System tab shows and sets ----------------------------------------------------------
    def doctor(self) -> dict:
        """The doctor report for this studio's device (backends, libraries, probes)."""
        from pipelines.paths import quant_caches
        from quantization.doctor import doctor_report

        manager = self.engine.manager
        return doctor_report(manager.device, manager.dtype, quant_caches().probes)

    def loaded_models(self) -> tuple[list[dict], int]:
        """(one row per loaded component, total bytes held)."""
        return self.engine.manager.status(), self.engine.manager.loaded_bytes()

    def unload_models(self) -> int:
        return self.engine.manager.unload()

    def preload(self, tool: str, quant: str = "none") -> str:
        """Load ``tool``'s model now (at start on ZeroGPU, in the main process, so every forked GPU worker inherits
        it rather than loading it inside its GPU time); one line saying what was loaded."""
        from pipelines.models.sources import resolve_model

        spec = get_tool(tool)
        model = self.models[tool]
        source = resolve_model(model, spec)
        started = time.perf_counter()
        self.engine.manager.pipeline(source.root, quant)
        return f"loaded {model} for {spec.title} at start ({time.perf_counter() - started:.0f} s)"

    def compile_ahead(self, tool: str, aoti, on_device=None) -> str:
        """Compile ``tool``'s transformer blocks ahead of time (pipelines.aot: ZeroGPU's form of compile; ``aoti``:
        the `spaces` package, ``on_device``: spaces.GPU around the compilation); one line saying what was done."""
        import hashlib

        import torch

        from pipelines import aot
        from pipelines.families import family_of
        from pipelines.loras import apply_loras
        from pipelines.memory import offload as offloading
        from pipelines.models.sources import resolve_model
        from pipelines.paths import cache_root

        spec = get_tool(tool)
        source = resolve_model(self.models[tool], spec)
        loaded = self.engine.manager.pipeline(source.root, "none")
        transformer = loaded.pipe.transformer
        if aot.has_aot(transformer):
            return f"{spec.title}: its transformer blocks are compiled ahead of time already"
        offloading.remove(loaded.pipe)  # the blocks are traced as the model is: no hooks,
        apply_loras(loaded, [])  # and no LoRA layers (a run's LoRAs set the compiled blocks aside)
        key = hashlib.sha256(f"{source.root}|{torch.__version__}".encode()).hexdigest()[:16]
        line = aot.compile_ahead(transformer, family_of(type(loaded.pipe).__name__), cache_root() / "aot" / key, aoti,
                                 **({"on_device": on_device} if on_device else {}))
        return f"{spec.title}: {line}"

    @property
    def options(self):
        """The run options (pipelines.memory.options.RunOptions) every run uses."""
        return self.engine.manager.options

    def set_options(self, **options) -> None:
        try:
            self.engine.manager.set_options(**options)
        except UserError as error:
            raise user_error(str(error)) from None

    def plan(self, tool: str, width: int, height: int, model: str | None = None, hires_scale=None,
             hires_upscaler=None):
        """The estimates (pipelines.memory.estimate.Plan) of ``tool`` on its model (or the Model choice ``model``) at
        ``width`` x ``height`` on this studio's device, with its placement; what the loaded models hold counts as
        free (they make room). ``hires_scale`` over 1: a hires fix, both passes (with ``hires_upscaler``)."""
        from pipelines.hires import planned
        from pipelines.memory.device import device_memory
        from pipelines.memory.estimate import plan_run
        from quantization.policy import offered

        manager = self.engine.manager
        memory = device_memory(manager.device, manager.loaded_bytes())
        chosen, transformer = self.model_choice(tool, model)
        spec = get_tool(tool)
        hires = planned(width, height, hires_scale, hires_upscaler) if (
            hires_on(hires_scale) and spec.takes_strength) else {}
        return plan_run(spec, chosen, width, height, memory, offered(manager.device),
                        manager.dtype.itemsize, manager.options.placement, transformer=transformer, **hires)

    def control_map(self, tool: str, image: Image.Image) -> Image.Image:
        """The control map ``tool`` computes from ``image`` (a preview, before a run)."""
        try:
            return self.engine.control_map(tool, self.models[tool], image)
        except UserError as error:
            raise user_error(str(error)) from None

    def run(self, request: GenerationRequest, progress=None, label: str = "",
            keep: tuple[Path, ...] = (), preview=None, stop: threading.Event | None = None) -> Outcome:
        """Generate, save the PNG (metadata included) and return the outcome; errors become gr.Error.

        `keep`: earlier results of the same job, not returned yet, that pruning must leave in place.
        `preview(image, step, steps)`: called with a live preview every defaults.PREVIEW_EVERY steps.
        `stop`: once set, the run stops at its next denoising step (Cancelled).
        """
        report = _progress_adapter(progress, label, stop)
        try:
            if preview is None:
                result = self.engine.generate(request, report)
            else:
                result = self.engine.generate(request, report, preview=preview, preview_every=defaults.PREVIEW_EVERY)
            path = self.output.save(result, request.tool, request.seed, keep_also=tuple(keep))
        except (gr.Error, Cancelled):
            raise
        except UserError as error:
            raise user_error(str(error)) from None
        except Exception as error:  # never a traceback in the browser
            log.exception("generation failed (%s)", request.tool)
            raise gr.Error(f"Generation failed ({type(error).__name__}). The server log has the details; "
                           "try fewer steps, a smaller size, or another quantization mode.",
                           print_exception=False) from None
        if result.fallbacks:
            components = result.report["quantization"]["components"]
            gr.Warning(text.fallback_summary(result.fallbacks, components) + " Details are in the tab.", duration=15)
        return Outcome(path, result, request)

    def batch(self, tool: str, fields: dict, count=1, progress=None, previews: bool = False,
              stop: threading.Event | None = None) -> Iterator:
        """The job of one click: ``count`` images from the request ``fields``, each with the next seed.

        Yields a Preview now and then when ``previews`` is on, and last the list of outcomes (every image of the
        batch stays in the output folder until the batch is returned). Runs one image at a time, on the one
        engine: the model loads once. ``stop`` (default: the job's, JOB_STOP): once set, the image being made
        stops at its next denoising step and no further image starts (Cancelled), previews on or off."""
        count = batch_count(count)
        previews = flag(previews, "previews")
        stop = stop or JOB_STOP.get() or threading.Event()
        outcomes: list[Outcome] = []
        first = self.request(tool, **fields)
        for index in range(count):
            if stop.is_set():
                raise Cancelled("the job was stopped")
            request = first if index == 0 else self.request(tool, **{**fields, "seed": batch_seed(first.seed, index)})
            label = f"Image {index + 1}/{count}" if count > 1 else ""
            keep = tuple(o.path for o in outcomes)
            if previews:
                outcome = yield from self._streamed(request, progress, label, keep, index + 1, count, stop)
            else:
                outcome = self.run(request, progress, label, keep, stop=stop)
            outcomes.append(outcome)
        yield outcomes

    def _streamed(self, request: GenerationRequest, progress, label: str, keep: tuple, index: int, count: int,
                  stop: threading.Event):
        """Runner.run in a worker thread, yielding its previews as they come (the newest, when several wait);
        returns the outcome. Closing the generator stops the run at its next denoising step (a model being loaded
        finishes loading) and waits for it, so the device is free when the job's slot in the queue is."""
        updates: queue.Queue = queue.Queue()

        def on_preview(image, step, steps):
            if stop.is_set():
                raise Cancelled("the job was stopped")
            image.thumbnail((defaults.PREVIEW_MAX_SIDE, defaults.PREVIEW_MAX_SIDE))  # 1/8 of the output's detail
            updates.put(Preview(image, step, steps, index, count))

        def work():
            try:
                updates.put(("done", self.run(request, progress, label, keep, preview=on_preview, stop=stop)))
            except BaseException as error:  # noqa: BLE001  (handed to the job's thread, raised there)
                updates.put(("failed", error))

        # The worker sees the job's context (Gradio's progress and toasts find their event through it).
        worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True,
                                  name="fluxforge-run")
        worker.start()
        try:
            while True:
                item = updates.get()
                while isinstance(item, Preview) and not updates.empty():
                    item = updates.get()  # a newer one is waiting: the older preview is stale
                if isinstance(item, Preview):
                    yield item
                    continue
                kind, value = item
                if kind == "failed":
                    raise value
                return value
        finally:
            if worker.is_alive():
                stop.set()
                worker.join()


def checked_input(block, name: str) -> None:
    """Make input ``block`` of a job (parameter ``name``) refuse bad values in one line naming ``name``, noted for the
    queue's join (REFUSALS) so every client sees it as a validation message: Gradio's own checks (a slider's range, a
    dropdown's choices), and, for a checkbox, a value that is not strictly true or false (`flag`)."""
    if getattr(block, "checked_as", None) is not None:
        return
    original = block.preprocess
    strict = isinstance(block, gr.Checkbox)

    def preprocess(payload):
        try:
            return original(flag(payload, name) if strict else payload)
        except Invalid as error:
            _note_refusal(block, error.message)
            raise
        except Exception as error:  # noqa: BLE001  (Gradio's Error, pydantic's, a decoder's: one line naming the input)
            text = str(getattr(error, "message", None) or error).strip().strip("'\"").splitlines()
            message = f"{name}: {text[0] if text else type(error).__name__}"
            _note_refusal(block, message)
            raise Invalid(message, name) from None

    block.preprocess = preprocess
    block.checked_as = name


def _note_refusal(block, message: str) -> None:
    refused = REFUSALS.get()
    if refused is not None:
        refused.append((block._id, message))


def flag(value, name: str) -> bool:
    """A checkbox value sent by the page or an API client: true or false (JSON booleans, or the words "true" and
    "false" in any case); anything else is refused in one line rather than read as true."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise user_error(f"{name}={value!r} is not true or false.", name)


def stoppable(run):
    """The job function for the device queue: ``run`` (a generator function, e.g. a tab's run) in a worker thread,
    handed on as an async generator so that stopping the job reaches it while it works, whether or not it is
    yielding (live previews off, a batch without previews yields only at its end).

    The job stops (JOB_STOP is set: the run stops at its next denoising step, and no further image starts) when it
    is cancelled (gradio_client's ``job.cancel()``, the tab's Stop button) or when the client that asked for it has
    gone (the page was closed); the job ends only once the worker has finished, so the device is free when the
    queue moves on. When several values wait, the newest is passed on (older previews are stale)."""

    @functools.wraps(run)
    async def job(*args, **kwargs):
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        waiting: collections.deque = collections.deque()
        ready, finished = asyncio.Event(), asyncio.Event()

        def hand_over(kind: str, value=None) -> None:
            def put():
                waiting.append((kind, value))
                ready.set()
            try:
                loop.call_soon_threadsafe(put)
            except RuntimeError:  # the event loop is gone (the server stopped)
                stop.set()

        def work() -> None:
            JOB_STOP.set(stop)
            items = run(*args, **kwargs)
            try:
                for item in items:
                    hand_over("item", item)
                    if stop.is_set():
                        items.close()  # a generator that does not see JOB_STOP (on ZeroGPU) is closed instead
                        raise Cancelled("the job was stopped")
            except Cancelled:
                hand_over("stopped")
            except BaseException as error:  # noqa: BLE001  (raised in the job, where Gradio shows it)
                hand_over("failed", error)
            else:
                hand_over("done")
            finally:
                try:
                    loop.call_soon_threadsafe(finished.set)
                except RuntimeError:
                    pass

        worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True,
                                  name="fluxforge-job")
        worker.start()
        try:
            while True:
                if not waiting:
                    ready.clear()
                    tick = loop.call_later(CLIENT_POLL_S, ready.set)  # not wait_for: it can swallow a cancel
                    try:
                        await ready.wait()
                    finally:
                        tick.cancel()
                    if not waiting:
                        if _client_gone():
                            return
                        continue
                kind, value = waiting.popleft()
                if kind == "item":
                    if waiting and waiting[0][0] == "item":
                        continue  # a newer value is waiting
                    yield value
                elif kind == "failed":
                    raise value
                elif kind == "stopped":
                    raise gr.Error("The job was stopped.", print_exception=False)
                else:
                    return
        finally:
            stop.set()
            while not finished.is_set():  # the device is free only once the worker is done
                try:
                    await asyncio.shield(finished.wait())
                except asyncio.CancelledError:
                    continue

    return job


def _client_gone() -> bool:
    """True when the client of the job running in this context has gone (Gradio marks its event as no longer
    alive when the page's event stream closes); False when that cannot be told."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    events = getattr(getattr(blocks, "_queue", None), "event_ids_to_events", None)
    event = events.get(event_id) if isinstance(events, dict) and event_id else None
    return event is not None and not getattr(event, "alive", True)


def _progress_adapter(progress, label: str, stop: threading.Event | None = None):
    """Engine progress (stage, done, total) -> gr.Progress: stages as text, denoising per step. Where a stop takes
    effect: a denoising step after ``stop`` is set raises Cancelled (a model being loaded finishes loading)."""
    from pipelines.models.hub import Meter, downloading

    prefix = f"{label}: " if label else ""
    meter = Meter()

    def report(stage: str, done: int, total: int) -> None:
        if stop is not None and stop.is_set() and stage == "denoise":
            raise Cancelled("the job was stopped")
        if progress is None:
            return
        desc = prefix + STAGE_TEXT.get(stage, stage)
        repo = downloading(stage)
        if repo is not None:  # bytes, speed and time left in the tab's own progress bar
            progress((done, max(total, 1)), desc=f"{prefix}Downloading {repo}: {meter.text(done, total)}", unit="B")
        elif stage == "denoise":
            progress((done, total), desc=desc, unit="steps")
        elif stage == "load":
            progress((done, total), desc=desc, unit="components")
        else:
            progress(None, desc=desc)

    return report


# ---- history (per browser session, kept in gr.State) -------------------------------------------------

def add_history(history: list | None, outcomes: list[Outcome]) -> list:
    """Newest first, bounded; items are (path, caption, status) triples: the status line of that image's own run,
    shown again when its thumbnail is clicked. Entries whose file the output folder no longer keeps
    (FLUXFORGE_OUTPUT_KEEP, shared by every session) are dropped."""
    items = [(str(o.path), o.caption, o.status) for o in reversed(outcomes)]
    kept = [tuple(item) for item in history or [] if kept_file(item)]
    return (items + kept)[:HISTORY_LIMIT]


def kept_file(item) -> bool:
    """True when a history item (path, caption, ...) still points at a file."""
    try:
        return Path(item[0]).is_file()
    except (TypeError, IndexError, OSError):
        return False


def history_status(item) -> str:
    """The status line for a history item shown again: its own run's, marked as an earlier result."""
    status = item[2] if len(item) > 2 and item[2] else ""
    return text.earlier_html(item[1], Path(item[0]).name) + status


def gallery_items(history: list) -> list:
    """The history as the gallery shows it: (image, caption) pairs."""
    return [(item[0], item[1]) for item in history]


def panel_values(outcomes: list[Outcome], history: list | None) -> tuple:
    """Values for a result panel: image, download, status, warning, notices, gallery, history state."""
    last = outcomes[-1]
    history = add_history(history, outcomes)
    fallbacks = [f for o in outcomes for f in o.result.fallbacks]
    warning = text.warning_html(fallbacks, last.result.report["quantization"]["components"])
    notices = []
    for o in outcomes:
        notices += [n for n in o.result.notices if n not in notices]
    status = last.status
    if len(outcomes) > 1:
        status = text.batch_html([o.request.seed for o in outcomes]) + status
    return (
        str(last.path),
        gr.update(value=str(last.path), visible=True),
        status,
        gr.update(value=warning, visible=bool(warning)),
        gr.update(value=text.notices_html(notices)),
        gallery_items(history),
        history,
    )
