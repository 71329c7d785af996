"""FLUX.1 Depth and Canny: structure-guided generation with diffusers' FluxControlPipeline."""

from __future__ import annotations

from . import defaults, tiny
from .base import RunContext, Tool, input_image, output_size
from .control_maps import canny_map, depth_map, load_depth_estimator
from .sources import resolve_aux


class Control(Tool):
    def __init__(self, name: str):
        self.name = name

    def pipeline_kwargs(self, request, ctx: RunContext) -> dict:
        image = input_image(request)
        request.width, request.height = output_size(request, image)
        if request.control_image is not None:
            control = request.control_image
        elif self.name == "canny":
            control = canny_map(image, request.canny_low, request.canny_high)
        else:
            path = resolve_aux(ctx.source, defaults.DEPTH_ESTIMATOR_ID, tiny.DEPTH_ESTIMATOR_DIR)
            estimator = ctx.manager.aux(("depth", str(path)), lambda: load_depth_estimator(path, ctx.manager.device))
            control = depth_map(image, estimator)
        control = control.resize((request.width, request.height))
        ctx.extras["control_image"] = control
        return {"prompt": request.prompt, "control_image": control}
