"""Live previews: the latents of a run in progress as a picture, without the VAE.

A fixed linear map takes FLUX.1's 16 latent channels to RGB (the published FLUX.1 latent-to-RGB factors and
bias, the ones ComfyUI and others use for their FLUX previews; no model to download). It runs on the
pipeline's latents as they are during denoising (scaled and shifted, before the VAE's own un-scaling), one
pixel per latent position, so the picture is 1/8 of the output size and is then scaled up to it. It costs a
small matrix product and a resize: nothing next to a transformer step.
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

# What a preview callback receives: the picture, the step just done (1-based) and the number of steps.
PreviewCallback = Callable[[Image.Image, int, int], None]


def latents_to_rgb(latents: torch.Tensor) -> np.ndarray:
    """(16, h, w) or (1, 16, h, w) latents -> (h, w, 3) uint8: the linear projection, [-1, 1] mapped to 0..255.

    The latents are read, never changed (the run goes on with them)."""
    if latents.dim() == 4:
        latents = latents[0]
    if latents.dim() != 3 or latents.shape[0] != LATENT_CHANNELS:
        raise ValueError(f"preview: expected {LATENT_CHANNELS} latent channels, got shape {tuple(latents.shape)}")
    factors = torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float32)
    bias = torch.tensor(LATENT_RGB_BIAS, dtype=torch.float32)
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


def is_preview_step(step: int, every: int) -> bool:
    """True on the steps (1-based) a preview is made: every ``every``-th; ``every`` 0 makes none."""
    return every > 0 and step % every == 0
