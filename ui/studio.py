"""Builds and serves the studio: one tab per tool plus System, one job at a time on the device."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import gradio as gr
from PIL import Image

from .gpu import aot_at_start, compile_ahead, gpu_decorator, preload_tools, zero_gpu, zero_gpu_quants
from .settings import Settings, on_space

log = logging.getLogger(__name__)

TITLE = "FluxForge Studio"
HEARTBEAT_S = 2  # seconds between the heartbeats that tell Gradio a page is still there
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def pick_models(model: str | list[str] | None = None):
    """Each tool's model (pipelines.models.catalog.Assignment): from ``model`` (--model values: MODEL for every tool
    it fits, TOOL=MODEL for one), else FLUXFORGE_MODELS, else each tool's official model, or the demo model where
    that cannot be had. A UserError when a named model fits no tool, or not the tool it is named for."""
    from pipelines.models.catalog import MODELS_ENV, assign, env_specs
    from pipelines.tools import all_tools

    values = [model] if isinstance(model, str) else list(model or [])
    specs, origin = (values, "--model") if values else (env_specs(), MODELS_ENV)
    return assign(all_tools(), specs, origin)


def create_demo(manager=None, model: str | list[str] | None = None, device: str | None = None, api: bool = False,
                output_dir: str | Path | None = None, queue_size: int | None = None) -> gr.Blocks:
    """The studio's Blocks, not launched. Nothing is loaded here: models load (and download) on a tool's first run;
    the hub is asked once whether it can be reached, where an official model is not in the local cache."""
    gpu = gpu_decorator()  # first, so `spaces` is imported before CUDA is touched on ZeroGPU
    from pipelines.engine import Engine
    from quantization.policy import offered
    from pipelines.manager import ModelManager

    from . import text
    from .outputs import OutputFolder
    from .runner import Runner
    from .links import wire_send_to
    from .persist import render_states
    from .tabs import TOOL_TABS, pnginfo, system
    from .widgets import TabContext

    # Gradio decodes uploads itself: PIL raises past twice MAX_IMAGE_PIXELS, so images over the engine's
    # pixel limit are refused before they are decoded.
    from pipelines.images import MAX_PIXELS

    Image.MAX_IMAGE_PIXELS = min(Image.MAX_IMAGE_PIXELS or MAX_PIXELS, MAX_PIXELS // 2)

    settings = Settings(api=api)
    if output_dir is not None:
        settings.output_dir = Path(output_dir).expanduser().resolve()
    if queue_size is not None:
        settings.queue_size = queue_size
    manager = manager or ModelManager(device=device)
    assignment = pick_models(model)
    runner = Runner(Engine(manager), assignment, OutputFolder(settings.output_dir, settings.keep))
    quants = offered(manager.device)
    if zero_gpu():  # what fits a GPU call's time there (ui.gpu.ZERO_GPU_QUANTS)
        quants = zero_gpu_quants(quants)
    ctx = TabContext(runner=runner, device_type=manager.device.type, api=api, gpu=gpu, models=assignment.models,
                     quants=quants, zero_gpu=zero_gpu())

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 6 * 3600)) as demo:
        gr.HTML(f"<div id='ff-header'><h1>{TITLE}</h1><span class='ff-sub'>FLUX.1 image tools, quantized to fit "
                f"your memory · {manager.device.type.upper()} · {str(manager.dtype).replace('torch.', '')}"
                "</span></div>")
        banner = text.demo_banner(assignment)
        if banner:
            gr.HTML(banner, elem_id="ff-demo-banner")
        with gr.Tabs(elem_id="ff-tabs") as tabs:
            for tab in TOOL_TABS:
                name = tab.__name__.rpartition(".")[2]
                with gr.Tab(tab.TITLE, id=name, elem_id=f"tab-{name}"):
                    tab.build(ctx)
            with gr.Tab(pnginfo.TITLE, id="pnginfo", elem_id="tab-pnginfo"):
                pnginfo.build(ctx, tabs)
            with gr.Tab("System", id="system", elem_id="tab-system") as system_tab:
                system.build(ctx, system_tab)
        wire_send_to(ctx.targets, tabs)
        render_states(ctx.memories)
    demo.queue(max_size=settings.queue_size, api_open=api, default_concurrency_limit=1)
    serialize_joins(demo._queue)
    demo.studio_settings = settings
    demo.studio_manager = manager
    demo.studio_runner = runner
    demo.studio_notices = assignment.notices
    return demo


def serialize_joins(queue) -> None:
    """One queue join at a time, so the "queue is full" check is exact; and every refusal of a join as a validation
    message on the input it is about.

    Gradio checks the queue size, then awaits the validator, then adds the job: joins arriving together
    all pass the check against the same size. Holding a lock over the whole join closes that gap
    (validators are cheap checks that read images from their headers only, so joins wait on each other only
    briefly). A value Gradio refuses while reading an input (a slider's range, a file that is not an image) comes
    back as a bare HTTP 400, whose reason gradio_client does not show; it is sent as the validator's refusals are
    (HTTP 422, the message on its input), which the page and gradio_client both show.
    """
    from .runner import REFUSALS

    push = queue.push
    lock = asyncio.Lock()

    async def locked_push(*args, **kwargs):
        async with lock:
            refused: list = []
            token = REFUSALS.set(refused)
            try:
                success, data, state = await push(*args, **kwargs)
            finally:
                REFUSALS.reset(token)
        body = kwargs.get("body", args[0] if args else None)
        if state == "error" and isinstance(data, str) and getattr(body, "fn_index", None) is not None:
            return False, refusal_on_input(queue, body, data, refused), "validator_error"
        return success, data, state

    queue.push = locked_push


def refusal_on_input(queue, body, message: str, refused: list) -> list[dict]:
    """A refused join as the validator's answer: one entry per input of the job, the message on the input it is
    about (noted while reading the inputs; else the first input holding a file, for a refused file reference; else
    the first input)."""
    fn = queue.blocks.fns.get(body.fn_index)
    inputs = list(getattr(fn, "inputs", None) or [])
    if not inputs:
        return [{"__type__": "validate", "is_valid": False, "message": message.strip().strip("'\"")}]
    ids = [block._id for block in inputs]
    target, text = next(((ids.index(block_id), note) for block_id, note in refused if block_id in ids), (None, None))
    if target is None:
        data = list(getattr(body, "data", None) or [])
        files = [i for i, value in enumerate(data[:len(inputs)]) if "'path'" in repr(value) or "'url'" in repr(value)]
        shown = [i for i, block in enumerate(inputs) if not isinstance(block, gr.State)]
        target = files[0] if files else (shown[0] if shown else 0)
        name = getattr(inputs[target], "checked_as", None)
        first = (message.strip().strip("'\"").splitlines() or ["refused"])[0]
        text = f"{name}: {first}" if name and not first.startswith(name) else first
    names = list(getattr(fn, "input_parameter_names", None) or [])
    if not names:
        import inspect

        names = [n for n in inspect.signature(fn.fn).parameters if n != "progress"] if fn.fn else []
    return [{"__type__": "validate", "is_valid": i != target, "message": text if i == target else "",
             "parameter_name": names[i] if i < len(names) else f"parameter_{i}"} for i in range(len(inputs))]


def launch_options(demo: gr.Blocks, host: str | None = "127.0.0.1") -> dict:
    """launch() arguments that keep a studio safe by default (and carry its look)."""
    from starlette.middleware import Middleware

    from .origin import LocalOriginMiddleware
    from .theme import CSS, theme

    settings: Settings = demo.studio_settings
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    return {
        "theme": theme(),
        "css": CSS,
        "max_file_size": settings.max_file_size,
        "allowed_paths": [str(settings.output_dir)],
        "footer_links": ["api", "gradio", "settings"] if settings.api else ["gradio", "settings"],
        "mcp_server": False,
        "show_error": False,
        "app_kwargs": {"middleware": [Middleware(LocalOriginMiddleware, api=settings.api,
                                                 local_only=host in LOOPBACK)]},
    }


def serve(demo: gr.Blocks, host: str | None = "127.0.0.1", port: int | None = 7860, share: bool = False,
          **kwargs):
    """Launch `demo` with the safe defaults; on a Space the host and port come from the Space."""
    if on_space():
        host = port = None  # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, set by the Space
    # Gradio notices a page that went away when its next heartbeat cannot be sent (15 s apart by default); its job
    # stops then (ui.runner.stoppable), so a closed page stops its job within this many seconds.
    os.environ.setdefault("GRADIO_HEARTBEAT_INTERVAL", str(HEARTBEAT_S))
    return demo.launch(server_name=host, server_port=port, share=share, **launch_options(demo, host), **kwargs)


def launch(args) -> int:
    """`python app.py`: serve the studio until interrupted."""
    from pipelines.logs import quiet_libraries

    quiet_libraries()
    demo = create_demo(model=args.models, device=args.device, api=args.api)
    for notice in demo.studio_notices:
        print(f"notice: {notice}", file=sys.stderr)
    if zero_gpu():
        for line in preload(demo.studio_runner):
            print(f"notice: {line}", file=sys.stderr)
        if aot_at_start():
            from .tabs.generate import VARIANTS

            for line in compile_ahead(demo.studio_runner, preload_tools(VARIANTS[0])):
                print(f"notice: {line}", file=sys.stderr)
    serve(demo, host=args.host, port=args.port, share=args.share)
    return 0


def preload(runner, tools: list[str] | None = None) -> list[str]:
    """ZeroGPU's convention: load models in the main process at start (their `.to("cuda")` is deferred by `spaces`)
    so that every forked GPU worker inherits them, instead of loading ~34 GB inside its GPU time. ``tools``: default
    FLUXFORGE_PRELOAD's, else the Generate tab's first tool. One line per tool; a model that cannot be loaded is
    said so and left to load on its tool's first run."""
    from .tabs.generate import VARIANTS

    lines = []
    for tool in preload_tools(VARIANTS[0]) if tools is None else tools:
        try:
            lines.append(runner.preload(tool))
        except Exception as error:  # noqa: BLE001  (start-up goes on: the model loads on its tool's first run)
            first = (str(error).splitlines() or [type(error).__name__])[0]
            lines.append(f"not loaded at start ({tool}): {first}; it loads on its first run")
    return lines
