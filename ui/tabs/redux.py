"""Redux: variations of an image, optionally steered by a prompt."""

from __future__ import annotations

import gradio as gr

from pipelines import defaults

from ..images import asset
from ..runner import panel_values, pick_seed, user_error
from ..widgets import TabContext, image_input, lora_values, result_panel, settings, size_values, wire

TITLE = "Redux"
MAX_VARIATIONS = 4


def build(ctx: TabContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380):
            image = image_input("image", label="Input image", height=300, elem_id="redux-image")
            prompt = gr.Textbox(label="Prompt (optional)", lines=2, max_lines=6, elem_id="redux-prompt",
                                placeholder="Leave empty for pure variations, or steer them with a few words")
            variations = gr.Slider(1, MAX_VARIATIONS, value=1, step=1, label="Variations",
                                   info="each one uses the next seed", elem_id="redux-variations")
            options = settings(ctx, "redux", from_image=True)
            gr.Examples([[asset("example-boat.png"), ""]], [image, prompt], label="Example")
        with gr.Column(scale=6, min_width=420):
            panel = result_panel("redux", "Make variations")

    def fields(image, prompt, count, steps, guidance, quant, match, width, height, seed, randomize,
               loras_picked, loras_uploaded, lora_strength):
        if image is None:
            raise user_error("Redux makes variations of an image: upload an input image first.", "image")
        if not 1 <= int(count or 0) <= MAX_VARIATIONS:
            raise user_error(f"Variations must be 1..{MAX_VARIATIONS}.", "count")
        width, height = size_values(match, width, height)
        return dict(prompt=prompt or "", quant=quant, image=image, width=width, height=height, steps=steps,
                    guidance=guidance, seed=pick_seed(seed, randomize),
                    loras=lora_values(loras_picked, loras_uploaded, lora_strength))

    def check(*args):
        ctx.runner.request("redux", **fields(*args[:-1]))

    def run(image, prompt, count, steps, guidance, quant, match, width, height, seed, randomize,
            loras_picked=None, loras_uploaded=None, lora_strength=1.0, history=None,
            progress=gr.Progress()):
        base = fields(image, prompt, count, steps, guidance, quant, match, width, height, seed, randomize,
                      loras_picked, loras_uploaded, lora_strength)
        outcomes = []
        for index in range(int(count)):
            seed_i = (base["seed"] + index) % (defaults.SEED_MAX + 1)
            request = ctx.runner.request("redux", **{**base, "seed": seed_i})
            label = f"Variation {index + 1}/{int(count)}" if count > 1 else ""
            outcomes.append(ctx.runner.run(request, progress, label=label, keep=[o.path for o in outcomes]))
        return (*panel_values(outcomes, history), base["seed"])

    inputs = [image, prompt, variations, *options.inputs(), panel.history]
    wire(ctx, panel.button, check, run, inputs, [*panel.outputs(), options.seed], api_name="redux")
