"""Quantize once: a component's quantized weights are saved the first time and read back directly afterwards.

An entry is a folder ``<cache_root>/quantized/<component>-<backend>-<mode>-<key>/`` with the backend's files and a
``manifest.json`` written last: what the entry is, the size and sha256 of every file (one digest per 64 MiB, so
checking a multi-GB entry uses every core), the state-dict keys the rebuilt module must have, and the Linear
shapes the capability probe needs. The key covers the source weights (content fingerprint), component class,
backend and its settings, dtype, device type, the torch and backend library versions and the backend's code.
Entries are written to a temporary folder and renamed into place. On read, a folder without a manifest (partial)
is ignored, and one whose files do not match it (corrupt) is discarded and rebuilt; neither is ever loaded.

A cached load builds the component's layout on the meta device (no weights), lets the backend put its quantized
layers in, then assigns the saved tensors: the full-precision weights are never read.

FLUXFORGE_QUANT_CACHE=0 turns the cache off; FLUXFORGE_QUANT_CACHE_DIR puts the entries elsewhere.

Pre-quantized checkpoints (a GGUF transformer file, or a component folder saved with a ``quantization_config``)
are loaded as they are, and not cached again: see ``load_prequantized``.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .apply import ComponentQuant, Fallback, count_quantized_layers, quantize_with_fallback
from .config import QuantConfig
from .registry import Backend, backend_for, check_backend
from .sizes import module_bytes

log = logging.getLogger(__name__)

CACHE_ENV = "FLUXFORGE_QUANT_CACHE"  # "0" turns the cache off
DIR_ENV = "FLUXFORGE_QUANT_CACHE_DIR"  # where entries go (default: <cache root>/quantized)
FORMAT = 1
MANIFEST = "manifest.json"
CHUNK = 64 << 20  # bytes per sha256 digest


class CorruptEntry(ValueError):
    """A cache entry whose files do not match its manifest."""


@dataclass(frozen=True)
class Source:
    """Where a component's full-precision weights live: its folder, a content fingerprint, and its class."""

    folder: Path
    fingerprint: str
    cls: type
    model: str = ""  # the model as the user named it, for listings
    file: Path | None = None  # a single-file checkpoint (GGUF) that replaces the folder's weights

    def __post_init__(self):
        if not self.fingerprint:
            raise ValueError("Source: fingerprint is empty")
        if not (isinstance(self.cls, type) and issubclass(self.cls, torch.nn.Module)):
            raise ValueError(f"Source: {self.cls!r} is not a torch module class")
        if self.file is not None and Path(self.file).suffix.lower() != ".gguf":
            raise ValueError(f"Source: {self.file} is not a .gguf file")


@dataclass(frozen=True)
class Entry:
    """A verified cache entry."""

    path: Path
    manifest: dict

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [tuple(shape) for shape in self.manifest["linear_shapes"]]


def enabled() -> bool:
    return os.environ.get(CACHE_ENV, "1") != "0"


def cache_dir() -> Path:
    from pipelines.tiny import cache_root

    folder = os.environ.get(DIR_ENV)
    return Path(folder).expanduser() if folder else cache_root() / "quantized"


# ---- keys ----------------------------------------------------------------------------------------------------
def key_fields(source: Source, component: str, config: QuantConfig, device: torch.device,
               dtype: torch.dtype) -> dict:
    """Everything a cached result depends on."""
    backend = backend_for(config)
    return {
        "format": FORMAT,
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


def entry_path(fields: dict) -> Path:
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
    mode = fields["config"].get("weights") or fields["config"].get("quant_type") or fields["config"].get("kind")
    return cache_dir() / f"{fields['component']}-{fields['backend']}-{mode}-{digest}"


def code_version(backend: Backend) -> str:
    """A hash of the backend's source and of the quantize/load functions in use (so a changed one misses)."""
    from .backends import common

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
def lookup(source: Source, component: str, config: QuantConfig, device: torch.device,
           dtype: torch.dtype) -> Entry | None:
    """The verified entry for this component and config; None on a miss. A corrupt entry is discarded."""
    fields = key_fields(source, component, config, device, dtype)
    path = entry_path(fields)
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
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not manifest.get("files"):
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
    from concurrent.futures import ThreadPoolExecutor

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


def restore(entry: Entry, source: Source, config: QuantConfig, device: torch.device,
            dtype: torch.dtype) -> torch.nn.Module:
    """Rebuild the cached module; CorruptEntry when it does not come out as recorded."""
    module = backend_for(config).load(skeleton(source.cls, source.folder, dtype), entry.path, config, device, dtype)
    if sorted(module.state_dict()) != entry.manifest["keys"]:
        raise CorruptEntry("the rebuilt module has other tensors than were saved")
    if count_quantized_layers(module, config) != entry.manifest["quantized_layers"]:
        raise CorruptEntry("the rebuilt module has another number of quantized layers")
    return module


# ---- writing ---------------------------------------------------------------------------------------------------
def store(source: Source, component: str, config: QuantConfig, device: torch.device, dtype: torch.dtype,
          module: torch.nn.Module, record: ComponentQuant) -> Entry | None:
    """Save a just-quantized module (atomically). Returns the entry, or None when it was not cached."""
    backend = backend_for(config)
    if not backend.can_serialize or config.bits >= 16:
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in module.modules()):
        log.info("%s: not cached (the module has hooks attached, which saving would lose)", component)
        return None
    fields = key_fields(source, component, config, device, dtype)
    final = entry_path(fields)
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        names = backend.save(module, tmp)
        manifest = {
            "format": FORMAT,
            "fields": fields,
            "model": source.model,
            "folder": str(source.folder),
            "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256(tmp / name)} for name in names},
            "keys": sorted(module.state_dict()),
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


# ---- the hook the model manager calls ------------------------------------------------------------------------
def load_or_quantize(component: str, load: Callable[[], torch.nn.Module], chain: Sequence[QuantConfig],
                     device: torch.device, dtype: torch.dtype, source: Source | None = None,
                     ) -> tuple[torch.nn.Module, QuantConfig, ComponentQuant]:
    """quantize_with_fallback, reading the first usable config of ``chain`` from the cache when it is there,
    and saving what was quantized when it was not.

    A pre-quantized checkpoint (a GGUF file, or a folder whose config carries a ``quantization_config``) is
    loaded as it is, whatever ``chain`` asks for; the config returned is then the chain's last (full precision),
    meaning there is nothing to fall back to.
    """
    from .probe import enabled as probe_enabled
    from .probe import probe

    if source is not None and (source.file is not None or checkpoint_quantization(source.folder)):
        module, record = load_prequantized(component, source, device, dtype)
        return module, chain[-1], record
    if source is None or not enabled():
        return quantize_with_fallback(component, load, chain, device, dtype)
    fallbacks: list[Fallback] = []
    index = 0
    for index, config in enumerate(chain):
        if config.bits >= 16:
            break
        reason = check_backend(config, device)
        if reason is None:
            entry = lookup(source, component, config, device, dtype) if backend_for(config).can_serialize else None
            if entry is None:
                break
            if probe_enabled():
                result = probe(config, device, dtype, entry.shapes)
                reason = None if result.ok else result.reason
            if reason is None:
                try:
                    module = restore(entry, source, config, device, dtype)
                except Exception as error:
                    log.warning("%s: cached %s is unusable (%s: %s); quantizing again", component, config.label,
                                type(error).__name__, error)
                    discard(entry.path)
                    break
                record = ComponentQuant(config.backend, config.mode, entry.manifest["bytes_before"],
                                        module_bytes(module), 0.0, entry.manifest["quantized_layers"], fallbacks,
                                        from_cache=True)
                return module, config, record
        fallbacks.append(Fallback(component, config.backend, config.mode, reason))
        log.warning("%s: %s %s unavailable (%s); trying the next option", component, config.backend, config.mode,
                    reason)
    module, config, record = quantize_with_fallback(component, load, chain[index:], device, dtype)
    record.fallbacks = fallbacks + record.fallbacks
    store(source, component, config, device, dtype, module, record)
    return module, config, record


# ---- pre-quantized checkpoints ---------------------------------------------------------------------------------
def checkpoint_quantization(folder: Path) -> dict | None:
    """The ``quantization_config`` a diffusers/transformers component folder was saved with, if any."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    found = config.get("quantization_config") if isinstance(config, dict) else None
    return found if isinstance(found, dict) and found else None


def file_fingerprint(path: Path) -> str:
    """Identity of a single-file checkpoint: name, size, and its first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}:{size}".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(-(1 << 20), 2)
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def load_prequantized(component: str, source: Source, device: torch.device,
                      dtype: torch.dtype) -> tuple[torch.nn.Module, ComponentQuant]:
    """Load a checkpoint that is already quantized, as it is; a UserError says what to do when it cannot be."""
    from pipelines.errors import UserError

    start = time.perf_counter()
    full_bytes = sum(p.numel() for p in skeleton(source.cls, source.folder, dtype).parameters()) * dtype.itemsize
    if source.file is not None:
        module, backend, mode = _load_gguf(component, source, dtype)
    else:
        quant = checkpoint_quantization(source.folder) or {}
        backend = str(quant.get("quant_method", "unknown"))
        mode = _checkpoint_mode(quant)
        if backend == "bitsandbytes" and device.type == "mps":
            raise UserError(f"{component}: {source.folder} is a bitsandbytes checkpoint, which does not run on Apple "
                            "MPS; use a full-precision model with --quant 4bit (quanto) instead.")
        try:
            if backend == "bitsandbytes" and device.type == "cpu" and hasattr(source.cls, "load_config"):
                # diffusers' bitsandbytes loader refuses to run without a GPU: read the layers directly
                from .backends.bitsandbytes_backend import load_checkpoint

                module = load_checkpoint(skeleton(source.cls, source.folder, dtype), source.folder, quant, device,
                                         dtype)
            else:
                module = source.cls.from_pretrained(source.folder.parent, subfolder=source.folder.name, dtype=dtype)
        except UserError:
            raise
        except Exception as error:
            raise UserError(f"{component}: the pre-quantized checkpoint in {source.folder} ({backend} {mode}) could "
                            f"not be loaded on {device.type} ({type(error).__name__}: {error}); use a "
                            "full-precision model and --quant instead.") from None
    params = list(module.parameters())
    if params and params[0].device.type != device.type:
        module = module.to(device)
    layers = sum(1 for m in module.modules() if isinstance(m, torch.nn.Linear) and _is_quantized(m))
    log.info("%s: pre-quantized %s %s loaded in %.2f s", component, backend, mode, time.perf_counter() - start)
    record = ComponentQuant(backend, mode, full_bytes, module_bytes(module), 0.0, layers, prequantized=True)
    return module, record


def _load_gguf(component: str, source: Source, dtype: torch.dtype) -> tuple[torch.nn.Module, str, str]:
    from pipelines.errors import UserError

    file = Path(source.file)
    if not hasattr(source.cls, "from_single_file"):
        raise UserError(f"{component}: {source.cls.__name__} cannot be loaded from a single GGUF file.")
    try:
        from diffusers import GGUFQuantizationConfig

        module = source.cls.from_single_file(
            str(file), quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
            config=str(source.folder.parent), subfolder=source.folder.name, local_files_only=True, dtype=dtype)
    except Exception as error:
        raise UserError(f"{component}: {file.name} could not be loaded as a GGUF {source.cls.__name__} for this "
                        f"model ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); check "
                        "that it is a FLUX.1 transformer of the same kind as the tool's model.") from None
    import gguf

    kinds: dict[str, int] = {}
    for param in module.parameters():
        kind = getattr(param, "quant_type", None)
        if kind is not None:
            name = gguf.GGMLQuantizationType(int(kind)).name
            kinds[name] = kinds.get(name, 0) + param.numel()
    return module, "gguf", max(kinds, key=kinds.get) if kinds else "unquantized"


def _checkpoint_mode(quant: dict) -> str:
    method = quant.get("quant_method")
    if method == "bitsandbytes":
        if quant.get("load_in_4bit") or quant.get("_load_in_4bit"):
            return str(quant.get("bnb_4bit_quant_type", "fp4"))
        return "int8"
    for key in ("weights_dtype", "weights", "quant_type"):
        if isinstance(quant.get(key), str):
            return quant[key]
    return str(method or "unknown")


def _is_quantized(layer: torch.nn.Module) -> bool:
    """A Linear whose layer type or weight is not the plain one (bitsandbytes, quanto, torchao, GGUF)."""
    weight = getattr(layer, "weight", None)
    return type(layer) is not torch.nn.Linear or (weight is not None and type(weight) not in (
        torch.nn.Parameter, torch.Tensor))


def prequantized_notices(components: dict, requested: str) -> list[str]:
    """One notice per component that came pre-quantized: its format won over the requested mode."""
    return [f"{name} is a pre-quantized checkpoint ({item['backend']} {item['mode']}): used as it is; quant="
            f"{requested} does not apply to it." for name, item in components.items() if item.get("prequantized")]


# ---- listing and clearing (CLI `cache list|clear`, the studio's System tab) -------------------------------
def entries() -> list[dict]:
    """Every entry, newest first: what it is, its size on disk, and 'ok', 'incomplete' or 'damaged'.

    Sizes are checked here, not checksums (those are checked on every load).
    """
    root = cache_dir()
    rows = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir() or path.name.startswith(".trash-"):
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        row = {"name": path.name, "path": str(path), "bytes": size, "model": "", "component": "", "class": "",
               "backend": "", "mode": "", "dtype": "", "device": "", "created": "", "status": "incomplete"}
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            fields = manifest["fields"]
            files_ok = all((path / name).is_file() and (path / name).stat().st_size == item["bytes"]
                           for name, item in manifest["files"].items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            rows.append(row)
            continue
        config = fields.get("config", {})
        row.update(model=manifest.get("model") or manifest.get("folder", ""), component=fields.get("component", ""),
                   backend=fields.get("backend", ""), dtype=fields.get("dtype", ""), device=fields.get("device", ""),
                   mode=config.get("weights") or config.get("quant_type") or config.get("kind") or "",
                   created=manifest.get("created", ""), status="ok" if files_ok else "damaged",
                   **{"class": fields.get("class", "").rsplit(".", 1)[-1]})
        rows.append(row)
    return sorted(rows, key=lambda r: r["created"], reverse=True)


def total_bytes() -> int:
    return sum(row["bytes"] for row in entries())


def clear() -> dict:
    """Remove every entry (and any left-over temporary folder); returns {"entries": n, "bytes": freed}."""
    root = cache_dir()
    removed, freed = 0, 0
    for path in list(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir():
            continue
        freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        removed += not path.name.startswith(".")
        if path.name.startswith(".trash-"):
            shutil.rmtree(path, ignore_errors=True)
        else:
            discard(path)
    return {"entries": removed, "bytes": freed}


def format_entries(rows: list[dict]) -> str:
    """A plain table for the terminal."""
    if not rows:
        return f"The quantized-weights cache is empty ({cache_dir()})."
    lines = [f"{'size':>9}  {'status':<10} {'component':<15} {'backend':<13} {'mode':<17} {'dtype':<9} model"]
    for row in rows:
        lines.append(f"{_size(row['bytes']):>9}  {row['status']:<10} {row['component'] or '?':<15} "
                     f"{row['backend'] or '?':<13} {row['mode'] or '?':<17} {row['dtype'] or '?':<9} "
                     f"{row['model'] or row['name']}")
    lines.append(f"{_size(sum(r['bytes'] for r in rows)):>9}  total, {len(rows)} entries in {cache_dir()}")
    return "\n".join(lines)


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}"
