"""Loaded components, shared by every pipeline that uses them (CLIP, T5 and the VAE are identical across tools)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from quantization.sizes import module_bytes


@dataclass
class Component:
    name: str
    key: tuple  # (weights fingerprint, class name, quant): equal keys are the same weights, loaded the same way
    module: Any
    quant: Any = None  # quantization's record of how it was loaded (None for tokenizers and schedulers)
    chain: tuple = ()  # the quantization configs left to fall back to
    users: set = field(default_factory=set)  # keys of the pipelines that hold it
    on_device: bool = True  # False while it waits in CPU memory (pipelines.memory.placement)

    @property
    def bytes(self) -> int:
        return module_bytes(self.module) if isinstance(self.module, torch.nn.Module) else 0


class ComponentStore:
    """Components by key, each kept while a pipeline uses it."""

    def __init__(self):
        self._items: dict[tuple, Component] = {}

    def get(self, key: tuple) -> Component | None:
        return self._items.get(key)

    def add(self, component: Component) -> Component:
        self._items[component.key] = component
        return component

    def release(self, component: Component, user: tuple) -> None:
        """``user`` no longer holds ``component``; it is dropped when nothing does."""
        component.users.discard(user)
        if not component.users:
            self._items.pop(component.key, None)

    def clear(self) -> None:
        self._items.clear()

    def total_bytes(self) -> int:
        return sum(c.bytes for c in self._items.values())

    def rows(self) -> list[dict]:
        """One row per component: its backend and format, bytes, and the pipelines sharing it."""
        rows = []
        for component in self._items.values():
            quant = component.quant
            rows.append({"component": component.name, "class": component.key[1],
                         "backend": quant.backend if quant else "-", "format": quant.format if quant else "-",
                         "bytes": component.bytes,
                         "used_by": sorted(Path(k[0]).name + f" ({k[1]})" for k in component.users)})
        return rows
