"""Small LoRAs for the offline `tiny` family, one per supported file format, built locally on demand.

The diffusers/PEFT file comes from a peft LoRA injected into the tiny dev transformer; the kohya (sd-scripts), BFL
(the reference code's module names under `diffusion_model.`, as BFL's and ComfyUI's tools save them) and XLabs files
carry random low-rank weights under those formats' own key names (fused qkv projections included), so loading them
goes through diffusers' converters as real files do. The kohya file also adapts the CLIP text encoder.

The control LoRAs (one per control tool, as FLUX.1-Depth-dev-lora and FLUX.1-Canny-dev-lora) are in diffusers' naming:
LoRA pairs over the attention layers and the input layer x_embedder at twice the tiny dev's input width (latents
beside the control map), and the replaced norms (norm_q, norm_k, norm_added_q, norm_added_k) as plain weights.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..models.tiny import HIDDEN, TINY_VERSION
from ..paths import cache_root

RANK = 4
FORMATS = ("diffusers", "diffusers-te", "kohya", "bfl", "xlabs")
MLP = HIDDEN * 4
# FLUX.2 [klein]'s: diffusers/PEFT (as diffusers' Flux2 trainers save them) and BFL/ComfyUI (the reference code's
# module names under `diffusion_model.`, lora_A/lora_B), both read by diffusers' Flux2LoraLoaderMixin.
KLEIN_FORMATS = ("diffusers", "bfl")
KLEIN_MLP = HIDDEN * 3  # klein's MLPs are 3 x wide, SwiGLU: the input layer gives 2 x that


def tiny_lora_root() -> Path:
    return cache_root() / "tiny" / TINY_VERSION / "loras"


def tiny_lora(fmt: str, seed: int = 0, root: Path | None = None) -> Path:
    """The tiny LoRA file of format ``fmt`` (see FORMATS), built if missing; ``seed`` gives other weights."""
    if fmt not in FORMATS:
        raise ValueError(f"tiny_lora: fmt={fmt!r} is unknown; use one of {', '.join(FORMATS)}.")
    root = Path(root) if root else tiny_lora_root()
    path = root / f"tiny-{fmt}-{seed}.safetensors"
    if path.exists():
        return path
    _write(path, BUILDERS[fmt](seed))
    return path


def tiny_klein_lora(fmt: str, seed: int = 0, root: Path | None = None) -> Path:
    """The tiny klein LoRA of format ``fmt`` (see KLEIN_FORMATS) for the tiny klein transformers, built if missing."""
    if fmt not in KLEIN_FORMATS:
        raise ValueError(f"tiny_klein_lora: fmt={fmt!r} is unknown; use one of {', '.join(KLEIN_FORMATS)}.")
    root = Path(root) if root else tiny_lora_root()
    path = root / f"tiny-klein-{fmt}-{seed}.safetensors"
    if not path.exists():
        _write(path, (_klein_diffusers if fmt == "diffusers" else _klein_bfl)(seed))
    return path


def tiny_control_lora(tool, root: Path | None = None, width: int | None = None) -> Path:
    """The tiny control LoRA of ``tool`` (a control tool: pipelines.tools), built if missing; ``width``: another
    input width (a file that does not fit, for tests)."""
    if getattr(tool, "control_lora", None) is None:
        raise ValueError(f"tiny_control_lora: the {tool.name} tool has no control LoRA.")
    root = Path(root) if root else tiny_lora_root()
    suffix = f"-{width}" if width else ""
    path = root / f"tiny-control-{tool.name}{suffix}.safetensors"
    if not path.exists():
        _write(path, _control(tool.tiny.seed, width or 2 * HIDDEN))
    return path


# The attention and MLP projections of FLUX.1's blocks (diffusers' names), as FLUX.1 LoRAs usually adapt them.
PROJECTIONS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
               "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
               "ff_context.net.2", "proj_mlp", "proj_out")


def projection_lora(transformer, path: Path, rank: int = 16, seed: int = 0, scale: float = 0.02) -> Path:
    """A diffusers/PEFT-format LoRA of ``rank`` over every attention and MLP projection (PROJECTIONS) of
    ``transformer``'s blocks, at its own widths (any FLUX.1-shaped transformer, quantized or not), written to
    ``path``. The weights are random (down: unit gain; up: ``scale``), so the effect is a few percent per layer."""
    import torch

    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"projection_lora: rank={rank!r} must be a whole number >= 1.")
    gen, state = _generator(seed), {}
    for name, module in transformer.named_modules():
        block, _, inner = name.partition(".")
        if block not in ("transformer_blocks", "single_transformer_blocks"):
            continue
        if inner.partition(".")[2] not in PROJECTIONS or not hasattr(module, "in_features"):
            continue
        state[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=gen) / module.in_features ** 0.5
        state[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=gen) * scale
    if not state:
        raise ValueError("projection_lora: the transformer has no attention or MLP projections to adapt.")
    _write(Path(path), state)
    return Path(path)


def _write(path: Path, state: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".lora-", suffix=".safetensors", dir=path.parent)
    os.close(handle)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _control(seed: int, in_channels: int) -> dict:
    """A peft LoRA on a tiny transformer with the widened input layer, plus norm weights, in diffusers' naming."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from ..models.tiny import tiny_transformer

    gen = _generator(100 + seed)
    transformer = tiny_transformer(0, in_channels=in_channels)
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["x_embedder", "to_q", "to_k", "to_v", "to_out.0",
                                                                 "proj_out"])
    transformer = inject_adapter_in_model(config, transformer)
    _randomize(transformer, gen, scale=0.3)
    state = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(transformer).items()}
    for name, module in transformer.named_modules():
        if name.rpartition(".")[2] in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            state[f"transformer.{name}.weight"] = 1.0 + 0.1 * torch.randn(module.weight.shape, generator=gen)
    return {k: v.detach().to(torch.float32) for k, v in state.items()}


def _generator(seed: int):
    import torch

    return torch.Generator().manual_seed(1000 + seed)


def _pair(gen, out_features: int, in_features: int, scale: float = 0.2):
    """(down [rank, in], up [out, rank]) with visible effect on the tiny models."""
    import torch

    down = torch.randn(RANK, in_features, generator=gen) * scale
    up = torch.randn(out_features, RANK, generator=gen) * scale
    return down, up


def _diffusers(seed: int, text_encoder: bool = False) -> dict:
    """A peft LoRA on the tiny dev transformer (and CLIP), saved in diffusers' key naming."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from ..models.tiny import shared_components, tiny_transformer

    gen = _generator(seed)
    transformer = tiny_transformer(0)
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_out",
                                                                 "add_q_proj", "proj_mlp"])
    transformer = inject_adapter_in_model(config, transformer)
    _randomize(transformer, gen)
    state = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(transformer).items()}
    if text_encoder:
        clip = shared_components()["text_encoder"]
        clip = inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK,
                                                  target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), clip)
        _randomize(clip, gen, scale=0.5)
        state.update({f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(clip).items()})
    return {k: v.detach().to(torch.float32) for k, v in state.items()}


def _randomize(module, gen, scale: float = 0.2) -> None:
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def _kohya(seed: int, bfl: bool = False) -> dict:
    """sd-scripts naming (BFL module names joined by '_', fused qkv, alpha) for the tiny transformer and CLIP;
    ``bfl``: the same layers under BFL's dotted names with the `diffusion_model.` prefix."""
    import torch

    gen, state = _generator(seed), {}

    def add(module: str, out_features: int, in_features: int, alpha: float = RANK / 2):
        name = f"diffusion_model.{module}" if bfl else "lora_unet_" + module.replace(".", "_")
        down, up = _pair(gen, out_features, in_features)
        state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"] = down, up
        state[f"{name}.alpha"] = torch.tensor(alpha)

    for stream in ("img", "txt"):
        add(f"double_blocks.0.{stream}_attn.qkv", 3 * HIDDEN, HIDDEN)
        add(f"double_blocks.0.{stream}_attn.proj", HIDDEN, HIDDEN)
        add(f"double_blocks.0.{stream}_mlp.0", MLP, HIDDEN)
        add(f"double_blocks.0.{stream}_mlp.2", HIDDEN, MLP)
    for block in range(2):  # linear1 (fused qkv + mlp) is split at FLUX.1's full widths by the converter
        add(f"single_blocks.{block}.linear2", HIDDEN, HIDDEN + MLP)
    if not bfl:
        for layer in range(2):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                name = f"lora_te1_text_model_encoder_layers_{layer}_self_attn_{proj}"
                down, up = _pair(gen, HIDDEN, HIDDEN)
                state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"] = down, up
                state[f"{name}.alpha"] = torch.tensor(RANK / 2)
    return state


def _klein_diffusers(seed: int) -> dict:
    """A peft LoRA on a tiny klein transformer (its attention, fused single-block and MLP layers), in diffusers'
    key naming."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from ..models.tiny import tiny_klein_transformer

    gen = _generator(200 + seed)
    transformer = tiny_klein_transformer(0)
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                                                                 "to_add_out", "linear_in", "to_qkv_mlp_proj"])
    transformer = inject_adapter_in_model(config, transformer)
    _randomize(transformer, gen)
    state = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(transformer).items()}
    return {k: v.detach().to(torch.float32) for k, v in state.items()}


def _klein_bfl(seed: int) -> dict:
    """BFL/ComfyUI naming for the tiny klein transformer: `diffusion_model.double_blocks.N.img_attn.qkv` (fused),
    `...img_mlp.0`, `single_blocks.N.linear1` (fused qkv + MLP) and `linear2`, lora_A / lora_B."""
    gen, state = _generator(300 + seed), {}

    def add(module: str, out_features: int, in_features: int):
        down, up = _pair(gen, out_features, in_features)
        state[f"diffusion_model.{module}.lora_A.weight"], state[f"diffusion_model.{module}.lora_B.weight"] = down, up

    for stream in ("img", "txt"):
        add(f"double_blocks.0.{stream}_attn.qkv", 3 * HIDDEN, HIDDEN)
        add(f"double_blocks.0.{stream}_attn.proj", HIDDEN, HIDDEN)
        add(f"double_blocks.0.{stream}_mlp.0", 2 * KLEIN_MLP, HIDDEN)
        add(f"double_blocks.0.{stream}_mlp.2", HIDDEN, KLEIN_MLP)
    for block in range(2):
        add(f"single_blocks.{block}.linear1", 3 * HIDDEN + 2 * KLEIN_MLP, HIDDEN)
        add(f"single_blocks.{block}.linear2", HIDDEN, HIDDEN + KLEIN_MLP)
    return state


def _xlabs(seed: int) -> dict:
    """XLabs naming: processor.{qkv,proj}_lora{1,2}.{down,up}.weight, fused qkv."""
    gen, state = _generator(seed), {}

    def add(name: str, out_features: int, in_features: int):
        state[f"{name}.down.weight"], state[f"{name}.up.weight"] = _pair(gen, out_features, in_features)

    for stream in ("1", "2"):
        add(f"double_blocks.0.processor.qkv_lora{stream}", 3 * HIDDEN, HIDDEN)
        add(f"double_blocks.0.processor.proj_lora{stream}", HIDDEN, HIDDEN)
    return state


BUILDERS = {
    "diffusers": _diffusers,
    "diffusers-te": lambda seed: _diffusers(seed, text_encoder=True),
    "kohya": _kohya,
    "bfl": lambda seed: _kohya(seed, bfl=True),
    "xlabs": _xlabs,
}
