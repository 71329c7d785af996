"""Image helpers for the tabs: checked uploads, the mask painted in the image editor, outpaint margins,
example files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.errors import UserError
from pipelines.images import UNREADABLE, load_image

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ALPHA_THRESHOLD = 16  # faint anti-aliased brush edges do not count as painted


def asset(name: str) -> str:
    return str(ASSETS / name)


def readable(component, what: str):
    """Make ``component`` (gr.Image, gr.ImageEditor, a gr.File of images) refuse a bad upload with one readable line.

    Gradio decodes uploads in the component's preprocess and reports a failure with its own text (the
    component index, the exception, the server's temporary path). Files are checked first with
    pipelines.images.load_image (empty, not an image, truncated, over the pixel limit before decoding),
    and any other failure becomes the same line; the message names the uploaded file's own name only.
    """
    from .runner import Invalid

    original = component.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        shown = "the upload"
        try:
            for file in _files(payload):
                shown = Path(getattr(file, "orig_name", None) or file.path).name
                load_image(file.path, what, shown=shown)
            return original(payload)
        except UserError as error:
            raise Invalid(str(error), what) from None
        except Invalid:
            raise
        except Exception as error:  # noqa: BLE001 - whatever the decoder raised: one line, no path
            raise Invalid(f"{what}: {UNREADABLE}: {shown} ({type(error).__name__}).", what) from None

    component.preprocess = preprocess
    return component


def _files(payload) -> list:
    """The uploaded files (with a local path) of an Image, ImageEditor or File (several files) payload."""
    if isinstance(getattr(payload, "root", None), list):  # gr.File(file_count="multiple")
        candidates = list(payload.root)
    else:
        candidates = [payload] if hasattr(payload, "path") else [
            getattr(payload, "background", None), getattr(payload, "composite", None),
            *(getattr(payload, "layers", None) or [])]
    return [f for f in candidates if f is not None and isinstance(getattr(f, "path", None), str)
            and not f.path.startswith(("http://", "https://", "data:"))]


def as_image(value) -> Image.Image | None:
    """A PIL image from an upload's path (already checked by `readable`) or an image."""
    if value is None or isinstance(value, Image.Image):
        return value
    return load_image(value, "image", shown=Path(str(value)).name)


def _as_image(value) -> Image.Image | None:
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    return Image.open(value)


def editor_image(value) -> Image.Image | None:
    """The uploaded image of an ImageEditor value (RGB), or None."""
    if not value:
        return None
    background = _as_image(value.get("background"))
    if background is None:
        background = _as_image(value.get("composite"))
    return background.convert("RGB") if background is not None else None


def editor_mask(value, size: tuple[int, int] | None = None) -> Image.Image | None:
    """White where any layer is painted; None when nothing is painted.

    The mask keeps its own size: one that differs from the image (`size`) is refused with both sizes named,
    as the CLI refuses a --mask of another size (pipelines.request), never resized.
    """
    mask = None
    for layer in (value or {}).get("layers") or []:
        layer = _as_image(layer)
        if layer is None:
            continue
        alpha = np.asarray(layer.getchannel("A") if "A" in layer.getbands() else layer.convert("L"))
        painted = alpha > ALPHA_THRESHOLD
        if mask is not None and mask.shape != painted.shape:
            raise UserError(f"mask layers differ in size ({mask.shape[1]}x{mask.shape[0]} and "
                            f"{painted.shape[1]}x{painted.shape[0]}); they must be the size of the image.")
        mask = painted if mask is None else (mask | painted)
    if mask is None or not mask.any():
        return None
    image = Image.fromarray((mask * 255).astype(np.uint8), "L")
    if size is not None and image.size != tuple(size):
        raise UserError(f"mask is {image.width}x{image.height} but image is {size[0]}x{size[1]}; they must be "
                        "the same size.")
    return image


def expand_values(left, top, right, bottom) -> tuple[int, int, int, int]:
    """The four outpaint margins as whole pixels (None counts as 0)."""
    return tuple(int(value or 0) for value in (left, top, right, bottom))
