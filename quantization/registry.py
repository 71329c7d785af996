"""Backend handlers, found through a registry keyed by config type."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from .config import QuantConfig

DISABLE_ENV = "FLUXFORGE_DISABLE_BACKENDS"


class Backend:
    """One quantization library behind a small interface."""

    name = "none"

    def check(self, config: QuantConfig, device: torch.device) -> str | None:
        """None when usable on ``device``; otherwise the reason, naming the fix."""
        return None

    def quantize(self, module: torch.nn.Module, config: QuantConfig, device: torch.device,
                 dtype: torch.dtype) -> torch.nn.Module:
        """Quantize ``module`` (on the CPU, in ``dtype``) and return it on ``device``."""
        return module.to(device)

    def is_quantized_layer(self, layer: torch.nn.Module) -> bool:
        """True for a layer this backend has quantized."""
        return False

    # ---- serialization (the quantized-weights cache) -------------------------------------------------
    can_serialize = False  # a backend that cannot save its layers simply skips the cache
    library = ""  # the pip package whose version is part of a cache key

    def save(self, module: torch.nn.Module, path: Path) -> list[str]:
        """Write the quantized ``module`` into the existing folder ``path``; returns the file names written."""
        raise NotImplementedError(f"{self.name} cannot save quantized weights")

    def load(self, skeleton: torch.nn.Module, path: Path, config: QuantConfig, device: torch.device,
             dtype: torch.dtype) -> torch.nn.Module:
        """Rebuild what ``save`` wrote, into ``skeleton`` (the full-precision layout on the meta device)."""
        raise NotImplementedError(f"{self.name} cannot load quantized weights")


_REGISTRY: dict[type, Backend] = {}


def register(config_type: type) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        _REGISTRY[config_type] = cls()
        return cls

    return wrap


def backend_for(config: QuantConfig) -> Backend:
    _load_builtin_backends()
    try:
        return _REGISTRY[type(config)]
    except KeyError:
        raise ValueError(f"no backend is registered for {type(config).__name__}") from None


def disabled_backends() -> set[str]:
    """Backends named in FLUXFORGE_DISABLE_BACKENDS (comma list) are treated as absent."""
    raw = os.environ.get(DISABLE_ENV, "")
    return {name.strip().lower() for name in raw.split(",") if name.strip()}


def check_backend(config: QuantConfig, device: torch.device) -> str | None:
    """Why ``config`` cannot run on ``device`` (None when it can)."""
    backend = backend_for(config)
    if backend.name in disabled_backends():
        return f"{backend.name} is disabled by {DISABLE_ENV}"
    return backend.check(config, device)


def _load_builtin_backends() -> None:
    from . import backends  # noqa: F401  (registers on import)
