"""Redux: variations of an image, optionally steered by a prompt."""

from __future__ import annotations

import gradio as gr

from ..images import asset
from ..models import model_picker
from ..runner import batch_count, pick_seed, user_error
from ..links import Target
from ..persist import remember
from ..widgets import TabContext, image_input, lora_values, result_panel, settings, size_values, wire

TITLE = "Redux"
TAB = __name__.rpartition(".")[2]  # its id in the studio's tabs


def build(ctx: TabContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380):
            image = image_input("image", label="Input image", height=300, elem_id="redux-image")
            model = model_picker(ctx, "redux")
            prompt = gr.Textbox(label="Prompt (optional)", lines=2, max_lines=6, elem_id="redux-prompt",
                                placeholder="Leave empty for pure variations, or steer them with a few words")
            options = settings(ctx, "redux", from_image=True, model=model)
            gr.Examples([[asset("example-boat.png"), ""]], [image, prompt], label="Example")
        with gr.Column(scale=6, min_width=420):
            panel = result_panel("redux", "Make variations")

    def fields(image, prompt, steps, guidance, quant, match, width, height, seed, randomize,
               loras_picked, loras_uploaded, lora_strength, model=None):
        if image is None:
            raise user_error("Redux makes variations of an image: upload an input image first.", "image")
        width, height = size_values(match, width, height)
        return dict(prompt=prompt or "", quant=quant, image=image, width=width, height=height, steps=steps,
                    guidance=guidance, seed=pick_seed(seed, randomize),
                    loras=lora_values(loras_picked, loras_uploaded, lora_strength), model=model)

    def check(*args):
        *values, count, _previews, model, _history = args
        batch_count(count)
        ctx.runner.request("redux", **fields(*values, model))

    def run(image, prompt, steps, guidance, quant, match, width, height, seed, randomize,
            loras_picked=None, loras_uploaded=None, lora_strength=1.0, count=1, previews=True, model=None,
            history=None, progress=gr.Progress()):
        base = fields(image, prompt, steps, guidance, quant, match, width, height, seed, randomize,
                      loras_picked, loras_uploaded, lora_strength, model)
        jobs = ctx.runner.batch("redux", base, count, progress, previews)
        yield from panel.stream(jobs, history, lambda outcomes: (outcomes[0].request.seed,), extra=1)

    inputs = [image, prompt, *options.inputs(), model, panel.history]
    wire(ctx, panel.button, check, run, inputs, [*panel.outputs(), options.seed], api_name="redux", tool="redux",
         progress_on=panel.progress_on)
    remember(ctx, TAB, options, "redux", model=model, prompt=prompt)
    ctx.targets.append(Target(TAB, TITLE, ("redux",), prompt, options, panel, image=image))
