"""Image helpers for the tabs: the mask painted in the image editor, outpaint margins, example files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ALPHA_THRESHOLD = 16  # faint anti-aliased brush edges do not count as painted


def asset(name: str) -> str:
    return str(ASSETS / name)


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


def editor_mask(value, size: tuple[int, int]) -> Image.Image | None:
    """White where any layer is painted, at `size`; None when nothing is painted."""
    mask = None
    for layer in (value or {}).get("layers") or []:
        layer = _as_image(layer)
        if layer is None:
            continue
        alpha = np.asarray(layer.getchannel("A") if "A" in layer.getbands() else layer.convert("L"))
        painted = alpha > ALPHA_THRESHOLD
        mask = painted if mask is None or mask.shape != painted.shape else (mask | painted)
    if mask is None or not mask.any():
        return None
    image = Image.fromarray((mask * 255).astype(np.uint8), "L")
    return image if image.size == size else image.resize(size, Image.NEAREST)


def expand_values(left, top, right, bottom) -> tuple[int, int, int, int]:
    """The four outpaint margins as whole pixels (None counts as 0)."""
    return tuple(int(value or 0) for value in (left, top, right, bottom))
