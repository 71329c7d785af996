from __future__ import annotations

from .base import Backend


class FullPrecisionBackend(Backend):
    name = "none"
