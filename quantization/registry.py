"""Backend handlers, found by config type: the built-in table plus any registered by a plugin."""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch

from .backends import BUILTIN
from .backends.base import Backend
from .config import QuantConfig

DISABLE_ENV = "FLUXFORGE_DISABLE_BACKENDS"

_REGISTRY: dict[type, Backend] = dict(BUILTIN)


def register(config_type: type) -> Callable[[type], type]:
    """Class decorator for a plugin backend: handles configs of ``config_type``."""
    def wrap(cls: type) -> type:
        _REGISTRY[config_type] = cls()
        return cls

    return wrap


def backend_for(config: QuantConfig) -> Backend:
    try:
        return _REGISTRY[type(config)]
    except KeyError:
        raise ValueError(f"no backend is registered for {type(config).__name__}; register one with "
                         "quantization.registry.register") from None


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


def offload_refusal(config: QuantConfig, offload: str) -> str | None:
    """Why ``config``'s layers cannot run under ``offload`` (none, model, block, sequential); None when they can."""
    return None if offload == "none" else backend_for(config).offload_refusal(config, offload)


def loaded_offload_refusal(backend: str, fmt: str, offload: str) -> str | None:
    """offload_refusal for a component already loaded with ``backend`` ``fmt`` (its record's names): pre-quantized
    formats this registry has no handler for (GGUF) are refused block and sequential offload."""
    if offload == "none" or backend == "none":
        return None
    handler = next((b for b in _REGISTRY.values() if b.name == backend), None)
    if handler is None:
        return None if offload == "model" else (f"{backend} {fmt} weights are not known to survive {offload} "
                                                "offload; use model offload")
    from .policy import all_configs

    config = next((c for c in all_configs() if (c.backend, c.format) == (backend, fmt)), None)
    return handler.offload_refusal(config, offload) if config is not None else None


def count_quantized_layers(module: torch.nn.Module, config: QuantConfig) -> int:
    backend = backend_for(config)
    return sum(1 for layer in module.modules() if backend.is_quantized_layer(layer))


@contextlib.contextmanager
def state_dict_as_stored(module: torch.nn.Module):
    """Within it, ``module.state_dict()`` gives quantized weights as each backend stores them, never converted (e.g.
    quanto's int4 unpacked): for callers that read only its keys, such as adapter loading."""
    with contextlib.ExitStack() as stack:
        for backend in {id(b): b for b in _REGISTRY.values()}.values():
            stack.enter_context(backend.state_dict_as_stored(module))
        yield
