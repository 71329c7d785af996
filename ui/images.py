"""Image helpers for the tabs: checked uploads, the mask painted in the image editor, outpaint margins,
example files."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.errors import UserError
from pipelines.images import UNREADABLE, image_header, load_image, mask_pixels, open_image

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def asset(name: str) -> str:
    return str(ASSETS / name)


def readable(component, what: str):
    """Make ``component`` (gr.Image, gr.ImageEditor, a gr.File of images) refuse a bad upload with one readable line.

    Gradio decodes uploads in the component's preprocess and reports a failure with its own text (the
    component index, the exception, the server's temporary path). Files are checked first from their headers with
    pipelines.images.open_image (empty, not an image, a truncated PNG, over the pixel limit: nothing is decoded, so a
    check before the job joins the queue stays quick), and any other failure becomes the same line; the message
    names the uploaded file's own name only. An image editor reads its images lazily (decoded on first use, in the
    job), in their own mode (a 16-bit mask layer is scaled, not clipped: pipelines.images.eight_bit).
    """
    from .runner import Invalid

    original = component.preprocess
    if hasattr(component, "convert_and_format_image"):  # gr.ImageEditor
        component.convert_and_format_image = _lazy_editor_image

    def preprocess(payload):
        if payload is None:
            return None
        shown = "the upload"
        try:
            for file in _files(payload):
                shown = Path(getattr(file, "orig_name", None) or file.path).name
                open_image(file.path, what, shown=shown).close()
            return original(payload)
        except UserError as error:
            raise Invalid(str(error), what) from None
        except Invalid:
            raise
        except Exception as error:  # noqa: BLE001 - whatever the decoder raised: one line, no path
            raise Invalid(f"{what}: {UNREADABLE}: {shown} ({type(error).__name__}).", what) from None

    component.preprocess = preprocess
    return component


def _lazy_editor_image(file, flatten_on_white: bool = False):
    """An image of an ImageEditor value, opened but not decoded, in its own mode (Gradio's own converts it to the
    editor's mode, decoding it, on every preprocess)."""
    if file is None:
        return None
    data = getattr(file, "path", None)
    image = Image.open(data if isinstance(data, str) else BytesIO(bytes(file)))
    name = getattr(file, "orig_name", None)
    if name:
        image.info.setdefault("upload_name", Path(name).name)
    return image


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


def _as_image(value):
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    return Image.open(value)


def _name(image: Image.Image) -> str:
    return image.info.get("upload_name") or Path(getattr(image, "filename", "") or "").name or "the upload"


def editor_image(value) -> Image.Image | None:
    """The uploaded image of an ImageEditor value (RGB), or None; only its header is read while a job is checked
    before it joins the queue (ui.runner.HEADERS_ONLY)."""
    from .runner import HEADERS_ONLY, Invalid

    if not value:
        return None
    background = _as_image(value.get("background"))
    if background is None:
        background = _as_image(value.get("composite"))
    if background is None:
        return None
    try:
        if HEADERS_ONLY.get():
            return image_header(background, "image")
        return load_image(background, "image", mode="RGB", shown=_name(background))
    except UserError as error:
        raise Invalid(str(error), "editor") from None


def editor_mask(value, size: tuple[int, int] | None = None) -> Image.Image | None:
    """White where any layer repaints (pipelines.images.mask_pixels: the brush's paint on its transparent layer; in a
    layer without transparency, white); None when nothing is painted.

    The mask keeps its own size: one that differs from the image (`size`) is refused with both sizes named,
    as the CLI refuses a --mask of another size (pipelines.request), never resized. While a job is checked before
    it joins the queue (ui.runner.HEADERS_ONLY) only the layers' sizes are read: the first layer stands for the mask,
    and whether anything is painted is known once the job runs.
    """
    from .runner import HEADERS_ONLY

    layers = [_as_image(layer) for layer in (value or {}).get("layers") or []]
    layers = [layer for layer in layers if layer is not None]
    sizes = {tuple(layer.size) for layer in layers}
    if len(sizes) > 1:
        (w1, h1), (w2, h2) = sorted(sizes)[:2]
        raise UserError(f"mask layers differ in size ({w1}x{h1} and {w2}x{h2}); they must be the size of the image.")
    if sizes and size is not None and next(iter(sizes)) != tuple(size):
        (width, height), = sizes
        raise UserError(f"mask is {width}x{height} but image is {size[0]}x{size[1]}; they must be the same size.")
    if not layers:
        return None
    if HEADERS_ONLY.get():
        return layers[0]
    mask = None
    for layer in layers:
        try:
            painted = np.asarray(mask_pixels(load_image(layer, "mask", mode=None, shown=_name(layer)))) > 0
        except UserError:
            raise
        mask = painted if mask is None else (mask | painted)
    if mask is None or not mask.any():
        return None
    return Image.fromarray((mask * 255).astype(np.uint8), "L")


def expand_values(left, top, right, bottom) -> tuple[int, int, int, int]:
    """The four outpaint margins as whole pixels (None counts as 0)."""
    return tuple(int(value or 0) for value in (left, top, right, bottom))
