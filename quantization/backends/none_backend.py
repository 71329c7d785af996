from __future__ import annotations

from ..config import NoQuantConfig
from ..registry import Backend, register


@register(NoQuantConfig)
class FullPrecisionBackend(Backend):
    name = "none"
