"""Pipelines from a diffusers model directory: its index, weight sizes, and each component loaded (quantized where
the policy says so) through quantization's one load path."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from quantization.errors import QuantizationError
from quantization.load import ComponentSource, fingerprint, load_component, probe_ahead

from ..errors import UserError
from ..families import family_in
from ..paths import quant_caches
from . import single_file
from .layout import folder_size, read_index



def import_class(library: str, class_name: str):
    module = importlib.import_module(library if library in ("diffusers", "transformers") else "diffusers")
    return getattr(module, class_name)


def build_pipeline(root: Path, modules: dict):
    class_name = json.loads((root / "model_index.json").read_text())["_class_name"]
    return import_class("diffusers", class_name)(**modules)


def safetensors_numel(folder: Path) -> int:
    """Parameter count from safetensors headers (no weights are read)."""
    return folder_size(folder, folder.name or "component").params


def weight_bytes(root: Path, dtype: torch.dtype, file: Path | None = None) -> tuple[int, int]:
    """(quantizable, other) weight bytes of the pipeline in ``root`` at ``dtype``; with a pre-quantized single-file
    transformer ``file`` (GGUF, BFL's nvfp4), the file's bytes count among the other ones (the quant choice leaves
    them as they are)."""
    size = torch.tensor([], dtype=dtype).element_size()
    quantizable = other = 0
    quantized = family_in(root).quantized
    held = single_file.inspect(file) if file is not None else None
    for name in read_index(root):
        if name == "transformer" and held is not None and held.prequantized:
            other += held.path.stat().st_size
            continue
        numel = safetensors_numel(root / name) * size
        if name in quantized:
            quantizable += numel
        else:
            other += numel
    return quantizable, other


def weights_identity(folder: Path, file: Path | None = None) -> str:
    """The content fingerprint of a component's weights (its folder, or a single-file checkpoint)."""
    return fingerprint(folder) if file is None else f"file-{fingerprint(Path(file))}"


def probe_quantized(root: Path, index: dict[str, tuple[str, str]], chain, device: torch.device, dtype: torch.dtype,
                    file: Path | None = None) -> None:
    """Probe the Linear shapes of all of the model's quantized components in one child process, before the first
    is loaded (a component replaced by a single-file checkpoint is left out)."""
    parts = [(import_class(*index[name]), root / name) for name in family_in(root).quantized
             if name in index and not (name == "transformer" and file)]
    probe_ahead(parts, chain, device, dtype, quant_caches())


def load_quantized(root: Path, name: str, cls: type, identity: str, chain, device: torch.device,
                   dtype: torch.dtype, file: Path | None = None, fallbacks=()):
    """Component ``name`` of ``root`` along ``chain`` through quantization's one load path (probe, store,
    fallback), with the studio's caches: (module, record, configs left to fall back to)."""
    single = single_file.inspect(file) if file is not None else None

    def load() -> torch.nn.Module:
        if single is not None and single.container == "safetensors":  # a single-file transformer
            return single_file.load(single, cls, root, dtype)
        return cls.from_pretrained(root, subfolder=name, dtype=dtype)

    quantized = single.prequantized if single is not None and single.container == "safetensors" else None
    source = ComponentSource(root / name, identity, cls, str(root), Path(file) if file else None, quantized)
    try:
        loaded = load_component(name, load, chain, device, dtype, source, quant_caches(), fallbacks)
    except QuantizationError as error:
        raise UserError(str(error)) from None
    # Inference only: no weight takes gradients (LoRA loading freezes the base layers too, so a compiled transformer
    # sees the same weights before and after an adapter comes and goes).
    return loaded.module.eval().requires_grad_(False), loaded.record, loaded.remaining
