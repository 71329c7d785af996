"""Live previews: the latents of a run in progress as a picture, without the VAE.

A fixed linear map takes FLUX.1's 16 latent channels to RGB (the published FLUX.1 latent-to-RGB factors and
bias, the ones ComfyUI and others use for their FLUX previews; no model to download). It runs on the
pipeline's latents as they are during denoising (scaled and shifted, before the VAE's own un-scaling), one
pixel per latent position, so the picture is 1/8 of the output size and is then scaled up to it. It costs a
small matrix product and a resize: nothing next to a transformer step.

FLUX.2's latents are 32 channels, packed 2x2 into 128 per token (and batch-normalised by the VAE's statistics while
denoising); they are unpatchified to 32 channels at 1/8 of the output size and mapped with FLUX.2's own factors.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image

# Rows: latent channels 0..15; columns: R, G, B.
LATENT_RGB_FACTORS = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329),
    (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915),
    (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421),
    (-0.0515, 0.0201, 0.0011),
    (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749),
    (-0.1264, -0.0522, -0.1103),
    (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)
LATENT_CHANNELS = len(LATENT_RGB_FACTORS)

# FLUX.2's 32 latent channels -> R, G, B, applied to the pipeline's denoising latents (batch-normalised, unpatchified
# as diffusers' Flux2KleinPipeline._unpatchify_latents does). Source: ComfyUI, comfy/latent_formats.py, class Flux2
# (its latent_rgb_factors and latent_rgb_factors_bias, with latent_rgb_factors_reshape the same unpatchify).
FLUX2_LATENT_RGB_FACTORS = (
    (0.0058, 0.0113, 0.0073), (0.0495, 0.0443, 0.0836), (-0.0099, 0.0096, 0.0644), (0.2144, 0.3009, 0.3652),
    (0.0166, -0.0039, -0.0054), (0.0157, 0.0103, -0.0160), (-0.0398, 0.0902, -0.0235), (-0.0052, 0.0095, 0.0109),
    (-0.3527, -0.2712, -0.1666), (-0.0301, -0.0356, -0.0180), (-0.0107, 0.0078, 0.0013), (0.0746, 0.0090, -0.0941),
    (0.0156, 0.0169, 0.0070), (-0.0034, -0.0040, -0.0114), (0.0032, 0.0181, 0.0080), (-0.0939, -0.0008, 0.0186),
    (0.0018, 0.0043, 0.0104), (0.0284, 0.0056, -0.0127), (-0.0024, -0.0022, -0.0030), (0.1207, -0.0026, 0.0065),
    (0.0128, 0.0101, 0.0142), (0.0137, -0.0072, -0.0007), (0.0095, 0.0092, -0.0059), (0.0000, -0.0077, -0.0049),
    (-0.0465, -0.0204, -0.0312), (0.0095, 0.0012, -0.0066), (0.0290, -0.0034, 0.0025), (0.0220, 0.0169, -0.0048),
    (-0.0332, -0.0457, -0.0468), (-0.0085, 0.0389, 0.0609), (-0.0076, 0.0003, -0.0043), (-0.0111, -0.0460, -0.0614),
)
FLUX2_LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)
FLUX2_LATENT_CHANNELS = len(FLUX2_LATENT_RGB_FACTORS)

# What a preview callback receives: the picture, the step just done (1-based) and the number of steps.
PreviewCallback = Callable[[Image.Image, int, int], None]


def latents_to_rgb(latents: torch.Tensor, factors=LATENT_RGB_FACTORS, bias=LATENT_RGB_BIAS) -> np.ndarray:
    """(C, h, w) or (1, C, h, w) latents -> (h, w, 3) uint8: the linear projection, [-1, 1] mapped to 0..255.

    ``factors``: C rows of (R, G, B) (FLUX.1's 16 by default). The latents are read, never changed (the run goes on
    with them)."""
    if latents.dim() == 4:
        latents = latents[0]
    if latents.dim() != 3 or latents.shape[0] != len(factors):
        raise ValueError(f"preview: expected {len(factors)} latent channels, got shape {tuple(latents.shape)}")
    factors = torch.tensor(factors, dtype=torch.float32)
    bias = torch.tensor(bias, dtype=torch.float32)
    rgb = torch.nn.functional.linear(latents.detach().to("cpu", torch.float32).permute(1, 2, 0), factors.T, bias)
    rgb = torch.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=-1.0)
    return ((rgb + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()


def preview_image(latents: torch.Tensor, width: int, height: int) -> Image.Image:
    """The latents (unpacked: (1, 16, h, w)) as an RGB picture of ``width`` x ``height``."""
    picture = Image.fromarray(latents_to_rgb(latents), "RGB")
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    return picture


def packed_preview(pipe, latents: torch.Tensor, width: int, height: int) -> Image.Image:
    """A preview from a FLUX pipeline's packed latents ((1, tokens, 64)), unpacked as the decode does."""
    unpacked = pipe._unpack_latents(latents[:1].detach(), height, width, pipe.vae_scale_factor)
    return preview_image(unpacked, width, height)


def flux2_packed_preview(latents: torch.Tensor, width: int, height: int) -> Image.Image:
    """A preview from a FLUX.2 pipeline's packed latents ((1, tokens, 128), tokens row by row at 1/16 of the output
    size): unpatchified to 32 channels at 1/8 of it, then mapped with FLUX.2's factors."""
    rows, cols = height // 16, width // 16
    first = latents[:1].detach()
    if first.dim() != 3 or first.shape[1] != rows * cols or first.shape[2] != 4 * FLUX2_LATENT_CHANNELS:
        raise ValueError(f"preview: expected (1, {rows * cols}, {4 * FLUX2_LATENT_CHANNELS}) packed FLUX.2 latents, "
                         f"got shape {tuple(latents.shape)}")
    grid = first.reshape(1, rows, cols, -1).permute(0, 3, 1, 2)
    spatial = grid.reshape(1, FLUX2_LATENT_CHANNELS, 2, 2, rows, cols).permute(0, 1, 4, 2, 5, 3)
    spatial = spatial.reshape(1, FLUX2_LATENT_CHANNELS, rows * 2, cols * 2)
    picture = Image.fromarray(latents_to_rgb(spatial, FLUX2_LATENT_RGB_FACTORS, FLUX2_LATENT_RGB_BIAS), "RGB")
    return picture if picture.size == (width, height) else picture.resize((width, height),
                                                                          Image.Resampling.BILINEAR)


def is_preview_step(step: int, every: int) -> bool:
    """True on the steps (1-based) a preview is made: every ``every``-th; ``every`` 0 makes none."""
    return every > 0 and step % every == 0
