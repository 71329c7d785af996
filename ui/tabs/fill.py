"""Fill: inpaint with a brush-drawn mask, or outpaint by growing the canvas, with FLUX.1 Fill (optional Redux
reference); or inpaint with FLUX.2 [klein] (klein base; an optional reference taken natively)."""

from __future__ import annotations

import gradio as gr

from pipelines import defaults
from pipelines.errors import UserError
from pipelines.tools import get_tool

from ..images import asset, editor_image, readable, editor_mask, expand_values
from ..models import follow_tool, model_picker
from ..runner import batch_count, pick_seed, user_error
from ..links import Target
from ..persist import remember
from ..widgets import TabContext, image_input, lora_values, result_panel, settings, size_values, wire

TITLE = "Fill"
INPAINT, OUTPAINT = "inpaint", "outpaint"
TAB = __name__.rpartition(".")[2]  # its id in the studio's tabs
FILLERS = ("fill", "klein_inpaint")  # the tab's model choice


def build(ctx: TabContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380):
            filler = gr.Radio([(get_tool(name).title, name) for name in FILLERS], value="fill", label="Fill with",
                              elem_id="fill-filler",
                              info="FLUX.1 Fill inpaints and outpaints; FLUX.2 [klein] Inpaint (klein base) inpaints.")
            mode = gr.Radio([("Inpaint: paint what to repaint", INPAINT), ("Outpaint: grow the canvas", OUTPAINT)],
                            value=INPAINT, label="Mode", elem_id="fill-mode")
            model = model_picker(ctx, "fill")
            editor = gr.ImageEditor(
                label="Image (paint the area to repaint: white = repaint)", type="pil", image_mode="RGBA",
                sources=["upload", "clipboard"], transforms=(), height=360, elem_id="fill-editor",
                brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed", default_size=24),
                eraser=gr.Eraser(default_size=24), layers=gr.LayerOptions(allow_additional_layers=False,
                                                                            layers=["Mask"]))
            readable(editor, "image")
            with gr.Group(visible=False) as grow:
                gr.Markdown("Pixels to add on each side (the new border is generated).", elem_classes=["ff-note"])
                with gr.Row():
                    sides = [gr.Number(value, label=name, precision=0, minimum=0, maximum=defaults.EXPAND_MAX,
                                       step=16, elem_id=f"fill-expand-{name.lower()}", min_width=70)
                             for name, value in (("Left", 0), ("Top", 0), ("Right", 64), ("Bottom", 0))]
            prompt = gr.Textbox(label="Prompt", lines=2, max_lines=6, elem_id="fill-prompt",
                                placeholder="What should appear in the painted area…")
            with gr.Accordion("Reference image (optional: Redux-steered with FLUX.1, native with klein)", open=False):
                reference = image_input("reference", label="Reference", height=160, elem_id="fill-reference")
            options = settings(ctx, "fill", from_image=True, tool_choice=filler, model=model)
            gr.Examples([[asset("example-room.png"), "a potted plant on the table"]], [editor, prompt],
                        label="Example")
        with gr.Column(scale=6, min_width=420):
            panel = result_panel("fill", "Fill")

    mode.change(lambda m: gr.update(visible=m == OUTPAINT), mode, grow, queue=False, api_visibility="private",
                show_progress="hidden")

    def switch(tool):
        d = ctx.defaults(tool)
        return d.steps, d.guidance, follow_tool(ctx.runner, tool)

    filler.input(switch, filler, [options.steps, options.guidance, model], queue=False, api_visibility="private",
                  show_progress="hidden")

    def fields(mode, editor, left, top, right, bottom, prompt, reference, steps, guidance, quant, match, width,
               height, seed, randomize, loras_picked, loras_uploaded, lora_strength, model=None, tool="fill"):
        if tool not in FILLERS:
            raise user_error(f"Choose what to fill with: fill or klein_inpaint (got {tool!r}).", "filler")
        if mode == OUTPAINT and "expand" not in get_tool(tool).inputs:
            raise user_error(f"{get_tool(tool).title} inpaints only: choose Inpaint, or FLUX.1 Fill to outpaint.",
                             "mode")
        image = editor_image(editor)
        if image is None:
            raise user_error("Upload an image to fill first.", "editor")
        image.info["source"] = "editor background"  # how the report names it (pipelines.images.describe_input)
        if mode == OUTPAINT:
            expand = expand_values(left, top, right, bottom)
            if not any(expand):
                raise user_error("Outpaint: choose how many pixels to add on at least one side.", "right")
            mask = None
        else:
            expand = None
            try:
                mask = editor_mask(editor, image.size)
            except UserError as error:
                raise user_error(str(error), "editor") from None
            if mask is None:
                raise user_error("No mask drawn: paint over the area to repaint with the brush (white = repaint).",
                                 "editor")
            mask.info["source"] = "painted mask"
        width, height = size_values(match, width, height)
        extra = {"expand": expand} if "expand" in get_tool(tool).inputs else {}
        return dict(prompt=prompt or "", quant=quant, image=image, mask=mask, **extra, reference=reference,
                    width=width, height=height, steps=steps, guidance=guidance, seed=pick_seed(seed, randomize),
                    loras=lora_values(loras_picked, loras_uploaded, lora_strength), model=model)

    def check(*args):
        *values, count, _previews, model, _history, tool = args
        batch_count(count)
        tool = tool or "fill"
        ctx.runner.request(tool, **fields(*values, model, tool))

    def run(mode, editor, left, top, right, bottom, prompt, reference, steps, guidance, quant, match, width, height,
            seed, randomize, loras_picked=None, loras_uploaded=None, lora_strength=1.0, count=1, previews=True,
            model=None, history=None, filler="fill", progress=gr.Progress()):
        tool = filler or "fill"
        base = fields(mode, editor, left, top, right, bottom, prompt, reference, steps, guidance, quant, match, width,
                      height, seed, randomize, loras_picked, loras_uploaded, lora_strength, model, tool)
        jobs = ctx.runner.batch(tool, base, count, progress, previews)
        yield from panel.stream(jobs, history, lambda outcomes: (outcomes[0].request.seed,), extra=1)

    inputs = [mode, editor, *sides, prompt, reference, *options.inputs(), model, panel.history, filler]
    wire(ctx, panel.button, check, run, inputs, [*panel.outputs(), options.seed], api_name="fill", tool="fill",
         progress_on=panel.progress_on,
         aliases={"image": "editor", "mask": "editor", "expand": "right"})
    remember(ctx, TAB, options, FILLERS[0], tool_choice=filler, model=model, mode=mode, prompt=prompt,
             **{f"expand_{side}": number for side, number in zip(("left", "top", "right", "bottom"), sides)})
    ctx.targets.append(Target(TAB, TITLE, FILLERS, prompt, options, panel, image=editor, editor=True,
                              tool_choice=filler, model=model))
