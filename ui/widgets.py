"""Controls every tool tab shares: settings (steps, guidance, quantization, size, seed) and the result panel."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from pipelines import defaults
from pipelines.loras import STRENGTH_MAX, STRENGTH_MIN, available_loras
from pipelines.paths import lora_dir
from pipelines.tools import Defaults, get_tool

from . import text


@dataclass
class TabContext:
    """What a tab needs to build itself and wire its events."""

    runner: object  # ui.runner.Runner
    device_type: str
    api: bool
    gpu: object  # decorator for device work (spaces.GPU on ZeroGPU, else identity)
    models: dict[str, str] = field(default_factory=dict)
    quants: tuple = defaults.QUANTS  # the quant choices offered on this device
    estimates: list = field(default_factory=list)  # (inputs, output, refresh) of each tab's estimate (System: offload)
    zero_gpu: bool = False  # on a ZeroGPU Space: runs happen in forked GPU workers (ui.gpu)
    targets: list = field(default_factory=list)  # ui.links.Target of each tool tab: Send to, PNG info's restore
    memories: list = field(default_factory=list)  # ui.persist.Memory of each tool tab: its settings in the browser

    @property
    def visibility(self) -> str:
        return "public" if self.api else "private"

    def defaults(self, tool: str) -> Defaults:
        return get_tool(tool).defaults(self.models[tool])


@dataclass
class Controls:
    steps: gr.Slider
    guidance: gr.Slider
    quant: gr.Dropdown
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number
    randomize: gr.Checkbox
    match_input: gr.Checkbox | None = None
    loras: "LoraControls | None" = None
    batch: "BatchControls | None" = None
    reset: gr.Button | None = None  # "Reset to defaults" (ui.persist)

    def inputs(self) -> list:
        """In the order tab run functions take them: steps, guidance, quant, [match], width, height, seed, randomize,
        then the LoRA picker's loras_picked, loras_uploaded, lora_strength, then count and previews."""
        extra = [self.match_input] if self.match_input is not None else []
        loras = self.loras.inputs() if self.loras is not None else []
        batch = self.batch.inputs() if self.batch is not None else []
        return [self.steps, self.guidance, self.quant, *extra, self.width, self.height, self.seed, self.randomize,
                *loras, *batch]


@dataclass
class BatchControls:
    count: gr.Slider
    previews: gr.Checkbox

    def inputs(self) -> list:
        return [self.count, self.previews]


def batch_controls(tool: str) -> BatchControls:
    """Images per click (each with the next seed) and live previews, in every tool tab."""
    with gr.Row(equal_height=True):
        count = gr.Slider(1, defaults.BATCH_MAX, value=1, step=1, label="Images", scale=3,
                          info="per click; each one uses the next seed", elem_id=f"{tool}-count")
        previews = gr.Checkbox(True, label="Live previews", scale=2, elem_id=f"{tool}-previews",
                               info=f"a quick look every {defaults.PREVIEW_EVERY} steps")
    return BatchControls(count, previews)


@dataclass
class LoraControls:
    picked: gr.Dropdown
    uploaded: gr.File
    strength: gr.Slider

    def inputs(self) -> list:
        return [self.picked, self.uploaded, self.strength]


def lora_choices(folder: Path | None = None) -> list[str]:
    """The LoRA files in ``folder`` (default: the studio's LoRA folder), by their names in it (e.g.
    'styles/film.safetensors')."""
    folder = Path(folder) if folder else lora_dir()
    return [path.relative_to(folder).as_posix() for path in available_loras(folder)]


@dataclass(frozen=True)
class PickedLora:
    """A file chosen in the LoRA picker: its path, and its name in the LoRA folder (how messages name it)."""

    path: str
    name: str


def lora_picker(tool: str) -> LoraControls:
    """LoRA files from the LoRA folder and uploads, all at one strength. The folder is read again when the picker is
    opened and when a job is checked, so a file added after the start is offered in the page and taken over the API;
    a name that is not a LoRA file in the folder is refused in one line (picked_lora)."""
    folder = lora_dir()
    with gr.Accordion("LoRAs", open=False, elem_classes=["ff-loras"]):
        picked = gr.Dropdown(lora_choices(folder), value=[], multiselect=True, label="LoRA files",
                             allow_custom_value=True, info="FLUX.1 LoRAs found in the LoRA folder (FLUXFORGE_LORA_DIR)",
                             elem_id=f"{tool}-loras", interactive=True)
        uploaded = gr.File(label="Or upload LoRA files (.safetensors)", file_count="multiple",
                           file_types=[".safetensors"], type="filepath", height=90, elem_id=f"{tool}-lora-upload",
                           elem_classes=["ff-lora-upload"])
        strength = gr.Slider(STRENGTH_MIN, STRENGTH_MAX, value=1.0, step=0.05, label="LoRA strength",
                             info="applied to every LoRA chosen; 0 turns them off", elem_id=f"{tool}-lora-strength")
    picked.focus(lambda: gr.update(choices=lora_choices(folder)), None, picked, queue=False, api_visibility="private",
                 show_progress="hidden")
    original = picked.preprocess  # the choices listed at build time are not the only ones (see above)

    def preprocess(payload):
        names = _listed(original(payload))
        return [name if isinstance(name, PickedLora) else picked_lora(name, folder) for name in names]

    picked.preprocess = preprocess
    return LoraControls(picked, uploaded, strength)


def _listed(value) -> list:
    """A picker's or upload box's value as a list: one name or file given alone (not in a list) is one item."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, dict, PickedLora)) or hasattr(value, "path"):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise user_error_for("loras_picked", f"loras_picked={value!r} must be a list of LoRA file names.")


def user_error_for(field: str, message: str):
    from .runner import Invalid

    return Invalid(message, field)


def picked_lora(name, folder: Path | None = None) -> PickedLora:
    """The file in the LoRA folder that the picker's value ``name`` names (its name in the folder; its full path is
    taken too); anything else is refused in one line."""
    folder = Path(folder) if folder else lora_dir()
    text = str(name).strip()
    listed = {path.resolve(): path for path in available_loras(folder)}
    path = Path(text).expanduser()
    found = listed.get((path if path.is_absolute() else folder / path).resolve()) if text else None
    if found is None:
        shown = Path(text).name if Path(text).is_absolute() else text
        raise user_error_for("loras_picked", f"loras_picked: {shown!r} is not a LoRA file in the LoRA folder "
                                             "(FLUXFORGE_LORA_DIR); pick one it lists, or upload the file.")
    return PickedLora(str(found), found.relative_to(folder).as_posix())


def lora_values(picked, uploaded, strength) -> list:
    """The request's ``loras``: every chosen and uploaded file at the one strength, each checked here so that a
    refusal names the file as the user knows it (its name in the LoRA folder, an upload's own name; never the
    server's path) and shows on the input it came from."""
    from pipelines.errors import UserError
    from pipelines.loras import check_lora, check_strength

    items = []
    for name in _listed(picked):
        chosen = name if isinstance(name, PickedLora) else picked_lora(name)
        items.append(("loras_picked", chosen.path, chosen.name))
    for item in _listed(uploaded):
        path = getattr(item, "path", None) or getattr(item, "name", None) or (item.get("path") if isinstance(
            item, dict) else item)
        items.append(("loras_uploaded", str(path), Path(str(path)).name))
    if items:
        try:
            check_strength(strength, items[0][2])
        except UserError as error:
            raise user_error_for("lora_strength", str(error)) from None
    for field_name, path, shown in items:
        try:
            check_lora(path, strength, shown=shown)
        except UserError as error:
            raise user_error_for(field_name, str(error)) from None
    return [{"path": path, "strength": strength, "shown": shown} for _, path, shown in items]


def image_input(what: str, **kwargs) -> gr.Image:
    """An image upload passed on as the uploaded file's path (its bytes untouched, so the report can name and
    hash them); a file that is not a readable image is refused with one line (ui.images.readable)."""
    from .images import readable

    return readable(gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], **kwargs), what)


def image_files_input(what: str, **kwargs) -> gr.File:
    """Several image uploads passed on as their paths (bytes untouched, for the report's names and hashes); each
    file that is not a readable image is refused with one line naming it (ui.images.readable)."""
    from .images import readable

    return readable(gr.File(file_count="multiple", file_types=["image"], type="filepath", **kwargs), what)


def settings(ctx: TabContext, tool: str, from_image: bool = False, tool_choice: gr.Radio | None = None,
             model: gr.Dropdown | None = None, hires: list | None = None) -> Controls:
    """The settings accordion; the Quantization dropdown sits right after guidance (``tool_choice``: a control that
    picks the tab's tool, e.g. Generate's schnell/dev, and ``model``: the tab's Model dropdown; the estimate follows
    both, and a model change sets steps, guidance and size to that model's defaults; ``hires``: the tab's hires fix
    scale and upscaler, which the estimate follows too)."""
    d = ctx.defaults(tool)
    with gr.Accordion("Advanced settings", open=True, elem_classes=["ff-settings"]):
        with gr.Row():
            steps = gr.Slider(defaults.STEPS_MIN, defaults.STEPS_MAX, value=d.steps, step=1, label="Steps",
                              elem_id=f"{tool}-steps")
            guidance = gr.Slider(defaults.GUIDANCE_MIN, min(defaults.GUIDANCE_MAX, 50.0), value=d.guidance, step=0.5,
                                 label="Guidance", elem_id=f"{tool}-guidance")
        quant = gr.Dropdown(text.quant_choices(ctx.quants), value="auto", label="Quantization", elem_id=f"{tool}-quant",
                            info=text.quant_hint(ctx.device_type), interactive=True, filterable=False)
        estimate = gr.HTML("", elem_id=f"{tool}-estimate", elem_classes=["ff-estimate-panel"])
        match_input = None
        if from_image:
            match_input = gr.Checkbox(True, label="Output size from the input image", elem_id=f"{tool}-match")
        with gr.Row():
            width = gr.Slider(defaults.SIZE_MIN, defaults.SIZE_MAX, value=d.width, step=defaults.SIZE_STEP,
                              label="Width", elem_id=f"{tool}-width", interactive=not from_image)
            height = gr.Slider(defaults.SIZE_MIN, defaults.SIZE_MAX, value=d.height, step=defaults.SIZE_STEP,
                               label="Height", elem_id=f"{tool}-height", interactive=not from_image)
        with gr.Row(equal_height=True):
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=defaults.SEED_MAX,
                             elem_id=f"{tool}-seed", scale=3)
            randomize = gr.Checkbox(True, label="Randomize seed", elem_id=f"{tool}-randomize", scale=2)
        batch = batch_controls(tool)
    estimate_panel(ctx, tool, estimate, quant, width, height, tool_choice, model, hires)
    if model is not None:
        def model_defaults(value, *chosen):
            name = chosen[0] if chosen else tool
            try:
                d = get_tool(name).defaults(ctx.runner.model_choice(name, value)[0])
            except Exception:  # noqa: BLE001  (a choice of the other tool, while the tab switches): as they are
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return d.steps, d.guidance, d.width, d.height

        model.input(model_defaults, [model, *([tool_choice] if tool_choice is not None else [])],
                    [steps, guidance, width, height], queue=False, api_visibility="private", show_progress="hidden")
    loras = lora_picker(tool)
    reset = gr.Button("Reset to defaults", size="sm", variant="secondary", elem_id=f"{tool}-reset",
                      elem_classes=["ff-reset"])  # this tab's settings, kept in the browser (ui.persist)
    if match_input is not None:
        match_input.change(lambda on: (gr.update(interactive=not on), gr.update(interactive=not on)),
                           match_input, [width, height], queue=False, api_visibility="private",
                           show_progress="hidden")
    return Controls(steps, guidance, quant, width, height, seed, randomize, match_input, loras, batch, reset)


def estimate_panel(ctx: TabContext, tool: str, panel: gr.HTML, quant: gr.Dropdown, width: gr.Slider,
                   height: gr.Slider, tool_choice: gr.Radio | None = None, model: gr.Dropdown | None = None,
                   hires: list | None = None) -> gr.HTML:
    """Fills ``panel`` (under the Quantization dropdown) with the estimated peak memory, speed and fit of every quant
    choice (ui.estimates): on page load, and again when the quant, width, height, tool, model or hires fix (scale and
    upscaler) change here, or the offload option in the System tab."""
    from gradio.context import Context

    from .estimates import render
    from .runner import hires_on

    hires = list(hires or [])
    extra = [control for control in (tool_choice, model) if control is not None] + hires

    def refresh(quant_value, width_value, height_value, *rest):  # rest: [tool], [model], [hires x2], [offload]
        values = list(rest)
        chosen = values.pop(0) if tool_choice is not None else tool
        chosen_model = values.pop(0) if model is not None else None
        fix = tuple(values.pop(0) for _ in hires)
        offload = values.pop(0) if values else None
        fix = fix if fix and hires_on(fix[0]) else ()
        return render(ctx.runner, chosen, quant_value, width_value, height_value, offload, chosen_model, fix)

    inputs = [quant, width, height, *extra]
    events = dict(queue=False, api_visibility="private", show_progress="hidden")
    for control in inputs:
        control.change(refresh, inputs, panel, **events)
    if Context.root_block is not None:
        Context.root_block.load(refresh, inputs, panel, **events)
    ctx.estimates.append((inputs, panel, refresh))
    return panel


def size_values(match_input: bool | None, width, height) -> tuple:
    """(width, height) for the request: None lets the engine take the input image's size."""
    if match_input:
        return None, None
    return width, height


@dataclass
class ResultPanel:
    button: gr.Button
    stop: gr.Button
    image: gr.Image
    download: gr.DownloadButton
    status: gr.HTML
    warning: gr.HTML
    notices: gr.HTML
    gallery: gr.Gallery
    history: gr.State
    send_row: gr.Row | None = None  # "Send to" buttons (ui.links.wire_send_to)

    def outputs(self) -> list:
        """In the order ui.runner.panel_values returns them."""
        return [self.image, self.download, self.status, self.warning, self.notices, self.gallery, self.history]

    @property
    def progress_on(self) -> gr.HTML:
        """Where a run's progress bar shows: under the result, so the live preview in the image stays in view."""
        return self.notices

    def stream(self, items, history, final=lambda outcomes: (), extra: int = 0):
        """What a tab's run function yields for a job (ui.runner.Runner.batch's items): each live preview into the
        result image with its label in the status line, then the panel's values (ui.runner.panel_values) followed
        by ``final(outcomes)`` (the tab's ``extra`` outputs after the panel's).

        Every value is a plain tuple (a preview leaves the other outputs as they are with gr.skip()), never a dict
        keyed by components: on ZeroGPU each yielded value is pickled out of the GPU worker, and components do not
        pickle."""
        from .runner import Preview, panel_values

        for item in items:
            if isinstance(item, Preview):
                yield preview_values(item, extra)
            else:
                yield (*panel_values(item, history), *final(item))


def preview_values(preview, extra: int = 0) -> tuple:
    """A live preview (ui.runner.Preview) as a result panel's values (ResultPanel.outputs' order): the image and its
    label in the status line, every other output skipped, then ``extra`` skipped outputs of the tab's own."""
    shown = {"image": preview.image, "status": text.preview_html(preview.label)}
    names = ("image", "download", "status", "warning", "notices", "gallery", "history")
    return (*(shown.get(name, gr.skip()) for name in names), *(gr.skip() for _ in range(extra)))


def result_panel(tool: str, action: str) -> ResultPanel:
    """The right-hand column: the run button on top (always in view) with the Stop button beside it, then the result
    and its status. The Stop button shows while the tab's job waits or runs: the page's own progress indicator (on
    the notices, `progress_on`) is showing then, and a style rule (ui.theme) shows the button with it; so it hides
    again whatever ends the job (refused before queuing, finished, failed or stopped)."""
    with gr.Column(elem_classes=["ff-panel"]):
        with gr.Row(equal_height=True):
            button = gr.Button(action, variant="primary", size="lg", elem_id=f"{tool}-run", scale=4)
            stop = gr.Button("Stop", variant="stop", size="lg", elem_id=f"{tool}-stop", elem_classes=["ff-stop"],
                             scale=1, min_width=90)
        warning = gr.HTML("", visible=False, elem_id=f"{tool}-warning")
        image = gr.Image(label="Result", type="filepath", format="png", interactive=False, height=380,
                         buttons=["download", "fullscreen"], elem_id=f"{tool}-result", elem_classes=["ff-result"])
        status = gr.HTML("<div class='ff-status ff-muted'>No image yet: the status of each run (backends per "
                         "component, peak memory, times) appears here.</div>", elem_id=f"{tool}-status")
        notices = gr.HTML("", elem_id=f"{tool}-notices", elem_classes=["ff-progress"])
        download = gr.DownloadButton("Download PNG (with metadata)", visible=False, size="sm",
                                     elem_id=f"{tool}-download")
        send_row = gr.Row(elem_id=f"{tool}-send", elem_classes=["ff-send-row"])
        gallery = gr.Gallery(label="Session history (newest first)", columns=8, height=130, allow_preview=False,
                             object_fit="cover", elem_id=f"{tool}-history", interactive=False, format="png")
        history = gr.State([])

    def show(history_items, evt: gr.SelectData):
        """A history thumbnail clicked: its image, its download and its own status line."""
        from .runner import history_status, kept_file

        item = history_items[evt.index]
        if not kept_file(item):  # pruned by a newer run (of any session) since the history was shown
            gr.Warning("That image is no longer kept in the output folder.")
            return gr.skip(), gr.skip(), gr.skip()
        return item[0], gr.update(value=item[0], visible=True), history_status(item)

    gallery.select(show, history, [image, download, status], queue=False, api_visibility="private",
                   show_progress="hidden")
    panel = ResultPanel(button, stop, image, download, status, warning, notices, gallery, history, send_row)
    button.result_panel = panel  # wire() makes the Stop button cancel the job this button starts
    return panel


def validator(check, inputs: list, names: list[str], aliases: dict[str, str]):
    """Runs `check` before the job joins the queue; its message is shown on the input it is about."""
    shown = [i for i, block in enumerate(inputs) if not isinstance(block, gr.State)]

    def validate(*args):
        from .runner import HEADERS_ONLY

        token = HEADERS_ONLY.set(True)  # quick: images by their headers (the queue's join waits on this)
        try:
            check(*args)
        except gr.Error as error:
            field = aliases.get(getattr(error, "field", None), getattr(error, "field", None))
            target = names.index(field) if field in names else None
            if target is None or target not in shown:
                target = names.index("prompt") if "prompt" in names else shown[0]
            return [gr.validate(i != target, error.message if i == target else "") for i in range(len(args))]
        except Exception as error:  # malformed values sent past the page (wrong types): refused, not queued
            target = shown[0]
            message = f"Invalid input ({type(error).__name__}): check the values sent."
            return [gr.validate(i != target, message if i == target else "") for i in range(len(args))]
        finally:
            HEADERS_ONLY.reset(token)
        return [gr.validate(True, "") for _ in args]

    return validate


def wire(ctx: TabContext, button: gr.Button, check, run, inputs: list, outputs: list, api_name: str,
         aliases: dict[str, str] | None = None, progress_on=None, tool: str | None = None):
    """The job, validated before it is queued (bad input never waits for the device), on the device queue.

    `check` raises ui.runner.Invalid; `aliases` maps request field names (e.g. 'mask') to `run` parameters;
    `progress_on`: the component(s) that show the progress bar (default: every output); `tool`: the tool `run`
    runs where it has no ``tool`` argument (for ZeroGPU's duration, ui.gpu). `run` may be a generator
    (each value it yields updates the outputs; the last is the job's result, in the page and the API alike).
    """
    import inspect

    from .runner import checked_input, stoppable
    from .settings import DEVICE_QUEUE

    names = [name for name in inspect.signature(run).parameters if name != "progress"]
    for block, name in zip(inputs, names):
        if not isinstance(block, gr.State):
            checked_input(block, name)
    aliases = {"lora": "loras_picked", "loras": "loras_picked", **(aliases or {})}
    job = button.click(stoppable(ctx.gpu(run, tool=tool)), inputs, outputs, api_name=api_name,
                       api_visibility=ctx.visibility, concurrency_id=DEVICE_QUEUE, concurrency_limit=1,
                       show_progress_on=progress_on, validator=validator(check, inputs, names, aliases))
    panel = getattr(button, "result_panel", None)
    if panel is not None:  # this page's job of this tab only, waiting or running
        panel.stop.click(text.stopped_html, None, panel.status, cancels=[job], queue=False, api_visibility="private",
                         show_progress="hidden")
    return job
