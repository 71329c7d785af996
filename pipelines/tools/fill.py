"""FLUX.1 Fill: inpainting with a mask, outpainting by growing the canvas, optionally steered by a reference image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import defaults
from ..errors import UserError
from ..images import grow_canvas
from .base import Prepared, RunContext, TinyVariant, Tool
from .redux import TINY_PRIOR, build_tiny_prior, redux_embeddings


def parse_expand(value) -> tuple[int, int, int, int] | None:
    """'L,T,R,B' pixels to grow the canvas by (outpainting)."""
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        numbers = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != 4 or any(n < 0 or n > defaults.EXPAND_MAX for n in numbers) or not any(numbers):
        raise UserError(f"expand={value!r} must be four whole numbers L,T,R,B in 0..{defaults.EXPAND_MAX}, "
                        "not all zero (e.g. 0,0,256,0).")
    return numbers


@dataclass(frozen=True)
class Fill(Tool):
    def check_inputs(self, request) -> None:
        request.expand = parse_expand(request.expand)
        if request.mask is None and request.expand is None:
            raise UserError("the fill tool needs a mask (--mask) to inpaint, or --expand L,T,R,B to outpaint.")
        if request.mask is not None and request.expand is not None:
            raise UserError("give either --mask (inpaint) or --expand (outpaint), not both.")
        if request.expand:
            width = request.image.width + request.expand[0] + request.expand[2]
            height = request.image.height + request.expand[1] + request.expand[3]
            if max(width, height) > defaults.SIZE_MAX:
                raise UserError(f"expand={','.join(map(str, request.expand))} makes a {width}x{height} canvas; "
                                f"the limit is {defaults.SIZE_MAX} per side.")

    def uses_text_encoders(self, request) -> bool:
        return request.reference is not None  # the Redux prior encodes the prompt

    def prepare(self, request, ctx: RunContext) -> Prepared:
        image, mask = request.image, request.mask
        if request.expand:
            image, mask = grow_canvas(image, request.expand)
        if request.expand and request.width is None and request.height is None:
            step = defaults.SIZE_STEP  # outpainting keeps the canvas at its own scale
            width = max(defaults.SIZE_MIN, round(image.width / step) * step)
            height = max(defaults.SIZE_MIN, round(image.height / step) * step)
        else:
            width, height = self.output_size(request, image)
        kwargs = {"image": image.resize((width, height)), "mask_image": mask.resize((width, height))}
        if request.reference is not None:
            kwargs.update(redux_embeddings(ctx, request.reference, request.prompt))
        else:
            kwargs["prompt"] = request.prompt
        return Prepared(kwargs, width, height)

    def tiny_folders(self) -> tuple[str, ...]:
        return (self.tiny.folder, TINY_PRIOR)

    def build_tiny(self, root: Path, shared: dict) -> None:
        super().build_tiny(root, shared)
        build_tiny_prior(root / TINY_PRIOR)


TOOL = Fill(name="fill", title="FLUX.1 Fill", pipeline_class="FluxFillPipeline",
            model_id="black-forest-labs/FLUX.1-Fill-dev", steps=28, guidance=30.0, tiny_steps=8, order=2,
            inputs=frozenset({"image", "mask", "reference", "expand"}), needs_image=True,
            tiny=TinyVariant("fill", seed=12, in_channels=384))
