"""The interface every backend implements: one quantization library behind a few methods."""

from __future__ import annotations

import contextlib

from pathlib import Path

import torch

from ..config import QuantConfig


class Backend:
    """One quantization library behind a small interface."""

    name = "none"

    def check(self, config: QuantConfig, device: torch.device) -> str | None:
        """None when usable on ``device``; otherwise the reason, naming the fix."""
        return None

    def quantize(self, module: torch.nn.Module, config: QuantConfig, device: torch.device,
                 dtype: torch.dtype) -> torch.nn.Module:
        """Quantize ``module`` (on the CPU, in ``dtype``) and return it on ``device``."""
        return module.to(device)

    import_name = ""  # the Python package the backend quantizes with (imported ahead by ``prepare``)

    def prepare(self) -> None:
        """Import the backend's library now (e.g. while a probe child runs), so quantizing later does not wait on it."""
        if self.import_name:
            import importlib

            importlib.import_module(self.import_name)

    def prepare_probe(self) -> None:
        """In a probe child, before quantizing: import what quantizing needs, and only that (the child is thrown
        away after the probe)."""
        self.prepare()

    def offload_refusal(self, config: QuantConfig, offload: str) -> str | None:
        """Why layers of ``config`` cannot run under ``offload`` ("model": whole components moved with ``.to()``;
        "block" and "sequential": diffusers' group offloading and accelerate's per-layer hooks, which move each
        registered tensor on its own); None when they can."""
        return None

    def is_quantized_layer(self, layer: torch.nn.Module) -> bool:
        """True for a layer this backend has quantized."""
        return False

    def state_dict_as_stored(self, module: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Within it, ``module.state_dict()`` may give quantized weights in their stored layout instead of the
        layout the backend's own state_dict converts them to (for callers that read only the keys)."""
        return contextlib.nullcontext()

    # ---- serialization (the quantized-weights cache) -------------------------------------------------
    can_serialize = False  # a backend that cannot save its layers simply skips the cache
    library = ""  # the pip package whose version is part of a cache key

    def save(self, module: torch.nn.Module, path: Path) -> list[str]:
        """Write the quantized ``module`` into the existing folder ``path``; returns the file names written."""
        raise NotImplementedError(f"{self.name} cannot save quantized weights")

    def state_keys(self, module: torch.nn.Module) -> list[str]:
        """The sorted names of the tensors ``save`` writes for ``module`` (a rebuilt module must have the same)."""
        return sorted(module.state_dict())

    def load(self, skeleton: torch.nn.Module, path: Path, config: QuantConfig, device: torch.device,
             dtype: torch.dtype) -> torch.nn.Module:
        """Rebuild what ``save`` wrote, into ``skeleton`` (the full-precision layout on the meta device)."""
        raise NotImplementedError(f"{self.name} cannot load quantized weights")
