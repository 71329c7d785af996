"""Generate: text to image with FLUX.1 [schnell] or [dev] or FLUX.2 [klein], or image to image with an input
image."""

from __future__ import annotations

import gradio as gr

from pipelines import defaults
from pipelines.hires import SCALE_MAX, SCALE_MIN
from pipelines.tools import get_tool
from pipelines.upscalers import LANCZOS, upscaler_choices

from ..models import follow_tool, model_picker
from ..runner import batch_count, hires_fields, pick_seed, user_error
from ..links import Target
from ..persist import remember
from ..widgets import TabContext, image_input, lora_values, result_panel, settings, wire

TITLE = "Generate"
TAB = __name__.rpartition(".")[2]  # its id in the studio's tabs
VARIANTS = ("schnell", "dev", "klein")
EXAMPLES = [
    "a lighthouse on a cliff at dusk, warm light in the windows, long exposure sea",
    "studio photo of a ceramic teapot shaped like a snail, soft shadows",
    "isometric pixel-art city block at night with neon signs",
]


def build(ctx: TabContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380):
            variant = gr.Radio([(get_tool(v).title, v) for v in VARIANTS], value="schnell", label="Variant",
                               elem_id="generate-variant",
                               info="schnell: 4 steps, no guidance. dev: more steps, follows the prompt closer. "
                                    "klein: FLUX.2, 4 steps, a Qwen3 text encoder (4B by default; 9B in Model).")
            model = model_picker(ctx, "schnell")
            prompt = gr.Textbox(label="Prompt", lines=3, max_lines=8, elem_id="generate-prompt",
                                placeholder="Describe the image…")
            with gr.Accordion("Image to image (optional)", open=False, elem_id="generate-i2i") as i2i:
                image = image_input("image", label="Input image", height=200, elem_id="generate-image")
                strength = gr.Slider(0.01, 1.0, value=defaults.STRENGTH, step=0.01, label="Strength",
                                     info="how much of the input image is repainted (1: all of it)",
                                     elem_id="generate-strength")
            with gr.Accordion("Hires fix (optional)", open=False, elem_id="generate-hires"):
                hires_scale = gr.Slider(SCALE_MIN, SCALE_MAX, value=SCALE_MIN, step=0.05, label="Hires scale",
                                        info="1: off. Over 1: generate at the size, upscale by this, then refine at "
                                             "the larger size (text to image: schnell and dev)",
                                        elem_id="generate-hires-scale")
                with gr.Row():
                    hires_strength = gr.Slider(0.01, 1.0, value=defaults.HIRES_STRENGTH, step=0.01,
                                               label="Hires strength", info="how much the refining pass repaints",
                                               elem_id="generate-hires-strength")
                    hires_steps = gr.Slider(0, defaults.STEPS_MAX, value=0, step=1, label="Hires steps",
                                            info="the refining pass's steps (0: as Steps)",
                                            elem_id="generate-hires-steps")
                hires_upscaler = gr.Dropdown(upscaler_choices(), value=LANCZOS, label="Upscaler",
                                             allow_custom_value=True, interactive=True, filterable=False,
                                             info="Lanczos, or a super-resolution model file in the upscaler folder "
                                                  "(FLUXFORGE_UPSCALER_DIR; needs spandrel)",
                                             elem_id="generate-hires-upscaler")
            hires_upscaler.focus(lambda: gr.update(choices=upscaler_choices()), None, hires_upscaler, queue=False,
                                 api_visibility="private", show_progress="hidden")  # files added since the start
            options = settings(ctx, "schnell", tool_choice=variant, model=model,
                               hires=[hires_scale, hires_upscaler])
            gr.Examples([[p] for p in EXAMPLES], [prompt], label="Example prompts")
        with gr.Column(scale=6, min_width=420):
            panel = result_panel("generate", "Generate")

    def switch(tool):
        d = ctx.defaults(tool)
        return d.steps, d.guidance, d.width, d.height, follow_tool(ctx.runner, tool)

    variant.input(switch, variant, [options.steps, options.guidance, options.width, options.height, model],
                   queue=False, api_visibility="private", show_progress="hidden")

    def fields(tool, prompt, steps, guidance, quant, width, height, seed, randomize, loras_picked, loras_uploaded,
               lora_strength, model=None, image=None, strength=None, hires_scale=None, hires_strength=None,
               hires_steps=None, hires_upscaler=None):
        if tool not in VARIANTS:
            raise user_error(f"Choose a variant: schnell, dev or klein (got {tool!r}).", "tool")
        if not (prompt or "").strip():
            raise user_error("Write a prompt first: describe the image you want.", "prompt")
        return dict(prompt=prompt, quant=quant, width=width, height=height, steps=steps, guidance=guidance,
                    seed=pick_seed(seed, randomize), loras=lora_values(loras_picked, loras_uploaded, lora_strength),
                    model=model, image=image or None, strength=strength if image else None,
                    **hires_fields(hires_scale, hires_strength, hires_steps, hires_upscaler))

    def check(tool, prompt, steps, guidance, quant, width, height, seed, randomize,
              loras_picked, loras_uploaded, lora_strength, count, previews, model, image, strength, hires_scale,
              hires_strength, hires_steps, hires_upscaler, history):
        batch_count(count)
        ctx.runner.request(tool, **fields(tool, prompt, steps, guidance, quant, width, height, seed, randomize,
                                          loras_picked, loras_uploaded, lora_strength, model, image, strength,
                                          hires_scale, hires_strength, hires_steps, hires_upscaler))

    def run(tool, prompt, steps, guidance, quant, width, height, seed, randomize,
            loras_picked=None, loras_uploaded=None, lora_strength=1.0, count=1, previews=True, model=None,
            image=None, strength=defaults.STRENGTH, hires_scale=SCALE_MIN, hires_strength=defaults.HIRES_STRENGTH,
            hires_steps=0, hires_upscaler=LANCZOS, history=None, progress=gr.Progress()):
        base = fields(tool, prompt, steps, guidance, quant, width, height, seed, randomize,
                      loras_picked, loras_uploaded, lora_strength, model, image, strength, hires_scale,
                      hires_strength, hires_steps, hires_upscaler)
        jobs = ctx.runner.batch(tool, base, count, progress, previews)
        yield from panel.stream(jobs, history, lambda outcomes: (outcomes[0].request.seed,), extra=1)

    inputs = [variant, prompt, *options.inputs(), model, image, strength, hires_scale, hires_strength, hires_steps,
              hires_upscaler, panel.history]
    wire(ctx, panel.button, check, run, inputs, [*panel.outputs(), options.seed], api_name="generate",
         progress_on=panel.progress_on)
    remember(ctx, TAB, options, VARIANTS[0], tool_choice=variant, model=model, prompt=prompt, strength=strength)
    ctx.targets.append(Target(TAB, "image-to-image", VARIANTS, prompt, options, panel, image=image,
                              tool_choice=variant, model=model, holder=i2i))
