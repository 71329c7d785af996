"""FLUX.1 Canny: generation that follows the edges of a photo (or a ready-made edge map)."""

from __future__ import annotations

from dataclasses import dataclass

from ..control_maps import canny_map
from .base import TinyVariant
from .control import Control


@dataclass(frozen=True)
class Canny(Control):
    def control_map(self, image, request, ctx):
        return canny_map(image, request.canny_low, request.canny_high)


TOOL = Canny(name="canny", title="FLUX.1 Canny", model_id="black-forest-labs/FLUX.1-Canny-dev", steps=28,
             control_lora=("black-forest-labs/FLUX.1-Canny-dev-lora", "flux1-canny-dev-lora.safetensors"),
             guidance=30.0, tiny_steps=8, order=5, tiny=TinyVariant("canny", seed=15, in_channels=128))
