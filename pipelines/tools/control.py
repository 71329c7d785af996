"""Structure-guided generation with diffusers' FluxControlPipeline (what Depth and Canny share)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from .base import Prepared, RunContext, Tool
from .dev import TOOL as DEV


@dataclass(frozen=True)
class Control(Tool):
    """``control_lora``: the official control LoRA (hub id, file) that runs this tool on the Dev model instead."""

    pipeline_class: str = "FluxControlPipeline"
    control_lora: tuple[str, str] | None = None
    inputs: frozenset = frozenset({"image", "control_image"})
    needs_image: bool = True

    def lora_base(self) -> Tool:
        """The tool whose model the control LoRA runs on (FLUX.1-dev)."""
        return DEV

    def control_map(self, image: Image.Image, request, ctx: RunContext) -> Image.Image:
        """The control map computed from ``image``."""
        raise NotImplementedError

    def prepare(self, request, ctx: RunContext) -> Prepared:
        width, height = self.output_size(request, request.image)
        control = request.control_image
        if control is None:
            control = self.control_map(request.image, request, ctx)
        control = control.resize((width, height))
        return Prepared({"prompt": request.prompt, "control_image": control}, width, height, control)
