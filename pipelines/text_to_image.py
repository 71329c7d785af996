"""FLUX.1 schnell and dev: text to image with diffusers' FluxPipeline."""

from __future__ import annotations

from .base import RunContext, Tool, output_size


class TextToImage(Tool):
    def __init__(self, name: str):
        self.name = name

    def pipeline_kwargs(self, request, ctx: RunContext) -> dict:
        request.width, request.height = output_size(request, None)
        return {"prompt": request.prompt}
