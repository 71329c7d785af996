"""What the Depth and Canny tabs share: a photo, its control map beside it (computed, or a ready-made one uploaded)."""

from __future__ import annotations

import gradio as gr

from pipelines import defaults
from pipelines.control_maps import canny_map

from ..images import as_image, asset
from ..models import model_picker
from ..runner import batch_count, pick_seed, user_error
from ..settings import DEVICE_QUEUE
from ..links import Target
from ..persist import remember
from ..widgets import TabContext, image_input, lora_values, result_panel, settings, size_values, wire

FROM_PHOTO, UPLOADED = "photo", "upload"
PROMPTS = {"depth": "a cozy reading nook, warm afternoon light, film photo",
           "canny": "a watercolor painting of a sailing boat on a calm bay"}
EXAMPLES = {"depth": "example-house.png", "canny": "example-boat.png"}


def build(ctx: TabContext, tool: str) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380):
            with gr.Row(equal_height=True):
                photo = image_input("image", label="Input photo", height=230, elem_id=f"{tool}-image")
                control = image_input("control_image", label=f"{tool.capitalize()} map", height=230,
                                      interactive=False, elem_id=f"{tool}-map")
            source = gr.Radio([("Compute from the photo", FROM_PHOTO), ("Upload a ready-made map", UPLOADED)],
                              value=FROM_PHOTO, label="Control map", elem_id=f"{tool}-source")
            if tool == "canny":
                with gr.Row():
                    low = gr.Slider(0, 255, value=defaults.CANNY_LOW, step=1, label="Canny low threshold",
                                    elem_id="canny-low")
                    high = gr.Slider(0, 255, value=defaults.CANNY_HIGH, step=1, label="Canny high threshold",
                                     elem_id="canny-high")
                preview = None
            else:
                low = high = None
                preview = gr.Button("Preview depth map", size="sm", elem_id="depth-preview")
            prompt = gr.Textbox(label="Prompt", lines=2, max_lines=6, elem_id=f"{tool}-prompt",
                                placeholder="What the image should show, following the map's structure…")
            form = gr.Radio([("Full control model", "model"), ("Control LoRA on FLUX.1 [dev]", "lora")],
                            value="model", label="Model form", elem_id=f"{tool}-form",
                            info="The LoRA form adds a small control LoRA to the Dev model the Generate tab uses: "
                                 "no second 12B model on disk or in memory.")
            model = model_picker(ctx, tool)
            options = settings(ctx, tool, from_image=True, model=model)
            gr.Examples([[asset(EXAMPLES[tool]), PROMPTS[tool]]], [photo, prompt], label="Example")
        with gr.Column(scale=6, min_width=420):
            panel = result_panel(tool, "Generate")

    # The control LoRA runs on the studio's Dev model (the Generate tab's): this tab's Model list is for the full model.
    form.change(lambda choice: gr.update(interactive=choice != "lora"), form, model, queue=False,
                api_visibility="private", show_progress="hidden")

    # ---- the control map beside the photo --------------------------------------------------------------
    def computed_map(image, lo=None, hi=None):
        """The map shown for the photo: Canny edges at once; depth only on request (it needs a model)."""
        if image is None or tool != "canny":
            return None
        if lo > hi:
            return gr.skip()  # the run refuses it with a message on the threshold
        return canny_map(as_image(image), int(lo), int(hi))

    thresholds = [low, high] if tool == "canny" else []

    def switch_source(choice, image, *limits):
        if choice == UPLOADED:
            return gr.update(interactive=True, value=None)
        return gr.update(interactive=False, value=computed_map(image, *limits))

    def refresh_map(image, choice, *limits):
        return computed_map(image, *limits) if choice == FROM_PHOTO else gr.skip()

    hidden = dict(queue=False, api_visibility="private", show_progress="hidden")
    source.change(switch_source, [source, photo, *thresholds], control, **hidden)
    photo.change(refresh_map, [photo, source, *thresholds], control, **hidden)
    for slider in thresholds:
        slider.release(refresh_map, [photo, source, *thresholds], control, **hidden)

    if preview is not None:
        def run_preview(image, choice):
            if choice != FROM_PHOTO:
                raise user_error("The map is uploaded: switch to 'Compute from the photo' to preview one.")
            if image is None:
                raise user_error("Upload a photo first.")
            return ctx.runner.control_map(tool, image)

        preview.click(ctx.gpu(run_preview), [photo, source], control, api_visibility="private",
                      concurrency_id=DEVICE_QUEUE, concurrency_limit=1)

    # ---- generation ------------------------------------------------------------------------------------
    def fields(image, map_image, choice, prompt, lo, hi, steps, guidance, quant, match, width, height, seed,
               randomize, loras_picked, loras_uploaded, lora_strength, form="model", model=None):
        control_image = None
        if choice == UPLOADED:
            if map_image is None:
                raise user_error(f"Upload a {tool} map, or switch to 'Compute from the photo'.", "map_image")
            control_image = map_image
            image = image if image is not None else map_image  # the map alone sets the size
        elif image is None:
            raise user_error(f"Upload a photo: the {tool} map is computed from it.", "image")
        width, height = size_values(match, width, height)
        extra = {} if lo is None else {"canny_low": int(lo), "canny_high": int(hi)}
        return dict(prompt=prompt or "", quant=quant, image=image, control_image=control_image, width=width,
                    height=height, steps=steps, guidance=guidance, seed=pick_seed(seed, randomize),
                    loras=lora_values(loras_picked, loras_uploaded, lora_strength), control=form or "model",
                    model=model if form != "lora" else None, **extra)

    def check(image, map_image, choice, prompt, lo, hi, *rest):
        *values, count, _previews, form, model, _history = rest
        batch_count(count)
        ctx.runner.request(tool, **fields(image, map_image, choice, prompt, lo, hi, *values, form, model))

    def run(image, map_image, choice, prompt, lo, hi, steps, guidance, quant, match, width, height, seed,
            randomize, loras_picked=None, loras_uploaded=None, lora_strength=1.0, count=1, previews=True,
            form="model", model=None, history=None, progress=gr.Progress()):
        base = fields(image, map_image, choice, prompt, lo, hi, steps, guidance, quant, match, width, height, seed,
                      randomize, loras_picked, loras_uploaded, lora_strength, form, model)

        def final(outcomes):
            shown = outcomes[-1].result.control_image if choice == FROM_PHOTO else gr.skip()
            return outcomes[0].request.seed, shown

        jobs = ctx.runner.batch(tool, base, count, progress, previews)
        yield from panel.stream(jobs, history, final, extra=2)

    limits = thresholds if tool == "canny" else [gr.State(None), gr.State(None)]
    inputs = [photo, control, source, prompt, *limits, *options.inputs(), form, model, panel.history]
    wire(ctx, panel.button, check, run, inputs, [*panel.outputs(), options.seed, control], api_name=tool, tool=tool,
         progress_on=panel.progress_on,
         aliases={"control_image": "map_image", "canny_low": "lo", "canny_high": "hi"})
    kept = {"canny_low": low, "canny_high": high} if low is not None else {}
    remember(ctx, tool, options, tool, model=model, source=source, **kept, prompt=prompt, form=form)
    ctx.targets.append(Target(tool, tool.capitalize(), (tool,), prompt, options, panel, image=photo))

