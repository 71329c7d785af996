"""The report of one run: what was asked, what ran (backends per component, fallbacks), memory and times.

It goes to the CLI's --report file, the PNG metadata and the studio's status line.
"""

from __future__ import annotations

import torch

from .memory.device import memory_kind


def build_report(request, prepared, loaded, manager, peak_bytes: int, timings: dict, run_fallbacks: list[dict],
                 notices: list[str], details: dict, peak_reserved_bytes: int | None = None) -> dict:
    components = {name: c.quant.to_dict() for name, c in loaded.components.items()
                  if c.quant and isinstance(c.module, torch.nn.Module)}
    notices += prequantized_notices(components, request.quant)
    parameters = request.parameters()
    parameters.update(width=prepared.width, height=prepared.height)
    return {
        "tool": request.tool,
        "model": request.model,
        "device": str(manager.device),
        "dtype": str(manager.dtype).replace("torch.", ""),
        "seed": request.seed,
        "parameters": parameters,
        "quantization": {
            "requested": request.quant,
            "resolved": loaded.quant,
            "auto_reason": loaded.auto.reason if loaded.auto else None,
            "components": components,
            "fallbacks": [f.to_dict() for f in loaded.fallbacks] + run_fallbacks,
        },
        "memory": {"peak_bytes": peak_bytes, "peak_reserved_bytes": peak_reserved_bytes,
                   "kind": memory_kind(manager.device)},
        "options": manager.options.to_dict(),
        **details,
        "timings": {name: round(value, 4) for name, value in timings.items()},
        "notices": notices,
    }


def prequantized_notices(components: dict, requested: str) -> list[str]:
    """One notice per component that came pre-quantized: its format won over the requested quantization."""
    return [f"{name} is a pre-quantized checkpoint ({item['backend']} {item['format']}): used as it is; quant="
            f"{requested} does not apply to it." for name, item in components.items() if item.get("prequantized")]


def fallback_notices(report: dict) -> list[str]:
    return [f"Fallback: {f['component']} could not use {f['backend']} {f['format']} ({f['reason']})."
            for f in report["quantization"]["fallbacks"]]


def summary(report: dict) -> str:
    """e.g. 'transformer: bitsandbytes nf4, text_encoder_2: bitsandbytes nf4'."""
    return ", ".join(f"{name}: {c['backend']} {c['format']}" for name, c in report["quantization"]["components"].items())
