"""Tiny FLUX.2 [klein] transformers as the single files BFL publishes: BFL's own tensor names (fused QKV, shift-first
final modulation), in bf16, in ``fp8r`` (e4m3 weights with fp32 per-row scales) and in ``nvfp4`` (packed E2M1 weights,
E4M3 block scales, a global scale and an activation scale), the last under ComfyUI's prefix.

The names are made from diffusers' own by the inverse of diffusers' FLUX.2 converter; the quantized layouts come from
diffusers' BFL quantizer's own functions, so the files hold exactly what that loader reads."""

from __future__ import annotations

import re
from pathlib import Path

import torch

RENAMES = {  # diffusers -> BFL, outside the blocks
    "x_embedder": "img_in", "context_embedder": "txt_in",
    "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin", "proj_out": "final_layer.linear"}
DOUBLE = {"attn.norm_q.weight": "img_attn.norm.query_norm.scale", "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
          "attn.to_out.0": "img_attn.proj", "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
          "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
          "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale", "attn.to_add_out": "txt_attn.proj",
          "ff_context.linear_in": "txt_mlp.0", "ff_context.linear_out": "txt_mlp.2"}
QKV = {"img": ("attn.to_q", "attn.to_k", "attn.to_v"), "txt": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2", "attn.norm_q.weight": "norm.query_norm.scale",
          "attn.norm_k.weight": "norm.key_norm.scale"}
BLOCK_LINEAR = re.compile(r"(double|single)_blocks\.\d+\.(img_attn\.(qkv|proj)|txt_attn\.(qkv|proj)|img_mlp\.[02]|"
                          r"txt_mlp\.[02]|linear[12])\.weight$")


def _renamed(rest: str, table: dict[str, str]) -> str:
    for ours, theirs in table.items():
        if rest == ours or rest.startswith(ours + "."):
            return theirs + rest[len(ours):]
    raise KeyError(rest)


def bfl_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers Flux2Transformer2DModel state dict in BFL's names."""
    out = {}
    fused = {name for names in QKV.values() for name in names}
    for name, tensor in state.items():
        if name.startswith("norm_out.linear."):  # diffusers keeps (scale, shift), BFL (shift, scale)
            scale, shift = tensor.chunk(2, dim=0)
            out["final_layer.adaLN_modulation.1." + name.rsplit(".", 1)[1]] = torch.cat([shift, scale])
        elif match := re.match(r"transformer_blocks\.(\d+)\.(.*)", name):
            index, rest = match.groups()
            part = next((p for p in fused if rest.startswith(p + ".")), None)
            if part is None:
                out[f"double_blocks.{index}.{_renamed(rest, DOUBLE)}"] = tensor
            elif part in ("attn.to_q", "attn.add_q_proj"):
                side = "img" if part == "attn.to_q" else "txt"
                param = rest[len(part) + 1:]
                out[f"double_blocks.{index}.{side}_attn.qkv.{param}"] = torch.cat(
                    [state[f"transformer_blocks.{index}.{p}.{param}"] for p in QKV[side]])
        elif match := re.match(r"single_transformer_blocks\.(\d+)\.(.*)", name):
            index, rest = match.groups()
            out[f"single_blocks.{index}.{_renamed(rest, SINGLE)}"] = tensor
        else:
            base, param = name.rsplit(".", 1)
            out[f"{RENAMES[base]}.{param}"] = tensor
    return out


def fp8r(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BFL's fp8r layout: each block linear as e4m3 weights, fp32 per-row scales and an activation scale."""
    from diffusers.quantizers.bfl.utils import quantize_fp8r

    out = {}
    for name, tensor in state.items():
        if BLOCK_LINEAR.match(name):
            base = name[: -len(".weight")]
            out[name], out[f"{base}.weight_scale"] = quantize_fp8r(tensor)
            out[f"{base}.input_scale"] = torch.tensor(1.0)
        else:
            out[name] = tensor
    return out


def nvfp4(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BFL's nvfp4 layout (ModelOpt's): each block linear packed two E2M1 values a byte, with block and global
    scales and an activation scale."""
    from diffusers.quantizers.bfl.utils import quantize_nvfp4

    out = {}
    for name, tensor in state.items():
        if BLOCK_LINEAR.match(name):
            base = name[: -len(".weight")]
            out[name], out[f"{base}.weight_scale"], out[f"{base}.weight_scale_2"] = quantize_nvfp4(tensor)
            out[f"{base}.input_scale"] = torch.tensor(1.0)
        else:
            out[name] = tensor
    return out


def write_klein_files(root: Path, folder: Path) -> dict[str, Path]:
    """The tiny klein model's transformer (``root``/klein) as BFL's single files, written to ``folder``."""
    from diffusers import Flux2Transformer2DModel
    from safetensors.torch import save_file

    module = Flux2Transformer2DModel.from_pretrained(root / "klein", subfolder="transformer", dtype=torch.bfloat16)
    state = bfl_names({name: tensor.contiguous() for name, tensor in module.state_dict().items()})
    files = {"bf16": folder / "flux-2-klein-tiny.safetensors", "fp8": folder / "flux-2-klein-tiny-fp8.safetensors",
             "nvfp4": folder / "flux-2-klein-tiny-nvfp4.safetensors"}
    save_file(state, files["bf16"])
    save_file(fp8r(state), files["fp8"])
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in nvfp4(state).items()}, files["nvfp4"])
    return files
