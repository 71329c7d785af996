"""Edit: an image edited with an instruction, by FLUX.1 Kontext (references joined side by side) or FLUX.2 [klein]
(references taken natively)."""

from __future__ import annotations

import re

import gradio as gr

from pipelines import defaults
from pipelines.tools import get_tool

from ..images import asset
from ..models import follow_tool, model_picker
from ..runner import Invalid, batch_count, pick_seed, user_error
from ..links import Target
from ..persist import remember
from ..widgets import (TabContext, image_files_input, image_input, lora_values, result_panel, settings, size_values,
                       wire)

TITLE = "Edit"
TAB = __name__.rpartition(".")[2]  # its id in the studio's tabs
EDITORS = ("kontext", "klein")  # the tab's model choice
MAX_IMAGES = {"kontext": defaults.KONTEXT_MAX_IMAGES, "klein": defaults.KLEIN_MAX_IMAGES}
SHORT = {"kontext": "Kontext", "klein": "klein"}  # as refusals name them


def build(ctx: TabContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=380):
            editor = gr.Radio([(get_tool(name).title, name) for name in EDITORS], value="kontext", label="Edit with",
                              elem_id="kontext-editor",
                              info="FLUX.1 Kontext joins the references side by side into one image; FLUX.2 [klein] "
                                   "takes each natively, in 4 steps.")
            image = image_input("image", label="Input image", height=300, elem_id="kontext-image")
            model = model_picker(ctx, "kontext")
            references = image_files_input(
                "references", label=f"Reference images (optional, up to {defaults.KONTEXT_MAX_IMAGES - 1})",
                height=110, elem_id="kontext-references")
            prompt = gr.Textbox(label="Edit instruction", lines=2, max_lines=6, elem_id="kontext-prompt",
                                placeholder="e.g. make it night time, keep the house unchanged")
            options = settings(ctx, "kontext", from_image=True, tool_choice=editor, model=model)
            gr.Examples([[asset("example-house.png"), "make it a snowy winter night, lights on in the windows"]],
                        [image, prompt], label="Example")
        with gr.Column(scale=6, min_width=420):
            panel = result_panel("kontext", "Edit")

    def switch(tool):
        d = ctx.defaults(tool)
        return d.steps, d.guidance, follow_tool(ctx.runner, tool)

    editor.input(switch, editor, [options.steps, options.guidance, model], queue=False, api_visibility="private",
                  show_progress="hidden")

    def fields(image, prompt, steps, guidance, quant, match, width, height, seed, randomize,
               loras_picked, loras_uploaded, lora_strength, references=None, model=None, tool="kontext"):
        if tool not in EDITORS:
            raise user_error(f"Choose what to edit with: kontext or klein (got {tool!r}).", "editor")
        if image is None:
            raise user_error("Edit changes an image: upload an input image first.", "image")
        if not (prompt or "").strip():
            raise user_error("Write an edit instruction, e.g. 'make it night time'.", "prompt")
        references = [str(getattr(item, "path", None) or item) for item in references or []]
        most = MAX_IMAGES[tool] - 1
        if len(references) > most:
            raise user_error(f"references: {len(references)} files; {SHORT[tool]} takes up to {most} reference "
                             "images: remove some.", "references")
        width, height = size_values(match, width, height)
        return dict(prompt=prompt, quant=quant, image=[image, *references] if references else image, width=width,
                    height=height, steps=steps, guidance=guidance, seed=pick_seed(seed, randomize),
                    loras=lora_values(loras_picked, loras_uploaded, lora_strength), model=model)

    def checked_request(*args):
        try:
            return ctx.runner.request(args[-1], **fields(*args))
        except Invalid as error:  # about image_2, image_3...: the reference images
            if re.match(r"image_\d", error.message):
                error.field = "references"
            raise

    def check(*args):
        *values, count, _previews, references, model, _history, tool = args
        batch_count(count)
        checked_request(*values, references, model, tool or "kontext")

    def run(image, prompt, steps, guidance, quant, match, width, height, seed, randomize,
            loras_picked=None, loras_uploaded=None, lora_strength=1.0, count=1, previews=True, references=None,
            model=None, history=None, editor="kontext", progress=gr.Progress()):
        tool = editor or "kontext"
        base = fields(image, prompt, steps, guidance, quant, match, width, height, seed, randomize,
                      loras_picked, loras_uploaded, lora_strength, references, model, tool)
        jobs = ctx.runner.batch(tool, base, count, progress, previews)
        yield from panel.stream(jobs, history, lambda outcomes: (outcomes[0].request.seed,), extra=1)

    inputs = [image, prompt, *options.inputs(), references, model, panel.history, editor]
    wire(ctx, panel.button, check, run, inputs, [*panel.outputs(), options.seed], api_name="kontext", tool="kontext",
         progress_on=panel.progress_on)
    remember(ctx, TAB, options, EDITORS[0], tool_choice=editor, model=model, prompt=prompt)
    ctx.targets.append(Target(TAB, TITLE, ("kontext",), prompt, options, panel, image=image))
