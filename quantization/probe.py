"""Crash-safe capability probe: quantize and run Linear layers of a model's shapes in a subprocess.

Some kernels crash the process instead of raising (torch 2.13's CPU int8 matmul segfaults for
in_features < 16; quanto has crashed Metal command buffers). Before a backend x format x device x dtype is
first used on a model, a child process quantizes one Linear per distinct (in, out) shape and runs it; a
crash, hang, error or non-finite output marks the combination unusable, with the reason. Results are kept in
the caller's folder, one file per environment, so each probe costs once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import json
import multiprocessing
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .backends.common import quantizable_linears
from .config import QuantConfig
from .registry import backend_for

TIMEOUT_S = 180.0
MAX_SHAPES = 24


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str = ""
    cached: bool = False


def results_file(folder: Path) -> Path:
    return Path(folder) / f"{environment_key()}.json"


def environment_key() -> str:
    """torch and backend versions, Python, and the device names: a probe result holds only for these."""
    versions = []
    for name in ("torch", "optimum-quanto", "bitsandbytes", "torchao"):
        try:
            versions.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name}=none")
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    text = ";".join(versions + devices + [sys.version.split()[0]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def linear_shapes(module: torch.nn.Module) -> list[tuple[int, int]]:
    """Distinct (in_features, out_features) pairs of the Linear layers a backend would quantize."""
    return sorted({(m.in_features, m.out_features) for _, m in quantizable_linears(module)})


def _key(config: QuantConfig, device: torch.device, dtype: torch.dtype, shape) -> str:
    body = json.dumps([_describe(config), device.type, str(dtype), list(shape)])
    return hashlib.sha256(body.encode()).hexdigest()[:20]


def _describe(config: QuantConfig) -> dict:
    cls = type(config)
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "fields": dataclasses.asdict(config),
            "backend_module": type(backend_for(config)).__module__}


def _read(folder: Path) -> dict:
    try:
        return json.loads(results_file(folder).read_text())
    except (OSError, ValueError):
        return {}


def _write(folder: Path, entries: dict) -> None:
    path = results_file(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(entries, handle, indent=1, sort_keys=True)
    os.replace(handle.name, path)


def cached_results(folder: Path) -> list[dict]:
    """Every probe of this environment kept in ``folder``, for doctor and the System tab."""
    rows: dict[tuple, dict] = {}
    for entry in _read(folder).values():
        key = (entry["backend"], entry["format"], entry["device"], entry["dtype"])
        row = rows.setdefault(key, {"backend": key[0], "format": key[1], "device": key[2], "dtype": key[3],
                                    "shapes": 0, "ok": True, "reason": ""})
        row["shapes"] += 1
        if not entry["ok"]:
            row["ok"], row["reason"] = False, entry["reason"]
    return [rows[key] for key in sorted(rows)]


def clear_cache(folder: Path) -> int:
    """Forget every probe of this environment kept in ``folder``; returns how many there were."""
    entries = _read(folder)
    try:
        results_file(folder).unlink()
    except FileNotFoundError:
        pass
    return len(entries)


def probe(config: QuantConfig, device: torch.device, dtype: torch.dtype, shapes: list[tuple[int, int]],
          folder: Path, timeout_s: float | None = None, while_running=None) -> ProbeResult:
    """Can ``config`` quantize and run Linear layers of ``shapes`` on ``device`` in ``dtype``?

    Each shape's result is kept in ``folder``; only shapes not seen before are run, in one child process.
    ``while_running``: work for this process while the child runs (called at most once; its errors are ignored).
    """
    entries = _read(folder)
    keys = {tuple(shape): _key(config, device, dtype, shape) for shape in shapes}
    for shape, key in keys.items():
        if key in entries and not entries[key]["ok"]:
            return ProbeResult(False, entries[key]["reason"], cached=True)
    unknown = [list(shape) for shape, key in keys.items() if key not in entries]
    if not unknown:
        return ProbeResult(True, cached=True)
    result = ProbeResult(True)
    for start in range(0, len(unknown), MAX_SHAPES):
        batch = unknown[start:start + MAX_SHAPES]
        result = _run_child(config, device, dtype, batch, timeout_s or TIMEOUT_S, while_running)
        while_running = None
        entries = _read(folder)
        # A failed batch marks every shape in it: the child cannot say which one took it down.
        for shape in batch:
            entries[keys[tuple(shape)]] = {
                "backend": config.backend, "format": config.format, "device": str(device),
                "dtype": str(dtype).replace("torch.", ""), "shape": shape, "ok": result.ok, "reason": result.reason}
        _write(folder, entries)
        if not result.ok:
            break
    return result


def _run_child(config, device, dtype, shapes, timeout_s: float, while_running=None) -> ProbeResult:
    """Run the job in a fresh interpreter (spawned: it inherits sys.path, not this process's state); this process
    does ``while_running`` meanwhile."""
    job = {"config": _describe(config), "device": str(device), "dtype": str(dtype).replace("torch.", ""),
           "shapes": shapes}
    context = multiprocessing.get_context("spawn")
    reader, writer = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(job, writer), daemon=True)
    child.start()
    writer.close()
    if while_running is not None:
        try:
            while_running()
        except Exception:  # only a head start: the caller does the same work again when it needs it
            pass
    child.join(timeout_s)
    if child.is_alive():
        child.kill()
        child.join()
        reader.close()
        return ProbeResult(False, f"probe hung (no answer in {timeout_s:g} s)")
    try:
        message = reader.recv() if reader.poll() else ""
    except EOFError:  # the child died before it could answer
        message = ""
    reader.close()
    if child.exitcode < 0:
        return ProbeResult(False, f"probe crashed ({signal.Signals(-child.exitcode).name})")
    if child.exitcode != 0:
        return ProbeResult(False, f"probe failed: {message or f'exit {child.exitcode}'}")
    return ProbeResult(True)


def _child(job: dict, writer) -> None:
    """In the child: quantize one Linear per shape, run it, check the output; the verdict goes to ``writer``."""
    import logging

    logging.disable(logging.WARNING)
    quiet = os.open(os.devnull, os.O_WRONLY)  # the libraries' own chatter stays out of the parent's terminal
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    try:
        message = _try(job)
    except Exception as error:
        writer.send(f"{type(error).__name__}: {error}".strip())
        sys.exit(1)
    writer.send(message)
    sys.exit(0 if message == "ok" else 3)


def _try(job: dict) -> str:
    module_name, qualname = job["config"]["class"].split(":")
    config = getattr(importlib.import_module(module_name), qualname)(**job["config"]["fields"])
    importlib.import_module(job["config"]["backend_module"])
    backend = backend_for(config)
    backend.prepare_probe()
    device, dtype = torch.device(job["device"]), getattr(torch, job["dtype"])
    torch.manual_seed(0)
    for in_features, out_features in job["shapes"]:
        layer = torch.nn.Sequential(torch.nn.Linear(in_features, out_features, device="meta", dtype=dtype))
        layer = layer.to_empty(device="cpu")  # filled directly in ``dtype``: no float32 init and copy
        torch.nn.init.normal_(layer[0].weight, std=in_features ** -0.5)
        torch.nn.init.normal_(layer[0].bias, std=0.02)
        layer = backend.quantize(layer, config, device, dtype)
        with torch.no_grad():  # as diffusers runs its models (quanto int4 refuses inference tensors)
            output = layer(torch.randn(2, in_features, dtype=dtype, device=device))
        if not torch.isfinite(output).all():
            return f"non-finite output for a {in_features}x{out_features} layer"
    return "ok"
