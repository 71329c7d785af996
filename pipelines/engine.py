"""The Python API that the CLI and the studio both use: one call runs one tool end to end."""

from __future__ import annotations

import logging
import os
import statistics
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import aot, defaults
from .errors import Cancelled, UserError
from .images import save_png
from .loras import (apply_control_lora, apply_loras, check_lora, control_lora_file, file_hashes, nonfinite,
                    release_control_lora, text_encoder_adapters)
from .manager import ModelManager, Progress
from .memory import offload as offloading
from .memory.device import PeakMemory
from .memory.placement import Placement
from .models import single_file
from .models.sources import resolve_model
from .families import family_of
from .preview import PreviewCallback, is_preview_step
from .report import build_report, fallback_notices, summary
from .request import GenerationRequest
from .speed import compile_refusal, compile_transformer, compiled_graphs, is_compiled, step_cache, uncompile
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
        for name in ("placement", "options", "step_cache", "compiled", "offload"):
            meta[name] = self.report[name]
        for name in ("conditioning", "scheduler", "model_hash", "hires"):  # conditioning: how several images became one
            if name in self.report:
                meta[name] = self.report[name]
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
    compiled: bool = False  # the transformer that made the image ran compiled
    compile_graphs: int = 0  # graphs torch.compile made during this run (0: it compiled nothing new)
    step_cache: dict | None = None
    offload: str = "none"  # the offload installed while the image was made
    control_lora: Any = None  # the control LoRA this run applies (the request's, or the tool's default file)
    preview: PreviewCallback | None = None  # called with a preview picture every `preview_every` steps
    preview_every: int = 0
    without: dict = field(default_factory=dict)  # options this run goes without after they failed: name -> reason
    offload_kind: str | None = None  # the offload this run installs instead of the option's (out-of-memory recovery)
    suspect: tuple | None = None  # (cause, error text, fallbacks and notices before) while a retry without it runs
    cleared: set = field(default_factory=set)  # causes a retry without them showed innocent

    def details(self) -> dict:
        """What the report records of how the run used memory and time."""
        placement = dict(self.placement.to_dict(), prompt_from_cache=self.prompt_cached)
        return {"placement": placement, "compiled": self.compiled, "compile_graphs": self.compile_graphs,
                "step_cache": self.step_cache, "offload": self.offload,
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
            if request.hires_scale:
                return self._hires(request, progress, preview, preview_every if preview is not None else 0)
            return self._generate(request, progress, preview, preview_every if preview is not None else 0)

    def _hires(self, request: GenerationRequest, progress: Progress, preview: PreviewCallback | None,
               preview_every: int) -> GenerationResult:
        """Hires fix (pipelines.hires): the request at its size, upscaled (Lanczos or a super-resolution model file,
        loaded before the first pass so a bad file is refused before anything runs), then refined by image to image
        at the larger size with the same prompt, seed, LoRAs and quantization."""
        from . import hires
        from .upscalers import upscale_image

        upscaler = self._upscaler(request.hires_upscaler)
        plain = {name: getattr(request, name) for name in ("tool", "prompt", "model", "quant", "guidance", "seed",
                                                             "transformer", "loras")}
        first = self._generate(GenerationRequest(**plain, width=request.width, height=request.height,
                                                 steps=request.steps), progress, preview, preview_every)
        size = hires.target_size(first.image.width, first.image.height, request.hires_scale)
        larger, upscale_s = upscale_image(first.image, size, upscaler)
        second = self._generate(GenerationRequest(**plain, width=size[0], height=size[1], image=larger,
                                                  strength=request.hires_strength,
                                                  steps=request.hires_steps or request.steps),
                                progress, preview, preview_every)
        report = second.report
        report["hires"] = hires.record(first, second, request.hires_scale, request.hires_upscaler, upscale_s,
                                       upscaler.to_dict() if upscaler else None)
        parameters = report["parameters"]
        parameters.update(hires_scale=request.hires_scale, hires_strength=request.hires_strength,
                          hires_steps=request.hires_steps, hires_upscaler=request.hires_upscaler, steps=request.steps,
                          hires=report["hires"], inputs={})
        report["timings"] = {name: round(first.report["timings"].get(name, 0) + value + (
            upscale_s if name == "total_s" else 0), 4) for name, value in second.report["timings"].items()}
        report["timings"]["upscale_s"] = round(upscale_s, 4)
        report["memory"] = max(first.report["memory"], second.report["memory"],
                               key=lambda m: m.get("peak_bytes") or 0)
        notices = first.notices + [n for n in second.notices if n not in first.notices]
        how = request.hires_upscaler + (f", {upscaler.architecture} {upscaler.scale}x" if upscaler else "")
        notices.append(f"Hires fix: {first.image.width}x{first.image.height} upscaled ({how}) to "
                       f"{size[0]}x{size[1]}, refined at strength {request.hires_strength:g} in "
                       f"{report['image_to_image']['steps_run']} steps.")
        return GenerationResult(second.image, report, notices)

    def _upscaler(self, name: str):
        """The hires fix's upscaler model (pipelines.upscalers.Upscaler) for a checked name, loaded once per file and
        kept with the manager's auxiliary models; None for Lanczos."""
        from .upscalers import load_upscaler, upscaler_path

        path = upscaler_path(name)
        if path is None:
            return None
        try:
            stat = path.stat()
        except OSError:
            raise UserError(f"hires_upscaler={name!r} is no longer in the upscaler folder; choose another.") from None
        manager = self.manager
        key = ("upscaler", str(path), stat.st_mtime_ns, stat.st_size, str(manager.device), str(manager.dtype))
        return manager.aux(key, lambda: load_upscaler(name, path, manager.device, manager.dtype))

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
            elif tool.view_class:
                loaded = manager.view(loaded, tool.view_class)
            if loaded.auto:
                notices.append(f"Auto chose {loaded.quant}: {loaded.auto.reason}.")
            run = Run(tool, request, loaded, RunContext(manager, source, loaded.pipe, progress), notices,
                      {"load_s": load_s, "quantize_s": quantize_s}, control_lora=control_lora, preview=preview,
                      preview_every=preview_every)
            width, height = tool.output_size(request, request.image)
            if manager.device.type == "mps":
                check_mps_attention(loaded.pipe.transformer, width, height, self._text_tokens(request),
                                    tool.condition_pixels(width, height, request))
            run.placement = manager.place(loaded, width * height, self._text_tokens(request),
                                          tool.condition_pixels(width, height, request))
            images = self._run_with_recovery(run, progress)
        image = Image.fromarray((images[0] * 255).round().clip(0, 255).astype(np.uint8))
        run.timings["total_s"] = time.perf_counter() - start
        report = build_report(request, run.prepared, loaded, manager, peak.peak_bytes, run.timings, run.fallbacks,
                              notices, run.details(), peak.peak_reserved_bytes)
        if control_lora is not None:
            report["parameters"]["control_lora"] = control_lora.to_dict()
        report["scheduler"] = type(loaded.pipe.scheduler).__name__
        if transformer_file is not None:
            report["model_hash"] = file_hashes(transformer_file.path)[0][:10]  # A1111's short hash of the file
            report["transformer_file"] = single_file.loaded_as(transformer_file, manager.dtype,
                                                               report["quantization"]["components"]["transformer"])
            notices.append(report["transformer_file"]["summary"])
        notices += fallback_notices(report)
        return GenerationResult(image, report, notices, run.prepared.control_image)

    @staticmethod
    def _text_tokens(request: GenerationRequest) -> int:
        return request.spec.defaults(request.model).max_sequence_length

    def _speed_options(self, run: "Run") -> None:
        """torch.compile where it is offered (once per loaded pipeline; not again on a pipeline it failed on, nor in a
        run that found it failing); a refusal is a visible fallback."""
        loaded = run.loaded
        if aot.has_aot(loaded.pipe.transformer):
            self._ahead_of_time(run)
            return
        if not self.manager.options.compile:
            return
        refusal = compile_refusal(self.manager.device) or run.without.get("compile") or loaded.compile_failed
        if refusal:
            if not any(f["backend"] == "compile" for f in run.fallbacks):
                run.notices.append(f"Compile skipped: {refusal}.")
                run.fallbacks.append({"component": "transformer", "backend": "compile", "format": "regional",
                                      "reason": refusal})
            return
        if not is_compiled(loaded.pipe.transformer):
            compile_transformer(loaded.pipe.transformer)
        loaded.compiled = True
        if loaded.base is not None:
            loaded.base.compiled = True

    def _ahead_of_time(self, run: "Run") -> None:
        """Blocks compiled ahead of time (pipelines.aot, ZeroGPU's compile) run unless this run changes what they
        compute; then they are set aside for the run, visibly."""
        transformer = run.loaded.pipe.transformer
        step_cache_on = self.manager.options.step_cache > 0 and "step cache" not in run.without
        reason = aot.refusal(transformer, step_cache_on, offloading.installed(run.loaded.pipe))
        if reason is None:
            aot.resume(transformer)
            return
        run.notices.append(f"The transformer's ahead-of-time compiled blocks are set aside for this run: {reason}.")
        run.fallbacks.append({"component": "transformer", "backend": "compile", "format": "ahead of time",
                              "reason": reason})

    def _run_with_recovery(self, run: "Run", progress: Progress) -> np.ndarray:
        """Encode, denoise and decode (a control LoRA, when the run has one, only for this run)."""
        try:
            return self._run_steps(run, progress)
        finally:
            if run.control_lora is not None:
                offloading.remove(run.loaded.pipe)  # hooks hold the modules the control LoRA replaced
                release_control_lora(run.loaded.pipe)  # the shared Dev transformer as it was

    def _run_steps(self, run: "Run", progress: Progress) -> np.ndarray:
        """Encode, denoise and decode, each with its placement. A failure is put down to what caused it: running out
        of memory (memory freed, then offload added: the run's other options kept), compile, the step cache or
        offload (the run goes on without it, visibly), LoRAs (refused, naming the files; the model left as it was),
        or the quantization backend (the only cause that moves a component down its fallback chain)."""
        manager, loaded = self.manager, run.loaded
        oom_steps = list(oom_recovery_steps(manager.device.type))
        while True:
            graphs = compiled_graphs()
            try:
                phase = time.perf_counter()
                self._prepare(run)
                run.prepared = self._encode(run)
                run.timings["encode_s"] = time.perf_counter() - phase
                manager.enter(loaded, run.placement, "denoise")
                latents = self._denoise(run, progress)
                phase = time.perf_counter()
                manager.enter(loaded, run.placement, "decode")
                images = self._decode(loaded.pipe, latents, run.prepared, run.notices, run.fallbacks)
                run.timings["decode_s"] = time.perf_counter() - phase
                run.compiled = is_compiled(loaded.pipe.transformer)
                run.compile_graphs = compiled_graphs() - graphs
                run.offload = offloading.installed(loaded.pipe)
                run.suspect = None  # the retry without it worked: it was the cause
                return images
            except (UserError, Cancelled, KeyboardInterrupt):
                raise
            except Exception as error:
                if _is_oom(error):
                    self._after_oom(run, oom_steps)
                    continue
                reason = _describe(error)
                self._clear_suspect(run, reason)
                cause = self._blame(run, error)
                if cause in ("compile", "step cache", "offload"):
                    self._go_without(run, cause, reason)
                    continue
                if cause == "loras":
                    self._refuse_loras(run, error, progress)
                if not manager.degrade(loaded, f"first inference failed: {reason}"):
                    raise
                run.notices.append(f"Retrying with less quantization ({reason}).")

    def _prepare(self, run: "Run") -> None:
        """LoRAs (offload hooks come off first when they change), then offload and VAE options, then compile."""
        loaded, pipe = run.loaded, run.loaded.pipe
        aot.set_aside(pipe.transformer)  # hooks and LoRA layers go onto the blocks' own forward; _speed_options decides
        loras = [] if run.without.get("loras") else run.request.loras
        off = lambda: offloading.remove(pipe)  # noqa: E731  (adapters go onto the layers as they are)
        phase = time.perf_counter()
        if run.control_lora is not None:
            apply_control_lora(loaded, run.control_lora, loras, before_change=off)
            run.timings["control_lora_s"] = time.perf_counter() - phase
        else:
            apply_loras(loaded, loras, before_change=off)
        offload = run.without.get("offload") and "none" or run.offload_kind
        run.notices.extend(n for n in self.manager.prepare_for_run(loaded, offload=offload,
                                                                   tiled=run.placement.tiled_decode)
                           if n not in run.notices)
        self._speed_options(run)

    def _after_oom(self, run: "Run", steps: list) -> None:
        """Free memory, then retry with the next offload that this model's backends run under. What the run had
        asked for (tiled decode, step cache, compile, LoRAs) stays."""
        manager, loaded = self.manager, run.loaded
        manager.free_after_oom(keep=loaded.key)
        while steps:
            step = steps.pop(0)
            kind = step.split()[0]
            if step == "tiled decode":
                if run.placement.tiled_decode:
                    continue
                run.placement = replace(run.placement, tiled_decode=True)
            elif step != "freed memory":
                refusals = manager.offload_refusals(loaded, kind)
                if refusals or kind in run.without.get("offload_kinds", ()):
                    run.notices.append(f"Out of memory: {step} skipped ({refusals[0] if refusals else 'it failed'}).")
                    continue
                run.offload_kind = kind
            run.notices.append(f"Out of memory: retrying with {step}.")
            run.fallbacks.append({"component": "pipeline", "backend": "memory", "format": step,
                                  "reason": "out of memory"})
            return
        raise UserError(oom_advice(manager.device.type)) from None

    def _clear_suspect(self, run: "Run", reason: str) -> None:
        """After a retry without a suspected option failed the same way, it was not the cause: it comes back (and
        the fallback recorded for it goes), and another cause is looked for."""
        if run.suspect is None:
            return
        cause, before, fallbacks, notices = run.suspect
        run.suspect = None
        if before != reason:
            return  # it failed otherwise now: leaving the option out did change something
        run.cleared.add(cause)
        run.fallbacks[:], run.notices[:] = fallbacks, notices
        if cause == "compile":
            run.loaded.compile_failed = None
            run.without.pop("compile", None)
        elif cause == "offload":
            run.without.pop("offload", None)
            run.without.pop("offload_kinds", None)
        else:
            run.without.pop(cause, None)

    def _go_without(self, run: "Run", cause: str, reason: str) -> None:
        """Retry the run without ``cause`` (compile, step cache or offload), visibly; the model is not touched."""
        loaded, kind = run.loaded, None
        run.suspect = (cause, reason, list(run.fallbacks), list(run.notices))
        if cause == "compile":
            uncompile(loaded.pipe.transformer)
            loaded.compiled = False
            loaded.compile_failed = f"it failed on this model ({reason})"
            run.without["compile"] = loaded.compile_failed
        elif cause == "step cache":
            run.without["step cache"] = reason
        else:
            kind = offloading.installed(loaded.pipe)
            offloading.remove(loaded.pipe)
            run.without["offload"] = reason
            run.without.setdefault("offload_kinds", set()).add(kind)
            run.offload_kind = None
        run.notices.append(f"{cause.capitalize()} failed ({reason}): this run goes without it.")
        what = {"compile": "regional", "step cache": "first block"}.get(cause) or kind
        run.fallbacks.append({"component": "pipeline" if cause == "offload" else "transformer", "backend": cause,
                              "format": what, "reason": reason})

    def _blame(self, run: "Run", error: Exception) -> str:
        """What made the run fail: compile, step cache, offload, loras or backend.

        An error is put down to the library in whose code it was raised (the innermost frame of a known one). Bad
        output (NaN or flat pixels) names no code: compile, then the step cache are left out in turn (each retry runs
        without one more of them); then a run without the LoRAs tells whether they or the backend gave it."""
        active = self._active(run) - run.cleared
        if isinstance(error, BadOutput):
            for cause in ("compile", "step cache"):
                if cause in active:
                    return cause
            return "loras" if "loras" in active else "backend"
        cause = _raised_in(error, skip=run.cleared)
        if cause is not None and cause in active:
            return cause
        return "backend"

    def _active(self, run: "Run") -> set[str]:
        options, active = self.manager.options, set()
        if is_compiled(run.loaded.pipe.transformer):
            active.add("compile")
        if options.step_cache > 0 and "step cache" not in run.without:
            active.add("step cache")
        if offloading.installed(run.loaded.pipe) != "none":
            active.add("offload")
        if run.request.loras and "loras" not in run.without:
            active.add("loras")
        return active

    def _refuse_loras(self, run: "Run", error: Exception, progress: Progress) -> None:
        """A run with LoRAs failed: when the same run without them works, the LoRAs are refused in one line naming
        them (the model stays as it is: no fallback is made); when it fails too, the backend is to blame (return)."""
        names = ", ".join(repr(lora.name) for lora in run.request.loras)
        bad = nonfinite(run.request.loras)
        what = "NaN or infinite pixels" if isinstance(error, BadOutput) else _describe(error)
        if bad:
            raise UserError(f"lora={', '.join(repr(lora.name) for lora in bad)} holds NaN or infinite weights; "
                            "use another file.")
        run.without["loras"] = what
        try:
            self._prepare(run)
            run.prepared = self._encode(run)
            self.manager.enter(run.loaded, run.placement, "denoise")
            latents = self._denoise(run, progress)
            self.manager.enter(run.loaded, run.placement, "decode")
            self._decode(run.loaded.pipe, latents, run.prepared, [], [])
        except (UserError, Cancelled, KeyboardInterrupt):
            raise
        except Exception:  # noqa: BLE001  the model fails without the LoRAs too: its backend is to blame
            del run.without["loras"]
            return
        raise UserError(f"lora={names} gives {what} with this model (the same run without it works); lower its "
                        "strength or use another file.")

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
        family = family_of(type(loaded.pipe).__name__)
        encoders = tuple(loaded.components[name].key for name in family.text_encoders)
        adapters = text_encoder_adapters(loaded.pipe, [] if run.without.get("loras") else run.request.loras)
        if adapters:  # embeddings made with a text-encoder LoRA serve only runs with the same LoRAs and strengths
            encoders += (("loras",) + adapters,)
        key = manager.prompts.key(encoders, kwargs.pop("prompt"), self._text_tokens(run.request))
        found = manager.prompts.get(key)
        run.prompt_cached = found is not None
        if found is None:
            manager.enter(loaded, run.placement, "encode")
            found = manager.prompts.encode(loaded.pipe, key, manager.device)
        kwargs.update(found)
        return replace(prepared, kwargs=kwargs)

    def _denoise(self, run: "Run", progress: Progress) -> torch.Tensor:
        request, prepared = run.request, run.prepared
        pipe = prepared.pipe or run.loaded.pipe  # image to image: a pipeline on the same components
        steps = prepared.steps_run or request.steps
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
        threshold = 0.0 if "step cache" in run.without else self.manager.options.step_cache
        with step_cache(pipe.transformer, threshold) as counter:
            output = pipe(
                **prepared.kwargs,
                height=prepared.height,
                width=prepared.width,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance,
                generator=torch.Generator("cpu").manual_seed(request.seed),
                max_sequence_length=self._text_tokens(request),
                callback_on_step_end=on_step,
                output_type="latent",
            )
        if counter is not None:
            full = counter()
            run.step_cache = {"threshold": threshold, "full_steps": full,
                              "skipped_steps": None if full is None else max(0, steps - full)}
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
            image = family_of(type(pipe).__name__).preview(pipe, latents, run.prepared.width, run.prepared.height)
            run.preview(image, step, run.prepared.steps_run or run.request.steps)
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
        latents = family_of(type(pipe).__name__).decodable(pipe, latents, prepared.width, prepared.height)
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


def check_mps_attention(transformer, width: int, height: int, text_tokens: int, condition_pixels: int = 0) -> None:
    """Refuse, before it runs, a size whose attention Apple MPS cannot hold in one call (it would abort the
    process: pipelines.memory.attention)."""
    from .memory.attention import mps_attention_refusal

    refusal = mps_attention_refusal(width, height, text_tokens, transformer.config.num_attention_heads,
                                    condition_pixels)
    if refusal:
        raise UserError(refusal + ".")


def oom_recovery_steps(device_type: str) -> tuple[str, ...]:
    """What to try, in order, after running out of memory: offload on a GPU with memory of its own; on Apple MPS
    (one pool with the CPU: offload frees nothing there) freed memory, then decoding in tiles; on a CPU freed memory.
    When they are used up the run is refused with what to change (oom_advice)."""
    if device_type == "cuda":
        return ("model offload", "block offload", "sequential offload")
    if device_type == "mps":
        return ("freed memory", "tiled decode")
    return ("freed memory",)


def oom_advice(device_type: str) -> str:
    """The refusal once every recovery step failed: what the user can change on this kind of device."""
    if device_type == "mps":
        return ("out of memory: Apple's unified memory is one pool, so CPU offload frees nothing there; try a "
                "smaller size or more quantization (--quant 4bit), or close other apps.")
    return ("out of memory: try a smaller size, --quant 4bit, or CPU offload (--offload block or model, or the "
            "System tab).")


# Where an error was raised says what caused it. Compile first: an error raised while torch.compile traces or runs
# its compiled code (whoever's code it came from) is compile's, since the same code runs eagerly without it. Else the
# innermost frame in one of these libraries' files names the cause. Frames that only pass a call through to the code
# they wrap (compiled code's entry, a hook calling the module's own forward, a LoRA layer calling its base layer) name
# nothing: an error beneath them is not theirs.
_COMPILING = ("/torch/_dynamo/", "/torch/_inductor/", "/torch/_functorch/", "/torch/_subclasses/fake_tensor.py",
              "torchinductor", "/torch/export/pt2_archive/", "/spaces/zero/torch/aoti.py")
_CAUSES = (("step cache", ("/diffusers/hooks/first_block_cache.py",)),
           ("offload", ("/accelerate/hooks.py", "/accelerate/utils/modeling.py", "/diffusers/hooks/group_offloading.py")),
           ("loras", ("/peft/",)),
           ("backend", ("/bitsandbytes/", "/optimum/quanto/", "/torchao/", "/quantization/backends/")))
_PASS_THROUGH_FILES = ("/torch/_dynamo/eval_frame.py", "/torch/_dynamo/external_utils.py")
_PASS_THROUGH_CALLS = ("original_forward(", "_old_forward(", "self.base_layer(", "_compiled_call_impl(")


def _raised_in(error: BaseException, skip=()) -> str | None:
    """The cause named by where ``error`` was raised (its causes' tracebacks included): compile when a frame of
    torch.compile's own is in it, else the innermost known frame's library (_CAUSES); causes in ``skip`` left out."""
    frames = []
    seen = 0
    while error is not None and seen < 4:
        frames += [frame for frame in reversed(traceback.extract_tb(error.__traceback__))
                   if not frame.filename.replace("\\", "/").endswith(_PASS_THROUGH_FILES)
                   and not any(call in (frame.line or "") for call in _PASS_THROUGH_CALLS)]
        error, seen = error.__cause__ or error.__context__, seen + 1
    paths = [frame.filename.replace("\\", "/") for frame in frames]
    compiled_code = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # inductor writes the code it runs there
    compiling = _COMPILING + ((compiled_code,) if compiled_code else ())
    if "compile" not in skip and any(part in path for path in paths for part in compiling):
        return "compile"
    for path in paths:
        for cause, parts in _CAUSES:
            if cause not in skip and any(part in path for part in parts):
                return cause
    return None


def _describe(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}".strip()


def _is_oom(error: Exception) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())
