"""FLUX.1 Fill: inpainting with a mask, outpainting by growing the canvas, optional Redux reference."""

from __future__ import annotations

from . import defaults
from .base import RunContext, Tool, input_image, output_size
from .errors import UserError
from .images import binarize, grow_canvas, load_image
from .redux import redux_embeddings


class Fill(Tool):
    name = "fill"

    def pipeline_kwargs(self, request, ctx: RunContext) -> dict:
        image = input_image(request)
        if request.expand:
            image, mask = grow_canvas(image, request.expand)
            if max(image.size) > defaults.SIZE_MAX:
                raise UserError(f"expand={','.join(map(str, request.expand))} makes a {image.width}x{image.height} "
                                f"canvas; the limit is {defaults.SIZE_MAX} per side.")
        else:
            mask = load_image(request.mask, "mask", mode="L")
            if mask.size != image.size:
                raise UserError(f"mask is {mask.width}x{mask.height} but image is {image.width}x{image.height}; "
                                "they must be the same size.")
            mask = binarize(mask)
            if mask.getextrema()[1] == 0:
                raise UserError("mask is empty: paint the area to fill in white.")
        if request.width is None and request.height is None:
            request.width, request.height = output_size(request, image)
            if request.expand:  # outpainting keeps the canvas scale where it fits
                request.width = min(defaults.SIZE_MAX, round(image.width / 16) * 16)
                request.height = min(defaults.SIZE_MAX, round(image.height / 16) * 16)
        else:
            request.width, request.height = output_size(request, image)
        size = (request.width, request.height)
        ctx.extras["canvas"] = image
        kwargs = {"image": image.resize(size), "mask_image": mask.resize(size)}
        if request.reference is not None:
            reference = load_image(request.reference, "reference")
            kwargs.update(redux_embeddings(ctx, reference, request.prompt))
        else:
            kwargs["prompt"] = request.prompt
        return kwargs
