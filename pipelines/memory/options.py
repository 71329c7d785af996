"""How runs use memory and time: CPU offload, placement, VAE tiling/slicing, torch.compile and the step cache.

Studio-wide (the System tab, and `generate`'s options); every run's report records the options it ran with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..errors import UserError
from .offload import OFFLOADS, install
from .placement import PLACEMENTS, TILE


@dataclass(frozen=True)
class RunOptions:
    offload: str = "none"  # none, model (one model at a time), block (block by block), sequential (layer by layer)
    placement: str = "auto"  # where components live per phase (pipelines.memory.placement); auto plans from free memory
    vae_tiling: bool = False  # always decode in tiles (auto placement also tiles when a whole decode won't fit)
    vae_slicing: bool = False
    compile: bool = False  # torch.compile of the repeated transformer blocks (NVIDIA GPUs and CPUs)
    step_cache: float = 0.0  # First-Block Cache threshold; 0 = off

    def __post_init__(self):
        if self.offload not in OFFLOADS:
            raise UserError(f"offload={self.offload!r} is unknown; choose one of {', '.join(OFFLOADS)}.")
        if self.placement not in PLACEMENTS:
            raise UserError(f"placement={self.placement!r} is unknown; choose one of {', '.join(PLACEMENTS)}.")
        if isinstance(self.step_cache, bool) or not isinstance(self.step_cache, (int, float)) or \
                not math.isfinite(self.step_cache) or not 0 <= self.step_cache <= 1:
            raise UserError(f"step_cache={self.step_cache!r} must be a threshold in 0..1 (0 turns it off; "
                            "0.08-0.12 is typical).")

    def to_dict(self) -> dict:
        return asdict(self)

    def apply(self, pipe, device: torch.device, offload: str | None = None, tiled: bool = False) -> list[str]:
        """Set the offload and VAE options on ``pipe`` before a run (``offload`` overrides this one's, ``tiled``
        asks for tiles on top of ``vae_tiling``); returns notices. Offload hooks already there are kept when they are
        the ones asked for, replaced when not, and taken off for none."""
        notices = []
        offload = offload or self.offload
        vae = getattr(pipe, "vae", None)
        if vae is not None:
            if self.vae_tiling or tiled:
                tile_vae(vae)
            else:
                vae.disable_tiling()
            vae.enable_slicing() if self.vae_slicing else vae.disable_slicing()
        install(pipe, offload, device)
        notice = offload_notice(offload, device.type)
        return notices + ([notice] if notice else [])


def offload_notice(offload: str, device_type: str) -> str | None:
    """What a run under ``offload`` is told on ``device_type`` where offload saves no memory (None elsewhere)."""
    if offload == "none":
        return None
    if device_type == "cpu":
        return (f"{offload.capitalize()} CPU offload saves no memory on the CPU (the weights are in CPU memory "
                "already); its hooks run as they would on a GPU.")
    if device_type == "mps":
        return (f"{offload.capitalize()} CPU offload saves no memory on Apple MPS (the CPU and the GPU share one pool "
                "of memory) and slows the run; set it back to none.")
    return None


def tile_vae(vae) -> None:
    """Decode (and encode) in tiles of TILE x TILE pixels, the tile the placement plan and the estimates count on.
    diffusers sizes a tile by the VAE's ``sample_size`` (1024 for FLUX's), which would leave every image up to
    1024 x 1024 untiled."""
    vae.enable_tiling()
    vae.tile_sample_min_size = TILE
    vae.tile_latent_min_size = TILE // 2 ** (len(vae.config.block_out_channels) - 1)
