"""Hires fix: a first pass at the requested size, upscaled, then refined at the larger size by image to image at a
low strength (the pass that adds detail at the new size). The upscaler here is Lanczos resampling."""

from __future__ import annotations

import time

from PIL import Image

from . import defaults
from .errors import UserError

UPSCALER = "Lanczos"
SCALE_MIN, SCALE_MAX = 1.0, 4.0


def target_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The second pass's size: ``scale`` times the first's, on the size step; a UserError when it is over SIZE_MAX."""
    step = defaults.SIZE_STEP
    out = [int(round(side * scale / step)) * step for side in (width, height)]
    if max(out) > defaults.SIZE_MAX:
        raise UserError(f"hires_scale={scale:g} makes {out[0]}x{out[1]} from {width}x{height}; the limit is "
                        f"{defaults.SIZE_MAX} a side: use a smaller scale or size.")
    return out[0], out[1]


def upscale(image: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, float]:
    """``image`` at ``size`` and the seconds it took."""
    start = time.perf_counter()
    larger = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    larger.info["source"] = "hires first pass, upscaled"
    return larger, time.perf_counter() - start


def record(first, second, scale: float, upscale_s: float) -> dict:
    """What the report and the metadata say of both passes."""
    return {"scale": scale, "upscaler": UPSCALER, "strength": second.report["parameters"]["strength"],
            "steps": second.report["parameters"]["steps"], "upscale_s": round(upscale_s, 4),
            "first_pass": {"size": list(first.image.size), "steps": first.report["parameters"]["steps"],
                           "timings": first.report["timings"], "memory": first.report["memory"]},
            "second_pass": {"size": list(second.image.size), "timings": second.report["timings"],
                            "memory": second.report["memory"]}}
