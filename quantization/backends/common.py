"""Helpers shared by the backends."""

from __future__ import annotations

import importlib.util

import torch

MIN_IN_FEATURES = 16  # torch's CPU int8 matmul crashes below this


def missing(package: str, pip_name: str) -> str | None:
    if importlib.util.find_spec(package) is None:
        return f"{pip_name} is not installed (pip install {pip_name})"
    return None


def quantizable_linears(module: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """Plain nn.Linear layers worth quantizing (named, in module order)."""
    return [
        (name, child)
        for name, child in module.named_modules()
        if type(child) is torch.nn.Linear and child.in_features >= MIN_IN_FEATURES
    ]


def set_submodule(root: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)
