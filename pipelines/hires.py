"""Hires fix: a first pass at the requested size, upscaled, then refined at the larger size by image to image at a
low strength (the pass that adds detail at the new size). The upscaler is Lanczos resampling or a super-resolution
model file (pipelines.upscalers)."""

from __future__ import annotations

from . import defaults
from .errors import UserError

SCALE_MIN, SCALE_MAX = 1.0, 4.0


def target_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The second pass's size: ``scale`` times the first's, on the size step; a UserError when it is over SIZE_MAX."""
    step = defaults.SIZE_STEP
    out = [int(round(side * scale / step)) * step for side in (width, height)]
    if max(out) > defaults.SIZE_MAX:
        raise UserError(f"hires_scale={scale:g} makes {out[0]}x{out[1]} from {width}x{height}; the limit is "
                        f"{defaults.SIZE_MAX} a side: use a smaller scale or size.")
    return out[0], out[1]


def planned(width: int, height: int, scale: float | None, upscaler=None) -> dict:
    """What the estimates take of a hires fix (pipelines.memory.estimate.plan_run's ``hires`` and
    ``upscaler_bytes``): nothing without a scale; a bad scale or upscaler name is a UserError."""
    from .upscalers import check_upscaler, upscaler_bytes

    if not scale:
        return {}
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise UserError(f"hires_scale={scale!r} is not a number.") from None
    if not SCALE_MIN < scale <= SCALE_MAX:
        raise UserError(f"hires_scale={scale:g} is out of range; use {SCALE_MIN + 0.01:g}..{SCALE_MAX:g}.")
    return {"hires": target_size(width, height, scale), "upscaler_bytes": upscaler_bytes(check_upscaler(upscaler))}


def record(first, second, scale: float, upscaler: str, upscale_s: float, model: dict | None = None) -> dict:
    """What the report and the metadata say of both passes (``model``: the upscaler file's architecture, scale and
    parameters, when one was used)."""
    return {"scale": scale, "upscaler": upscaler, **({"upscaler_model": model} if model else {}), "strength": second.report["parameters"]["strength"],
            "steps": second.report["parameters"]["steps"], "upscale_s": round(upscale_s, 4),
            "first_pass": {"size": list(first.image.size), "steps": first.report["parameters"]["steps"],
                           "timings": first.report["timings"], "memory": first.report["memory"]},
            "second_pass": {"size": list(second.image.size), "timings": second.report["timings"],
                            "memory": second.report["memory"]}}
