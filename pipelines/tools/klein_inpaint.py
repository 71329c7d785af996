"""FLUX.2 [klein] inpainting: a masked region of an image redrawn from the prompt, with diffusers'
Flux2KleinInpaintPipeline over a klein base model (not step-distilled: classifier-free guidance, more steps).

The model directory is a klein model (Flux2KleinPipeline); the inpaint pipeline runs over its components, so a klein
base model loaded for another use is not loaded again. An optional reference image steers the fill; it joins the
transformer's sequence as klein's references do.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .base import Prepared, RunContext, TinyVariant
from .klein import Klein


@dataclass(frozen=True)
class KleinInpaint(Klein):
    def check_inputs(self, request) -> None:
        if request.mask is None:
            raise UserError(f"the {self.name} tool needs a mask (--mask): white where the image is redrawn.")

    def condition_pixels(self, width: int, height: int, request=None) -> int:
        """The image being inpainted joins the sequence (encoded at the output size), and the reference if given."""
        extra = 0
        if request is not None and request.reference is not None:
            extra = self.reference_size(request, request.reference)
            extra = extra[0] * extra[1]
        return width * height + extra

    def prepare(self, request, ctx: RunContext) -> Prepared:
        width, height = self.output_size(request, request.image)
        kwargs = {"prompt": request.prompt, "image": request.image.resize((width, height)),
                  "mask_image": request.mask.resize((width, height)), "strength": 1.0}
        if request.reference is not None:
            size = self.reference_size(request, request.reference)
            kwargs["image_reference"] = request.reference.resize(size)
        return Prepared(kwargs, width, height)


TOOL = KleinInpaint(name="klein_inpaint", title="FLUX.2 [klein] Inpaint", pipeline_class="Flux2KleinPipeline",
                    view_class="Flux2KleinInpaintPipeline", model_id="black-forest-labs/FLUX.2-klein-base-4B",
                    variants=("black-forest-labs/FLUX.2-klein-base-9B",),
                    steps=50, guidance=4.0, tiny_steps=4, order=8, distilled=False,
                    inputs=frozenset({"image", "mask", "reference"}), needs_image=True,
                    tiny=TinyVariant("klein-base", seed=31, in_channels=128, guidance=False))
