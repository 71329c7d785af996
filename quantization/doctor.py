"""What this machine can run: device, dtype, library versions, and each backend's status."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import torch

from .policy import all_configs, candidates, cpu_class, cpu_machines
from .probe import cached_results, clear_cache, probe
from .registry import check_backend

LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "optimum-quanto", "bitsandbytes", "torchao",
             "gradio", "pillow", "opencv-python-headless")


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


# FLUX.1 transformer Linear shapes (hidden 3072, MLP 12288): what `doctor --probe` tries.
PROBE_SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072)]


def run_probes(device: torch.device, dtype: torch.dtype, folder: Path | None, fresh: bool = False) -> None:
    """Probe every usable backend x format on FLUX shapes into ``folder`` (None: probing is off, nothing runs);
    ``fresh`` forgets earlier results first."""
    if folder is None:
        return
    if fresh:
        clear_cache(folder)
    for config in all_configs():
        if check_backend(config, device) is None:
            probe(config, device, dtype, PROBE_SHAPES, folder)


def doctor_report(device: torch.device, dtype: torch.dtype, probes: Path | None = None) -> dict:
    """What this machine can run; ``probes``: the probe-results folder (None: probing is off, none listed)."""
    backends = []
    for config in all_configs():
        reason = check_backend(config, device)
        backends.append({"backend": config.backend, "format": config.format, "usable": reason is None,
                         "reason": reason or ""})
    policy = {quant: [c.label for c in candidates(quant, device.type)] for quant in ("8bit", "4bit", "fp8")}
    cpu = cpu_class()
    return {
        "cpu_class": cpu,
        "cpu_measured_on": cpu_machines().get(cpu),
        "device": str(device),
        "device_name": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "backends": backends,
        "policy": policy,
        "probes": cached_results(probes) if probes is not None else [],
    }


def format_doctor(report: dict) -> str:
    lines = [f"device: {report['device']} ({report['device_name']}), dtype {report['dtype']}, "
             f"python {report['python']}", "libraries:"]
    lines += [f"  {name:<24} {version or 'not installed'}" for name, version in report["libraries"].items()]
    lines.append("backends on this device:")
    for row in report["backends"]:
        state = "ok" if row["usable"] else f"unusable: {row['reason']}"
        lines.append(f"  {row['backend']:<13} {row['format']:<19} {state}")
    lines.append("probes (quantize and run in a child process; cached per environment):")
    if not report["probes"]:
        lines.append("  none yet: they run when a backend is first used, or with `doctor --probe`")
    for row in report["probes"]:
        state = "ok" if row["ok"] else f"unusable: {row['reason']}"
        lines.append(f"  {row['backend']:<13} {row['format']:<19} {row['device']} {row['dtype']}: {state} "
                     f"({row['shapes']} shapes)")
    if report["device"].startswith("cpu"):
        measured = report["cpu_measured_on"] or "no measurements for this class yet: listed order"
        lines.append(f"CPU class: {report['cpu_class']} (policy measured on {measured})")
    lines.append("fallback chains:")
    lines += [f"  {quant}: {' -> '.join(chain)}" for quant, chain in report["policy"].items()]
    return "\n".join(lines)
