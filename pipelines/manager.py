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

from quantization.policy import HEADROOM, RATIO, AutoChoice, candidates, choose_auto
from quantization.records import Fallback

from .assembly import (QUANTIZED_COMPONENTS, build_pipeline, import_class, load_quantized, read_index, weight_bytes,
                       weights_identity)
from .components import Component, ComponentStore
from .device import empty_cache, free_memory, pick_device, pick_dtype
from .memory import MemoryOptions

log = logging.getLogger(__name__)

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
        self.memory = MemoryOptions(offload, vae_tiling, vae_slicing)
        self._free_memory = free_memory_fn
        self._pipelines: dict[tuple, LoadedPipeline] = {}
        self._components = ComponentStore()
        self._aux: dict[tuple, Any] = {}
        self.lock = threading.RLock()

    # ---- memory options ------------------------------------------------------------------------------
    def set_memory_options(self, offload: str | None = None, vae_tiling: bool | None = None,
                           vae_slicing: bool | None = None) -> None:
        changes = {"offload": offload, "vae_tiling": vae_tiling, "vae_slicing": vae_slicing}
        self.memory = replace(self.memory, **{k: v for k, v in changes.items() if v is not None})

    def prepare_for_run(self, pipe, offload: str | None = None) -> list[str]:
        """Apply the memory options before a run; returns notices."""
        return self.memory.apply(pipe, self.device, offload)

    # ---- quant -----------------------------------------------------------------------------------------
    def resolve_quant(self, root: Path, quant: str) -> tuple[str, AutoChoice | None]:
        """``quant`` itself, or what Auto picks for the pipeline in ``root`` from free memory."""
        if quant != "auto":
            return quant, None
        quantizable, other = weight_bytes(root, self.dtype)
        choice = choose_auto(quantizable, other, self._free_memory(self.device))
        return choice.quant, choice

    # ---- loading -----------------------------------------------------------------------------------------
    def pipeline(self, root: Path, quant: str, progress: Progress = _noop,
                 transformer: Path | None = None) -> LoadedPipeline:
        """The pipeline in ``root`` with ``quant`` ('auto', 'none', '8bit', '4bit'), loading what is missing.

        ``transformer``: a single-file GGUF checkpoint that replaces the pipeline's transformer.
        """
        with self.lock:
            resolved, auto = self.resolve_quant(root, quant)
            key = (str(root), resolved) + ((f"transformer={transformer}",) if transformer else ())
            loaded = self._pipelines.get(key)
            if loaded is None:
                self._drop_other_quants(str(root), resolved)
                self._make_room(root, resolved)
                loaded = self._load_pipeline(key, root, resolved, auto, progress, transformer)
                self._pipelines[key] = loaded
            loaded.last_used = time.monotonic()
            loaded.auto = auto
            self._enforce_budget(keep=key)
            return loaded

    def _load_pipeline(self, key, root: Path, quant: str, auto, progress: Progress,
                       transformer: Path | None = None) -> LoadedPipeline:
        index = read_index(root)
        start = time.perf_counter()
        components, quantize_s = {}, 0.0
        for step, (name, (library, cls_name)) in enumerate(index.items()):
            progress("load", step, len(index))
            component = self._component(root, name, library, cls_name, quant, progress,
                                        file=transformer if name == "transformer" else None)
            component.users.add(key)
            components[name] = component
            if component.quant:
                quantize_s += component.quant.quantize_s
        progress("load", len(index), len(index))
        pipe = build_pipeline(root, {n: c.module for n, c in components.items()})
        return LoadedPipeline(key, pipe, components, quant, auto, time.perf_counter() - start, quantize_s)

    def _component(self, root: Path, name: str, library: str, cls_name: str, quant: str, progress,
                   file: Path | None = None) -> Component:
        quantized = name in QUANTIZED_COMPONENTS
        key = (weights_identity(root / name, file), cls_name, quant if quantized else "none")
        found = self._components.get(key)
        if found is not None:
            return found
        cls = import_class(library, cls_name)
        if not issubclass(cls, torch.nn.Module):  # tokenizers, schedulers
            return self._components.add(Component(name, key, cls.from_pretrained(root, subfolder=name)))
        chain = candidates(quant if quantized else "none", self.device.type)
        if quantized and quant != "none":
            progress("quantize", 0, 1)
        module, record, remaining = load_quantized(root, name, cls, key[0], chain, self.device, self.dtype, file)
        return self._components.add(Component(name, key, module, record, remaining))

    def degrade(self, loaded: LoadedPipeline, reason: str) -> list:
        """After a failed run: move each quantized component one step down its chain, rebuilding the pipeline.

        The next step goes through the same load path as a first load (probe, cache). Returns the fallbacks
        made (empty when everything is already at full precision).
        """
        with self.lock:
            made = []
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
                made.append(failed)
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
            empty_cache(self.device)
            return freed

    def status(self) -> list[dict]:
        """What is loaded: one row per component, with its backend, bytes and the pipelines sharing it."""
        with self.lock:
            return self._components.rows()
