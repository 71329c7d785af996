"""Every tensor a module owns and where it is: registered parameters and buffers, and also the tensors that libraries
keep beside them (attributes of a parameter, state objects, the parts of a tensor subclass), which a move that only
knows the registered ones leaves behind. A component moved to a device must have all of them there."""

from __future__ import annotations

from collections import Counter

import torch

from .sizes import is_wrapper

_DEPTH = 5  # how deep into attribute objects (state objects hold tensors; their own attributes rarely nest further)
_SKIP = ("_modules", "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
         "_state_dict_hooks", "_load_state_dict_pre_hooks", "_state_dict_pre_hooks",
         "_load_state_dict_post_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
         "_forward_hooks_always_called")


def owned_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """The plain tensors ``module`` and its submodules hold: parameters, buffers, tensor attributes of modules, of
    parameters and of the objects they refer to (each counted once; a tensor subclass counts as its inner tensors).
    Offload hooks' own copies are not the module's (they are what offloading keeps elsewhere on purpose)."""
    found: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    for child in module.modules():
        for name, value in vars(child).items():
            if name not in _SKIP and name not in ("_hf_hook", "_diffusers_hook"):
                _collect(value, found, seen, 0)
    return list(found.values())


def tensors_by_device(module: torch.nn.Module) -> dict[str, int]:
    """How many of ``module``'s own tensors (owned_tensors) are on each device type, e.g. {"cuda": 412}."""
    return dict(Counter(tensor.device.type for tensor in owned_tensors(module)))


def _collect(value, found: dict, seen: set, depth: int) -> None:
    if depth > _DEPTH or id(value) in seen or isinstance(value, (torch.nn.Module, type, str, bytes, int, float,
                                                                 bool, torch.dtype, torch.device)):
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        if is_wrapper(value):
            names, _ = value.__tensor_flatten__()
            for name in names:
                _collect(getattr(value, name), found, seen, depth + 1)
        else:
            found[id(value)] = value
        for attribute in getattr(value, "__dict__", {}).values():  # e.g. bitsandbytes' CB / SCB / quant_state
            _collect(attribute, found, seen, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            _collect(item, found, seen, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _collect(item, found, seen, depth + 1)
    elif hasattr(value, "__dict__") and not callable(value):
        for item in vars(value).values():  # state objects (bitsandbytes' MatmulLtState, QuantState, ...)
            _collect(item, found, seen, depth + 1)
