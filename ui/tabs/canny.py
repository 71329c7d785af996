"""Canny: generation that follows the edges of a photo."""

from __future__ import annotations

from . import control

TITLE = "Canny"


def build(ctx) -> None:
    control.build(ctx, "canny")
