"""Pre-quantized checkpoints: a GGUF transformer file, a safetensors file of a quantized layout (BFL's nvfp4, read
by the caller's loader), or a component folder saved with a ``quantization_config``.

They are loaded as they are, whatever quantization was asked for, and never stored again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from .errors import QuantizationError
from .records import ComponentQuant, ComponentSource
from .sizes import module_bytes
from .store import skeleton

log = logging.getLogger(__name__)


def is_prequantized(source: ComponentSource) -> bool:
    return source.prequantized_file or checkpoint_quantization(source.folder) is not None


def checkpoint_quantization(folder: Path) -> dict | None:
    """The ``quantization_config`` a diffusers/transformers component folder was saved with, if any."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    found = config.get("quantization_config") if isinstance(config, dict) else None
    return found if isinstance(found, dict) and found else None


def load_prequantized(component: str, source: ComponentSource, device: torch.device, dtype: torch.dtype,
                      load=None) -> tuple[torch.nn.Module, ComponentQuant]:
    """Load a checkpoint that is already quantized, as it is; a QuantizationError says what to do when it cannot be.

    ``load``: the caller's loader, for a file of a quantized layout it reads itself (``source.file_quantization``)."""
    start = time.perf_counter()
    full_bytes = sum(p.numel() for p in skeleton(source.cls, source.folder, dtype).parameters()) * dtype.itemsize
    if source.file_quantization is not None:
        backend, fmt = source.file_quantization
        if load is None:
            raise ValueError(f"load_prequantized: {component} is a {backend} {fmt} file; pass the loader that reads "
                             "it.")
        if device.type == "mps" and fmt == "nvfp4":
            raise QuantizationError(f"{component}: {Path(source.file).name} is a {backend} {fmt} file, whose block "
                                    "scales are float8, which Apple MPS does not hold; use the bf16 or fp8 file of "
                                    "the same model (fp8 loads upcast, then quantized as asked).")
        try:
            module = load()
        except Exception as error:
            first = str(error).splitlines()[0] if str(error) else ""
            raise QuantizationError(f"{component}: {Path(source.file).name} could not be loaded as a {backend} {fmt} "
                                    f"{source.cls.__name__} ({type(error).__name__}: {first}); check that it fits "
                                    "the tool's model, or use a bf16 or fp8 file.") from None
    elif source.prequantized_file:
        module, backend, fmt = _load_gguf(component, source, dtype)
    else:
        quant = checkpoint_quantization(source.folder) or {}
        backend = str(quant.get("quant_method", "unknown"))
        fmt = _checkpoint_format(quant)
        if backend == "bitsandbytes" and device.type == "mps" and fmt not in ("nf4", "fp4"):
            raise QuantizationError(f"{component}: {source.folder} is a bitsandbytes {fmt} checkpoint; bitsandbytes "
                                    "runs only 4-bit on Apple MPS: use a full-precision model with --quant "
                                    "4bit or 8bit instead.")
        try:
            if backend == "bitsandbytes" and device.type in ("cpu", "mps") and hasattr(source.cls, "load_config"):
                # diffusers' bitsandbytes loader refuses to run without CUDA: read the layers directly
                from .backends.bitsandbytes_backend import load_checkpoint

                module = load_checkpoint(skeleton(source.cls, source.folder, dtype), source.folder, quant, device,
                                         dtype)
            else:
                module = source.cls.from_pretrained(source.folder.parent, subfolder=source.folder.name, dtype=dtype)
                if backend == "bitsandbytes":  # its layers as this studio's: every tensor moves with them (offload)
                    from .backends.bitsandbytes_backend import adopt_layers

                    adopt_layers(module, dtype)
        except QuantizationError:
            raise
        except Exception as error:
            raise QuantizationError(f"{component}: the pre-quantized checkpoint in {source.folder} ({backend} {fmt}) "
                                    f"could not be loaded on {device.type} ({type(error).__name__}: {error}); use a "
                                    "full-precision model and --quant instead.") from None
    params = list(module.parameters())
    if params and params[0].device.type != device.type:
        module = module.to(device)
    layers = sum(1 for m in module.modules() if isinstance(m, torch.nn.Linear) and _is_quantized(m))
    log.info("%s: pre-quantized %s %s loaded in %.2f s", component, backend, fmt, time.perf_counter() - start)
    record = ComponentQuant(backend, fmt, full_bytes, module_bytes(module), 0.0, layers, prequantized=True)
    return module, record


def _load_gguf(component: str, source: ComponentSource, dtype: torch.dtype) -> tuple[torch.nn.Module, str, str]:
    file = Path(source.file)
    if not hasattr(source.cls, "from_single_file"):
        raise QuantizationError(f"{component}: {source.cls.__name__} cannot be loaded from a single GGUF file.")
    try:
        from diffusers import GGUFQuantizationConfig

        module = source.cls.from_single_file(
            str(file), quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
            config=str(source.folder.parent), subfolder=source.folder.name, local_files_only=True, dtype=dtype)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else ""
        raise QuantizationError(f"{component}: {file.name} could not be loaded as a GGUF {source.cls.__name__} for "
                                f"this model ({type(error).__name__}: {first}); check that it is a FLUX.1 transformer "
                                "of the same kind as the tool's model.") from None
    import gguf

    kinds: dict[str, int] = {}
    for param in module.parameters():
        kind = getattr(param, "quant_type", None)
        if kind is not None:
            name = gguf.GGMLQuantizationType(int(kind)).name
            kinds[name] = kinds.get(name, 0) + param.numel()
    return module, "gguf", max(kinds, key=kinds.get) if kinds else "unquantized"


def _checkpoint_format(quant: dict) -> str:
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
