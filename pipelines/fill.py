"""FLUX.1 Fill: inpainting with a mask, outpainting by growing the canvas, optional Redux reference."""

from __future__ import annotations

from . import defaults
from .base import RunContext, Tool, output_size
from .images import grow_canvas
from .redux import redux_embeddings


class Fill(Tool):
    name = "fill"

    def pipeline_kwargs(self, request, ctx: RunContext) -> dict:
        image, mask = request.image, request.mask
        if request.expand:
            image, mask = grow_canvas(image, request.expand)
        if request.expand and request.width is None and request.height is None:
            # Outpainting keeps the canvas at its own scale.
            step = defaults.SIZE_STEP
            request.width = max(defaults.SIZE_MIN, round(image.width / step) * step)
            request.height = max(defaults.SIZE_MIN, round(image.height / step) * step)
        else:
            request.width, request.height = output_size(request, image)
        size = (request.width, request.height)
        ctx.extras["canvas"] = image
        kwargs = {"image": image.resize(size), "mask_image": mask.resize(size)}
        if request.reference is not None:
            kwargs.update(redux_embeddings(ctx, request.reference, request.prompt))
        else:
            kwargs["prompt"] = request.prompt
        return kwargs
