"""The tools, found once from the modules of this package (each defines ``TOOL``); more can be registered."""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import UserError
from .base import Tool

_TOOLS: dict[str, Tool] = {}


def _discover() -> None:
    if _TOOLS:
        return
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        tool = getattr(importlib.import_module(f"{package}.{info.name}"), "TOOL", None)
        if isinstance(tool, Tool):
            _TOOLS.setdefault(tool.name, tool)


def register(tool: Tool) -> Tool:
    """Add ``tool`` (a new name, or replace one of the same name); returns it."""
    if not isinstance(tool, Tool):
        raise ValueError(f"register: {tool!r} is not a Tool.")
    _discover()
    _TOOLS[tool.name] = tool
    return tool


def unregister(name: str) -> None:
    _TOOLS.pop(name, None)


def all_tools() -> tuple[Tool, ...]:
    _discover()
    return tuple(sorted(_TOOLS.values(), key=lambda t: (t.order, t.name)))


def tool_names() -> tuple[str, ...]:
    return tuple(t.name for t in all_tools())


def get_tool(name: str) -> Tool:
    """The tool called ``name``; a UserError lists the tools when there is none."""
    _discover()
    try:
        return _TOOLS[name]
    except (KeyError, TypeError):
        raise UserError(f"tool={name!r} is unknown; choose one of {', '.join(tool_names())}.") from None
