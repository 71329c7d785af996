"""Model manager: loads pipelines on demand, shares identical components, keeps to a memory budget.

Nothing here is a module-level global: each studio owns one manager. It puts together three parts: the
component store (sharing), pipeline assembly from a model directory (with quantization), and memory options.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from quantization.policy import HEADROOM, RATIO, AutoChoice, candidates, choose_auto, measured_step_ratios, offered
from quantization.records import Fallback
from quantization.registry import loaded_offload_refusal, offload_refusal

from .errors import UserError
from .families import family_in
from .memory import offload as offloading
from .memory.device import empty_cache, free_memory, pick_device, pick_dtype
from .memory.options import RunOptions
from .memory.placement import ONE_POOL, PHASES, Placement, plan, working_memory
from .models.assembly import build_pipeline, import_class, load_quantized, probe_quantized, weight_bytes, weights_identity
from .models.components import Component, ComponentStore
from .models import single_file
from .models.layout import read_index
from .prompts import PromptCache

log = logging.getLogger(__name__)
PLACED = frozenset().union(*PHASES.values())  # the components a placement moves

Progress = Callable[[str, int, int], None]


def _noop(stage: str, done: int, total: int) -> None:
    pass


@dataclass
class LoadedPipeline:
    key: tuple  # (model directory, quant[, transformer file])
    pipe: Any
    components: dict[str, Component]
    quant: str  # what it was loaded with: "none", "8bit" or "4bit"
    auto: AutoChoice | None
    load_s: float
    quantize_s: float
    last_used: float = 0.0
    compiled: bool = False  # its transformer's repeated blocks are compiled
    lora_state: Any = None  # the LoRA adapters this pipeline last applied (pipelines.loras.apply_loras)
    base: Any = None  # for a control view: the Dev LoadedPipeline whose components it runs on
    compile_failed: str | None = None  # why compiling its transformer failed (then it is not compiled again)

    @property
    def root(self) -> Path:
        return Path(self.key[0])

    @property
    def fallbacks(self) -> list:
        return [f for c in self.components.values() if c.quant for f in c.quant.fallbacks]


class ModelManager:
    """Owns every loaded model of one studio; thread-safe."""

    def __init__(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 budget_bytes: int | None = None, offload: str = "none", vae_tiling: bool = False,
                 vae_slicing: bool = False, free_memory_fn: Callable[[torch.device], int | None] = free_memory):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.dtype = dtype or pick_dtype(self.device)
        self.budget_bytes = budget_bytes
        self.options = RunOptions(offload=offload, vae_tiling=vae_tiling, vae_slicing=vae_slicing)
        self.prompts = PromptCache()
        self._free_memory = free_memory_fn
        self._pipelines: dict[tuple, LoadedPipeline] = {}
        self._components = ComponentStore()
        self._aux: dict[tuple, Any] = {}
        self.lock = threading.RLock()

    # ---- run options and placement ---------------------------------------------------------------------
    def set_options(self, **changes) -> None:
        """Change run options (pipelines.memory.options.RunOptions fields); None leaves one as it is."""
        self.options = replace(self.options, **{k: v for k, v in changes.items() if v is not None})

    def prepare_for_run(self, loaded: "LoadedPipeline", offload: str | None = None, tiled: bool = False) -> list[str]:
        """Apply the offload and VAE options before a run (``offload`` instead of the option's, ``tiled``: decode in
        tiles whatever the option says); returns notices. An offload that a loaded component's backend cannot run
        under is refused (UserError) before anything is installed."""
        wanted = offload or self.options.offload
        refusals = self.offload_refusals(loaded, wanted)
        if refusals:
            raise UserError(f"offload={wanted!r} cannot run this model: {refusals[0]}.")
        notices = self.options.apply(loaded.pipe, self.device, wanted, tiled)
        if self.device.type != "cpu":  # offload hooks put and took weights where they wanted: see where they are
            for component in loaded.components.values():
                component.on_device = _on(component.module, self.device)
        return notices

    def offload_refusals(self, loaded: "LoadedPipeline", offload: str) -> list[str]:
        """Why ``loaded``'s components cannot run under ``offload``, one line each (empty when they can)."""
        return [f"its {name} ({c.quant.backend} {c.quant.format}) {reason}" for name, c in loaded.components.items()
                if c.quant and (reason := loaded_offload_refusal(c.quant.backend, c.quant.format, offload))]

    def offload_chain(self, chain: tuple, offload: str | None = None) -> tuple[tuple, list[tuple]]:
        """``chain`` without the configs whose layers cannot run under ``offload`` (default: the option's), and
        those left out: [(config, reason)]."""
        offload = offload or self.options.offload
        kept, left = [], []
        for config in chain:
            reason = offload_refusal(config, offload)
            (left.append((config, reason)) if reason else kept.append(config))
        return tuple(kept), left

    def place(self, loaded: LoadedPipeline, pixels: int, text_tokens: int, condition_pixels: int = 0) -> Placement:
        """Where each component of ``loaded`` lives in each phase of a run of ``pixels`` output pixels (and
        ``condition_pixels`` of a conditioning image in the transformer's sequence)."""
        modules = {name: c for name, c in loaded.components.items() if name in PLACED}
        sizes = {name: c.bytes for name, c in modules.items()}
        free = self._free_memory(self.device)
        if free is not None and self.device.type != "cpu":  # what this pipeline holds on the device is free for it
            free += sum(size for name, size in sizes.items() if modules[name].on_device)
        config = loaded.pipe.transformer.config
        hidden = config.num_attention_heads * config.attention_head_dim
        work = working_memory(pixels, text_tokens, hidden, condition_pixels=condition_pixels)
        return plan(sizes, free, work, pixels, self.device.type, self.options.placement)

    def enter(self, loaded: LoadedPipeline, placement: Placement, phase: str) -> None:
        """Move ``loaded``'s components for ``phase``: what it needs to the device, what waits to the CPU.

        A move takes every tensor a component owns, quantized ones as they are (packed), never unpacked. Nothing
        moves on a CPU device; components under offload hooks are the hooks' to move."""
        if self.device.type == "cpu" and placement.name == "resident":
            return
        with self.lock:
            wanted = placement.on_device(phase)
            for name, component in loaded.components.items():
                if name not in PLACED or not isinstance(component.module, torch.nn.Module) \
                        or offloading.managed(component.module) or component.on_device == (name in wanted):
                    continue
                component.module.to(self.device if name in wanted else torch.device("cpu"))
                component.on_device = name in wanted
            if phase == "denoise":
                empty_cache(self.device)

    # ---- quant -----------------------------------------------------------------------------------------
    def resolve_quant(self, root: Path, quant: str, transformer: Path | None = None) -> tuple[str, AutoChoice | None]:
        """``quant`` itself, or what Auto picks for the pipeline in ``root`` (its transformer from the single file
        ``transformer``, if given) from free memory."""
        if quant != "auto":
            return quant, None
        quantizable, other = weight_bytes(root, self.dtype, transformer)
        ratios = measured_step_ratios(self.device, family_in(root).name) if "fp8" in offered(self.device) else {}
        choice = choose_auto(quantizable, other, self._free_memory(self.device), ratios, self.device.type)
        return choice.quant, choice

    # ---- loading -----------------------------------------------------------------------------------------
    def pipeline(self, root: Path, quant: str, progress: Progress = _noop,
                 transformer: Path | None = None) -> LoadedPipeline:
        """The pipeline in ``root`` with ``quant`` ('auto', 'none', '8bit', '4bit'), loading what is missing.

        ``transformer``: a single-file checkpoint (pipelines.models.single_file) that replaces the pipeline's
        transformer. A quant choice none of whose backends runs under the offload option is refused (UserError) before
        anything is loaded; a loaded pipeline whose backends cannot is unloaded and loaded again with ones that can.
        """
        with self.lock:
            resolved, auto = self.resolve_quant(root, quant, transformer)
            key = (str(root), resolved) + ((f"transformer={transformer}",) if transformer else ())
            self._check_offload(resolved, transformer)
            loaded = self._pipelines.get(key)
            if loaded is not None and self.offload_refusals(loaded, self.options.offload):
                self._drop_components_refusing(self.options.offload)
                loaded = None
            if loaded is None:
                self._drop_other_quants(str(root), resolved)
                self._make_room(root, resolved)
                loaded = self._load_pipeline(key, root, resolved, auto, progress, transformer)
                self._pipelines[key] = loaded
            loaded.last_used = time.monotonic()
            loaded.auto = auto
            self._enforce_budget(keep=key)
            return loaded

    def _check_offload(self, quant: str, transformer: Path | None) -> None:
        """Refuse ``quant`` when the offload option leaves none of its quantized backends on this device, and a
        pre-quantized ``transformer`` file (GGUF, BFL's nvfp4) whose format does not survive the offload option."""
        offload = self.options.offload
        if offload == "none":
            return
        quantized = single_file.inspect(transformer).prequantized if transformer is not None else None
        reason = loaded_offload_refusal(*quantized, offload) if quantized is not None else None
        if reason:
            raise UserError(f"transformer={transformer.name!r} with offload={offload!r}: {reason}.")
        if quant == "none":
            return
        chain = candidates(quant, self.device.type)
        kept, left = self.offload_chain(chain, offload)
        if left and not any(config.bits < 16 for config in kept):
            config, reason = left[0]
            raise UserError(f"quant={quant!r} with offload={offload!r}: no {quant} backend on {self.device.type} runs "
                            f"under {offload} offload ({config.label}: {reason}); choose another offload or "
                            "quant=none.")

    def _drop_components_refusing(self, offload: str) -> None:
        """Unload every pipeline holding a component whose backend cannot run under ``offload``."""
        for key in [k for k, p in self._pipelines.items() if self.offload_refusals(p, offload)]:
            log.info("unloading %s: one of its backends cannot run under %s offload", key, offload)
            self._unload(key)
            for component in list(self._components._items.values()):
                if component.quant and loaded_offload_refusal(component.quant.backend, component.quant.format,
                                                              offload):
                    self._components._items.pop(component.key, None)
        empty_cache(self.device)

    def control_view(self, loaded: LoadedPipeline) -> LoadedPipeline:
        """A FluxControlPipeline over ``loaded``'s own components (the Dev transformer, text encoders, VAE): nothing
        is loaded again, and the manager holds only the Dev pipeline. A control LoRA makes it a Depth or Canny
        model for one run (pipelines.loras.apply_control_lora)."""
        return self.view(loaded, "FluxControlPipeline")

    def view(self, loaded: LoadedPipeline, class_name: str) -> LoadedPipeline:
        """The diffusers pipeline ``class_name`` over ``loaded``'s own components and settings (e.g. klein's inpaint
        pipeline over a klein model): nothing is loaded again, and the manager holds only ``loaded``."""
        cls = import_class("diffusers", class_name)
        with self.lock:
            names, optional = cls._get_signature_keys(cls)
            settings = {k: loaded.pipe.config[k] for k in optional if k in loaded.pipe.config}
            pipe = cls(**{name: getattr(loaded.pipe, name) for name in names}, **settings)
            return LoadedPipeline(loaded.key, pipe, loaded.components, loaded.quant, loaded.auto, 0.0, 0.0,
                                  loaded.last_used, loaded.compiled, None, loaded, loaded.compile_failed)

    def _load_pipeline(self, key, root: Path, quant: str, auto, progress: Progress,
                       transformer: Path | None = None) -> LoadedPipeline:
        index = read_index(root)
        start = time.perf_counter()
        components, quantize_s = {}, 0.0
        park = self._encoders_wait_on_cpu(root, quant)
        if quant != "none":
            probe_quantized(root, index, candidates(quant, self.device.type, family_in(root).name), self.device,
                            self.dtype, transformer)
        for step, (name, (library, cls_name)) in enumerate(index.items()):
            progress("load", step, len(index))
            component = self._component(root, name, library, cls_name, quant, progress,
                                        file=transformer if name == "transformer" else None)
            component.users.add(key)
            components[name] = component
            if park and name in PHASES["encode"] and isinstance(component.module, torch.nn.Module):
                component.module.to("cpu")  # loaded one at a time, so they never sit beside the transformer
                component.on_device = False
            if component.quant:
                quantize_s += component.quant.quantize_s
        progress("load", len(index), len(index))
        pipe = build_pipeline(root, {n: c.module for n, c in components.items()})
        return LoadedPipeline(key, pipe, components, quant, auto, time.perf_counter() - start, quantize_s)

    def _encoders_wait_on_cpu(self, root: Path, quant: str) -> bool:
        """True when the whole pipeline will not stay on the accelerator: its text encoders then go to the CPU as
        soon as they are loaded (placement brings them back to encode)."""
        if self.device.type in ONE_POOL or self.options.offload != "none" or self.options.placement == "resident":
            return False
        if self.options.placement != "auto":
            return True
        quantizable, other = weight_bytes(root, self.dtype)
        free = self._free_memory(self.device)
        return free is not None and (quantizable * RATIO[quant] + other) * HEADROOM > free

    def _component(self, root: Path, name: str, library: str, cls_name: str, quant: str, progress,
                   file: Path | None = None) -> Component:
        family = family_in(root)
        quantized = name in family.quantized
        key = (weights_identity(root / name, file), cls_name, quant if quantized else "none")
        found = self._components.get(key)
        if found is not None:
            return found
        cls = import_class(library, cls_name)
        if not issubclass(cls, torch.nn.Module):  # tokenizers, schedulers
            return self._components.add(Component(name, key, cls.from_pretrained(root, subfolder=name)))
        chain, left = self.offload_chain(candidates(quant if quantized else "none", self.device.type, family.name))
        skipped = [Fallback(name, config.backend, config.format, reason) for config, reason in left]
        if quantized and quant != "none":
            progress("quantize", 0, 1)
        module, record, remaining = load_quantized(root, name, cls, key[0], chain, self.device, self.dtype, file,
                                                   fallbacks=skipped)
        return self._components.add(Component(name, key, module, record, remaining))

    def degrade(self, loaded: LoadedPipeline, reason: str) -> list:
        """After a run failed in a backend's own layers: move each quantized component one step down its chain,
        rebuilding the pipeline (its offload hooks are taken off first; the next run installs them again).

        The next step goes through the same load path as a first load (probe, cache). Returns the fallbacks
        made (empty when everything is already at full precision).
        """
        with self.lock:
            made = []
            if any(c.chain for c in loaded.components.values() if c.quant and c.quant.backend != "none"):
                offloading.remove(loaded.pipe)
            for name, component in list(loaded.components.items()):
                if not component.quant or component.quant.backend == "none" or not component.chain:
                    continue
                failed = Fallback(name, component.quant.backend, component.quant.format, reason)
                library, cls_name = read_index(loaded.root)[name]
                self._components.release(component, loaded.key)
                module, record, remaining = load_quantized(
                    loaded.root, name, import_class(library, cls_name), component.key[0], component.chain,
                    self.device, self.dtype, fallbacks=component.quant.fallbacks + [failed])
                replacement = Component(name, component.key + ("fallback", record.backend, record.format), module,
                                        record, remaining, {loaded.key})
                loaded.components[name] = self._components.add(replacement)
                setattr(loaded.pipe, name, module)
                if loaded.base is not None:  # a control view: its Dev pipeline runs on the same components
                    setattr(loaded.base.pipe, name, module)
                made.append(failed)
            if made:
                loaded.compiled = False  # a new transformer: not compiled (nor its LoRAs applied) yet
                loaded.lora_state = None
                if loaded.base is not None:
                    loaded.base.compiled, loaded.base.lora_state = False, None
            return made

    # ---- auxiliary models (not quantized) ------------------------------------------------------------
    def aux(self, key: tuple, load: Callable[[], Any]) -> Any:
        with self.lock:
            if key not in self._aux:
                self._aux[key] = load()
            return self._aux[key]

    # ---- memory --------------------------------------------------------------------------------------
    def _unload(self, key: tuple) -> None:
        loaded = self._pipelines.pop(key, None)
        if loaded:
            for component in loaded.components.values():
                self._components.release(component, key)

    def _drop_other_quants(self, root: str, quant: str) -> None:
        for key in [k for k in self._pipelines if k[0] == root and k[1] != quant]:
            self._unload(key)

    def loaded_bytes(self) -> int:
        return self._components.total_bytes()

    def _fits(self, need: int) -> bool:
        if self.budget_bytes is not None:
            return self.loaded_bytes() + need <= self.budget_bytes
        free = self._free_memory(self.device)
        return free is None or need * HEADROOM <= free

    def _make_room(self, root: Path, quant: str) -> None:
        """Unload least recently used pipelines until the new one fits the budget (or free memory)."""
        quantizable, other = weight_bytes(root, self.dtype)
        need = int(quantizable * RATIO[quant] + other)
        for key in sorted(self._pipelines, key=lambda k: self._pipelines[k].last_used):
            if self._fits(need):
                break
            log.info("unloading %s to make room", key)
            self._unload(key)
            empty_cache(self.device)

    def _enforce_budget(self, keep: tuple) -> None:
        if self.budget_bytes is None:
            return
        for key in sorted(self._pipelines, key=lambda k: self._pipelines[k].last_used):
            if self.loaded_bytes() <= self.budget_bytes:
                break
            if key != keep:
                self._unload(key)
        empty_cache(self.device)

    def free_after_oom(self, keep: tuple) -> None:
        """After running out of memory: drop every other pipeline and return cached memory."""
        with self.lock:
            for key in [k for k in self._pipelines if k != keep]:
                self._unload(key)
            empty_cache(self.device)

    def unload(self) -> int:
        """Unload everything; returns the bytes freed."""
        with self.lock:
            freed = self.loaded_bytes()
            self._pipelines.clear()
            self._components.clear()
            self._aux.clear()
            self.prompts.clear()
            empty_cache(self.device)
            return freed

    def status(self) -> list[dict]:
        """What is loaded: one row per component, with its backend, bytes and the pipelines sharing it."""
        with self.lock:
            return self._components.rows()


def _on(module, device: torch.device) -> bool:
    """True when ``module``'s weights are on ``device`` (its first parameter or buffer says where)."""
    if not isinstance(module, torch.nn.Module):
        return False
    first = next(iter(module.parameters()), None)
    first = first if first is not None else next(iter(module.buffers()), None)
    return first is not None and first.device.type == device.type
