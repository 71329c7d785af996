"""Memory options of a run: CPU offload and VAE tiling/slicing (the System tab and `generate --offload`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError

OFFLOADS = ("none", "model", "sequential")


@dataclass(frozen=True)
class MemoryOptions:
    offload: str = "none"  # none, model (one model on the device at a time), sequential (layer by layer)
    vae_tiling: bool = False
    vae_slicing: bool = False

    def __post_init__(self):
        if self.offload not in OFFLOADS:
            raise UserError(f"offload={self.offload!r} is unknown; choose one of {', '.join(OFFLOADS)}.")

    def apply(self, pipe, device: torch.device, offload: str | None = None) -> list[str]:
        """Set these options on ``pipe`` before a run (``offload`` overrides this one's); returns notices."""
        notices = []
        offload = offload or self.offload
        vae = getattr(pipe, "vae", None)
        if vae is not None:
            vae.enable_tiling() if self.vae_tiling else vae.disable_tiling()
            vae.enable_slicing() if self.vae_slicing else vae.disable_slicing()
        if offload != "none":
            if device.type == "cpu":
                notices.append("CPU offload has no effect when running on the CPU.")
            elif offload == "model":
                pipe.enable_model_cpu_offload(device=device)
            else:
                pipe.enable_sequential_cpu_offload(device=device)
        return notices
