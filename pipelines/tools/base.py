"""What every tool declares, and the rules they share (output size, inputs a tool does not take)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .. import defaults
from ..errors import UserError
from ..images import fit_size

# Request fields that only some tools take: field -> how the CLI spells it.
OPTIONAL_INPUTS = {"image": "--image", "mask": "--mask", "reference": "--reference",
                   "control_image": "--control-image", "expand": "--expand"}


@dataclass(frozen=True)
class TinyVariant:
    """How the offline `tiny` family builds this tool's model: a folder and its random transformer."""

    folder: str
    seed: int
    in_channels: int = 64
    guidance: bool = True

    def __post_init__(self):
        if not re.fullmatch(r"[a-z0-9-]+", self.folder):
            raise ValueError(f"TinyVariant: folder={self.folder!r} must be a plain lower-case name.")
        if self.in_channels % 64:
            raise ValueError(f"TinyVariant: in_channels={self.in_channels} must be a multiple of 64.")


@dataclass(frozen=True)
class Defaults:
    steps: int
    guidance: float
    width: int
    height: int
    max_sequence_length: int


@dataclass(frozen=True)
class Prepared:
    """What a tool hands the pipeline: its arguments and the output size (the request is left as it was)."""

    kwargs: dict
    width: int
    height: int
    control_image: Image.Image | None = None  # the control map used, to show beside the result
    details: dict = field(default_factory=dict)  # what the report adds about how the inputs were used
    pipe: Any = None  # a pipeline sharing the loaded one's components that runs instead (image-to-image)
    steps_run: int | None = None  # denoising steps it runs, when not all of the request's (image-to-image)


@dataclass
class RunContext:
    """What a tool may use while preparing a run: the model manager, the model source and its pipeline."""

    manager: Any  # pipelines.manager.ModelManager
    source: Any  # pipelines.models.sources.ModelSource
    pipe: Any = None  # the loaded diffusers pipeline (None for a control-map preview)
    progress: Any = None  # the run's progress callback: auxiliary models it downloads report through it


@dataclass(frozen=True, kw_only=True)
class Tool:
    """One tool (FLUX.1 or FLUX.2). Subclasses override `prepare` (and `check_inputs` for rules of their own)."""

    name: str
    title: str  # as the studio shows it
    pipeline_class: str  # diffusers pipeline class of its model directory
    model_id: str  # default hub id
    steps: int
    guidance: float
    tiny_steps: int
    tiny: TinyVariant
    order: int  # position in lists (CLI help, the studio)
    width: int = 1024
    height: int = 1024
    max_sequence_length: int = 512
    needs_prompt: bool = True
    inputs: frozenset = field(default_factory=frozenset)  # OPTIONAL_INPUTS it takes
    needs_image: bool = False
    max_images: int = 1  # how many images `image` may hold (a list when more than one)
    aux_models: tuple = ()  # hub ids of auxiliary models it loads beside its model (Redux prior, depth estimator)
    takes_strength: bool = False  # an input image is repainted at a strength (image-to-image)
    variants: tuple = ()  # hub ids of the other official models it runs (klein 9B beside 4B)
    view_class: str | None = None  # the diffusers pipeline it runs over its model's components (None: the model's)

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"Tool: name={self.name!r} must be a lower-case identifier.")
        unknown = set(self.inputs) - set(OPTIONAL_INPUTS)
        if unknown:
            raise ValueError(f"Tool {self.name}: inputs={sorted(unknown)} are unknown; use {sorted(OPTIONAL_INPUTS)}.")
        if self.needs_image and "image" not in self.inputs:
            raise ValueError(f"Tool {self.name}: needs_image=True needs 'image' in inputs.")
        if self.max_images < 1 or (self.max_images > 1 and "image" not in self.inputs):
            raise ValueError(f"Tool {self.name}: max_images={self.max_images} must be 1, or more with 'image' in "
                             "inputs.")
        if not 1 <= self.steps <= defaults.STEPS_MAX or not 1 <= self.tiny_steps <= defaults.STEPS_MAX:
            raise ValueError(f"Tool {self.name}: steps={self.steps}, tiny_steps={self.tiny_steps} must be in "
                             f"1..{defaults.STEPS_MAX}.")

    @property
    def family(self):
        """Its model family (pipelines.families.Family): FLUX.1 or FLUX.2, from its model's pipeline class."""
        from ..families import family_of

        return family_of(self.pipeline_class)

    def defaults(self, model: str | None = None) -> Defaults:
        """Steps, guidance and size; the tiny family gets small sizes and few steps."""
        if model == defaults.TINY_MODEL:
            return Defaults(self.tiny_steps, self.guidance, defaults.TINY_SIZE, defaults.TINY_SIZE,
                            defaults.TINY_MAX_SEQUENCE_LENGTH)
        return Defaults(self.steps, self.guidance, self.width, self.height, self.max_sequence_length)

    def kind(self):
        """The model this tool runs (pipelines.models.sources.ModelKind): its pipeline class, and its transformer's
        input channels and guidance embedder, the same in the official model and the tiny one."""
        from ..models.sources import ModelKind

        return ModelKind(self.pipeline_class, self.tiny.in_channels, self.tiny.guidance)

    def accepts(self, kind) -> bool:
        """True when a model of ``kind`` runs this tool (what a model does not say is not held against it)."""
        wanted = self.kind()
        return (kind.pipeline_class == wanted.pipeline_class and kind.in_channels in (None, wanted.in_channels)
                and kind.guidance in (None, wanted.guidance))

    def accepts_transformer(self, file) -> bool:
        """True when the single-file transformer ``file`` (pipelines.models.single_file.TransformerFile) has this
        tool's transformer input (its family, channels and guidance embedder)."""
        wanted = self.kind()
        return (file.family == self.family.name and file.in_channels == wanted.in_channels
                and file.guidance == wanted.guidance)

    def check_inputs(self, request) -> None:
        """Rules of this tool beyond the shared ones (called once the request's images are loaded)."""

    def uses_text_encoders(self, request) -> bool:
        """True when ``prepare`` itself runs the text encoders (they must be on the device then)."""
        return False

    def prepare(self, request, ctx: RunContext) -> Prepared:
        raise NotImplementedError(f"the {self.name} tool does not define prepare()")

    def tiny_folders(self) -> tuple[str, ...]:
        """The folders of the tiny family this tool runs on (its model, and auxiliary models)."""
        return (self.tiny.folder,)

    def build_tiny(self, root: Path, shared: dict) -> None:
        """Write this tool's tiny model (and auxiliary models) under ``root``."""
        import diffusers

        from ..models.tiny import tiny_transformer

        folder = root / self.tiny.folder
        transformer = tiny_transformer(self.tiny.seed, in_channels=self.tiny.in_channels, guidance=self.tiny.guidance)
        getattr(diffusers, self.pipeline_class)(transformer=transformer, **shared).save_pretrained(folder)

    def condition_pixels(self, width: int, height: int, request=None) -> int:
        """Pixels of a conditioning image that joins the transformer's sequence (none for most tools)."""
        return 0

    def output_size(self, request, image: Image.Image | None) -> tuple[int, int]:
        """Requested size; else the input image's size (scaled down to the tool's default area if larger)."""
        d = self.defaults(request.model)
        if image is None or (request.width and request.height):
            return request.width or d.width, request.height or d.height
        area = min(image.width * image.height, d.width * d.height)
        if request.width:
            area = request.width * request.width * image.height // image.width
        elif request.height:
            area = request.height * request.height * image.width // image.height
        width, height = fit_size(image, area)
        return request.width or width, request.height or height


def not_taken(request, tool: Tool, takers) -> None:
    """Refuse an optional input ``tool`` does not take, naming the tools that do (``takers``: name -> Tool)."""
    for name, flag in OPTIONAL_INPUTS.items():
        if name in tool.inputs or getattr(request, name) is None:
            continue
        users = [t.name for t in takers if name in t.inputs]
        listed = " and ".join(users) if users else "no"
        raise UserError(f"{flag} is only used by the {listed} tool{'s' if len(users) > 1 else ''}, not {tool.name}.")
