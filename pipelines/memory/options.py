"""How runs use memory and time: CPU offload, placement, VAE tiling/slicing, torch.compile and the step cache.

Studio-wide (the System tab, and `generate`'s options); every run's report records the options it ran with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..errors import UserError
from .placement import PLACEMENTS

OFFLOADS = ("none", "model", "sequential")


@dataclass(frozen=True)
class RunOptions:
    offload: str = "none"  # none, model (one model on the device at a time), sequential (layer by layer)
    placement: str = "auto"  # where components live per phase (pipelines.memory.placement); auto plans from free memory
    vae_tiling: bool = False  # always decode in tiles (auto placement also tiles when a whole decode won't fit)
    vae_slicing: bool = False
    compile: bool = False  # torch.compile of the repeated transformer blocks (NVIDIA GPUs)
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
        asks for tiles); returns notices."""
        notices = []
        offload = offload or self.offload
        vae = getattr(pipe, "vae", None)
        if vae is not None:
            vae.enable_tiling() if self.vae_tiling or tiled else vae.disable_tiling()
            vae.enable_slicing() if self.vae_slicing else vae.disable_slicing()
        if offload != "none":
            if device.type == "cpu":
                notices.append("CPU offload has no effect when running on the CPU.")
            elif offload == "model":
                pipe.enable_model_cpu_offload(device=device)
            else:
                pipe.enable_sequential_cpu_offload(device=device)
        return notices
