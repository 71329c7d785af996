"""What every tool shares: the run context and the size rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from . import defaults
from .images import fit_size
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
    """Requested size; else the input image's size (scaled down to the tool's default area if larger)."""
    tool = defaults.tool_defaults(request.tool, request.model)
    if image is None or (request.width and request.height):
        return request.width or tool.width, request.height or tool.height
    area = min(image.width * image.height, tool.width * tool.height)
    if request.width:
        area = request.width * request.width * image.height // image.width
    elif request.height:
        area = request.height * request.height * image.width // image.height
    width, height = fit_size(image, area)
    return request.width or width, request.height or height


def input_image(request: GenerationRequest) -> Image.Image:
    return request.image
