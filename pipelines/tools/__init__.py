"""One module per tool (FLUX.1 and FLUX.2): everything the studio knows about it. Adding a tool = one module here + its tab."""

from .base import Defaults, Prepared, RunContext, TinyVariant, Tool
from .registry import all_tools, get_tool, register, tool_names, unregister

__all__ = ["Defaults", "Prepared", "RunContext", "TinyVariant", "Tool", "all_tools", "get_tool", "register",
           "tool_names", "unregister"]
