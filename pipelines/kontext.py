"""FLUX.1 Kontext: instruction editing of an input image with diffusers' FluxKontextPipeline."""

from __future__ import annotations

from .base import RunContext, Tool, input_image, output_size


class Kontext(Tool):
    name = "kontext"

    def pipeline_kwargs(self, request, ctx: RunContext) -> dict:
        image = input_image(request)
        request.width, request.height = output_size(request, image)
        size = (request.width, request.height)
        return {"prompt": request.prompt, "image": image.resize(size), "max_area": size[0] * size[1],
                "_auto_resize": False}
