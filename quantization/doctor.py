"""What this machine can run: device, dtype, library versions, and each backend's status."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from .config import BitsAndBytesConfig, QuantoConfig, TorchAoConfig
from .policy import candidates
from .registry import check_backend

LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "optimum-quanto", "bitsandbytes", "torchao",
             "gradio", "pillow", "opencv-python-headless")
ALL_CONFIGS = (QuantoConfig("int8"), QuantoConfig("int4"), BitsAndBytesConfig("int8"), BitsAndBytesConfig("nf4"),
               TorchAoConfig("int8_dynamic"), TorchAoConfig("int8_weight_only"))


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple Silicon (MPS)"
    return platform.processor() or platform.machine()


def doctor_report(device: torch.device, dtype: torch.dtype) -> dict:
    backends = []
    for config in ALL_CONFIGS:
        reason = check_backend(config, device)
        backends.append({"backend": config.backend, "mode": config.mode, "usable": reason is None,
                         "reason": reason or ""})
    policy = {mode: [c.label for c in candidates(mode, device.type)] for mode in ("8bit", "4bit")}
    return {
        "device": str(device),
        "device_name": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "backends": backends,
        "policy": policy,
    }


def format_doctor(report: dict) -> str:
    lines = [f"device: {report['device']} ({report['device_name']}), dtype {report['dtype']}, "
             f"python {report['python']}", "libraries:"]
    lines += [f"  {name:<24} {version or 'not installed'}" for name, version in report["libraries"].items()]
    lines.append("backends on this device:")
    for row in report["backends"]:
        state = "ok" if row["usable"] else f"unusable: {row['reason']}"
        lines.append(f"  {row['backend']:<13} {row['mode']:<17} {state}")
    lines.append("fallback chains:")
    lines += [f"  {mode}: {' -> '.join(chain)}" for mode, chain in report["policy"].items()]
    return "\n".join(lines)
