"""One backend x format: load, quantize and run both components, then the full-precision reference beside it.

The components are FLUX.1's T5 and transformer, or FLUX.2 [klein]'s Qwen3 text encoder and transformer (the text
encoder is called T5 below for both).
Phase 1 (its peak memory is the record's): load and quantize T5, encode, load and quantize the transformer,
one transformer step. Phase 2: the full-precision T5 and transformer in the same process; encodes and the two
denoising trajectories run interleaved, in pairs, so times are compared side by side. On a CPU, a pair during
which other processes took a sizeable share of the cores is timed again (the record counts these).

`python -m bench.measure JOB.json OUT_DIR` runs one job in a fresh process (honest per-backend RSS).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from pipelines.memory.device import PeakMemory, empty_cache, memory_kind
from quantization.config import QuantConfig
from quantization.registry import backend_for, count_quantized_layers
from quantization.sizes import bytes_by_module

from .common import busy_seconds, config_for, other_share
from .models import Inputs, load, rel_error
from .shapes import Shape


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


def sizes(component: str, module: torch.nn.Module, shape: Shape) -> dict:
    """Weight bytes, and the same extrapolated to the real depth from the bytes per block built here."""
    table = bytes_by_module(module)
    total = sum(table.values())
    if component == "transformer":
        parts = [("transformer_blocks.", shape.full_double, len(module.transformer_blocks)),
                 ("single_transformer_blocks.", shape.full_single, len(module.single_transformer_blocks))]
    elif shape.family == "flux2":  # Qwen3's decoder layers
        parts = [("model.layers.", shape.full_text_layers, len(module.model.layers))]
    else:
        parts = [("encoder.block.", shape.full_text_layers, len(module.encoder.block))]
    full_depth = total
    for prefix, full, count in parts:
        if count:
            size = sum(value for name, value in table.items() if name.startswith(prefix))
            full_depth += size * full // count - size
    return {"weight_bytes": total, "full_depth_bytes": full_depth, "params": sum(p.numel() for p in module.parameters())}


RETRIES = 2  # times a disturbed pair of timings is taken again
DISTURBED = 0.2  # other processes' share of the machine's CPU time above which a timing is disturbed


class Clock:
    """Wall time of timed calls; on CPU also the share of the machine other processes used meanwhile."""

    def __init__(self, device: torch.device):
        self.device = device
        self.retimed = 0
        self.other: list[float] = []  # other processes' CPU share during each kept timing

    def __call__(self, fn):
        """(value, seconds, other processes' share of the CPU during the call; 0 off the CPU)."""
        sync(self.device)
        busy, own, start = busy_seconds(), time.process_time(), time.perf_counter()
        value = fn()
        sync(self.device)
        seconds = time.perf_counter() - start
        if self.device.type != "cpu":
            return value, seconds, 0.0
        return value, seconds, other_share(busy, own, seconds)

    def pair(self, calls: dict, first: int = 0) -> dict:
        """Run each call (rotated by ``first``) back to back; again, up to RETRIES times, while disturbed."""
        names = list(calls)[first:] + list(calls)[:first]
        for attempt in range(RETRIES + 1):
            results = {name: self(calls[name]) for name in names}
            if self.device.type != "cpu" or max(r[2] for r in results.values()) <= DISTURBED or attempt == RETRIES:
                break
            self.retimed += 1
        self.other += [r[2] for r in results.values()]
        return {name: results[name][:2] for name in calls}

    def other_share(self) -> float | None:
        return statistics.mean(self.other) if self.device.type == "cpu" and self.other else None


def paired_ratio(times: list[float], ref_times: list[float]) -> float:
    """Median of per-pair ratios: each quantized timing against the full-precision one taken beside it."""
    return statistics.median(q / r for q, r in zip(times, ref_times))


def load_quantized(component: str, config: QuantConfig, root: Path, device, dtype):
    clock = Clock(device)
    module, load_s, _ = clock(lambda: load(component, root, dtype))
    module, quantize_s, _ = clock(lambda: backend_for(config).quantize(module, config, device, dtype))
    layers = count_quantized_layers(module, config) if config.bits < 16 else 0
    if config.bits < 16 and layers == 0:
        raise RuntimeError(f"{config.label}: no layer of {component} was quantized")
    return module.eval(), {"load_s": load_s, "quantize_s": quantize_s, "quantized_layers": layers}


def load_reference(component: str, root: Path, device, dtype):
    return load(component, root, dtype).to(device).eval()


def measure(config: QuantConfig, shape: Shape, device: torch.device, dtype: torch.dtype, root: Path,
            floor: bool = False) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Records for text_encoder_2 and transformer, and the final latents (quantized and reference)."""
    full = config.bits >= 16
    text = shape.text_component
    inputs = Inputs(shape, device, dtype)
    empty_cache(device)
    base = memory_now(device)

    # Phase 1: what a studio run holds.
    with PeakMemory(device) as peak:
        t5, t5_info = load_quantized(text, config, root, device, dtype)
        t5_out = inputs.encode(t5)
        transformer, tr_info = load_quantized("transformer", config, root, device, dtype)
        first = inputs.forward(transformer, inputs.noise, inputs.sigmas[0])  # also the warm-up
        sync(device)
    empty_cache(device)
    resident = memory_now(device)
    t5_info.update(sizes(text, t5, shape))
    tr_info.update(sizes("transformer", transformer, shape))

    # Phase 2: the full-precision reference in the same process, timed side by side.
    clock = Clock(device)
    t5_ref = t5 if full else load_reference(text, root, device, dtype)
    t5_ref_out = inputs.encode(t5_ref)  # warm-up
    encodes = {"quantized": lambda: inputs.encode(t5)}
    if not full:
        encodes["reference"] = lambda: inputs.encode(t5_ref)
    t5_times = {name: [] for name in encodes}
    for index in range(shape.encodes):
        for name, (_, seconds) in clock.pair(encodes, index % 2).items():
            t5_times[name].append(seconds)
    t5_ref_info = sizes(text, t5_ref, shape)
    del t5, t5_ref
    empty_cache(device)

    ref = transformer if full else load_reference("transformer", root, device, dtype)
    ref_first = first if full else inputs.forward(ref, inputs.noise, inputs.sigmas[0])  # also the warm-up
    tr_ref_info = sizes("transformer", ref, shape)
    models = {"quantized": transformer} if full else {"quantized": transformer, "reference": ref}
    latents = {name: inputs.noise.clone() for name in models}
    times = {name: [] for name in models}
    for step in range(shape.steps):  # the two trajectories, interleaved step by step
        sigma, sigma_next = inputs.sigmas[step], inputs.sigmas[step + 1]
        calls = {name: (lambda name=name: inputs.forward(models[name], latents[name], sigma)) for name in models}
        for name, (velocity, seconds) in clock.pair(calls, step % 2).items():
            latents[name] = latents[name] + (sigma_next - sigma) * velocity.cpu()
            times[name].append(seconds)
    for table in (t5_times, times, latents):
        table.setdefault("reference", table["quantized"])

    floor_error = None
    if floor and full:  # bf16 compute against float32 compute, same weights and bf16-rounded inputs
        reference32 = load("transformer", root, dtype).float().to(device)
        floor_error = rel_error(first, inputs.forward(reference32, inputs.noise.to(dtype).float(),
                                                      inputs.sigmas[0], torch.float32))
        del reference32
    del models, transformer, ref
    empty_cache(device)

    common = {"backend": config.backend, "format": config.format, "label": config.label, "bits": config.bits,
              "dtype": str(dtype).replace("torch.", ""), "peak_bytes": peak.peak_bytes, "base_bytes": base,
              "resident_bytes": resident, "memory_kind": memory_kind(device), "other_cpu_share": clock.other_share(),
              "retimed": clock.retimed}
    records = [
        _record(text, common, t5_info, t5_ref_info, t5_times["quantized"], t5_times["reference"],
                "T5 encode" if shape.family == "flux1" else "Qwen3 encode", rel_error(t5_out, t5_ref_out)),
        _record("transformer", common, tr_info, tr_ref_info, times["quantized"], times["reference"],
                "transformer step", rel_error(first, ref_first),
                latent_rel_error=rel_error(latents["quantized"], latents["reference"]), bf16_floor=floor_error),
    ]
    return records, latents


def _record(component, common, info, ref_info, step_times, ref_times, step_kind, error, **extra) -> dict:
    step_s, ref_step_s = statistics.median(step_times), statistics.median(ref_times)
    step_ratio = paired_ratio(step_times, ref_times)
    return {
        "component": component, **common, "params": ref_info["params"],
        "weight_bytes": info["weight_bytes"], "ref_weight_bytes": ref_info["weight_bytes"],
        "weight_ratio": info["weight_bytes"] / ref_info["weight_bytes"],
        "full_depth_weight_bytes": info["full_depth_bytes"], "full_depth_ref_weight_bytes": ref_info["full_depth_bytes"],
        "full_depth_weight_ratio": info["full_depth_bytes"] / ref_info["full_depth_bytes"],
        "load_s": info["load_s"], "quantize_s": info["quantize_s"], "quantized_layers": info["quantized_layers"],
        "step_kind": step_kind, "step_s": step_s, "ref_step_s": ref_step_s, "step_ratio": step_ratio,
        "step_times": step_times, "ref_step_times": ref_times, "rel_error": error, **extra,
    }


def main(argv: list[str] | None = None) -> int:
    """Worker: run the job in JOB.json, write result.json and latents.pt to OUT_DIR."""
    from pipelines.logs import quiet_libraries

    job_path, out_dir = (argv or sys.argv[1:])[:2]
    quiet_libraries()
    job = json.loads(Path(job_path).read_text())
    out = Path(out_dir)
    try:
        shape = Shape(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["shape"].items()})  # asdict
        device = torch.device(job["device"])
        records, latents = measure(config_for(job["backend"], job["format"]), shape, device,
                                   getattr(torch, job["dtype"]), Path(job["root"]), job.get("floor", False))
        torch.save(latents, out / "latents.pt")
        (out / "result.json").write_text(json.dumps({"records": records}))
    except Exception as error:  # reported by the parent, with the traceback
        (out / "result.json").write_text(json.dumps({"error": f"{type(error).__name__}: {error}",
                                                     "traceback": traceback.format_exc()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
