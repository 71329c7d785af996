"""optimum-quanto: qint8 / qint4 weights on CPU, MPS and CUDA (kept behind this module)."""

from __future__ import annotations

import json

import torch

from .base import Backend
from .common import (MIN_IN_FEATURES, assign_state, load_state, missing, quantizable_linears, quantize_embeddings,
                     restore_embeddings, save_state)


# quanto unpacks its int4 TinyGemm layout to save it, at ~9M weights/s on a 2-core CPU (a FLUX.1 transformer: ~20
# min, against ~2.5 min to quantize it again): past this many weights in that layout the entry is not written.
SLOW_SAVE_WEIGHTS = 50_000_000


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
        quantize_embeddings(module, dtype)
        return module.to(device)

    def is_quantized_layer(self, layer):
        from optimum.quanto.nn import QLinear

        return isinstance(layer, QLinear)

    can_serialize = True
    library = "optimum-quanto"

    def save(self, module, path):
        from optimum.quanto import quantization_map

        packed = sum(m.weight.numel() for m in module.modules()
                     if type(getattr(m, "weight", None)).__name__ == "TinyGemmWeightQBitsTensor")
        if packed > SLOW_SAVE_WEIGHTS:
            raise RuntimeError(f"saving would unpack {packed / 1e6:.0f}M int4 weights from quanto's TinyGemm layout "
                               "(slower than quantizing again)")

        return [save_state(module.state_dict(), path, {"quantization_map": json.dumps(quantization_map(module))})]

    def load(self, skeleton, path, config, device, dtype):
        from optimum.quanto import quantize

        state, metadata = load_state(path)
        groups: dict[tuple[str, str], list[str]] = {}
        for name, entry in json.loads(metadata["quantization_map"]).items():
            groups.setdefault((entry["weights"], entry["activations"]), []).append(name)
        for (weights, activations), names in groups.items():  # QLinear layers, still empty (meta)
            quantize(skeleton, weights=None if weights == "none" else weights,
                     activations=None if activations == "none" else activations, include=names)
        restore_embeddings(skeleton, state)
        return assign_state(skeleton, state).to(device)
