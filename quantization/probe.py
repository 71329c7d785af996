"""Crash-safe capability probe: quantize and run Linear layers of a model's shapes in a subprocess.

Some kernels crash the process instead of raising (torch 2.13's CPU int8 matmul segfaults for
in_features < 16; quanto has crashed Metal command buffers). Before a backend x mode x device x dtype is
first used on a model, a child process quantizes one Linear per distinct (in, out) shape and runs it; a
crash, hang, error or non-finite output marks the combination unusable, with the reason. Results are cached
on disk per environment, so each probe costs once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import QuantConfig

PROBE_ENV = "FLUXFORGE_PROBE"  # "0" turns probing off
TIMEOUT_S = float(os.environ.get("FLUXFORGE_PROBE_TIMEOUT", "180"))
MAX_SHAPES = 24


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str = ""
    cached: bool = False


def enabled() -> bool:
    return os.environ.get(PROBE_ENV, "1") != "0"


def cache_file() -> Path:
    from pipelines.tiny import cache_root

    return cache_root() / "probes" / f"{environment_key()}.json"


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
    from .backends.common import quantizable_linears

    return sorted({(m.in_features, m.out_features) for _, m in quantizable_linears(module)})


def _key(config: QuantConfig, device: torch.device, dtype: torch.dtype, shape) -> str:
    body = json.dumps([_describe(config), device.type, str(dtype), list(shape)])
    return hashlib.sha256(body.encode()).hexdigest()[:20]


def _describe(config: QuantConfig) -> dict:
    cls = type(config)
    from .registry import backend_for

    return {"class": f"{cls.__module__}:{cls.__qualname__}", "fields": dataclasses.asdict(config),
            "backend_module": type(backend_for(config)).__module__}


def _read_cache() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(entries: dict) -> None:
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(entries, handle, indent=1, sort_keys=True)
    os.replace(handle.name, path)


def cached_results() -> list[dict]:
    """Every cached probe of this environment, for doctor and the System tab."""
    rows: dict[tuple, dict] = {}
    for entry in _read_cache().values():
        key = (entry["backend"], entry["mode"], entry["device"], entry["dtype"])
        row = rows.setdefault(key, {"backend": key[0], "mode": key[1], "device": key[2], "dtype": key[3],
                                    "shapes": 0, "ok": True, "reason": ""})
        row["shapes"] += 1
        if not entry["ok"]:
            row["ok"], row["reason"] = False, entry["reason"]
    return [rows[key] for key in sorted(rows)]


def clear_cache() -> int:
    entries = _read_cache()
    try:
        cache_file().unlink()
    except FileNotFoundError:
        pass
    return len(entries)


def probe(config: QuantConfig, device: torch.device, dtype: torch.dtype, shapes: list[tuple[int, int]],
          timeout_s: float | None = None) -> ProbeResult:
    """Can ``config`` quantize and run Linear layers of ``shapes`` on ``device`` in ``dtype``?

    Each shape's result is cached; only shapes not seen before are run, in one child process.
    """
    entries = _read_cache()
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
        result = _run_child(config, device, dtype, batch, timeout_s or TIMEOUT_S)
        entries = _read_cache()
        # A failed batch marks every shape in it: the child cannot say which one took it down.
        for shape in batch:
            entries[keys[tuple(shape)]] = {
                "backend": config.backend, "mode": config.mode, "device": str(device),
                "dtype": str(dtype).replace("torch.", ""), "shape": shape, "ok": result.ok, "reason": result.reason}
        _write_cache(entries)
        if not result.ok:
            break
    return result


def _run_child(config, device, dtype, shapes, timeout_s: float) -> ProbeResult:
    job = {"config": _describe(config), "device": str(device), "dtype": str(dtype).replace("torch.", ""),
           "shapes": shapes}
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-m", "quantization.probe"], input=json.dumps(job), text=True,
                              capture_output=True, timeout=timeout_s, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"probe hung (no answer in {timeout_s:g} s)")
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return ProbeResult(False, f"probe crashed ({name})")
    if proc.returncode != 0:
        lines = [line for line in (proc.stdout + proc.stderr).strip().splitlines() if line.strip()]
        return ProbeResult(False, f"probe failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return ProbeResult(True)


def _child(job: dict) -> int:
    """In the subprocess: quantize one Linear per shape, run it, check the output."""
    import logging

    logging.disable(logging.WARNING)
    module_name, qualname = job["config"]["class"].split(":")
    config = getattr(importlib.import_module(module_name), qualname)(**job["config"]["fields"])
    importlib.import_module(job["config"]["backend_module"])
    from .registry import backend_for

    backend = backend_for(config)
    device, dtype = torch.device(job["device"]), getattr(torch, job["dtype"])
    torch.manual_seed(0)
    for in_features, out_features in job["shapes"]:
        layer = torch.nn.Sequential(torch.nn.Linear(in_features, out_features)).to(dtype)
        layer = backend.quantize(layer, config, device, dtype)
        with torch.no_grad():  # as diffusers pipelines run (quanto int4 refuses inference tensors)
            output = layer(torch.randn(2, in_features, dtype=dtype, device=device))
        if not torch.isfinite(output).all():
            print(f"non-finite output for a {in_features}x{out_features} layer")
            return 3
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(_child(json.loads(sys.stdin.read())))
