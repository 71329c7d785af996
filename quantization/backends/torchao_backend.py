"""torchao int8 (dynamic activation + int8 weight, fast on CPU; or weight-only) and float8 (NVIDIA, compute
capability 8.9 and up: Ada, Hopper, Blackwell)."""

from __future__ import annotations

import torch

from .base import Backend
from .common import assign_state, missing, quantizable_linears, quantize_embeddings, restore_embeddings

STATE_FILE = "weights.pt"  # torchao's tensor subclasses go through torch's safe (weights_only) loader
FLOAT8_CAPABILITY = (8, 9)


def float8_refusal(device: torch.device) -> str | None:
    """Why float8 matmuls (float8_dynamic) cannot run on ``device`` (None when they can)."""
    if device.type != "cuda":
        return f"float8 needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell), not {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < FLOAT8_CAPABILITY:
        return (f"float8 needs compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
                f"{torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}")
    return None


def _ao_config(kind: str):
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig,
                                      Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, PerRow)

    return {"int8_dynamic": Int8DynamicActivationInt8WeightConfig, "int8_weight_only": Int8WeightOnlyConfig,
            "float8_weight_only": Float8WeightOnlyConfig,
            "float8_dynamic": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())}[kind]()


class TorchAoBackend(Backend):
    name = "torchao"
    import_name = "torchao"

    def check(self, config, device):
        reason = missing("torchao", "torchao")
        if reason:
            return reason
        if device.type == "mps":
            return "torchao kernels do not run on Apple MPS (use quanto on Apple Silicon)"
        if config.kind == "float8_weight_only" and device.type == "cpu":
            return None  # float8 weights, dequantized to bf16 for each matmul: no float8 kernel needed
        if config.kind.startswith("float8"):
            return float8_refusal(device)
        return None

    def quantize(self, module, config, device, dtype):
        from torchao.quantization import quantize_

        layers = quantizable_linears(module)
        if not layers:
            raise RuntimeError("no Linear layer to quantize")
        ao_config = _ao_config(config.kind)
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
