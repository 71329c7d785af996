"""Honest weight-byte accounting, quantized tensor formats included."""

from __future__ import annotations

import torch


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor really holds; wrapper subclasses (quanto, torchao) are unflattened."""
    if is_wrapper(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def is_wrapper(tensor) -> bool:
    """A tensor subclass made of inner tensors (quanto, torchao)."""
    return getattr(tensor, "__tensor_flatten__", None) is not None and type(tensor) not in (torch.Tensor,
                                                                                           torch.nn.Parameter)


def own_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors of ``module``'s own state (its children's excluded), as its state_dict would hold them.

    A module holding a wrapper-subclass parameter gives its parameters and persistent buffers as they are (their
    parts are counted by unflattening): its state_dict may convert them (quanto unpacks its int4 TinyGemm layout
    there, about 9M weights/s on a 2-core CPU). Other modules go through their own state_dict step, which holds
    extra state too (bitsandbytes' quantization state)."""
    params = [p for p in module._parameters.values() if p is not None]
    if any(is_wrapper(p) for p in params):
        return params + [b for name, b in module._buffers.items()
                         if b is not None and name not in module._non_persistent_buffers_set]
    state: dict = {}
    module._save_to_state_dict(state, "", keep_vars=True)
    return [value for value in state.values() if isinstance(value, torch.Tensor)]


def module_bytes(module: torch.nn.Module) -> int:
    """Weight bytes of ``module`` as stored: parameters, buffers and quantization state."""
    return sum(bytes_by_module(module).values())


def bytes_by_module(module: torch.nn.Module) -> dict[str, int]:
    """Weight bytes of each submodule's own state (a tensor shared by several is counted at its first)."""
    from .registry import state_dict_as_stored

    out, seen, alive = {}, set(), []  # alive: tensors made on the way stay referenced, so ids stay unique
    with state_dict_as_stored(module):  # counting never converts (or changes) a quantized layer
        for name, child in module.named_modules():
            values = own_tensors(child)
            alive.append(values)
            total = 0
            for value in values:
                if id(value) not in seen:
                    seen.add(id(value))
                    total += tensor_bytes(value)
            out[name] = total
    return out
