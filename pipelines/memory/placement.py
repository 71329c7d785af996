"""Where each component lives in each phase of a run, planned from free memory: a pure function.

A run has three phases: encode (the text encoders, or the Redux prior with them), denoise (the transformer) and
decode (the VAE). Components in ``resident`` stay on the device throughout; the others come to the device for
their own phase only and wait in CPU memory otherwise. Everything stays resident when it fits with headroom
(fastest); else the text encoders leave after encoding (they come back only for a new prompt, since prompt
embeddings are cached); else the transformer, too, waits in CPU memory while the prompt is encoded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

PLACEMENTS = ("auto", "resident", "encoders-off", "swap")
PHASES = {"encode": frozenset({"text_encoder", "text_encoder_2"}), "denoise": frozenset({"transformer"}),
          "decode": frozenset({"vae"})}
KEEP_FIRST = ("transformer", "vae", "text_encoder_2", "text_encoder")  # the costliest to move stays first
HEADROOM = 1.1  # the allocator's slack on top of weights and working memory
# VAE decoder activations at bf16, whole image, where torch convolves bf16 with oneDNN (GPUs; CPUs with AVX-512 or
# AMX). Measured on the tiny family's VAE (widths 1/8 of FLUX's; activations scale with the width) as 280-300 B/pixel
# of process RSS at 512-1024 px squared on an Intel Xeon (an AMD EPYC with AVX-512 measured 236): 8 x 290.
DECODE_BYTES_PER_PIXEL = 2320
# The same where torch has no oneDNN bf16 convolution (CPUs with AVX2 only): its fallback holds 2.55x as much (and
# takes ~30x as long): 738-744 B/pixel on the tiny VAE at 512-1024 px squared on a 2-core AMD EPYC (AVX2): 8 x 744.
FALLBACK_DECODE_BYTES_PER_PIXEL = 5952
TILE = 512  # the side of a decode tile, in pixels (pipelines.memory.options.tile_vae applies it)
TILE_PIXELS = TILE * TILE  # what a tiled decode holds at once
ENCODE_BYTES_PER_TOKEN_WIDTH = 2 * 16  # T5 activations: bf16 x ~16 live tensors of (tokens x width)
DENOISE_BYTES_PER_TOKEN_WIDTH = 2 * 24  # transformer activations: bf16 x ~24 live tensors of (tokens x width)


# Devices whose memory is one pool with the CPU's: nothing moves there (moving to the CPU would free nothing).
ONE_POOL = {"cpu": "on the CPU nothing moves",
            "mps": "Apple's unified memory is one pool: moving a part to the CPU frees nothing, so nothing moves"}


@dataclass(frozen=True)
class Placement:
    name: str  # resident, encoders-off or swap
    resident: frozenset
    tiled_decode: bool
    reason: str

    def on_device(self, phase: str) -> frozenset:
        return self.resident | PHASES[phase]

    def to_dict(self) -> dict:
        return {"name": self.name, "resident": sorted(self.resident), "tiled_decode": self.tiled_decode,
                "reason": self.reason}


def decode_bytes_per_pixel(device_type: str) -> int:
    """The VAE decode's working memory per output pixel at the FLUX VAE's width on ``device_type``: more on a CPU
    whose torch has no oneDNN bf16 convolution (it convolves bf16 by a fallback)."""
    if device_type == "cpu" and not onednn_bf16():
        return FALLBACK_DECODE_BYTES_PER_PIXEL
    return DECODE_BYTES_PER_PIXEL


@functools.cache
def onednn_bf16() -> bool:
    """True when this torch convolves bf16 on the CPU with oneDNN (the CPU has AVX-512 or AMX); True when it cannot
    tell."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def working_memory(pixels: int, text_tokens: int, hidden: int, text_dim: int = 4096,
                   condition_pixels: int = 0) -> dict[str, int]:
    """Activations per phase besides the decode: the text encoder's from its tokens and width; the transformer's
    from its image tokens (one per 16x16 pixels, of the output and of a conditioning image that joins the sequence,
    as Kontext's does) and text tokens, times its width."""
    return {"encode": text_tokens * text_dim * ENCODE_BYTES_PER_TOKEN_WIDTH,
            "denoise": ((pixels + condition_pixels) // 256 + text_tokens) * hidden * DENOISE_BYTES_PER_TOKEN_WIDTH}


def phase_bytes(sizes: dict[str, int], resident: frozenset, phase: str, work: dict[str, int], decode: int) -> int:
    """What ``phase`` holds on the device: the weights there then, its working memory (``decode``: the decode's)."""
    weights = sum(sizes.get(name, 0) for name in resident | PHASES[phase])
    return weights + work.get(phase, 0) + (decode if phase == "decode" else 0)


def _name(resident: frozenset, components: frozenset) -> str:
    if resident >= components:
        return "resident"
    return "encoders-off" if "transformer" in resident else "swap"


def forced_resident(name: str, components: frozenset) -> frozenset:
    if name == "resident":
        return components
    if name == "encoders-off":
        return components - PHASES["encode"]
    return components - PHASES["encode"] - PHASES["denoise"]


def plan(sizes: dict[str, int], free_bytes: int | None, work: dict[str, int], pixels: int, device_type: str,
         force: str = "auto") -> Placement:
    """The placement of a pipeline whose components weigh ``sizes`` (bytes on the device).

    ``free_bytes``: device memory free for this pipeline (None: unknown); ``work``: working memory per phase
    (activations) besides the decode, which ``pixels`` sets; ``device_type``: on the CPU nothing moves (the
    device is the CPU memory), nor on Apple MPS (one pool for the CPU and the GPU: a component parked "on the CPU"
    frees nothing, and holds two copies while it moves); a decode that would not fit still runs in tiles.
    """
    if force not in PLACEMENTS:
        raise ValueError(f"placement={force!r} is unknown; choose one of {', '.join(PLACEMENTS)}.")
    components = frozenset(sizes)
    per_pixel = decode_bytes_per_pixel(device_type)
    decode_work = pixels * per_pixel

    def need(resident: frozenset, phase: str, decode: int) -> float:
        return phase_bytes(sizes, resident, phase, work, decode) * HEADROOM

    def fits(resident: frozenset, decode: int) -> bool:
        return free_bytes is None or all(need(resident, phase, decode) <= free_bytes for phase in PHASES)

    def settle(decode: int) -> frozenset:
        resident = frozenset()
        for name in KEEP_FIRST:  # keep what fits, the costliest to move first
            if name in components and fits(resident | {name}, decode):
                resident |= {name}
        return resident | (components - set(KEEP_FIRST))

    tile_work = min(decode_work, TILE_PIXELS * per_pixel)
    if force != "auto":
        resident = forced_resident(force, components)
        tiled = not fits(resident, decode_work)
        return Placement(_name(resident, components), resident, tiled, f"{force}, as asked" + _tiles(tiled))
    if device_type in ONE_POOL or free_bytes is None:
        tiled = free_bytes is not None and not fits(components, decode_work)
        why = "free memory unknown" if free_bytes is None else ONE_POOL[device_type]
        if device_type == "mps" and free_bytes is not None and not fits(components, tile_work):
            why += "; it does not fit even with a tiled decode: use a smaller size or more quantization"
        return Placement("resident", components, tiled, why + _tiles(tiled))
    resident, tiled = settle(decode_work), False
    if len(settle(tile_work)) > len(resident) or not fits(resident, decode_work):
        resident, tiled = settle(tile_work), True  # decoding in tiles keeps more on the device
    from quantization.units import size_text

    everything = (sum(sizes.values()) + max(work.values(), default=0) + decode_work) * HEADROOM
    reason = f"~{size_text(everything)} for everything at once, {size_text(free_bytes)} free"
    if not fits(resident, tile_work):
        reason += "; even one part at a time does not fit: use model CPU offload"
    return Placement(_name(resident, components), resident, tiled, reason + _tiles(tiled))


def _tiles(tiled: bool) -> str:
    return "; the image is decoded in tiles" if tiled else ""
