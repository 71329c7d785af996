"""One backend x mode: load, quantize and run both components, then the full-precision reference beside it.

Phase 1 (its peak memory is the record's): load and quantize T5, encode, load and quantize the transformer,
one transformer step. Phase 2: the full-precision T5 and transformer in the same process; the two denoising
trajectories run interleaved step by step, so step times are compared side by side.

`python -m bench.measure JOB.json OUT_DIR` runs one job in a fresh process (honest per-backend RSS).
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from pipelines.device import PeakMemory, memory_kind
from quantization.apply import count_quantized_layers
from quantization.config import FULL_PRECISION, QuantConfig
from quantization.doctor import ALL_CONFIGS
from quantization.registry import backend_for
from quantization.sizes import module_bytes

from .models import Inputs, load, rel_error
from .shapes import FULL_DOUBLE, FULL_SINGLE, FULL_T5_LAYERS, Shape

ALL_OPTIONS = ALL_CONFIGS + (FULL_PRECISION,)


def config_for(backend: str, mode: str) -> QuantConfig:
    for config in ALL_OPTIONS:
        if (config.backend, config.mode) == (backend, mode):
            return config
    raise ValueError(f"unknown backend/mode {backend}:{mode}; choose from "
                     + ", ".join(f"{c.backend}:{c.mode}" for c in ALL_OPTIONS))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def memory_now(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    import psutil

    return int(psutil.Process().memory_info().rss)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def full_depth_bytes(component: str, module: torch.nn.Module) -> int:
    """Weight bytes extrapolated to the real depth from the bytes per block built here."""
    total = module_bytes(module)
    if component == "transformer":
        parts = [(module.transformer_blocks, FULL_DOUBLE), (module.single_transformer_blocks, FULL_SINGLE)]
    else:
        parts = [(module.encoder.block, FULL_T5_LAYERS)]
    for blocks, full in parts:
        if len(blocks):
            size = module_bytes(blocks)
            total += size * full // len(blocks) - size
    return total


def timed(device: torch.device, fn):
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return value, time.perf_counter() - start


def load_quantized(component: str, config: QuantConfig, root: Path, device, dtype):
    module, load_s = timed(device, lambda: load(component, root, dtype))
    module, quantize_s = timed(device, lambda: backend_for(config).quantize(module, config, device, dtype))
    layers = count_quantized_layers(module, config) if config.bits < 16 else 0
    if config.bits < 16 and layers == 0:
        raise RuntimeError(f"{config.label}: no layer of {component} was quantized")
    return module.eval(), {"load_s": load_s, "quantize_s": quantize_s, "quantized_layers": layers}


def load_reference(component: str, root: Path, device, dtype):
    return load(component, root, dtype).to(device).eval()


def encode_times(text_encoder, inputs: Inputs, count: int, device) -> tuple[torch.Tensor, list[float]]:
    out = inputs.encode(text_encoder)  # warm-up
    times = []
    for _ in range(count):
        out, seconds = timed(device, lambda: inputs.encode(text_encoder))
        times.append(seconds)
    return out, times


def measure(config: QuantConfig, shape: Shape, device: torch.device, dtype: torch.dtype, root: Path,
            floor: bool = False) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Records for text_encoder_2 and transformer, and the final latents (quantized and reference)."""
    full = config.bits >= 16
    inputs = Inputs(shape, device, dtype)
    release(device)
    base = memory_now(device)

    # Phase 1: what a studio run holds.
    with PeakMemory(device) as peak:
        t5, t5_info = load_quantized("text_encoder_2", config, root, device, dtype)
        t5_out, t5_times = encode_times(t5, inputs, shape.encodes, device)
        transformer, tr_info = load_quantized("transformer", config, root, device, dtype)
        first = inputs.forward(transformer, inputs.noise, inputs.sigmas[0])
        sync(device)
    t5_info.update(weight_bytes=module_bytes(t5), full_depth_bytes=full_depth_bytes("text_encoder_2", t5))
    tr_info.update(weight_bytes=module_bytes(transformer),
                   full_depth_bytes=full_depth_bytes("transformer", transformer))

    # Phase 2: the full-precision reference in the same process.
    if full:
        t5_ref, t5_ref_out, t5_ref_times = t5, t5_out, t5_times
    else:
        del t5
        release(device)
        t5_ref = load_reference("text_encoder_2", root, device, dtype)
        t5_ref_out, t5_ref_times = encode_times(t5_ref, inputs, shape.encodes, device)
    t5 = None
    t5_ref_info = {"weight_bytes": module_bytes(t5_ref), "full_depth_bytes": full_depth_bytes("text_encoder_2", t5_ref),
                   "params": sum(p.numel() for p in t5_ref.parameters())}
    del t5_ref
    release(device)

    ref = transformer if full else load_reference("transformer", root, device, dtype)
    ref_first = first if full else inputs.forward(ref, inputs.noise, inputs.sigmas[0])
    tr_ref_info = {"weight_bytes": module_bytes(ref), "full_depth_bytes": full_depth_bytes("transformer", ref),
                   "params": sum(p.numel() for p in ref.parameters())}
    models = {"quantized": transformer} if full else {"quantized": transformer, "reference": ref}
    latents = {name: inputs.noise.clone() for name in models}
    times = {name: [] for name in models}
    for step in range(shape.steps):
        sigma, sigma_next = inputs.sigmas[step], inputs.sigmas[step + 1]
        order = list(models) if step % 2 == 0 else list(reversed(models))
        for name in order:
            velocity, seconds = timed(device, lambda: inputs.forward(models[name], latents[name], sigma))
            latents[name] = latents[name] + (sigma_next - sigma) * velocity.cpu()
            times[name].append(seconds)
    if full:
        latents["reference"], times["reference"] = latents["quantized"], times["quantized"]

    floor_error = None
    if floor and full:
        reference32 = load("transformer", root, dtype).float().to(device)
        floor_error = rel_error(first, inputs.forward(reference32, inputs.noise, inputs.sigmas[0], torch.float32))
        del reference32
    del models, transformer, ref
    release(device)

    common = {"backend": config.backend, "mode": config.mode, "label": config.label, "bits": config.bits,
              "dtype": str(dtype).replace("torch.", ""), "peak_bytes": peak.peak_bytes, "base_bytes": base,
              "memory_kind": memory_kind(device)}
    records = [
        _record("text_encoder_2", common, t5_info, t5_ref_info, t5_times, t5_ref_times, "T5 encode",
                rel_error(t5_out, t5_ref_out)),
        _record("transformer", common, tr_info, tr_ref_info, times["quantized"], times["reference"],
                "transformer step", rel_error(first, ref_first),
                latent_rel_error=rel_error(latents["quantized"], latents["reference"]), bf16_floor=floor_error),
    ]
    return records, latents


def _record(component, common, info, ref_info, step_times, ref_times, step_kind, error, **extra) -> dict:
    step_s, ref_step_s = statistics.median(step_times), statistics.median(ref_times)
    return {
        "component": component, **common, "params": ref_info["params"],
        "weight_bytes": info["weight_bytes"], "ref_weight_bytes": ref_info["weight_bytes"],
        "weight_ratio": info["weight_bytes"] / ref_info["weight_bytes"],
        "full_depth_weight_bytes": info["full_depth_bytes"], "full_depth_ref_weight_bytes": ref_info["full_depth_bytes"],
        "full_depth_weight_ratio": info["full_depth_bytes"] / ref_info["full_depth_bytes"],
        "load_s": info["load_s"], "quantize_s": info["quantize_s"], "quantized_layers": info["quantized_layers"],
        "step_kind": step_kind, "step_s": step_s, "ref_step_s": ref_step_s, "step_ratio": step_s / ref_step_s,
        "step_times": step_times, "ref_step_times": ref_times, "rel_error": error, **extra,
    }


def main(argv: list[str] | None = None) -> int:
    """Worker: run the job in JOB.json, write result.json and latents.pt to OUT_DIR."""
    from cli import quiet_libraries

    job_path, out_dir = (argv or sys.argv[1:])[:2]
    quiet_libraries()
    job = json.loads(Path(job_path).read_text())
    out = Path(out_dir)
    try:
        shape = Shape(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["shape"].items()})  # asdict
        device = torch.device(job["device"])
        records, latents = measure(config_for(job["backend"], job["mode"]), shape, device,
                                   getattr(torch, job["dtype"]), Path(job["root"]), job.get("floor", False))
        torch.save(latents, out / "latents.pt")
        (out / "result.json").write_text(json.dumps({"records": records}))
    except Exception as error:  # reported by the parent, with the traceback
        (out / "result.json").write_text(json.dumps({"error": f"{type(error).__name__}: {error}",
                                                     "traceback": traceback.format_exc()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
