"""PNG info: a PNG's generation parameters (ours, A1111's, Forge's, ComfyUI's, InvokeAI's), restored in one click
into the tab that made it."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..links import info_html, restore_outputs, restore_values
from ..widgets import TabContext

TITLE = "PNG info"


def read_info(image) -> dict:
    """The parameters of the PNG ``image`` (an upload's path) as pipelines.pnginfo.PngInfo.to_dict; a file that is
    not an image we read: a gr.Error of one line."""
    from pipelines.errors import UserError
    from pipelines.pnginfo import read_png_info

    path = getattr(image, "path", None) or image
    if not path:
        raise gr.Error("image: drop a PNG here to read its parameters.")
    try:
        return read_png_info(str(path), shown=Path(str(path)).name).to_dict()
    except UserError as error:
        raise gr.Error(str(error)) from None


def build(ctx: TabContext, tabs: gr.Tabs) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=320):
            upload = gr.File(label="PNG (ours, A1111, Forge, ComfyUI or InvokeAI)", file_types=["image"],
                             type="filepath", height=140, elem_id="pnginfo-file")
            restore = gr.Button("Restore into its tab", variant="primary", interactive=False,
                                elem_id="pnginfo-restore")
        with gr.Column(scale=6, min_width=420):
            shown = gr.HTML("<div class='ff-status ff-muted'>Drop a PNG to see how it was made.</div>",
                            elem_id="pnginfo-fields")
            data = gr.JSON(label="As read", visible=False, elem_id="pnginfo-json")
    state = gr.State({})

    def show(image):
        if not image:
            return "", gr.update(value=None, visible=False), {}, gr.update(interactive=False)
        try:
            info = read_info(image)
        except gr.Error as error:
            return (f"<div class='ff-warning' id='pnginfo-error'>{error.message}</div>",
                    gr.update(value=None, visible=False), {}, gr.update(interactive=False))
        return info_html(info), gr.update(value=info, visible=True), info, gr.update(
            interactive=bool(info.get("restore")))

    upload.change(show, upload, [shown, data, state, restore], queue=False, api_visibility="private")

    def apply(info):
        values, tab, notes = restore_values(ctx.targets, info or {}, ctx.quants, ctx.runner)
        if tab is None:
            gr.Warning("Nothing to restore from this image.")
            return gr.skip(), gr.skip(), *values
        return info_html(info, notes), gr.Tabs(selected=tab), *values

    restore.click(apply, state, [shown, tabs, *restore_outputs(ctx.targets)], queue=False, api_visibility="private",
                  show_progress="hidden")
    # The API: the same reading, for any client (python app.py info is the CLI's)
    api_file = gr.File(visible=False, type="filepath")
    api_out = gr.JSON(visible=False)
    gr.Button(visible=False).click(read_info, api_file, api_out, api_name="png_info", api_visibility=ctx.visibility,
                                   queue=False)
