"""Quantize one component along its fallback chain, recording what happened and why."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from .config import QuantConfig
from .probe import enabled as probe_enabled
from .probe import linear_shapes, probe
from .registry import backend_for, check_backend
from .sizes import module_bytes

log = logging.getLogger(__name__)


@dataclass
class Fallback:
    component: str
    backend: str
    mode: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ComponentQuant:
    backend: str
    mode: str
    bytes_before: int
    bytes_after: int
    quantize_s: float
    quantized_layers: int = 0
    fallbacks: list[Fallback] = field(default_factory=list)
    from_cache: bool = False  # read from the quantized-weights cache instead of quantized now
    prequantized: bool = False  # the checkpoint itself was quantized; its format wins over the requested mode

    def to_dict(self) -> dict:
        return {"backend": self.backend, "mode": self.mode, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "quantize_s": round(self.quantize_s, 4),
                "quantized_layers": self.quantized_layers, "from_cache": self.from_cache,
                "prequantized": self.prequantized}


def count_quantized_layers(module: torch.nn.Module, config: QuantConfig) -> int:
    backend = backend_for(config)
    return sum(1 for layer in module.modules() if backend.is_quantized_layer(layer))


def quantize_with_fallback(
    component: str,
    load: Callable[[], torch.nn.Module],
    chain: Sequence[QuantConfig],
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.nn.Module, QuantConfig, ComponentQuant]:
    """Try each config of ``chain`` in turn; the last one (full precision) must not fail.

    ``load`` returns a fresh full-precision copy on the CPU; it is called again after a failed attempt,
    since a half-quantized module cannot be trusted.
    """
    fallbacks: list[Fallback] = []
    module = None
    for index, config in enumerate(chain):
        reason = check_backend(config, device)
        if reason is None:
            module = module if module is not None else load()
            if config.bits < 16 and probe_enabled():
                result = probe(config, device, dtype, linear_shapes(module))
                reason = None if result.ok else result.reason
        if reason is None:
            before = module_bytes(module)
            start = time.perf_counter()
            try:
                module = backend_for(config).quantize(module, config, device, dtype)
                layers = count_quantized_layers(module, config)
                if config.bits < 16 and layers == 0:
                    raise RuntimeError("no layer was quantized")
            except Exception as error:  # any backend failure moves down the chain
                if index == len(chain) - 1:
                    raise
                reason = f"quantizing failed: {type(error).__name__}: {error}".strip()
                module = None
            else:
                record = ComponentQuant(config.backend, config.mode, before, module_bytes(module),
                                        time.perf_counter() - start, layers, fallbacks)
                return module, config, record
        fallbacks.append(Fallback(component, config.backend, config.mode, reason))
        log.warning("%s: %s %s unavailable (%s); trying the next option", component, config.backend,
                    config.mode, reason)
    raise RuntimeError(f"{component}: no quantization option worked")
