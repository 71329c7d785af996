"""Shared fixtures: a private model cache, the tiny family, a studio on the CPU, and test images."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

# Before any project import: the tiny family and outputs go to a private folder for the session.
os.environ.setdefault("FLUXFORGE_CACHE_DIR", tempfile.mkdtemp(prefix="fluxforge-test-cache-"))
os.environ.setdefault("FLUXFORGE_OUTPUT_DIR", tempfile.mkdtemp(prefix="fluxforge-test-outputs-"))
os.environ.setdefault("FLUXFORGE_DEVICE", "cpu")
os.environ.pop("FLUXFORGE_DISABLE_BACKENDS", None)


@pytest.fixture(scope="session")
def tiny_root():
    from pipelines.models.tiny import ensure_tiny_family
    from pipelines.tools import all_tools

    return ensure_tiny_family(all_tools())


@pytest.fixture(scope="session")
def studio(tiny_root):
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager

    return Engine(ModelManager(device="cpu"))


@pytest.fixture
def fresh_studio(tiny_root):
    """A studio with its own manager, for tests that change what is loaded."""
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager

    return Engine(ModelManager(device="cpu"))


def make_photo(width: int = 128, height: int = 96) -> Image.Image:
    """A synthetic photo with edges and gradients (so Canny and depth have structure)."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, width // 2, height * 3 // 4), fill=(240, 200, 40))
    draw.rectangle((width * 5 // 8, height // 5, width * 7 // 8, height // 2), fill=(30, 60, 200))
    return image


def make_mask(width: int = 128, height: int = 96) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=255)
    return mask


@pytest.fixture
def photo():
    return make_photo()


@pytest.fixture
def mask():
    return make_mask()


@pytest.fixture
def image_files(tmp_path):
    """photo.png, mask.png, a mismatched mask, an empty file and a truncated PNG on disk."""
    paths = {"photo": tmp_path / "photo.png", "mask": tmp_path / "mask.png", "small_mask": tmp_path / "small.png",
             "empty": tmp_path / "empty.png", "truncated": tmp_path / "truncated.png", "text": tmp_path / "notes.txt"}
    make_photo().save(paths["photo"])
    make_mask().save(paths["mask"])
    make_mask(64, 64).save(paths["small_mask"])
    paths["empty"].write_bytes(b"")
    paths["truncated"].write_bytes(paths["photo"].read_bytes()[:200])
    paths["text"].write_text("not an image")
    return paths


def force_chain(monkeypatch, tmp_path, config) -> None:
    """Quantize with ``config`` (then full precision) whatever the policy says; a private store, no probe."""
    from quantization.config import FULL_PRECISION

    monkeypatch.setenv("FLUXFORGE_QUANT_CACHE_DIR", str(tmp_path / "quantized"))
    monkeypatch.setenv("FLUXFORGE_PROBE", "0")
    monkeypatch.setattr("pipelines.manager.candidates",
                        lambda quant, device: (config, FULL_PRECISION) if quant != "none" else (FULL_PRECISION,))


def fail_first_4bit_run(monkeypatch):
    """The transformer quantized with the first 4-bit CPU option fails its first run (as an unsupported kernel
    would): returns (first, second), the options the run starts with and falls back to."""
    from quantization.policy import candidates
    from quantization.registry import backend_for

    first, second = candidates("4bit", "cpu")[:2]
    backend_type = type(backend_for(first))
    original = backend_type.quantize

    def explode(*args):
        raise RuntimeError("kernel not implemented for this shape")

    def poisoned(self, module, config, device, dtype):
        module = original(self, module, config, device, dtype)
        if type(module).__name__ == "FluxTransformer2DModel" and config == first:
            module.proj_out.register_forward_pre_hook(explode)  # a hooked module is never stored
        return module

    monkeypatch.setattr(backend_type, "quantize", poisoned)
    return first, second
