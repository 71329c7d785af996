"""Image input/output: checked loading, size snapping, canvas growth, PNG metadata."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

from . import defaults
from .errors import UserError

MAX_PIXELS = 64 * 1024 * 1024  # larger files are refused, not decoded (decompression bombs)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


UNREADABLE = "this file is not an image we can read"
HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # 16- and 32-bit single-channel modes
MASK_ALPHA_THRESHOLD = 16  # in a mask with transparency, faint anti-aliased edges (alpha 16 of 255 or less) keep


def open_image(value, what: str, shown: str | None = None) -> Image.Image:
    """The image file at ``value`` opened from its header only: its format, mode and size are read, its pixels are
    not (they are decoded on first use, or by load_image). A UserError names ``what`` when the file is missing,
    empty, not an image, over MAX_PIXELS, or under 8x8 pixels; a PNG's chunks are checked too (a truncated PNG is
    refused here), which reads the file but decodes nothing.

    Messages name the file by ``shown`` (default: the path as given) and never more: the studio passes the
    uploaded file's own name, so no server path reaches the page.
    """
    path = Path(str(value)).expanduser()
    name = shown if shown is not None else str(value)
    if not path.is_file():
        raise UserError(f"{what}={name!r}: no such file.")
    if path.stat().st_size == 0:
        raise UserError(f"{what}: {UNREADABLE}: {name} is an empty file (0 bytes).")
    try:
        opened = Image.open(path)
        width, height = opened.size
        if width * height > MAX_PIXELS:
            raise UserError(f"{what}: {name} is too large ({width}x{height}); the limit is "
                            f"{MAX_PIXELS // 2**20} MPixels.")
        if opened.format == "PNG":  # chunk lengths and checksums, no decoding
            opened.verify()
            opened.close()
            opened = Image.open(path)
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise UserError(f"{what}: {name} is too large (over {MAX_PIXELS // 2**20} MPixels).") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(_unreadable(what, name, error)) from None
    _check_size(opened, what)
    return opened


@dataclass(frozen=True)
class ImageHeader:
    """An image as its file's header describes it (EXIF orientation applied): enough for rules on sizes, without
    its pixels."""

    width: int
    height: int
    mode: str
    info: dict = field(default_factory=dict, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def image_header(value, what: str, shown: str | None = None):
    """``value``'s size and mode without decoding it: an ImageHeader for a file (checked as open_image checks it),
    the image itself for an image in memory."""
    if isinstance(value, (Image.Image, ImageHeader)):
        _check_size(value, what)
        return value
    with open_image(value, what, shown) as opened:
        width, height = opened.size
        tagged = opened.format != "PNG" or "exif" in opened.info  # a PNG's EXIF after its pixels needs a decode
        if tagged and opened.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation: turned a quarter
            width, height = height, width
        return ImageHeader(width, height, opened.mode)


def _unreadable(what: str, name: str, error: Exception) -> str:
    text = str(error).lower()
    reason = "truncated" if "truncated" in text or "broken png" in text else type(error).__name__
    return f"{what}: {UNREADABLE}: {name} (not a readable raster image: {reason})."


def _check_size(image: Image.Image, what: str) -> None:
    if image.width < 8 or image.height < 8:
        raise UserError(f"{what} is {image.width}x{image.height}; images must be at least 8x8 pixels.")


def load_image(value, what: str, mode: str | None = "RGB", shown: str | None = None) -> Image.Image:
    """A decoded PIL image from a path or an image, in ``mode`` (None: its own mode, at 8 bits per channel); a
    UserError names ``what`` when it is unusable (see open_image). 16- and 32-bit images (a depth map saved as a
    16-bit PNG, a float TIFF) are scaled to 8 bits (eight_bit), never clipped."""
    if isinstance(value, Image.Image):
        image = value
        try:
            image.load()  # an image opened but not decoded yet (an upload read lazily)
        except (OSError, SyntaxError, ValueError) as error:
            name = shown or image.info.get("source") or Path(getattr(image, "filename", "") or "").name or "the image"
            raise UserError(_unreadable(what, name, error)) from None
    else:
        name = shown if shown is not None else str(value)
        with open_image(value, what, shown) as opened:
            try:
                opened.load()
                image = ImageOps.exif_transpose(opened)
            except (OSError, SyntaxError, ValueError) as error:
                raise UserError(_unreadable(what, name, error)) from None
    _check_size(image, what)
    image = eight_bit(image)
    if mode is None or image.mode == mode:
        return image
    if image.mode in ("P", "PA", "La", "RGBa") and mode != "RGBA":
        image = image.convert("RGBA")  # a palette's transparency, premultiplied alpha: to plain RGBA first
    try:
        return image.convert(mode)
    except ValueError:  # PIL converts some modes (LAB, HSV) only to RGB
        return image.convert("RGB").convert(mode)


def eight_bit(image: Image.Image) -> Image.Image:
    """``image`` at 8 bits per channel: 16-bit values (I;16, or I within 0..65535) divided by 257, so 65535 is
    white; floats (F) within 0..1 times 255; 32-bit values of any other range, and floats outside 0..1, stretched
    from their lowest (black) to their highest (white); I within 0..255 as they are. Other modes are returned as
    they are (PIL keeps them at 8 bits per channel)."""
    if image.mode not in HIGH_DEPTH:
        return image
    values = np.asarray(image).astype(np.float64)
    finite = np.isfinite(values)
    values = np.where(finite, values, 0.0)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    if image.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255
    elif image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and 255 < high <= 65535):
        scaled = values / 257
    elif image.mode == "I" and low >= 0 and high <= 255:
        scaled = values
    else:
        scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    converted = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")
    converted.info.update(image.info)
    return converted


def mask_pixels(image: Image.Image) -> Image.Image:
    """The repaint mask of a mask image: white (255) repaints, black (0) keeps. One rule for the CLI's --mask, a
    mask layer sent over the API and the Fill tab's brush:

    - a mask with transparency (an alpha channel that is not opaque everywhere, as the brush paints on a
      transparent layer): its painted pixels repaint (alpha above 16 of 255), whatever their colour;
    - a mask without transparency (no alpha channel, or one opaque everywhere): white repaints and black keeps
      (grey 128 or lighter counts as white).
    """
    image = eight_bit(image)
    if image.mode in ("P", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if "A" in image.getbands():
        alpha = image.getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha.point(lambda v: 255 if v > MASK_ALPHA_THRESHOLD else 0)
    return image.convert("L").point(lambda v: 255 if v >= 128 else 0)


def describe_input(value, image: Image.Image) -> dict:
    """How the report names one input image: its name, sha256 and size.

    A file given by path is hashed as it is on disk ("sha256_of": "file"); an image handed over in memory
    by its pixels as loaded ("pixels", with the mode), and named by what the caller called it
    (``image.info["source"]``) when it has no file name.
    """
    if isinstance(value, Image.Image):
        name = value.info.get("source") or Path(getattr(value, "filename", "") or "").name or "in-memory image"
        digest, of = hashlib.sha256(image.tobytes()).hexdigest(), f"pixels ({image.mode})"
    else:
        path = Path(str(value)).expanduser()
        name = path.name
        sha = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(2**20), b""):
                sha.update(block)
        digest, of = sha.hexdigest(), "file"
    return {"name": name, "sha256": digest, "sha256_of": of, "size": [image.width, image.height]}


def image_name(index: int) -> str:
    """How the request, the report and errors name the image at ``index`` of several: image, image_2, image_3..."""
    return "image" if index == 0 else f"image_{index + 1}"


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


def side_by_side_layout(sizes: list[tuple[int, int]], max_area: int,
                        step: int = defaults.SIZE_STEP) -> tuple[int, list[int]]:
    """(height, widths) that put images of ``sizes`` (width, height) in one row at a common height.

    Each keeps its aspect ratio (widths rounded to ``step``); the row is at most ``max_area`` pixels and no
    taller than the tallest image; the height and every width are multiples of ``step``. A ValueError says
    when the images are too wide to fit even one step high.
    """
    if not sizes:
        raise ValueError("side_by_side_layout needs at least one size")
    if any(w <= 0 or h <= 0 for w, h in sizes) or max_area < step * step * len(sizes):
        raise ValueError(f"sizes={sizes} and max_area={max_area} leave no room for one {step}x{step} block each")
    aspects = [w / h for w, h in sizes]
    height = min(max(h for _, h in sizes), (max_area / sum(aspects)) ** 0.5)
    height = max(step, int(height) // step * step)
    while True:
        widths = [max(step, int(round(aspect * height / step)) * step) for aspect in aspects]
        if height * sum(widths) <= max_area:
            return height, widths
        if height == step:
            raise ValueError(f"images of sizes {sizes} are too wide to join within {max_area} pixels")
        height -= step


def side_by_side(images: list[Image.Image], max_area: int, step: int = defaults.SIZE_STEP) -> Image.Image:
    """The images joined left to right, first to last, in one RGB image (see side_by_side_layout)."""
    height, widths = side_by_side_layout([image.size for image in images], max_area, step)
    row = Image.new("RGB", (sum(widths), height))
    left = 0
    for image, width in zip(images, widths):
        row.paste(image.convert("RGB").resize((width, height)), (left, 0))
        left += width
    return row


def grow_canvas(image: Image.Image, expand: tuple[int, int, int, int]) -> tuple[Image.Image, Image.Image]:
    """Outpainting: the image on a larger canvas, and a mask that is white on the new border."""
    left, top, right, bottom = expand
    width, height = image.width + left + right, image.height + top + bottom
    canvas = ImageOps.expand(image, border=(left, top, right, bottom), fill=(127, 127, 127))
    mask = Image.new("L", (width, height), 255)
    mask.paste(0, (left, top, left + image.width, top + image.height))
    return canvas, mask


def png_metadata(parameters: dict) -> PngImagePlugin.PngInfo:
    """Text chunks: the `parameters` text in A1111/Forge form (pipelines.infotext) and the full JSON."""
    from .infotext import write

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", write(parameters))
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
