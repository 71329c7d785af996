"""Text to image with diffusers' FluxPipeline (what schnell and dev share)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Prepared, RunContext, Tool


@dataclass(frozen=True)
class TextToImage(Tool):
    pipeline_class: str = "FluxPipeline"

    def prepare(self, request, ctx: RunContext) -> Prepared:
        width, height = self.output_size(request, None)
        return Prepared({"prompt": request.prompt}, width, height)
