"""FLUX.1 Kontext: instruction editing of an input image with diffusers' FluxKontextPipeline.

Several images (the image to edit, then references) are joined side by side into one conditioning image:
diffusers' FluxKontextPipeline encodes one conditioning image (a list is taken as a batch, not as references).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import defaults
from ..errors import UserError
from ..images import image_name, side_by_side, side_by_side_layout
from .base import Prepared, RunContext, TinyVariant, Tool

JOINED = ("FluxKontextPipeline takes one conditioning image, so the images are joined side by side, first to last, "
          "at one height")


@dataclass(frozen=True)
class Kontext(Tool):
    def conditioning_area(self, request) -> int:
        """The most pixels of the joined conditioning image: Kontext's preferred area (1024x1024)."""
        d = self.defaults(request.model)
        return d.width * d.height

    def check_inputs(self, request) -> None:
        if len(request.images) < 2:
            return
        try:
            side_by_side_layout([image.size for image in request.images], self.conditioning_area(request))
        except ValueError:
            sizes = ", ".join(f"{image_name(i)} {image.width}x{image.height}" for i, image in enumerate(request.images))
            raise UserError(f"image: {sizes} are too wide to join side by side in one conditioning image; crop the "
                            "widest.") from None

    def condition_pixels(self, width: int, height: int, request=None) -> int:
        """The conditioning image's pixels: one image at the output size, or the joined row of several."""
        if request is None or len(request.images) < 2:
            return width * height
        row_height, widths = side_by_side_layout([image.size for image in request.images],
                                                 self.conditioning_area(request))
        return row_height * sum(widths)

    def prepare(self, request, ctx: RunContext) -> Prepared:
        width, height = self.output_size(request, request.image)
        if len(request.images) < 2:
            kwargs = {"prompt": request.prompt, "image": request.image.resize((width, height)),
                      "max_area": width * height, "_auto_resize": False}
            return Prepared(kwargs, width, height)
        joined = side_by_side(request.images, self.conditioning_area(request))
        kwargs = {"prompt": request.prompt, "image": joined, "max_area": width * height, "_auto_resize": False}
        names = [image_name(i) for i in range(len(request.images))]
        details = {"conditioning": {"method": "concatenated", "inputs": names, "size": [joined.width, joined.height],
                                    "why": JOINED}}
        return Prepared(kwargs, width, height, details=details)


TOOL = Kontext(name="kontext", title="FLUX.1 Kontext", pipeline_class="FluxKontextPipeline",
               model_id="black-forest-labs/FLUX.1-Kontext-dev", steps=28, guidance=2.5, tiny_steps=8, order=3,
               inputs=frozenset({"image"}), needs_image=True, max_images=defaults.KONTEXT_MAX_IMAGES,
               tiny=TinyVariant("kontext", seed=13))
