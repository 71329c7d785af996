"""optimum-quanto: qint8 / qint4 weights on CPU, MPS and CUDA (kept behind this module)."""

from __future__ import annotations

import torch

from ..config import QuantoConfig
from ..registry import Backend, register
from .common import MIN_IN_FEATURES, missing, quantizable_linears


@register(QuantoConfig)
class QuantoBackend(Backend):
    name = "quanto"

    def check(self, config, device):
        return missing("optimum.quanto", "optimum-quanto")

    def quantize(self, module, config, device, dtype):
        from optimum.quanto import freeze, qint4, qint8, quantize

        weights = qint8 if config.weights == "int8" else qint4
        skip = [name for name, child in module.named_modules()
                if isinstance(child, torch.nn.Linear) and child.in_features < MIN_IN_FEATURES]
        include = [name for name, _ in quantizable_linears(module)]
        if not include:
            raise RuntimeError("no Linear layer to quantize")
        quantize(module, weights=weights, include=include, exclude=skip or None)
        freeze(module)
        return module.to(device)

    def is_quantized_layer(self, layer):
        from optimum.quanto.nn import QLinear

        return isinstance(layer, QLinear)
