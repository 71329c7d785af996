"""Fill: inpaint with a brush-drawn mask, or outpaint by growing the canvas; optional Redux reference."""

from __future__ import annotations

import gradio as gr

from pipelines import defaults
from pipelines.errors import UserError

from ..images import asset, editor_image, readable, editor_mask, expand_values
from ..models import model_picker
from ..runner import batch_count, pick_seed, user_error
from ..links import Target
from ..widgets import TabContext, image_input, lora_values, result_panel, settings, size_values, wire

TITLE = "Fill"
INPAINT, OUTPAINT = "inpaint", "outpaint"
TAB = __name__.rpartition(".")[2]  # its id in the studio's tabs


def build(ctx: TabContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380):
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
            with gr.Accordion("Reference image (optional, Redux-steered fill)", open=False):
                reference = image_input("reference", label="Reference", height=160, elem_id="fill-reference")
            options = settings(ctx, "fill", from_image=True, model=model)
            gr.Examples([[asset("example-room.png"), "a potted plant on the table"]], [editor, prompt],
                        label="Example")
        with gr.Column(scale=6, min_width=420):
            panel = result_panel("fill", "Fill")

    mode.change(lambda m: gr.update(visible=m == OUTPAINT), mode, grow, queue=False, api_visibility="private",
                show_progress="hidden")

    def fields(mode, editor, left, top, right, bottom, prompt, reference, steps, guidance, quant, match, width,
               height, seed, randomize, loras_picked, loras_uploaded, lora_strength, model=None):
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
        return dict(prompt=prompt or "", quant=quant, image=image, mask=mask, expand=expand, reference=reference,
                    width=width, height=height, steps=steps, guidance=guidance, seed=pick_seed(seed, randomize),
                    loras=lora_values(loras_picked, loras_uploaded, lora_strength), model=model)

    def check(*args):
        *values, count, _previews, model, _history = args
        batch_count(count)
        ctx.runner.request("fill", **fields(*values, model))

    def run(mode, editor, left, top, right, bottom, prompt, reference, steps, guidance, quant, match, width, height,
            seed, randomize, loras_picked=None, loras_uploaded=None, lora_strength=1.0, count=1, previews=True,
            model=None, history=None, progress=gr.Progress()):
        base = fields(mode, editor, left, top, right, bottom, prompt, reference, steps, guidance, quant, match, width,
                      height, seed, randomize, loras_picked, loras_uploaded, lora_strength, model)
        jobs = ctx.runner.batch("fill", base, count, progress, previews)
        yield from panel.stream(jobs, history, lambda outcomes: (outcomes[0].request.seed,), extra=1)

    inputs = [mode, editor, *sides, prompt, reference, *options.inputs(), model, panel.history]
    wire(ctx, panel.button, check, run, inputs, [*panel.outputs(), options.seed], api_name="fill", tool="fill",
         progress_on=panel.progress_on,
         aliases={"image": "editor", "mask": "editor", "expand": "right"})
    ctx.targets.append(Target(TAB, TITLE, ("fill",), prompt, options, panel, image=editor, editor=True))
