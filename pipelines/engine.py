"""The Python API that the CLI and the studio both use: one call runs one tool end to end."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import defaults
from .errors import Cancelled, UserError
from .images import save_png
from .loras import (apply_control_lora, apply_loras, check_lora, control_lora_file, release_control_lora,
                    text_encoder_adapters)
from .manager import ModelManager, Progress
from .memory.device import PeakMemory
from .memory.placement import Placement
from .models import single_file
from .models.sources import resolve_model
from .preview import PreviewCallback, is_preview_step, packed_preview
from .report import build_report, fallback_notices, summary
from .request import GenerationRequest
from .speed import compile_refusal, compile_transformer, step_cache
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
        for name in ("placement", "options", "step_cache", "compiled"):
            meta[name] = self.report[name]
        if "conditioning" in self.report:  # how several input images became one conditioning image
            meta["conditioning"] = self.report["conditioning"]
        return meta

    def save(self, path: str | Path) -> Path:
        return save_png(self.image, Path(path), self.metadata())


def check_output(images: np.ndarray) -> None:
    if not np.isfinite(images).all():
        raise BadOutput("output has NaN/inf pixels")
    if float(images.std()) < 1e-3:
        raise BadOutput("output is flat (black or a single colour)")


@dataclass
class Run:
    """One generation in progress: what it runs on and what it has found so far."""

    tool: Any
    request: GenerationRequest
    loaded: Any  # pipelines.manager.LoadedPipeline
    ctx: RunContext
    notices: list[str]
    timings: dict
    fallbacks: list[dict] = field(default_factory=list)
    placement: Placement | None = None
    prepared: Prepared | None = None
    prompt_cached: bool = False
    compiled: bool = False
    step_cache: dict | None = None
    control_lora: Any = None  # the control LoRA this run applies (the request's, or the tool's default file)
    preview: PreviewCallback | None = None  # called with a preview picture every `preview_every` steps
    preview_every: int = 0

    def details(self) -> dict:
        """What the report records of how the run used memory and time."""
        placement = dict(self.placement.to_dict(), prompt_from_cache=self.prompt_cached)
        return {"placement": placement, "compiled": self.compiled, "step_cache": self.step_cache,
                **(self.prepared.details if self.prepared else {})}


class Engine:
    """Runs tools on a ModelManager; safe to share, one generation at a time."""

    def __init__(self, manager: ModelManager | None = None, show_progress: bool = False):
        self.manager = manager or ModelManager()
        self.show_progress = show_progress

    def generate(self, request: GenerationRequest, progress: Progress | None = None,
                 preview: PreviewCallback | None = None, preview_every: int = defaults.PREVIEW_EVERY
                 ) -> GenerationResult:
        """Run ``request``. ``preview(image, step, steps)``, when given, gets the latents as a picture of the output
        size every ``preview_every`` denoising steps (pipelines.preview); it never changes the result."""
        progress = progress or (lambda stage, done, total: None)
        with self.manager.lock:
            return self._generate(request, progress, preview, preview_every if preview is not None else 0)

    def control_map(self, tool_name: str, model: str, image: Image.Image, **fields) -> Image.Image:
        """The control map ``tool_name`` would compute from ``image`` (e.g. to preview it before a run)."""
        request = GenerationRequest(tool=tool_name, model=model, image=image, prompt="preview", **fields)
        tool = request.spec
        if not hasattr(tool, "control_map"):
            raise UserError(f"the {tool.name} tool has no control map.")
        with self.manager.lock:
            ctx = RunContext(self.manager, resolve_model(request.model, tool))
            return tool.control_map(request.image, request, ctx)

    def _generate(self, request: GenerationRequest, progress: Progress, preview: PreviewCallback | None,
                  preview_every: int) -> GenerationResult:
        start = time.perf_counter()
        tool, manager = request.spec, self.manager
        notices = list(request.notices)
        on_dev = request.control == "lora"  # Depth/Canny as a control LoRA on the Dev model
        source = resolve_model(request.model, tool.lora_base() if on_dev else tool, progress)
        transformer_file = None
        if request.transformer:  # a single-file transformer: it must fit the model it replaces the transformer of
            transformer_file = single_file.inspect(request.transformer)
            single_file.check_fits(transformer_file, source.root, tool.name)
        if source.is_tiny:
            notices.append("Running the demo model 'tiny' (random weights: images look like noise).")
        control_lora = None
        if on_dev:
            if source.is_tiny:
                resolve_model(request.model, tool)  # builds the tool's tiny auxiliary models (depth estimator)
            control_lora = request.control_lora or check_lora(control_lora_file(source, tool), 1.0)
        with PeakMemory(manager.device) as peak:
            loaded = manager.pipeline(source.root, request.quant, progress,
                                      transformer=Path(request.transformer) if request.transformer else None)
            load_s, quantize_s = loaded.load_s, loaded.quantize_s
            loaded.load_s = loaded.quantize_s = 0.0  # counted once, by the run that loaded it
            if on_dev:
                loaded = manager.control_view(loaded)
            if loaded.auto:
                notices.append(f"Auto chose {loaded.quant}: {loaded.auto.reason}.")
            run = Run(tool, request, loaded, RunContext(manager, source, loaded.pipe, progress), notices,
                      {"load_s": load_s, "quantize_s": quantize_s}, control_lora=control_lora, preview=preview,
                      preview_every=preview_every)
            width, height = tool.output_size(request, request.image)
            run.placement = manager.place(loaded, width * height, self._text_tokens(request),
                                          tool.condition_pixels(width, height, request))
            self._speed_options(run)
            images = self._run_with_recovery(run, progress)
        image = Image.fromarray((images[0] * 255).round().clip(0, 255).astype(np.uint8))
        run.timings["total_s"] = time.perf_counter() - start
        report = build_report(request, run.prepared, loaded, manager, peak.peak_bytes, run.timings, run.fallbacks,
                              notices, run.details())
        if control_lora is not None:
            report["parameters"]["control_lora"] = control_lora.to_dict()
        if transformer_file is not None:
            report["transformer_file"] = single_file.loaded_as(transformer_file, manager.dtype,
                                                               report["quantization"]["components"]["transformer"])
            notices.append(report["transformer_file"]["summary"])
        notices += fallback_notices(report)
        return GenerationResult(image, report, notices, run.prepared.control_image)

    @staticmethod
    def _text_tokens(request: GenerationRequest) -> int:
        return request.spec.defaults(request.model).max_sequence_length

    def _speed_options(self, run: "Run") -> None:
        """torch.compile where it is offered (once per loaded pipeline); a refusal is a visible fallback."""
        if not self.manager.options.compile:
            return
        refusal = compile_refusal(self.manager.device)
        if refusal:
            run.notices.append(f"Compile skipped: {refusal}.")
            run.fallbacks.append({"component": "transformer", "backend": "compile", "format": "regional",
                                  "reason": refusal})
            return
        if not run.loaded.compiled:
            compile_transformer(run.loaded.pipe.transformer)
            run.loaded.compiled = True
            if run.loaded.base is not None:
                run.loaded.base.compiled = True
        run.compiled = True

    def _run_with_recovery(self, run: "Run", progress: Progress) -> np.ndarray:
        """Encode, denoise and decode (a control LoRA, when the run has one, only for this run)."""
        try:
            return self._run_steps(run, progress)
        finally:
            if run.control_lora is not None:
                release_control_lora(run.loaded.pipe)  # the shared Dev transformer as it was

    def _run_steps(self, run: "Run", progress: Progress) -> np.ndarray:
        """Encode, denoise and decode, each with its placement; on failure, retry along the fallback chain, then
        with freed memory/offload."""
        manager, loaded = self.manager, run.loaded
        oom_steps = list(oom_recovery_steps(manager.device.type))
        run.notices.extend(manager.prepare_for_run(loaded.pipe, tiled=run.placement.tiled_decode))
        while True:
            try:
                phase = time.perf_counter()
                if run.control_lora is not None:
                    apply_control_lora(loaded, run.control_lora, run.request.loras)
                    run.timings["control_lora_s"] = time.perf_counter() - phase
                else:
                    apply_loras(loaded, run.request.loras)
                run.prepared = self._encode(run)
                run.timings["encode_s"] = time.perf_counter() - phase
                manager.enter(loaded, run.placement, "denoise")
                latents = self._denoise(run, progress)
                phase = time.perf_counter()
                manager.enter(loaded, run.placement, "decode")
                images = self._decode(loaded.pipe, latents, run.prepared, run.notices, run.fallbacks)
                run.timings["decode_s"] = time.perf_counter() - phase
                return images
            except (UserError, Cancelled, KeyboardInterrupt):
                raise
            except Exception as error:
                if _is_oom(error):
                    manager.free_after_oom(keep=loaded.key)
                    if not oom_steps:
                        raise UserError("out of memory: try a smaller size, --quant 4bit, or model CPU offload "
                                        "(--offload model, or the System tab).") from None
                    step = oom_steps.pop(0)
                    run.notices.append(f"Out of memory: retrying with {step}.")
                    run.fallbacks.append({"component": "pipeline", "backend": "memory", "format": step,
                                          "reason": "out of memory"})
                    if step != "freed memory":
                        run.notices.extend(manager.prepare_for_run(loaded.pipe, offload=step.split()[0]))
                    continue
                reason = f"first inference failed: {type(error).__name__}: {error}".strip()
                if not manager.degrade(loaded, reason):
                    raise
                run.notices.append(f"Retrying with less quantization ({reason}).")

    def _encode(self, run: "Run") -> Prepared:
        """The tool's pipeline arguments, with the prompt turned into embeddings (cached per prompt and encoders).

        The text encoders come to the device only when something is encoded."""
        manager, loaded = self.manager, run.loaded
        if run.tool.uses_text_encoders(run.request):  # e.g. the Redux prior encodes with them
            manager.enter(loaded, run.placement, "encode")
        prepared = run.tool.prepare(run.request, run.ctx)
        if "prompt" not in prepared.kwargs:
            return prepared
        kwargs = dict(prepared.kwargs)
        encoders = tuple(loaded.components[name].key for name in ("text_encoder", "text_encoder_2"))
        adapters = text_encoder_adapters(loaded.pipe, run.request.loras)
        if adapters:  # embeddings made with a text-encoder LoRA serve only runs with the same LoRAs and strengths
            encoders += (("loras",) + adapters,)
        key = manager.prompts.key(encoders, kwargs.pop("prompt"), self._text_tokens(run.request))
        found = manager.prompts.get(key)
        run.prompt_cached = found is not None
        if found is None:
            manager.enter(loaded, run.placement, "encode")
            found = manager.prompts.encode(loaded.pipe, key, manager.device)
        kwargs.update(prompt_embeds=found[0], pooled_prompt_embeds=found[1])
        return replace(prepared, kwargs=kwargs)

    def _denoise(self, run: "Run", progress: Progress) -> torch.Tensor:
        request, pipe, prepared = run.request, run.loaded.pipe, run.prepared
        steps = request.steps
        pipe.set_progress_bar_config(disable=not self.show_progress, desc=request.tool)
        stamps = [time.perf_counter()]
        previewing = [0.0]  # seconds spent on previews (left out of the step times)

        def on_step(_pipe, index, _timestep, callback_kwargs):
            if not torch.isfinite(callback_kwargs["latents"]).all():
                raise BadOutput(f"latents became NaN/inf at step {index + 1}")
            stamps.append(time.perf_counter() - previewing[0])
            progress("denoise", index + 1, steps)
            if run.preview is not None and is_preview_step(index + 1, run.preview_every):
                began = time.perf_counter()
                self._preview(run, pipe, callback_kwargs["latents"], index + 1)
                previewing[0] += time.perf_counter() - began
            return callback_kwargs

        progress("denoise", 0, steps)
        threshold = self.manager.options.step_cache
        with step_cache(pipe.transformer, threshold) as counter:
            output = pipe(
                **prepared.kwargs,
                height=prepared.height,
                width=prepared.width,
                num_inference_steps=steps,
                guidance_scale=request.guidance,
                generator=torch.Generator("cpu").manual_seed(request.seed),
                max_sequence_length=self._text_tokens(request),
                callback_on_step_end=on_step,
                output_type="latent",
            )
        if counter is not None:
            run.step_cache = {"threshold": threshold, "full_steps": counter["full"],
                              "skipped_steps": max(0, steps - counter["full"])}
        times = [b - a for a, b in zip(stamps, stamps[1:])]
        run.timings["denoise_s"] = stamps[-1] - stamps[0] + previewing[0]
        if previewing[0]:
            run.timings["preview_s"] = previewing[0]
        run.timings["first_step_s"] = times[0] if times else 0.0
        run.timings["step_s"] = statistics.median(times[1:]) if len(times) > 1 else run.timings["first_step_s"]
        return output.images

    @staticmethod
    def _preview(run: "Run", pipe, latents: torch.Tensor, step: int) -> None:
        """Hand the caller a preview of ``latents``. A preview that fails is logged and previews stop for this run:
        it never fails or changes the run (only Cancelled, the caller's way to stop it, goes through)."""
        try:
            image = packed_preview(pipe, latents, run.prepared.width, run.prepared.height)
            run.preview(image, step, run.request.steps)
        except Cancelled:
            raise
        except Exception as error:  # noqa: BLE001
            log.warning("preview failed at step %d (%s: %s); no more previews this run", step,
                        type(error).__name__, error)
            run.preview = None

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
