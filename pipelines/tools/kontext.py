"""FLUX.1 Kontext: instruction editing of an input image with diffusers' FluxKontextPipeline."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Prepared, RunContext, TinyVariant, Tool


@dataclass(frozen=True)
class Kontext(Tool):
    def prepare(self, request, ctx: RunContext) -> Prepared:
        width, height = self.output_size(request, request.image)
        kwargs = {"prompt": request.prompt, "image": request.image.resize((width, height)), "max_area": width * height,
                  "_auto_resize": False}
        return Prepared(kwargs, width, height)


TOOL = Kontext(name="kontext", title="FLUX.1 Kontext", pipeline_class="FluxKontextPipeline",
               model_id="black-forest-labs/FLUX.1-Kontext-dev", steps=28, guidance=2.5, tiny_steps=8, order=3,
               inputs=frozenset({"image"}), needs_image=True, tiny=TinyVariant("kontext", seed=13))
