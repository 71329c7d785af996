"""A generation request, validated on construction (diffusers-style check_inputs)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image

from . import defaults
from .errors import UserError
from .images import snap
from .loras import check_loras
from .tools.base import not_taken


@dataclass
class GenerationRequest:
    tool: str
    prompt: str = ""
    model: str = defaults.TINY_MODEL
    quant: str = "auto"
    image: Image.Image | str | list | None = None  # a list where the tool takes several (Kontext): the first is edited
    mask: Image.Image | str | None = None
    reference: Image.Image | str | None = None
    control_image: Image.Image | str | None = None
    expand: tuple[int, int, int, int] | str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    canny_low: int = defaults.CANNY_LOW
    canny_high: int = defaults.CANNY_HIGH
    strength: float | None = None  # image to image: how much of the input image is repainted (0..1]
    hires_scale: float | None = None  # hires fix: the second pass's size over the first's (pipelines.hires)
    hires_strength: float | None = None  # hires fix: the second pass's strength (default HIRES_STRENGTH)
    hires_steps: int | None = None  # hires fix: the second pass's steps (default: steps)
    hires_upscaler: str | None = None  # hires fix: Lanczos (default) or a file in the upscaler folder, by name
    transformer: str | None = None  # a single-file transformer (.safetensors or .gguf) that replaces the model's own
    loras: list = field(default_factory=list)  # (file, strength) pairs; checked into pipelines.loras.LoraFile
    control: str | None = None  # Depth and Canny: "model" (their own model) or "lora" (a control LoRA on Dev)
    control_lora: Any = None  # its file, checked into a LoraFile (default: the tool's official one); implies "lora"
    notices: list[str] = field(default_factory=list)
    # Read the images' headers only (sizes and modes), decoding nothing: a quick check of everything but the
    # rules on pixels (an empty mask), which the request made to run applies.
    header_only: bool = field(default=False, repr=False)
    inputs: dict = field(default_factory=dict)  # filled on load: input name -> {name, sha256, sha256_of, size}
    images: list = field(default_factory=list, init=False, repr=False)  # filled on load: every image, `image` first

    def __post_init__(self):
        self.check_inputs()

    @property
    def spec(self):
        """The tool this request is for (pipelines.tools)."""
        from .tools import get_tool

        return get_tool(self.tool)

    def check_inputs(self) -> None:
        from .tools import all_tools

        tool = self.spec
        if self.quant not in defaults.QUANTS:
            raise UserError(f"quant={self.quant!r} is unknown; choose one of {', '.join(defaults.QUANTS)}.")
        if not isinstance(self.prompt, str):
            raise UserError("prompt must be text.")
        if len(self.prompt) > defaults.PROMPT_MAX_CHARS:
            raise UserError(f"prompt is {len(self.prompt)} characters; the limit is {defaults.PROMPT_MAX_CHARS}.")
        if any(ord(c) < 32 and c not in "\n\t" for c in self.prompt):
            raise UserError("prompt contains control characters; remove them.")
        if tool.needs_prompt and not self.prompt.strip():
            raise UserError(f"prompt is empty; the {self.tool} tool needs a prompt.")
        self._check_image_count(tool, all_tools())
        if tool.needs_image and self.image is None:
            raise UserError(f"the {self.tool} tool needs an input image (--image).")
        not_taken(self, tool, all_tools())
        self.loras = check_loras(self.loras)
        self._check_control(tool)
        self.transformer = check_transformer_file(self.transformer, tool.lora_base() if self.control == "lora" else tool)
        self._load_images()
        tool.check_inputs(self)
        d = tool.defaults(self.model)
        self.steps = _int_in("steps", self.steps, defaults.STEPS_MIN, defaults.STEPS_MAX, d.steps)
        self.guidance = _float_in("guidance", self.guidance, defaults.GUIDANCE_MIN, defaults.GUIDANCE_MAX, d.guidance)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, checked_size(name, value, self.notices))
        if self.seed is None:
            import secrets

            self.seed = secrets.randbelow(defaults.SEED_MAX + 1)
        self.seed = _int_in("seed", self.seed, 0, defaults.SEED_MAX, 0)
        self.canny_low = _int_in("canny_low", self.canny_low, 0, 255, defaults.CANNY_LOW)
        self.canny_high = _int_in("canny_high", self.canny_high, 0, 255, defaults.CANNY_HIGH)
        self._check_strength(tool)
        if self.canny_low > self.canny_high:
            raise UserError(f"canny_low={self.canny_low} is above canny_high={self.canny_high}; swap them.")

    def _check_strength(self, tool) -> None:
        """Image to image: a strength in (0, 1] with an input image (default STRENGTH); none without one."""
        from .tools import all_tools

        if self.strength is not None and not (tool.takes_strength and self.image is not None):
            takers = " and ".join(t.name for t in all_tools() if t.takes_strength)
            raise UserError(f"strength={self.strength!r} is for image to image: give an input image (--image) to the "
                            f"{takers} tool." if tool.takes_strength else
                            f"strength is only used by image to image (the {takers} tools with an image), not "
                            f"{tool.name}.")
        if tool.takes_strength and self.image is not None:
            self.strength = _float_in("strength", self.strength, 0.01, 1.0, defaults.STRENGTH)
        self._check_hires(tool)

    def _check_hires(self, tool) -> None:
        """Hires fix: a text-to-image run (no input image) with a scale over 1; its strength and steps checked."""
        from .hires import SCALE_MAX, SCALE_MIN, target_size
        from .tools import all_tools
        from .upscalers import check_upscaler

        if self.hires_scale is None:
            if self.hires_strength is not None or self.hires_steps is not None or self.hires_upscaler:
                raise UserError("hires_strength, hires_steps and hires_upscaler are for the hires fix: give "
                                "hires_scale too.")
            return
        if not tool.takes_strength or self.image is not None:
            takers = " and ".join(t.name for t in all_tools() if t.takes_strength)
            raise UserError(f"hires_scale is for text to image (the {takers} tools without an input image), not "
                            + (f"{tool.name}." if not tool.takes_strength else "image to image."))
        self.hires_scale = _float_in("hires_scale", self.hires_scale, SCALE_MIN + 0.01, SCALE_MAX, 2.0)
        self.hires_strength = _float_in("hires_strength", self.hires_strength, 0.01, 1.0, defaults.HIRES_STRENGTH)
        if self.hires_steps is not None:
            self.hires_steps = _int_in("hires_steps", self.hires_steps, defaults.STEPS_MIN, defaults.STEPS_MAX, 1)
        self.hires_upscaler = check_upscaler(self.hires_upscaler)
        d = tool.defaults(self.model)
        target_size(self.width or d.width, self.height or d.height, self.hires_scale)

    def _check_image_count(self, tool, takers) -> None:
        """`image` as a list: at most the tool's max_images; an empty list is no image, one item that image."""
        if not isinstance(self.image, (list, tuple)):
            return
        from .images import image_name

        count = len(self.image)
        if count > 1 and tool.max_images == 1:
            several = [t.name for t in takers if t.max_images > 1]
            raise UserError(f"image: {count} images given, but the {tool.name} tool takes one; give one image "
                            f"(--image once)" + (f"; several are for the {' and '.join(several)} tool{'s' if len(several) > 1 else ''}" if several
                                                 else "") + ".")
        if count > tool.max_images:
            raise UserError(f"image: {count} images given; the {tool.name} tool takes at most {tool.max_images} (the "
                            f"image to edit and {tool.max_images - 1} references); give fewer.")
        for index, value in enumerate(self.image):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise UserError(f"{image_name(index)} is empty; give an image file or leave it out.")
        self.image = list(self.image) if count > 1 else (self.image[0] if count else None)

    def _check_control(self, tool) -> None:
        from .loras import check_lora

        if self.control is None or self.control == "":
            takes = getattr(tool, "control_lora", None) is not None or self.control_lora
            self.control = ("lora" if self.control_lora else "model") if takes else None
            if self.control is None:
                return
        if self.control not in defaults.CONTROL_FORMS:
            raise UserError(f"control={self.control!r} is unknown; choose one of {', '.join(defaults.CONTROL_FORMS)}.")
        if (self.control == "lora" or self.control_lora) and getattr(tool, "control_lora", None) is None:
            raise UserError(f"control={self.control!r} (a control LoRA) is only for the depth and canny tools, "
                            f"not {tool.name}.")
        if self.control_lora and self.control != "lora":
            raise UserError("control_lora is given but control='model'; use control='lora' with it.")
        if self.control_lora and not hasattr(self.control_lora, "sha256"):
            try:
                self.control_lora = check_lora(self.control_lora, 1.0)
            except UserError as error:
                raise UserError(str(error).replace("lora", "control_lora", 1)) from None

    def _load_images(self) -> None:
        """Read and check every image now, before any model is loaded (their headers only with header_only)."""
        from .images import describe_input, image_header, image_name, load_image, mask_pixels

        read = image_header if self.header_only else load_image
        self.inputs, self.images = {}, []
        given = self.image if isinstance(self.image, list) else [] if self.image is None else [self.image]
        for index, value in enumerate(given):
            self.images.append(read(value, image_name(index)))
            if not self.header_only:
                self.inputs[image_name(index)] = describe_input(value, self.images[-1])
        self.image = self.images[0] if self.images else None
        for name in ("reference", "control_image"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, read(value, name))
                if not self.header_only:
                    self.inputs[name] = describe_input(value, getattr(self, name))
        if self.mask is not None:
            if self.image is None:
                raise UserError("mask is given without an image; give the image to fill (--image) as well.")
            loaded = image_header(self.mask, "mask") if self.header_only else load_image(self.mask, "mask", mode=None)
            if loaded.size != self.image.size:
                raise UserError(f"mask is {loaded.width}x{loaded.height} but image is {self.image.width}x"
                                f"{self.image.height}; they must be the same size.")
            if self.header_only:
                self.mask = loaded
                return
            self.inputs["mask"] = describe_input(self.mask, loaded)
            mask = mask_pixels(loaded)
            if mask.getextrema()[1] == 0:
                raise UserError("mask is empty: nothing in it repaints. Paint the area to fill in white (or, on a "
                                "transparent layer, in any colour).")
            self.mask = mask

    def parameters(self) -> dict:
        """The request as plain values, for reports and PNG metadata: every input image by name, sha256 and
        size under `inputs` (the images themselves left out)."""
        skip = {"image", "images", "mask", "reference", "control_image", "notices", "inputs", "header_only"}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        values["expand"] = list(self.expand) if self.expand else None
        values["inputs"] = {name: dict(item) for name, item in self.inputs.items()}
        values["loras"] = [lora.to_dict() for lora in self.loras]
        if hasattr(self.control_lora, "to_dict"):
            values["control_lora"] = self.control_lora.to_dict()
        return values


def batch_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` (0-based) of a batch whose first image has ``seed``: the next one each time,
    wrapping past SEED_MAX to 0."""
    return (seed + index) % (defaults.SEED_MAX + 1)


def checked_size(name: str, value, notices: list[str]) -> int:
    """A width or height as a run takes it, one rule for the CLI, the studio and the estimates: a whole number in
    SIZE_MIN..SIZE_MAX (else a UserError naming it), snapped to a multiple of SIZE_STEP with a notice when it is not
    one (e.g. 1000 -> 992)."""
    return snap(_int_in(name, value, defaults.SIZE_MIN, defaults.SIZE_MAX, value), name, notices)


def check_transformer_file(value, tool) -> str | None:
    """The path of a single-file transformer (.safetensors or .gguf) that has ``tool``'s transformer input (None
    when none is given); its fit to the model's own transformer is checked when the model is known
    (pipelines.models.single_file.check_fits)."""
    from .models.single_file import inspect

    if value is None or not str(value).strip():
        return None
    file = inspect(str(value).strip())
    if not tool.accepts_transformer(file):
        raise UserError(f"transformer={file.name!r} is {file.describe()}; the {tool.name} tool needs a "
                        f"{tool.kind().describe()} transformer.")
    return str(file.path)


def _int_in(name: str, value, low: int, high: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        raise UserError(f"{name}={value!r} is not a whole number.")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise UserError(f"{name}={value!r} is not a whole number.")
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise UserError(f"{name}={value!r} is not a whole number.") from None
    if not isinstance(value, int):
        raise UserError(f"{name}={value!r} is not a whole number.")
    if not low <= value <= high:
        raise UserError(f"{name}={value} is out of range; use {low}..{high}.")
    return value


def _float_in(name: str, value, low: float, high: float, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}={value!r} is not a number.") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise UserError(f"{name}={value!r} is out of range; use {low:g}..{high:g}.")
    return number
