"""Quantize once: a component's quantized weights are saved the first time and read back directly afterwards.

An entry is a folder ``<root>/<component>-<backend>-<format>-<key>/`` with the backend's files and a
``manifest.json`` written last: what the entry is, the size and sha256 of every file (one digest per 64 MiB, so
checking a multi-GB entry uses every core), the state-dict keys the rebuilt module must have, and the Linear
shapes the capability probe needs. The key covers the source weights (content fingerprint), component class,
backend and its settings, dtype, device type, the torch and backend library versions and the backend's code.
Entries are written to a temporary folder and renamed into place. On read, a folder without a manifest (partial)
is ignored, and one whose files do not match it (corrupt) is discarded and rebuilt; neither is ever loaded.

A cached load builds the component's layout on the meta device (no weights), lets the backend put its quantized
layers in, then assigns the saved tensors: the full-precision weights are never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from .backends import common
from .backends.base import Backend
from .config import QuantConfig
from .records import ComponentQuant, ComponentSource
from .registry import backend_for, count_quantized_layers

log = logging.getLogger(__name__)

LAYOUT = 1  # the entry layout; stored under the manifest's "format" key
MANIFEST = "manifest.json"
CHUNK = 64 << 20  # bytes per sha256 digest


class CorruptEntry(ValueError):
    """A store entry whose files do not match its manifest."""


@dataclass(frozen=True)
class Entry:
    """A verified store entry."""

    path: Path
    manifest: dict

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [tuple(shape) for shape in self.manifest["linear_shapes"]]


# ---- keys ----------------------------------------------------------------------------------------------------
def key_fields(source: ComponentSource, component: str, config: QuantConfig, device: torch.device,
               dtype: torch.dtype) -> dict:
    """Everything a cached result depends on."""
    backend = backend_for(config)
    return {
        "format": LAYOUT,
        "source": source.fingerprint,
        "class": f"{source.cls.__module__}.{source.cls.__qualname__}",
        "component": component,
        "backend": config.backend,
        "config": {"type": type(config).__name__, **dataclasses.asdict(config)},
        "dtype": str(dtype).replace("torch.", ""),
        "device": torch.device(device).type,
        "torch": torch.__version__,
        "library": f"{backend.library}=={_version(backend.library)}",
        "code": code_version(backend),
    }


def entry_path(root: Path, fields: dict) -> Path:
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
    return Path(root) / f"{fields['component']}-{fields['backend']}-{weight_format(fields)}-{digest}"


def weight_format(fields: dict) -> str:
    """The weight format named by the config recorded in key ``fields`` ('' when there is none)."""
    config = fields.get("config") or {}
    return config.get("weights") or config.get("quant_type") or config.get("kind") or ""


def code_version(backend: Backend) -> str:
    """A hash of the backend's source and of the quantize/load functions in use (so a changed one misses)."""
    parts = []
    for item in (inspect.getmodule(type(backend)), common, type(backend).quantize, type(backend).load):
        try:
            parts.append(inspect.getsource(item))
        except (OSError, TypeError):
            parts.append(getattr(item, "__qualname__", repr(item)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package) if package else "none"
    except importlib.metadata.PackageNotFoundError:
        return "none"


# ---- reading ---------------------------------------------------------------------------------------------------
def lookup(root: Path, source: ComponentSource, component: str, config: QuantConfig, device: torch.device,
           dtype: torch.dtype) -> Entry | None:
    """The verified entry for this component and config; None on a miss. A corrupt entry is discarded."""
    fields = key_fields(source, component, config, device, dtype)
    path = entry_path(root, fields)
    if not (path / MANIFEST).is_file():
        return None  # missing, or partial (never finished): ignored
    try:
        return Entry(path, verify(path, fields))
    except CorruptEntry as error:
        log.warning("%s: cached %s is corrupt (%s); discarding it", component, config.label, error)
        discard(path)
        return None


def verify(path: Path, fields: dict | None = None) -> dict:
    """The entry's manifest, once every file matches its recorded size and sha256; else CorruptEntry."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise CorruptEntry(f"unreadable manifest ({type(error).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != LAYOUT or not manifest.get("files"):
        raise CorruptEntry("manifest of another format")
    if fields is not None and manifest.get("fields") != fields:
        raise CorruptEntry("manifest is for another key")
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file() or file.stat().st_size != expected["bytes"]:
            raise CorruptEntry(f"{name} is missing or has the wrong size")
        if sha256(file) != expected["sha256"]:
            raise CorruptEntry(f"{name} fails its sha256 check")
    return manifest


def sha256(path: Path) -> list[str]:
    """sha256 of each CHUNK-byte piece of the file, computed in parallel (hashlib releases the GIL)."""
    size = path.stat().st_size
    starts = range(0, max(size, 1), CHUNK)
    fd = os.open(path, os.O_RDONLY)
    try:
        def digest(start: int) -> str:
            return hashlib.sha256(os.pread(fd, CHUNK, start)).hexdigest()

        with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1)) as pool:
            return list(pool.map(digest, starts))
    finally:
        os.close(fd)


def skeleton(cls: type, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The component's layout with every parameter on the meta device (no memory, no weights read)."""
    from accelerate import init_empty_weights

    if hasattr(cls, "load_config"):  # diffusers
        config = cls.load_config(folder)
        with init_empty_weights():
            return cls.from_config(config)
    from transformers import AutoConfig

    config = (getattr(cls, "config_class", None) or AutoConfig).from_pretrained(folder)
    with init_empty_weights():
        return cls._from_config(config, dtype=dtype)


def restore(entry: Entry, source: ComponentSource, config: QuantConfig, device: torch.device,
            dtype: torch.dtype) -> torch.nn.Module:
    """Rebuild the cached module; CorruptEntry when it does not come out as recorded."""
    backend = backend_for(config)
    module = backend.load(skeleton(source.cls, source.folder, dtype), entry.path, config, device, dtype)
    if backend.state_keys(module) != entry.manifest["keys"]:
        raise CorruptEntry("the rebuilt module has other tensors than were saved")
    if count_quantized_layers(module, config) != entry.manifest["quantized_layers"]:
        raise CorruptEntry("the rebuilt module has another number of quantized layers")
    return module


# ---- writing ---------------------------------------------------------------------------------------------------
def save(root: Path, source: ComponentSource, component: str, config: QuantConfig, device: torch.device,
         dtype: torch.dtype, module: torch.nn.Module, record: ComponentQuant) -> Entry | None:
    """Save a just-quantized module (atomically). Returns the entry, or None when it was not cached."""
    backend = backend_for(config)
    if not backend.can_serialize or config.bits >= 16:
        return None
    if any(not getattr(hook, "restored_by_backend", False)
           for m in module.modules() for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())):
        log.info("%s: not cached (the module has hooks attached, which saving would lose)", component)
        return None
    fields = key_fields(source, component, config, device, dtype)
    final = entry_path(root, fields)
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        names = backend.save(module, tmp)
        manifest = {
            "format": LAYOUT,
            "fields": fields,
            "model": source.model,
            "folder": str(source.folder),
            "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256(tmp / name)} for name in names},
            "keys": backend.state_keys(module),
            "linear_shapes": sorted({(m.in_features, m.out_features) for m in module.modules()
                                     if backend.is_quantized_layer(m)}),
            "quantized_layers": record.quantized_layers,
            "bytes_before": record.bytes_before,
            "bytes_after": record.bytes_after,
            "quantize_s": round(record.quantize_s, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))  # last: an entry without it is partial
        if final.exists():
            discard(final)  # a partial or stale folder under the same name
        os.rename(tmp, final)
        return Entry(final, manifest)
    except Exception as error:  # a full disk or a backend that cannot save this module: run without the cache
        log.warning("%s: could not cache %s (%s: %s)", component, config.label, type(error).__name__, error)
        return None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def discard(path: Path) -> None:
    """Remove an entry: renamed out of the way first, so no reader sees half of it."""
    trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


