"""torchao int8: dynamic activation + int8 weight (fast on CPU), or int8 weight-only."""

from __future__ import annotations

import torch

from .base import Backend
from .common import assign_state, missing, quantizable_linears, quantize_embeddings, restore_embeddings

STATE_FILE = "weights.pt"  # torchao's tensor subclasses go through torch's safe (weights_only) loader


class TorchAoBackend(Backend):
    name = "torchao"

    def check(self, config, device):
        reason = missing("torchao", "torchao")
        if reason:
            return reason
        if device.type == "mps":
            return "torchao int8 kernels do not run on Apple MPS (use quanto on Apple Silicon)"
        return None

    def quantize(self, module, config, device, dtype):
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

        layers = quantizable_linears(module)
        if not layers:
            raise RuntimeError("no Linear layer to quantize")
        ao_config = Int8DynamicActivationInt8WeightConfig() if config.kind == "int8_dynamic" else Int8WeightOnlyConfig()
        for _, linear in layers:  # one layer at a time, so the device never holds the full-precision model
            quantize_(linear.to(device), ao_config, filter_fn=lambda m, fqn: True)
        quantize_embeddings(module, dtype)
        return module.to(device)

    def is_quantized_layer(self, layer):
        from torch.utils._python_dispatch import is_traceable_wrapper_subclass

        return isinstance(layer, torch.nn.Linear) and is_traceable_wrapper_subclass(layer.weight)

    can_serialize = True
    library = "torchao"

    def save(self, module, path):
        torch.save(module.state_dict(), path / STATE_FILE)
        return [STATE_FILE]

    def load(self, skeleton, path, config, device, dtype):
        import torchao  # noqa: F401  (registers its tensor types with torch's safe loader)

        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        skeleton.requires_grad_(False)  # as quantize_ leaves the weights
        restore_embeddings(skeleton, state)
        return assign_state(skeleton, state).to(device)
