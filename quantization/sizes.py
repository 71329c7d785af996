"""Honest weight-byte accounting, quantized tensor formats included."""

from __future__ import annotations

import torch


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor really holds; wrapper subclasses (quanto, torchao) are unflattened."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = flatten()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def module_bytes(module: torch.nn.Module) -> int:
    """Weight bytes of ``module`` as stored: parameters, buffers and quantization state."""
    total, seen = 0, set()
    for value in module.state_dict(keep_vars=True).values():
        if not isinstance(value, torch.Tensor):
            continue
        key = id(value)
        if key in seen:
            continue
        seen.add(key)
        total += tensor_bytes(value)
    return total
