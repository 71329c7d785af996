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
    from pipelines.tiny import ensure_tiny_family
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
