"""The one path to a quantized component: resolve the chain, consult probe and store, quantize or read, and
record every fallback on the way."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import probe, store
from .config import QuantConfig
from .prequantized import checkpoint_quantization, is_prequantized, load_prequantized
from .records import ComponentQuant, ComponentSource, Fallback
from .registry import backend_for, check_backend, count_quantized_layers
from .sizes import module_bytes

__all__ = ["Caches", "ComponentSource", "LoadedComponent", "fingerprint", "load_component", "probe_ahead"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caches:
    """Where quantization keeps what it learns; None turns that part off."""

    weights: Path | None = None  # quantized-weights store directory (quantize once, read after)
    probes: Path | None = None  # folder for capability-probe results; None = probing off

    def __post_init__(self):
        for name in ("weights", "probes"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                raise ValueError(f"Caches: {name}={value!r} is not a Path; pass a pathlib.Path, or None to turn it "
                                 "off.")


@dataclass
class LoadedComponent:
    module: torch.nn.Module
    config: QuantConfig  # the config it ended with
    record: ComponentQuant  # what happened (fallbacks, bytes, from_cache, prequantized, ...)
    remaining: tuple[QuantConfig, ...]  # what a runtime fallback tries next; () when pre-quantized


def load_component(component: str, load: Callable[[], torch.nn.Module], chain: Sequence[QuantConfig],
                   device: torch.device, dtype: torch.dtype, source: ComponentSource | None = None,
                   caches: Caches = Caches(), fallbacks: Sequence[Fallback] = ()) -> LoadedComponent:
    """The one path: pre-quantized checkpoint as it is; else for each config of ``chain``: backend usable? ->
    stored entry (verified, probed, restored) -> else load full precision, probe, quantize, store. Failures move
    down the chain and are recorded (prefixed by ``fallbacks``, e.g. the runtime failure that led here).

    ``load`` returns a fresh full-precision copy on the CPU; it is called again after a failed quantize, since a
    half-quantized module cannot be trusted. The last config (full precision) must not fail.
    """
    chain = tuple(chain)
    if not chain:
        raise ValueError(f"{component}: chain is empty; pass at least the full-precision config.")
    if source is not None and is_prequantized(source):
        module, record = load_prequantized(component, source, device, dtype, load)
        record.fallbacks = list(fallbacks) + record.fallbacks
        return LoadedComponent(module, chain[-1], record, ())
    made = list(fallbacks)
    module = None
    for index, config in enumerate(chain):
        reason = check_backend(config, device)
        entry = None
        if reason is None and config.bits < 16 and caches.weights is not None and source is not None \
                and backend_for(config).can_serialize:
            entry = store.lookup(caches.weights, source, component, config, device, dtype)
        if reason is None and config.bits < 16 and caches.probes is not None:
            if entry is None:
                module = module if module is not None else load()
            shapes = entry.shapes if entry is not None else probe.linear_shapes(module)
            result = probe.probe(config, device, dtype, shapes, caches.probes,
                                 while_running=backend_for(config).prepare)
            reason = None if result.ok else result.reason
        if reason is None and entry is not None:
            restored = _restore(component, entry, source, config, device, dtype)
            if restored is not None:
                restored[1].fallbacks = made
                return LoadedComponent(restored[0], config, restored[1], chain[index + 1:])
        if reason is None:
            module = module if module is not None else load()
            try:
                module, record = _quantize(module, config, device, dtype)
            except Exception as error:  # any backend failure moves down the chain
                if index == len(chain) - 1:
                    raise
                reason = f"quantizing failed: {type(error).__name__}: {error}".strip()
                module = None
            else:
                record.fallbacks = made
                if caches.weights is not None and source is not None:
                    store.save(caches.weights, source, component, config, device, dtype, module, record)
                return LoadedComponent(module, config, record, chain[index + 1:])
        made.append(Fallback(component, config.backend, config.format, reason))
        log.warning("%s: %s %s unavailable (%s); trying the next option", component, config.backend, config.format,
                    reason)
    raise RuntimeError(f"{component}: no quantization option worked")


def probe_ahead(components: Sequence[tuple[type, Path]], chain: Sequence[QuantConfig], device: torch.device,
                dtype: torch.dtype, caches: Caches = Caches()) -> None:
    """Probe, in one child process, the Linear shapes of all ``components`` (class, weights folder) of a model for
    the first option of ``chain`` their loads will try, before any of them is loaded.

    Each child costs a fresh interpreter and the backend's import (~5 s on a 2-core CPU); probing the model's
    components together spares the later ones their own, and this process imports the backend's library while the
    child runs. Shapes come from each component's layout on the meta device (no weights read). Shapes already known
    are not run again. A failed probe is recorded for every shape of the batch, as any batch is (each load then
    falls back as usual); an error here (a layout that does not build on the meta device) only skips this step."""
    if caches.probes is None:
        return
    config = next((c for c in chain if c.bits < 16 and check_backend(c, device) is None), None)
    if config is None:
        return
    try:
        shapes = sorted({shape for cls, folder in components if checkpoint_quantization(Path(folder)) is None
                         for shape in probe.linear_shapes(store.skeleton(cls, Path(folder), dtype))})
        if shapes:
            probe.probe(config, device, dtype, shapes, caches.probes, while_running=backend_for(config).prepare)
    except Exception as error:  # a layout that does not build on the meta device: each load probes on its own
        log.info("probing ahead skipped (%s: %s)", type(error).__name__, error)


def _quantize(module: torch.nn.Module, config: QuantConfig, device: torch.device,
              dtype: torch.dtype) -> tuple[torch.nn.Module, ComponentQuant]:
    before = module_bytes(module)
    start = time.perf_counter()
    module = backend_for(config).quantize(module, config, device, dtype)
    layers = count_quantized_layers(module, config)
    if config.bits < 16 and layers == 0:
        raise RuntimeError("no layer was quantized")
    return module, ComponentQuant(config.backend, config.format, before, module_bytes(module),
                                  time.perf_counter() - start, layers)


def _restore(component: str, entry: store.Entry, source: ComponentSource, config: QuantConfig, device: torch.device,
             dtype: torch.dtype) -> tuple[torch.nn.Module, ComponentQuant] | None:
    """The stored module and its record; None (the entry discarded) when it does not rebuild."""
    try:
        module = store.restore(entry, source, config, device, dtype)
    except Exception as error:
        log.warning("%s: stored %s is unusable (%s: %s); quantizing again", component, config.label,
                    type(error).__name__, error)
        store.discard(entry.path)
        return None
    record = ComponentQuant(config.backend, config.format, entry.manifest["bytes_before"], module_bytes(module), 0.0,
                            entry.manifest["quantized_layers"], from_cache=True)
    return module, record


def fingerprint(path: Path) -> str:
    """Identity of a weights folder or a single file: file names, sizes, and the first and last MiB of each."""
    path = Path(path)
    if path.is_file():
        files, base = [path], path.parent
    else:
        files, base = sorted(p for p in path.rglob("*") if p.is_file()), path
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(base)}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), 2)
                digest.update(handle.read())
    return digest.hexdigest()[:16]
