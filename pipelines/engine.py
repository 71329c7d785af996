"""The Python API that the CLI and the studio both use: one call runs one tool end to end."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .device import PeakMemory
from .errors import UserError
from .images import save_png
from .manager import ModelManager, Progress
from .report import build_report, fallback_notices, summary
from .request import GenerationRequest
from .sources import resolve_model
from .tools import Prepared, RunContext

log = logging.getLogger(__name__)


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


def check_output(images: np.ndarray) -> None:
    if not np.isfinite(images).all():
        raise BadOutput("output has NaN/inf pixels")
    if float(images.std()) < 1e-3:
        raise BadOutput("output is flat (black or a single colour)")


class Engine:
    """Runs tools on a ModelManager; safe to share, one generation at a time."""

    def __init__(self, manager: ModelManager | None = None, show_progress: bool = False):
        self.manager = manager or ModelManager()
        self.show_progress = show_progress

    def generate(self, request: GenerationRequest, progress: Progress | None = None) -> GenerationResult:
        progress = progress or (lambda stage, done, total: None)
        with self.manager.lock:
            return self._generate(request, progress)

    def control_map(self, tool_name: str, model: str, image: Image.Image, **fields) -> Image.Image:
        """The control map ``tool_name`` would compute from ``image`` (e.g. to preview it before a run)."""
        request = GenerationRequest(tool=tool_name, model=model, image=image, prompt="preview", **fields)
        tool = request.spec
        if not hasattr(tool, "control_map"):
            raise UserError(f"the {tool.name} tool has no control map.")
        with self.manager.lock:
            ctx = RunContext(self.manager, resolve_model(request.model, tool))
            return tool.control_map(request.image, request, ctx)

    def _generate(self, request: GenerationRequest, progress: Progress) -> GenerationResult:
        start = time.perf_counter()
        tool = request.spec
        notices = list(request.notices)
        source = resolve_model(request.model, tool)
        if source.is_tiny:
            notices.append("Running the offline demo model 'tiny' (random weights: images look like noise).")
        with PeakMemory(self.manager.device) as peak:
            loaded = self.manager.pipeline(source.root, request.quant, progress,
                                           transformer=Path(request.transformer) if request.transformer else None)
            load_s, quantize_s = loaded.load_s, loaded.quantize_s
            loaded.load_s = loaded.quantize_s = 0.0  # counted once, by the run that loaded it
            if loaded.auto:
                notices.append(f"Auto chose {loaded.quant}: {loaded.auto.reason}.")
            ctx = RunContext(self.manager, source, loaded.pipe)
            prepared = tool.prepare(request, ctx)
            run_fallbacks: list[dict] = []
            denoise_start = time.perf_counter()
            images = self._run_with_recovery(tool, ctx, loaded, request, prepared, progress, notices, run_fallbacks)
            denoise_s = time.perf_counter() - denoise_start
        image = Image.fromarray((images[0] * 255).round().clip(0, 255).astype(np.uint8))
        timings = {"load_s": load_s, "quantize_s": quantize_s, "denoise_s": denoise_s,
                   "total_s": time.perf_counter() - start}
        report = build_report(request, prepared, loaded, self.manager, peak.peak_bytes, timings, run_fallbacks,
                              notices)
        notices += fallback_notices(report)
        return GenerationResult(image, report, notices, prepared.control_image)

    def _run_with_recovery(self, tool, ctx: RunContext, loaded, request: GenerationRequest, prepared: Prepared,
                           progress, notices, run_fallbacks) -> np.ndarray:
        """Denoise and decode; on failure, retry along the fallback chain, then with freed memory/offload."""
        oom_steps = list(oom_recovery_steps(self.manager.device.type))
        notices += self.manager.prepare_for_run(loaded.pipe)
        while True:
            try:
                latents = self._denoise(loaded.pipe, request, prepared, progress)
                return self._decode(loaded.pipe, latents, prepared, notices, run_fallbacks)
            except (UserError, KeyboardInterrupt):
                raise
            except Exception as error:
                if _is_oom(error):
                    self.manager.free_after_oom(keep=loaded.key)
                    if not oom_steps:
                        raise UserError("out of memory: try a smaller size, --quant 4bit, or model CPU offload "
                                        "(--offload model, or the System tab).") from None
                    step = oom_steps.pop(0)
                    notices.append(f"Out of memory: retrying with {step}.")
                    run_fallbacks.append({"component": "pipeline", "backend": "memory", "format": step,
                                          "reason": "out of memory"})
                    if step != "freed memory":
                        notices += self.manager.prepare_for_run(loaded.pipe, offload=step.split()[0])
                    continue
                reason = f"first inference failed: {type(error).__name__}: {error}".strip()
                if not self.manager.degrade(loaded, reason):
                    raise
                notices.append(f"Retrying with less quantization ({reason}).")
                if "prompt_embeds" in prepared.kwargs:  # made with the text encoders just replaced
                    ctx.pipe = loaded.pipe
                    prepared = tool.prepare(request, ctx)

    def _denoise(self, pipe, request: GenerationRequest, prepared: Prepared, progress: Progress) -> torch.Tensor:
        steps = request.steps
        pipe.set_progress_bar_config(disable=not self.show_progress, desc=request.tool)

        def on_step(_pipe, index, _timestep, callback_kwargs):
            if not torch.isfinite(callback_kwargs["latents"]).all():
                raise BadOutput(f"latents became NaN/inf at step {index + 1}")
            progress("denoise", index + 1, steps)
            return callback_kwargs

        progress("denoise", 0, steps)
        output = pipe(
            **prepared.kwargs,
            height=prepared.height,
            width=prepared.width,
            num_inference_steps=steps,
            guidance_scale=request.guidance,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            max_sequence_length=request.spec.defaults(request.model).max_sequence_length,
            callback_on_step_end=on_step,
            output_type="latent",
        )
        return output.images

    @torch.no_grad()
    def _decode(self, pipe, latents, prepared: Prepared, notices, run_fallbacks) -> np.ndarray:
        """Decode with the VAE; NaN or flat pixels from a bf16 decode are retried once in float32."""
        vae_dtype = pipe.vae.dtype
        latents = pipe._unpack_latents(latents, prepared.height, prepared.width, pipe.vae_scale_factor)
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        images = self._vae_decode(pipe, latents, vae_dtype)
        try:
            check_output(images)
            return images
        except BadOutput as error:
            if vae_dtype == torch.float32:
                raise
            notices.append(f"Decoding gave bad pixels ({error}): decoded again with a float32 VAE.")
            run_fallbacks.append({"component": "vae", "backend": "none", "format": str(vae_dtype).replace(
                "torch.", ""), "reason": str(error)})
        try:
            pipe.vae.to(torch.float32)
            images = self._vae_decode(pipe, latents, torch.float32)
        finally:
            pipe.vae.to(vae_dtype)
        check_output(images)
        return images

    @staticmethod
    def _vae_decode(pipe, latents, dtype) -> np.ndarray:
        image = pipe.vae.decode(latents.to(dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image.float(), output_type="np")


def oom_recovery_steps(device_type: str) -> tuple[str, ...]:
    """What to try, in order, after running out of memory (offload needs an accelerator)."""
    if device_type in ("cuda", "mps"):
        return ("model offload", "sequential offload")
    return ("freed memory",)


def _is_oom(error: Exception) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())
