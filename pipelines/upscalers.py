"""The hires fix's upscalers: Lanczos resampling, or a super-resolution model file (ESRGAN and the other
architectures spandrel reads) in the upscaler folder (FLUXFORGE_UPSCALER_DIR), chosen by its name there.

spandrel is an optional install (`pip install spandrel`): without it a chosen file is refused in one line."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import UserError

LANCZOS = "Lanczos"
SUFFIXES = (".pth", ".pt", ".safetensors")
TILE = 512  # input pixels a side per tile (a model's working memory grows with the tile, not the image)
OVERLAP = 16  # input pixels each tile reaches into its neighbours, so that the seams are not seen


def upscaler_files(folder: Path | None = None) -> list[Path]:
    """The model files under the upscaler folder (pipelines.paths.upscaler_dir), sorted by name."""
    from .paths import upscaler_dir

    folder = Path(folder) if folder else upscaler_dir()
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                   and not p.name.startswith(".")), key=lambda p: str(p.relative_to(folder)).lower())


def upscaler_choices(folder: Path | None = None) -> list[str]:
    """What can be chosen: Lanczos, then each file by its name in the folder (e.g. "4x-UltraSharp.pth")."""
    from .paths import upscaler_dir

    folder = Path(folder) if folder else upscaler_dir()
    return [LANCZOS] + [p.relative_to(folder).as_posix() for p in upscaler_files(folder)]


def check_upscaler(name, folder: Path | None = None) -> str:
    """The upscaler a request names, checked: Lanczos (also for None or ""), or a file in the folder (its name there,
    as upscaler_choices gives it); anything else is a UserError naming it and the folder's choices."""
    from .paths import UPSCALER_DIR_ENV, upscaler_dir

    if name is None or (isinstance(name, str) and not name.strip()):
        return LANCZOS
    if not isinstance(name, str):
        raise UserError(f"hires_upscaler={name!r} is not a name; give Lanczos or a file in {UPSCALER_DIR_ENV}.")
    name = name.strip()
    if name.lower() == LANCZOS.lower():
        return LANCZOS
    choices = upscaler_choices(folder)
    if name not in choices:
        files = ", ".join(choices[1:]) or f"none: put .pth or .safetensors files in {UPSCALER_DIR_ENV}"
        raise UserError(f"hires_upscaler={name!r} is not an upscaler in {UPSCALER_DIR_ENV} ({files}); give "
                        f"Lanczos or one of its files.")
    return name


def upscaler_path(name: str, folder: Path | None = None) -> Path | None:
    """The file of a checked upscaler name (None for Lanczos)."""
    from .paths import upscaler_dir

    return None if name == LANCZOS else (Path(folder) if folder else upscaler_dir()) / name


def upscaler_bytes(name: str, folder: Path | None = None) -> int:
    """What a checked upscaler holds in memory, for the estimates: its file's size (its weights as stored; a run in
    a narrower dtype holds less), 0 for Lanczos."""
    path = upscaler_path(name, folder)
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


@dataclass
class Upscaler:
    """A super-resolution model loaded through spandrel, on a device in a dtype."""

    name: str
    model: object  # spandrel.ImageModelDescriptor
    scale: int
    architecture: str
    params: int
    dtype: torch.dtype

    def to_dict(self) -> dict:
        return {"name": self.name, "architecture": self.architecture, "scale": self.scale, "params": self.params}


def run_dtype_for(model, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype an upscaler runs in: the studio's, where its architecture takes it and the device convolves it
    natively; else float32. A CPU without oneDNN's bf16 convolutions (AVX2 only) takes a path hundreds of times
    slower in bf16 (a tiny ESRGAN on 128x128: 22.5 s against 0.1 s in float32 on a 2-core AMD EPYC)."""
    from .memory.placement import onednn_bf16

    takes = {torch.bfloat16: model.supports_bfloat16, torch.float16: model.supports_half}.get(dtype, True)
    if dtype == torch.bfloat16 and device.type == "cpu" and not onednn_bf16():
        takes = False
    return dtype if takes else torch.float32


def load_upscaler(name: str, path: Path, device: torch.device, dtype: torch.dtype) -> Upscaler:
    """``path`` read by spandrel, as a super-resolution model on ``device`` (in ``dtype`` where the architecture
    takes it, else float32); a file that cannot be read or is not a super-resolution model is one UserError."""
    try:
        import spandrel
    except ImportError as error:
        raise UserError(f"hires_upscaler={name!r} needs spandrel, which is not installed ({error}): run "
                        "`pip install spandrel`, or choose Lanczos.") from None
    try:
        model = spandrel.ModelLoader(device="cpu").load_from_file(path)
    except spandrel.UnsupportedModelError:
        raise UserError(f"hires_upscaler={name!r} is not a model spandrel knows (not an ESRGAN-family or other "
                        "super-resolution file); use another file or Lanczos.") from None
    except Exception as error:  # noqa: BLE001  (torch.load's and safetensors' errors: one line naming the file)
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        raise UserError(f"hires_upscaler={name!r} cannot be read ({type(error).__name__}: {reason}); use another "
                        "file or Lanczos.") from None
    if not isinstance(model, spandrel.ImageModelDescriptor) or model.purpose != "SR" or model.scale < 2:
        what = f"a {model.architecture.name} {model.purpose} model at {model.scale}x"
        raise UserError(f"hires_upscaler={name!r} is {what}, not a super-resolution model; use an upscaling file "
                        "(2x, 4x) or Lanczos.")
    run_dtype = run_dtype_for(model, device, dtype)
    model.to(device=device, dtype=run_dtype).eval()
    params = sum(p.numel() for p in model.model.parameters())
    return Upscaler(name, model, model.scale, model.architecture.name, params, run_dtype)


def upscale_image(image: Image.Image, size: tuple[int, int], upscaler: Upscaler | None = None,
                  tile: int = TILE) -> tuple[Image.Image, float]:
    """``image`` at ``size`` and the seconds it took: the model's output (run in overlapping tiles) resampled to
    ``size`` with Lanczos, or Lanczos alone without a model."""
    start = time.perf_counter()
    image = image.convert("RGB")
    if upscaler is not None:
        image = _run_tiled(upscaler, image, tile)
    larger = image if image.size == tuple(size) else image.resize(size, Image.Resampling.LANCZOS)
    larger.info["source"] = "hires first pass, upscaled"
    return larger, time.perf_counter() - start


def _run_tiled(upscaler: Upscaler, image: Image.Image, tile: int) -> Image.Image:
    """The model's output for ``image``, computed tile by tile (each reaching OVERLAP pixels into its neighbours,
    of which only its own part is kept)."""
    model, scale = upscaler.model, upscaler.scale
    device = model.device
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    _, _, height, width = pixels.shape
    out = torch.zeros(1, 3, height * scale, width * scale)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            y0, x0 = max(0, top - OVERLAP), max(0, left - OVERLAP)
            y1, x1 = min(height, top + tile + OVERLAP), min(width, left + tile + OVERLAP)
            piece = pixels[:, :, y0:y1, x0:x1].to(device=device, dtype=upscaler.dtype)
            result = model(piece).float().cpu()
            bottom, right = min(height, top + tile), min(width, left + tile)
            out[:, :, top * scale:bottom * scale, left * scale:right * scale] = result[
                :, :, (top - y0) * scale:(bottom - y0) * scale, (left - x0) * scale:(right - x0) * scale]
    array = (out[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)
