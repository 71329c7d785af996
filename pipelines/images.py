"""Image input/output: checked loading, size snapping, canvas growth, PNG metadata."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageOps, PngImagePlugin

from . import defaults
from .errors import UserError

MAX_PIXELS = 64 * 1024 * 1024  # larger files are refused, not decoded (decompression bombs)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def load_image(value, what: str, mode: str = "RGB") -> Image.Image:
    """A PIL image from a path or an image; a UserError names ``what`` when it is unusable."""
    if isinstance(value, Image.Image):
        image = value
    else:
        path = Path(str(value)).expanduser()
        if not path.is_file():
            raise UserError(f"{what}={str(value)!r}: no such file.")
        if path.stat().st_size == 0:
            raise UserError(f"{what}={str(value)!r} is an empty file.")
        try:
            with Image.open(path) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise UserError(f"{what}={str(value)!r} is too large ({opened.width}x{opened.height}).")
                opened.load()
                image = ImageOps.exif_transpose(opened)
        except UserError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise UserError(f"{what}={str(value)!r} is not a readable raster image ({type(error).__name__}).") from None
    if image.width < 8 or image.height < 8:
        raise UserError(f"{what} is {image.width}x{image.height}; images must be at least 8x8 pixels.")
    if mode == "L" and image.mode in ("RGBA", "LA"):
        # Masks drawn on a transparent layer: painted pixels are opaque.
        return image.getchannel("A")
    return image.convert(mode)


def snap(value: int, name: str, notices: list[str]) -> int:
    """Round a size to the FLUX step (16), clamped to the limits, with a notice when it changed."""
    snapped = int(round(value / defaults.SIZE_STEP) * defaults.SIZE_STEP)
    snapped = max(defaults.SIZE_MIN, min(defaults.SIZE_MAX, snapped))
    if snapped != value:
        notices.append(f"{name} {value} snapped to {snapped} (a multiple of {defaults.SIZE_STEP}).")
    return snapped


def fit_size(image: Image.Image, area: int) -> tuple[int, int]:
    """The image's aspect ratio at about ``area`` pixels, in multiples of the size step."""
    scale = (area / (image.width * image.height)) ** 0.5
    step = defaults.SIZE_STEP
    width = max(defaults.SIZE_MIN, min(defaults.SIZE_MAX, int(round(image.width * scale / step)) * step))
    height = max(defaults.SIZE_MIN, min(defaults.SIZE_MAX, int(round(image.height * scale / step)) * step))
    return width, height


def binarize(mask: Image.Image) -> Image.Image:
    return mask.convert("L").point(lambda v: 255 if v >= 128 else 0)


def grow_canvas(image: Image.Image, expand: tuple[int, int, int, int]) -> tuple[Image.Image, Image.Image]:
    """Outpainting: the image on a larger canvas, and a mask that is white on the new border."""
    left, top, right, bottom = expand
    width, height = image.width + left + right, image.height + top + bottom
    canvas = ImageOps.expand(image, border=(left, top, right, bottom), fill=(127, 127, 127))
    mask = Image.new("L", (width, height), 255)
    mask.paste(0, (left, top, left + image.width, top + image.height))
    return canvas, mask


def png_metadata(parameters: dict) -> PngImagePlugin.PngInfo:
    """Text chunks: a readable 'parameters' line (as other FLUX tools write) and the full JSON."""
    info = PngImagePlugin.PngInfo()
    loras = parameters.get("loras") or []
    prompt = " ".join([parameters.get("prompt", "")] + [f"<lora:{l['name']}:{l['strength']:g}>" for l in loras])
    hashes = ", ".join(f"{l['name']}: {l['sha256'][:12]}" for l in loras)
    readable = (f"{prompt}\nSteps: {parameters.get('steps')}, Guidance: "
                f"{parameters.get('guidance')}, Seed: {parameters.get('seed')}, Size: {parameters.get('width')}x"
                f"{parameters.get('height')}, Model: {parameters.get('model')}, Tool: {parameters.get('tool')}, "
                f"Quantization: {parameters.get('quantization_summary', '')}"
                + (f', Lora hashes: "{hashes}"' if hashes else ""))
    info.add_text("parameters", readable)
    info.add_text("fluxforge", json.dumps(parameters, sort_keys=True))
    return info


def save_png(image: Image.Image, path: Path, parameters: dict) -> Path:
    """Write atomically, so a failed run never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", pnginfo=png_metadata(parameters))
    tmp.replace(path)
    return path


def read_metadata(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["fluxforge"])
