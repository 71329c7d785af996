"""What every tool shares: the run context and the size rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from . import defaults
from .images import fit_size, load_image
from .manager import LoadedPipeline, ModelManager
from .request import GenerationRequest
from .sources import Source


@dataclass
class RunContext:
    manager: ModelManager
    source: Source
    loaded: LoadedPipeline
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. the computed control map


class Tool:
    """One FLUX.1 tool: turns a checked request into diffusers pipeline arguments."""

    name = ""

    def pipeline_kwargs(self, request: GenerationRequest, ctx: RunContext) -> dict:
        raise NotImplementedError


def output_size(request: GenerationRequest, image: Image.Image | None) -> tuple[int, int]:
    """Requested size, else the input image's aspect at the tool's default area."""
    tool = defaults.tool_defaults(request.tool, request.model)
    if image is None or (request.width and request.height):
        return request.width or tool.width, request.height or tool.height
    width, height = fit_size(image, tool.width * tool.height)
    if request.width:
        height = fit_size(image, request.width * request.width * image.height // image.width)[1]
        width = request.width
    elif request.height:
        width = fit_size(image, request.height * request.height * image.width // image.height)[0]
        height = request.height
    return width, height


def input_image(request: GenerationRequest) -> Image.Image:
    return load_image(request.image, "image")
