"""Depth: generation that follows the depth of a photo."""

from __future__ import annotations

from . import control

TITLE = "Depth"


def build(ctx) -> None:
    control.build(ctx, "depth")
