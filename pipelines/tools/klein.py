"""FLUX.2 [klein]: text to image, and editing with up to four reference images, with diffusers' Flux2KleinPipeline.

One step-distilled checkpoint does both: with no image it draws from the prompt; with images it edits, each image a
reference that joins the transformer's sequence as it is (its own position ids: no side-by-side stitching). Four
steps; the distilled model takes no classifier-free guidance (guidance 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import defaults
from ..images import fit_size, image_name
from .base import Prepared, RunContext, TinyVariant, Tool

NATIVE = ("Flux2KleinPipeline takes every reference image natively: each is encoded on its own and joins the "
          "transformer's sequence with its own position ids")


@dataclass(frozen=True)
class Klein(Tool):
    distilled: bool = True  # step-distilled (no classifier-free guidance); klein's base models are not

    def reference_size(self, request, image) -> tuple[int, int]:
        """A reference's size as it is encoded: as it is, or scaled down to the tool's default area (klein's 1024x1024;
        the pipeline itself takes at most that), in multiples of the pipeline's 16 pixels."""
        d = self.defaults(request.model)
        area = min(image.width * image.height, d.width * d.height)
        return fit_size(image, area)

    def condition_pixels(self, width: int, height: int, request=None) -> int:
        """The reference images' pixels: every one joins the transformer's sequence."""
        if request is None:
            return 0
        return sum(w * h for w, h in (self.reference_size(request, image) for image in request.images))

    def prepare(self, request, ctx: RunContext) -> Prepared:
        width, height = self.output_size(request, request.image)
        kwargs = {"prompt": request.prompt}
        if not request.images:
            return Prepared(kwargs, width, height)
        references = [image.resize(self.reference_size(request, image)) if image.size != self.reference_size(
            request, image) else image for image in request.images]
        kwargs["image"] = references
        details = {"conditioning": {"method": "references", "inputs": [image_name(i) for i in range(len(references))],
                                    "sizes": [list(image.size) for image in references], "why": NATIVE}}
        return Prepared(kwargs, width, height, details=details)

    def build_tiny(self, root: Path, shared: dict) -> None:
        import diffusers

        from ..models.tiny import tiny_klein_transformer

        transformer = tiny_klein_transformer(self.tiny.seed)
        getattr(diffusers, self.pipeline_class)(transformer=transformer, is_distilled=self.distilled,
                                                **shared).save_pretrained(root / self.tiny.folder)


TOOL = Klein(name="klein", title="FLUX.2 [klein]", pipeline_class="Flux2KleinPipeline",
             model_id="black-forest-labs/FLUX.2-klein-4B", variants=("black-forest-labs/FLUX.2-klein-9B",), steps=4, guidance=1.0, tiny_steps=4, order=7,
             inputs=frozenset({"image"}), max_images=defaults.KLEIN_MAX_IMAGES,
             tiny=TinyVariant("klein", seed=30, in_channels=128, guidance=False))
