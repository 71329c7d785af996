"""Which backend runs a quantization mode on which device: pure functions, tested as tables."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .config import (FULL_PRECISION, BitsAndBytesConfig, NoQuantConfig, QuantConfig, QuantoConfig,
                     TorchAoConfig)
from .measured import CPU_STEP_RATIO, CPU_WEIGHT_RATIO

MODES = ("auto", "none", "8bit", "4bit")
QUANTS = MODES

# Candidates in order of preference; full precision always ends the chain.
# MPS: quanto (never float8). CUDA: bitsandbytes. CPU: ordered from measurements on its class of CPU (cpu_chain).
POLICY: dict[tuple[str, str], tuple[QuantConfig, ...]] = {
    ("cuda", "8bit"): (BitsAndBytesConfig("int8"), TorchAoConfig("int8_weight_only"), QuantoConfig("int8")),
    ("cuda", "4bit"): (BitsAndBytesConfig("nf4"), QuantoConfig("int4")),
    ("mps", "8bit"): (QuantoConfig("int8"),),
    ("mps", "4bit"): (QuantoConfig("int4"),),
}

# Weight bytes relative to bf16 (REFERENCE.md's physical floor plus scales).
RATIO = {"none": 1.0, "8bit": 0.51, "4bit": 0.28}
HEADROOM = 1.25  # activations, latents and the allocator's slack

# CPU options per mode, in the order used where measurements tie or are missing.
CPU_OPTIONS: dict[str, tuple[QuantConfig, ...]] = {
    "8bit": (TorchAoConfig("int8_dynamic"), QuantoConfig("int8"), BitsAndBytesConfig("int8"),
             TorchAoConfig("int8_weight_only")),
    "4bit": (BitsAndBytesConfig("nf4"), QuantoConfig("int4")),
}


def cpu_order(mode: str, step_ratio: dict[tuple[str, str], float],
              weight_ratio: dict[tuple[str, str], float]) -> tuple[QuantConfig, ...]:
    """CPU candidates for ``mode``: options meeting RATIO[mode], fastest measured step first; then the rest.

    ``step_ratio`` / ``weight_ratio``: (backend, mode) -> measured ratio to full precision (quantization/measured.py).
    """
    def key(config: QuantConfig) -> tuple:
        name = (config.backend, config.mode)
        meets = weight_ratio.get(name, float("inf")) <= RATIO[mode]
        return (not meets, name not in step_ratio, step_ratio.get(name, 0.0))

    return tuple(sorted(CPU_OPTIONS[mode], key=key))


@functools.cache
def cpu_class() -> str:
    """'native-bf16' where the CPU computes bf16 in hardware (AVX512-BF16 or AMX), else 'emulated-bf16'.

    The two rank the backends differently: a bf16 matmul emulated on AVX2 is several times slower than an int8 one.
    """
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own cpuinfo queries
    native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return "native-bf16" if native else "emulated-bf16"


def cpu_step_ratios(cpu: str | None = None) -> dict[tuple[str, str], float]:
    """Measured step-time ratios for ``cpu`` (default: this CPU's class); empty when unmeasured."""
    return CPU_STEP_RATIO.get(cpu or cpu_class(), {})


def cpu_chain(mode: str, cpu: str | None = None) -> tuple[QuantConfig, ...]:
    """The CPU candidates for ``mode`` on ``cpu`` (default: this CPU's class), from the measured tables."""
    return cpu_order(mode, cpu_step_ratios(cpu), CPU_WEIGHT_RATIO)


def candidates(mode: str, device_type: str) -> tuple[QuantConfig, ...]:
    """The fallback chain for ``mode`` ('none', '8bit', '4bit') on ``device_type``."""
    if mode not in MODES or mode == "auto":
        raise ValueError(f"mode={mode!r} has no candidates; resolve 'auto' first, or use one of none, 8bit, 4bit.")
    if mode == "none":
        return (FULL_PRECISION,)
    if device_type not in ("cuda", "mps"):
        return cpu_chain(mode) + (FULL_PRECISION,)
    return POLICY[(device_type, mode)] + (FULL_PRECISION,)


@dataclass(frozen=True)
class AutoChoice:
    mode: str
    reason: str


def choose_auto_mode(quantizable_bytes: int, other_bytes: int, free_bytes: int | None) -> AutoChoice:
    """Full precision when the model fits with headroom, else 8-bit, else 4-bit.

    ``quantizable_bytes``: transformer + T5 at full precision; ``other_bytes``: CLIP, VAE and the rest.
    """
    gib = 2**30
    if free_bytes is None:
        return AutoChoice("none", "free memory unknown: full precision")
    for mode in ("none", "8bit", "4bit"):
        need = (quantizable_bytes * RATIO[mode] + other_bytes) * HEADROOM
        if need <= free_bytes:
            return AutoChoice(mode, f"needs ~{need / gib:.1f} GiB of {free_bytes / gib:.1f} GiB free")
    need = (quantizable_bytes * RATIO["4bit"] + other_bytes) * HEADROOM
    return AutoChoice("4bit", f"even 4-bit needs ~{need / gib:.1f} GiB of {free_bytes / gib:.1f} GiB free: "
                              "consider model CPU offload")


def is_full_precision(config: QuantConfig) -> bool:
    return isinstance(config, NoQuantConfig)
