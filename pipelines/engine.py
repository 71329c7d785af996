"""The Python API that the CLI and the studio both use: one call runs one tool end to end."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from . import defaults
from .base import RunContext, Tool
from .control import Control
from .device import PeakMemory, memory_kind
from .errors import UserError
from .fill import Fill
from .images import save_png
from .kontext import Kontext
from .manager import ModelManager, Progress
from .redux import Redux
from .request import GenerationRequest
from .sources import resolve_model
from .text_to_image import TextToImage

log = logging.getLogger(__name__)

TOOLS: dict[str, Tool] = {
    "schnell": TextToImage("schnell"),
    "dev": TextToImage("dev"),
    "fill": Fill(),
    "kontext": Kontext(),
    "depth": Control("depth"),
    "canny": Control("canny"),
    "redux": Redux(),
}


class BadOutput(RuntimeError):
    """The run produced non-finite or collapsed (flat) pixels."""


@dataclass
class GenerationResult:
    image: Image.Image
    report: dict
    notices: list[str] = field(default_factory=list)
    control_image: Image.Image | None = None

    @property
    def fallbacks(self) -> list[dict]:
        return self.report["quantization"]["fallbacks"]

    def metadata(self) -> dict:
        """What goes into the PNG: the parameters and the quantization outcome."""
        meta = dict(self.report["parameters"])
        meta["quantization"] = self.report["quantization"]
        meta["quantization_summary"] = summary(self.report)
        meta["device"], meta["dtype"] = self.report["device"], self.report["dtype"]
        return meta

    def save(self, path: str | Path) -> Path:
        return save_png(self.image, Path(path), self.metadata())


def summary(report: dict) -> str:
    """e.g. 'transformer: bitsandbytes nf4, text_encoder_2: bitsandbytes nf4'."""
    parts = [f"{name}: {c['backend']} {c['mode']}" for name, c in report["quantization"]["components"].items()]
    return ", ".join(parts)


def check_output(images: np.ndarray) -> None:
    if not np.isfinite(images).all():
        raise BadOutput("output has NaN/inf pixels")
    if float(images.std()) < 1e-3:
        raise BadOutput("output is flat (black or a single colour)")


class Studio:
    """Runs tools on a ModelManager; safe to share, one generation at a time."""

    def __init__(self, manager: ModelManager | None = None, show_progress: bool = False):
        self.manager = manager or ModelManager()
        self.show_progress = show_progress

    def generate(self, request: GenerationRequest, progress: Progress | None = None) -> GenerationResult:
        progress = progress or (lambda stage, done, total: None)
        with self.manager.lock:
            return self._generate(request, progress)

    def _generate(self, request: GenerationRequest, progress: Progress) -> GenerationResult:
        start = time.perf_counter()
        tool = TOOLS[request.tool]
        notices = list(request.notices)
        source = resolve_model(request.model, request.tool)
        if source.is_tiny:
            notices.append("Running the offline demo model 'tiny' (random weights: images look like noise).")
        device = self.manager.device
        with PeakMemory(device) as peak:
            loaded = self.manager.pipeline(source.root, request.quant, progress)
            load_s, quantize_s = loaded.load_s, loaded.quantize_s
            loaded.load_s = loaded.quantize_s = 0.0  # counted once, by the run that loaded it
            if loaded.auto:
                notices.append(f"Auto chose {loaded.mode}: {loaded.auto.reason}.")
            ctx = RunContext(self.manager, source, loaded)
            kwargs = tool.pipeline_kwargs(request, ctx)
            notices += self.manager.prepare_for_run(loaded.pipe)
            retry_fallbacks = []
            while True:
                try:
                    denoise_start = time.perf_counter()
                    images = self._run(loaded, request, kwargs, progress)
                    check_output(images)
                    denoise_s = time.perf_counter() - denoise_start
                    break
                except (UserError, KeyboardInterrupt):
                    raise
                except Exception as error:  # a quantized run that fails degrades, then retries
                    if _is_oom(error):
                        raise UserError("out of memory: try a smaller size, 4-bit, or model CPU offload.") from None
                    reason = f"first inference failed: {type(error).__name__}: {error}".strip()
                    made = self.manager.degrade(loaded, reason)
                    if not made:
                        raise
                    retry_fallbacks += made
                    notices.append(f"Retrying with less quantization ({reason}).")
                    if request.tool in ("redux",) or request.reference is not None:
                        kwargs = tool.pipeline_kwargs(request, ctx)
        image = Image.fromarray((images[0] * 255).round().clip(0, 255).astype(np.uint8))
        components = {name: c.quant.to_dict() for name, c in loaded.components.items()
                      if c.quant and isinstance(c.module, torch.nn.Module)}
        fallbacks = [f.to_dict() for f in loaded.fallbacks]
        report = {
            "tool": request.tool,
            "model": request.model,
            "device": str(device),
            "dtype": str(self.manager.dtype).replace("torch.", ""),
            "seed": request.seed,
            "parameters": request.parameters(),
            "quantization": {
                "requested": request.quant,
                "resolved": loaded.mode,
                "auto_reason": loaded.auto.reason if loaded.auto else None,
                "components": components,
                "fallbacks": fallbacks,
            },
            "memory": {"peak_bytes": peak.peak_bytes, "kind": memory_kind(device)},
            "timings": {"load_s": round(load_s, 4), "quantize_s": round(quantize_s, 4),
                        "denoise_s": round(denoise_s, 4), "total_s": round(time.perf_counter() - start, 4)},
            "notices": notices,
        }
        for fallback in fallbacks:
            notices.append(f"Fallback: {fallback['component']} could not use {fallback['backend']} "
                           f"{fallback['mode']} ({fallback['reason']}).")
        return GenerationResult(image, report, notices, ctx.extras.get("control_image"))

    def _run(self, loaded, request: GenerationRequest, kwargs: dict, progress: Progress) -> np.ndarray:
        pipe = loaded.pipe
        steps = request.steps
        pipe.set_progress_bar_config(disable=not self.show_progress, desc=request.tool)

        def on_step(_pipe, index, _timestep, callback_kwargs):
            progress("denoise", index + 1, steps)
            return callback_kwargs

        tool_defaults = defaults.tool_defaults(request.tool, request.model)
        progress("denoise", 0, steps)
        output = pipe(
            **kwargs,
            height=request.height,
            width=request.width,
            num_inference_steps=steps,
            guidance_scale=request.guidance,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            max_sequence_length=tool_defaults.max_sequence_length,
            callback_on_step_end=on_step,
            output_type="np",
        )
        return output.images


def _is_oom(error: Exception) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())
