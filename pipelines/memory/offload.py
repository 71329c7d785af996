"""CPU offload of a pipeline's weights: what is installed on it, installing one kind, removing it.

- model: one component at a time on the device (accelerate's hooks, through diffusers' enable_model_cpu_offload);
- block: the blocks of the family's big components (the transformer and T5 or Qwen3) one at a time, the next one
  copied in while the current one computes on a CUDA stream (diffusers' group offloading); CLIP and the VAE come to
  the device for their own phase (placement);
- sequential: one layer at a time (accelerate's per-layer hooks, as diffusers' enable_sequential_cpu_offload puts
  them, with the run's device as it is: diffusers makes it "cpu:0" on a CPU, which accelerate then mishandles).

What is installed is read from the modules themselves (their hooks), so a report says what really ran, and a change
of option (back to none included) replaces what is there. Which quantization backends each kind carries is the
backend's to say (quantization.registry.offload_refusal); the manager asks before loading anything.
"""

from __future__ import annotations

import torch

from ..families import family_of

OFFLOADS = ("none", "model", "block", "sequential")
_GROUP_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")  # diffusers' names


def modules(pipe) -> dict[str, torch.nn.Module]:
    return {name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


def installed(pipe) -> str:
    """The offload installed on ``pipe``'s components: none, model, block or sequential ("mixed" if several)."""
    kinds = {kind for kind in map(_kind, modules(pipe).values()) if kind != "none"}
    return kinds.pop() if len(kinds) == 1 else ("none" if not kinds else "mixed")


def managed(module: torch.nn.Module) -> bool:
    """True while offload hooks decide where ``module``'s weights are (placement then leaves it alone)."""
    return _kind(module) != "none"


def _kind(module: torch.nn.Module) -> str:
    from accelerate.hooks import AlignDevicesHook, CpuOffload, SequentialHook

    hook = getattr(module, "_hf_hook", None)
    if isinstance(hook, CpuOffload):
        return "model"
    if isinstance(hook, AlignDevicesHook) or (isinstance(hook, SequentialHook)
                                              and any(isinstance(h, AlignDevicesHook) for h in hook.hooks)):
        return "sequential"
    if any(getattr(sub, "_diffusers_hook", None) is not None and sub._diffusers_hook.get_hook(_GROUP_HOOKS[0])
           for sub in module.modules()):
        return "block"
    return "none"


def remove(pipe) -> None:
    """Take every offload hook off ``pipe``'s components; their weights stay where the hooks last left them (in CPU
    memory), for placement to bring to the device."""
    from diffusers.hooks import HookRegistry

    pipe.remove_all_hooks()
    for module in modules(pipe).values():
        for sub in module.modules():
            registry = getattr(sub, "_diffusers_hook", None)
            if registry is not None:
                for name in _GROUP_HOOKS:
                    registry.remove_hook(name, recurse=False)


def install(pipe, kind: str, device: torch.device) -> None:
    """Put offload ``kind`` on ``pipe`` (whatever was there is removed first; "none" only removes)."""
    if kind not in OFFLOADS:
        raise ValueError(f"offload={kind!r} is unknown; choose one of {', '.join(OFFLOADS)}.")
    if installed(pipe) == kind:
        return
    remove(pipe)
    if kind == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif kind == "sequential":
        from accelerate import cpu_offload

        for module in modules(pipe).values():
            module.to("cpu")
            cpu_offload(module, execution_device=device, offload_buffers=len(module._parameters) > 0)
    elif kind == "block":
        from diffusers.hooks import apply_group_offloading

        parts = modules(pipe)
        for name in family_of(type(pipe).__name__).quantized:  # the big ones: their blocks one by one
            if name in parts:
                parts[name].to("cpu")
                apply_group_offloading(parts[name], onload_device=device, offload_device=torch.device("cpu"),
                                       offload_type="block_level", num_blocks_per_group=1,
                                       use_stream=device.type == "cuda", block_modules=_block_path(parts[name]))


def _block_path(module: torch.nn.Module) -> list[str] | None:
    """The submodules leading to ``module``'s longest list of blocks (T5's are under ``encoder``): group offloading
    recurses into them instead of moving them whole."""
    lists = [(len(sub), name) for name, sub in module.named_modules() if isinstance(sub, torch.nn.ModuleList) and name]
    if not lists:
        return None
    path = max(lists)[1].split(".")[:-1]
    return path or None
