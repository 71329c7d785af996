"""Where the studio keeps what it builds and learns: the tiny family, quantized weights, probe results."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FLUXFORGE_CACHE_DIR"  # root of everything below (default ~/.cache/fluxforge)
QUANT_CACHE_ENV = "FLUXFORGE_QUANT_CACHE"  # "0" turns the quantized-weights cache off
QUANT_DIR_ENV = "FLUXFORGE_QUANT_CACHE_DIR"  # where quantized weights go (default <root>/quantized)
PROBE_ENV = "FLUXFORGE_PROBE"  # "0" turns the capability probe off
LORA_DIR_ENV = "FLUXFORGE_LORA_DIR"  # where the studio lists LoRA files (default <root>/loras)
MODEL_DIR_ENV = "FLUXFORGE_MODEL_DIR"  # where the studio lists your own models (default <root>/models)
UPSCALER_DIR_ENV = "FLUXFORGE_UPSCALER_DIR"  # the hires fix's upscaler files (default <root>/upscalers)


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fluxforge"


def quantized_dir() -> Path:
    folder = os.environ.get(QUANT_DIR_ENV)
    return Path(folder).expanduser() if folder else cache_root() / "quantized"


def lora_dir() -> Path:
    folder = os.environ.get(LORA_DIR_ENV)
    return Path(folder).expanduser() if folder else cache_root() / "loras"


def model_dir() -> Path:
    folder = os.environ.get(MODEL_DIR_ENV)
    return Path(folder).expanduser() if folder else cache_root() / "models"


def upscaler_dir() -> Path:
    folder = os.environ.get(UPSCALER_DIR_ENV)
    return Path(folder).expanduser() if folder else cache_root() / "upscalers"


def probes_dir() -> Path:
    return cache_root() / "probes"


def quant_caches():
    """The caches quantization may use, as the environment sets them (None turns one off)."""
    from quantization.load import Caches

    weights = quantized_dir() if os.environ.get(QUANT_CACHE_ENV, "1") != "0" else None
    probes = probes_dir() if os.environ.get(PROBE_ENV, "1") != "0" else None
    return Caches(weights=weights, probes=probes)
