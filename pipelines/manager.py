"""Model manager: loads pipelines on demand, shares identical components, quantizes, keeps to a budget.

Components that are byte-identical across tools (CLIP, T5, VAE in the FLUX.1 family) are loaded once and
shared by every pipeline that uses them. Nothing here is a module-level global: each studio owns one manager.
"""

from __future__ import annotations

import importlib
import json
import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from quantization.config import QuantConfig
from quantization.errors import QuantizationError
from quantization.load import ComponentSource, fingerprint, load_component
from quantization.policy import HEADROOM, RATIO, AutoChoice, candidates, choose_auto
from quantization.records import ComponentQuant, Fallback
from quantization.sizes import module_bytes

from .device import empty_cache, free_memory, pick_device, pick_dtype
from .errors import UserError
from .paths import quant_caches

log = logging.getLogger(__name__)

QUANTIZED_COMPONENTS = ("transformer", "text_encoder_2")
OFFLOAD_MODES = ("none", "model", "sequential")
Progress = Callable[[str, int, int], None]


def _noop(stage: str, done: int, total: int) -> None:
    pass


@dataclass
class Component:
    name: str
    key: tuple
    module: Any
    quant: ComponentQuant | None = None
    chain: tuple[QuantConfig, ...] = ()
    users: set = field(default_factory=set)
    source: ComponentSource | None = None  # where its weights came from: a runtime fallback loads them again

    @property
    def bytes(self) -> int:
        return module_bytes(self.module) if isinstance(self.module, torch.nn.Module) else 0


@dataclass
class LoadedPipeline:
    key: tuple
    pipe: Any
    components: dict[str, Component]
    mode: str
    auto: AutoChoice | None
    load_s: float
    quantize_s: float
    last_used: float = 0.0

    @property
    def fallbacks(self) -> list[Fallback]:
        return [f for c in self.components.values() if c.quant for f in c.quant.fallbacks]


def _import_class(library: str, class_name: str):
    module = importlib.import_module(library if library in ("diffusers", "transformers") else "diffusers")
    return getattr(module, class_name)


def _load(name: str, load, chain, device: torch.device, dtype: torch.dtype, source: ComponentSource | None,
          fallbacks=()):
    """quantization's load path with the studio's caches; its errors become the studio's."""
    try:
        return load_component(name, load, chain, device, dtype, source, quant_caches(), fallbacks)
    except QuantizationError as error:
        raise UserError(str(error)) from None


def safetensors_numel(folder: Path) -> int:
    """Parameter count from safetensors headers (no weights are read)."""
    total = 0
    for path in folder.glob("*.safetensors"):
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                numel = 1
                for dim in entry["shape"]:
                    numel *= dim
                total += numel
    return total


class ModelManager:
    """Owns every loaded model of one studio; thread-safe."""

    def __init__(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 budget_bytes: int | None = None, offload: str = "none", vae_tiling: bool = False,
                 vae_slicing: bool = False, free_memory_fn: Callable[[torch.device], int | None] = free_memory):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.dtype = dtype or pick_dtype(self.device)
        self.budget_bytes = budget_bytes
        self.offload = offload
        self.vae_tiling = vae_tiling
        self.vae_slicing = vae_slicing
        self._free_memory = free_memory_fn
        self._pipelines: dict[tuple, LoadedPipeline] = {}
        self._components: dict[tuple, Component] = {}
        self._aux: dict[tuple, Any] = {}
        self.lock = threading.RLock()

    # ---- options -------------------------------------------------------------------------------------
    def set_memory_options(self, offload: str | None = None, vae_tiling: bool | None = None,
                           vae_slicing: bool | None = None) -> None:
        if offload is not None:
            if offload not in OFFLOAD_MODES:
                raise UserError(f"offload={offload!r} is unknown; choose one of {', '.join(OFFLOAD_MODES)}.")
            self.offload = offload
        if vae_tiling is not None:
            self.vae_tiling = bool(vae_tiling)
        if vae_slicing is not None:
            self.vae_slicing = bool(vae_slicing)

    def prepare_for_run(self, pipe, offload: str | None = None) -> list[str]:
        """Apply offload and VAE options before a run; returns notices."""
        notices = []
        offload = offload or self.offload
        vae = getattr(pipe, "vae", None)
        if vae is not None:
            vae.enable_tiling() if self.vae_tiling else vae.disable_tiling()
            vae.enable_slicing() if self.vae_slicing else vae.disable_slicing()
        if offload != "none":
            if self.device.type == "cpu":
                notices.append("CPU offload has no effect when running on the CPU.")
            elif offload == "model":
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                pipe.enable_sequential_cpu_offload(device=self.device)
        return notices

    # ---- sizes and auto mode -------------------------------------------------------------------------
    def estimate_bytes(self, root: Path) -> tuple[int, int]:
        """(quantizable, other) weight bytes of a pipeline at this manager's dtype."""
        size = torch.tensor([], dtype=self.dtype).element_size()
        quantizable = other = 0
        for name in self._index(root):
            numel = safetensors_numel(root / name)
            if name in QUANTIZED_COMPONENTS:
                quantizable += numel * size
            else:
                other += numel * size
        return quantizable, other

    def resolve_mode(self, root: Path, mode: str) -> tuple[str, AutoChoice | None]:
        if mode != "auto":
            return mode, None
        quantizable, other = self.estimate_bytes(root)
        choice = choose_auto(quantizable, other, self._free_memory(self.device))
        return choice.quant, choice

    # ---- loading -------------------------------------------------------------------------------------
    @staticmethod
    def _index(root: Path) -> dict[str, tuple[str, str]]:
        index = json.loads((root / "model_index.json").read_text())
        return {name: tuple(entry) for name, entry in index.items()
                if not name.startswith("_") and isinstance(entry, list) and entry[0] and entry[1]}

    def pipeline(self, root: Path, mode: str, progress: Progress = _noop,
                 transformer: Path | None = None) -> LoadedPipeline:
        """The pipeline in ``root`` with ``mode`` ('auto', 'none', '8bit', '4bit'), loading what is missing.

        ``transformer``: a single-file GGUF checkpoint that replaces the pipeline's transformer.
        """
        with self.lock:
            resolved, auto = self.resolve_mode(root, mode)
            key = (str(root), resolved) + ((f"transformer={transformer}",) if transformer else ())
            loaded = self._pipelines.get(key)
            if loaded is None:
                self._drop_other_modes(str(root), resolved)
                self._make_room(root, resolved)
                loaded = self._load_pipeline(key, root, resolved, auto, progress, transformer)
                self._pipelines[key] = loaded
            loaded.last_used = time.monotonic()
            loaded.auto = auto
            self._enforce_budget(keep=key)
            return loaded

    def _load_pipeline(self, key, root: Path, mode: str, auto, progress: Progress,
                       transformer: Path | None = None) -> LoadedPipeline:
        index = self._index(root)
        class_name = json.loads((root / "model_index.json").read_text())["_class_name"]
        start = time.perf_counter()
        components, quantize_s = {}, 0.0
        for step, (name, (library, cls_name)) in enumerate(index.items()):
            progress("load", step, len(index))
            component = self._component(root, name, library, cls_name, mode, progress,
                                        file=transformer if name == "transformer" else None)
            component.users.add(key)
            components[name] = component
            if component.quant:
                quantize_s += component.quant.quantize_s
        progress("load", len(index), len(index))
        pipe = _import_class("diffusers", class_name)(**{n: c.module for n, c in components.items()})
        return LoadedPipeline(key, pipe, components, mode, auto, time.perf_counter() - start, quantize_s)

    def _component(self, root: Path, name: str, library: str, cls_name: str, mode: str, progress,
                   file: Path | None = None) -> Component:
        folder = root / name
        quantized = name in QUANTIZED_COMPONENTS
        identity = fingerprint(folder) if file is None else f"file-{fingerprint(Path(file))}"
        key = (identity, cls_name, mode if quantized else "none")
        if key in self._components:
            return self._components[key]
        cls = _import_class(library, cls_name)
        if not issubclass(cls, torch.nn.Module):
            module = cls.from_pretrained(root, subfolder=name)
            component = Component(name, key, module)
        else:
            def load():
                return cls.from_pretrained(root, subfolder=name, dtype=self.dtype)

            chain = candidates(mode, self.device.type) if quantized else candidates("none", self.device.type)
            if quantized and mode != "none":
                progress("quantize", 0, 1)
            source = ComponentSource(folder, key[0], cls, str(root), Path(file) if file else None)
            loaded = _load(name, load, chain, self.device, self.dtype, source)
            component = Component(name, key, loaded.module.eval(), loaded.record, loaded.remaining, source=source)
        self._components[key] = component
        return component

    def degrade(self, loaded: LoadedPipeline, reason: str) -> list[Fallback]:
        """After a failed run: move each quantized component one step down its chain, rebuilding the pipeline.

        Returns the fallbacks made (empty when everything is already at full precision).
        """
        with self.lock:
            made = []
            for name, component in list(loaded.components.items()):
                if not component.quant or component.quant.backend == "none" or not component.chain:
                    continue
                old = Fallback(name, component.quant.backend, component.quant.format, reason)
                root = Path(loaded.key[0])
                library, cls_name = self._index(root)[name]
                cls = _import_class(library, cls_name)

                def load(root=root, name=name, cls=cls):
                    return cls.from_pretrained(root, subfolder=name, dtype=self.dtype)

                self._release(component, loaded.key)
                result = _load(name, load, component.chain, self.device, self.dtype, component.source,
                               component.quant.fallbacks + [old])
                new_key = component.key + ("fallback", result.config.label)
                replacement = Component(name, new_key, result.module.eval(), result.record, result.remaining,
                                        {loaded.key}, component.source)
                self._components[new_key] = replacement
                loaded.components[name] = replacement
                setattr(loaded.pipe, name, result.module)
                made.append(old)
            return made

    # ---- auxiliary models (not quantized) ------------------------------------------------------------
    def aux(self, key: tuple, load: Callable[[], Any]) -> Any:
        with self.lock:
            if key not in self._aux:
                self._aux[key] = load()
            return self._aux[key]

    # ---- memory --------------------------------------------------------------------------------------
    def _release(self, component: Component, user: tuple) -> None:
        component.users.discard(user)
        if not component.users:
            self._components.pop(component.key, None)

    def _unload(self, key: tuple) -> None:
        loaded = self._pipelines.pop(key, None)
        if loaded:
            for component in loaded.components.values():
                self._release(component, key)

    def _drop_other_modes(self, root: str, mode: str) -> None:
        for key in [k for k in self._pipelines if k[0] == root and k[1] != mode]:
            self._unload(key)

    def loaded_bytes(self) -> int:
        return sum(c.bytes for c in self._components.values())

    def _fits(self, need: int) -> bool:
        if self.budget_bytes is not None:
            return self.loaded_bytes() + need <= self.budget_bytes
        free = self._free_memory(self.device)
        return free is None or need * HEADROOM <= free

    def _make_room(self, root: Path, mode: str) -> None:
        """Unload least recently used pipelines until the new one fits the budget (or free memory)."""
        quantizable, other = self.estimate_bytes(root)
        need = int(quantizable * RATIO[mode] + other)
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
            rows = []
            for component in self._components.values():
                users = sorted(Path(k[0]).name + f" ({k[1]})" for k in component.users)
                quant = component.quant
                rows.append({"component": component.name, "class": component.key[1],
                             "backend": quant.backend if quant else "-", "format": quant.format if quant else "-",
                             "bytes": component.bytes, "used_by": users})
            return rows
