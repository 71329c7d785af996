"""`python app.py bench`: weight bytes, speed, memory and fidelity of every backend x format on this device.

  --quick  (default) CPU-sized slice at full width: 1 double + 2 single blocks, 2 T5 layers, 256 image tokens
  --full   the real depth: 19 + 38 blocks, 24 T5 layers, 1024x1024, 28 steps of Dev (needs a large GPU)
  --tiny   narrow models for tests
  --model klein-4b | klein-9b   FLUX.2 [klein]'s transformer and Qwen3 text encoder at their real widths instead of
           FLUX.1's (the same depths; --full: klein's own 5 + 20 or 8 + 24 blocks and 36 Qwen3 layers, 4 steps)
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .common import (ALL_OPTIONS, REPO, add_options, bench_args, logger, parse_only, weights_root, worker_env,
                     write_json)
from .shapes import MODELS, PRESETS, shape_for

log = logger("bench")
FULL_GPU_FACTOR = 1.6  # the bf16 transformer and a quantized copy are held together, plus activations


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    for name in PRESETS:
        size.add_argument(f"--{name}", dest="preset", action="store_const", const=name)
    parser.set_defaults(preset="quick")
    parser.add_argument("--model", default="flux1", choices=MODELS,
                        help="whose components: FLUX.1's (default) or FLUX.2 [klein] 4B's or 9B's")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    parser.add_argument("--force", action="store_true", help="run --full without a CUDA device, or on a small GPU")
    add_options(parser, quiet_wait=0, only_note="; none:bf16 is always measured")
    parser.add_argument("--json", default=None, help="write the records here, and the .md and .png beside it")
    parser.add_argument("--update-policy", action="store_true",
                        help="rewrite quantization/measured.json (the CPU policy's table) from this run (a klein "
                             "run writes the FLUX.2 table)")
    parser.add_argument("--skip-full", action="store_true",
                        help="measure no full-precision row apart (each option's row still has the full-precision "
                             "step and weights it was timed beside): for a slow or busy machine")
    parser.add_argument("--no-isolate", action="store_true",
                        help="measure every option in this process (faster; peak memory is then cumulative)")
    parser.add_argument("--cache", default=None, help="where the random-weight components are saved "
                                                      "(default: the studio cache, bench-weights/)")
    for field in ("double_blocks", "single_blocks", "t5_layers", "image_size", "text_tokens", "steps", "seed"):
        parser.add_argument(f"--{field.replace('_', '-')}", dest=field, type=int, default=None,
                            help="override the preset")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(bench_args(argv))
    from pipelines.memory.device import pick_device, pick_dtype

    try:
        device = pick_device(args.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    overrides = {k: getattr(args, k) for k in ("double_blocks", "single_blocks", "t5_layers", "image_size",
                                               "text_tokens", "steps", "seed") if getattr(args, k) is not None}
    shape = replace(shape_for(args.preset, args.model), **overrides)
    refusal = check_request(args, shape, device)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    cache = weights_root(args.cache)
    configs = options(args.only)[1:] if args.skip_full and args.only else options(args.only)
    result = run(shape, _preset_name(args.preset, args.model), device, pick_dtype(device), cache, configs,
                 not args.no_isolate,
                 update_policy=args.update_policy, quiet_wait=args.quiet_wait)
    from .report import markdown

    text = markdown(result)
    print(text)
    if args.json:
        write_outputs(result, Path(args.json))
        print(f"wrote {args.json} and its .md and .png", file=sys.stderr)
    return 0 if result["records"] else 1


def _preset_name(preset: str, model: str) -> str:
    """'quick', or 'quick klein-4b' for a klein run (the reports' and records' preset)."""
    return preset if model == "flux1" else f"{preset} {model}"


def check_request(args, shape, device: torch.device) -> str | None:
    """Why this run should not start (None when it may)."""
    if args.update_policy and (device.type not in ("cpu", "cuda") or args.preset == "tiny"):
        return ("--update-policy writes the measured table of this class of CPU or NVIDIA GPU: run it with --quick "
                "(or --full) on a CPU or a CUDA GPU, not with --tiny.")
    if args.preset != "full" or args.force:
        return None
    if device.type != "cuda":
        return ("--full builds the real 12B transformer and 4.8B T5 and runs 28 steps at 1024x1024: it needs a "
                "CUDA GPU (about 40 GB). Use --quick here, or add --force to run it anyway.")
    if shape.family != "flux1":
        return None
    need = full_gpu_bytes(shape)
    total = torch.cuda.get_device_properties(device).total_memory
    if total < need:
        return (f"--full needs about {need / 2**30:.0f} GiB of GPU memory (the bf16 transformer and a quantized "
                f"copy side by side); this GPU has {total / 2**30:.0f} GiB. Add --force to try anyway.")
    return None


def full_gpu_bytes(shape) -> int:
    """GPU bytes --full needs: the bf16 transformer (36 h^2 params per double block, 15 h^2 per single) and more."""
    params = (36 * shape.double_blocks + 15 * shape.single_blocks) * shape.hidden ** 2
    return int(FULL_GPU_FACTOR * 2 * params)


def options(only: str | None):
    """Full precision first, then every quantized option (or those of ``only``)."""
    chosen = parse_only(only) if only else ALL_OPTIONS
    return (ALL_OPTIONS[-1],) + tuple(c for c in chosen if c.bits < 16)


def run(shape, preset: str, device: torch.device, dtype: torch.dtype, cache: Path, configs, isolate: bool = True,
        update_policy: bool = False, quiet_wait: float = 0) -> dict:
    """Measure every usable option; returns the result dict (records, skipped, failed, machine, targets)."""

    from .models import build_vae, psnr, weights_dir
    from .report import machine, machine_slug, targets

    start = time.perf_counter()
    info = machine(device)
    kind = "FLUX.2 [klein]" if shape.family == "flux2" else "FLUX"
    log(f"building {kind}-shaped components ({preset}) in {cache} ...")
    build_start = time.perf_counter()
    root = weights_dir(cache, shape)
    build_s = time.perf_counter() - build_start
    records, skipped, failed, latents = [], [], [], {}
    for config in runnable(configs, device, skipped, quiet_wait):
        option_start = time.perf_counter()
        log(f"{config.label} ...")
        found, error = (measure_in_subprocess if isolate else measure_here)(config, shape, device, dtype, root,
                                                                            floor=not preset.startswith("full"))
        if error:
            failed.append({"backend": config.backend, "format": config.format, "error": error})
            log(f"{config.label}: failed: {error}")
            continue
        records += found[0]
        latents[(config.backend, config.format)] = found[1]
        log(f"{config.label}: {time.perf_counter() - option_start:.0f} s")

    log("decoding images ...")
    vae = build_vae(shape).to(device)
    images: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for record in records:
        if record["component"] != "transformer":
            continue
        pair = latents[(record["backend"], record["format"])]
        ref_image = _decoded(images, vae, pair["reference"], shape)
        record["psnr"] = psnr(_decoded(images, vae, pair["quantized"], shape), ref_image)
    del vae

    result = {"preset": preset, "family": shape.family, "shape": shape.to_dict(), "device": str(device),
              "dtype": str(dtype)[6:],
              "date": datetime.date.today().isoformat(), "machine": info, "slug": machine_slug(info),
              "isolated": isolate, "build_s": build_s, "skipped": skipped, "failed": failed}
    if update_policy and device.type == "cuda":
        from quantization.policy import candidates, gpu_class

        from .report import write_measured

        write_measured(records, result, gpu=gpu_class(device), family=shape.family)
        chains = {quant: candidates(quant, device.type, shape.family) for quant in ("8bit", "4bit")}
        log(f"rewrote quantization/measured.json (GPU class {gpu_class(device)})")
    elif update_policy:
        from quantization.policy import cpu_chain

        from .report import write_measured

        write_measured(records, result, family=shape.family)  # FLUX.1's ratios fill in what this run left out
        chains = {quant: cpu_chain(quant, family=shape.family) for quant in ("8bit", "4bit")}
        log(f"rewrote quantization/measured.json ({shape.family})")
    else:
        from quantization.policy import candidates

        chains = {quant: candidates(quant, device.type, shape.family) for quant in ("8bit", "4bit")}
    auto = {(chain[0].backend, chain[0].format): quant for quant, chain in chains.items()}
    for record in records:
        record["auto_for"] = auto.get((record["backend"], record["format"]))
        record["auto"] = record["auto_for"] is not None
        record.update(device=str(device), machine=info, preset=preset, isolated=isolate)
    order = {(c.backend, c.format): i for i, c in enumerate(configs)}
    records.sort(key=lambda r: (r["component"] != "transformer", order[(r["backend"], r["format"])]))
    result["records"] = records
    result["policy"] = {quant: [c.label for c in chain] for quant, chain in chains.items()}
    result["targets"] = targets(records)
    result["total_s"] = time.perf_counter() - start
    return result


def runnable(configs, device, skipped: list, quiet_wait: float):
    """The configs that run on ``device``, each once the CPU is quiet (``quiet_wait`` s at most); the others go into
    ``skipped`` with the reason."""
    from quantization.registry import check_backend

    for config in configs:
        reason = check_backend(config, device)
        if reason:
            skipped.append({"backend": config.backend, "format": config.format, "reason": reason})
            continue
        if device.type == "cpu" and quiet_wait > 0:
            wait_for_quiet(quiet_wait)
        yield config


def wait_for_quiet(limit_s: float, sample_s: float = 3.0) -> None:
    """Wait until other processes use under DISTURBED of the CPU for one sample, or ``limit_s`` passes."""
    import psutil

    from .measure import DISTURBED

    start = time.perf_counter()
    while True:
        busy = psutil.cpu_percent(interval=sample_s) / 100
        if busy <= DISTURBED:
            return
        if time.perf_counter() - start >= limit_s:
            log(f"other processes still use {busy:.0%} of the CPU after {limit_s:.0f} s; measuring anyway")
            return


def _decoded(cache: dict, vae, latents: torch.Tensor, shape) -> torch.Tensor:
    """Decode once per distinct latents tensor."""
    from .models import decode

    for tensor, image in cache.values():
        if torch.equal(tensor, latents):
            return image
    image = decode(vae, latents, shape)
    cache[len(cache)] = (latents, image)
    return image


def measure_here(config, shape, device, dtype, root, floor):
    from .measure import measure

    try:
        return measure(config, shape, device, dtype, root, floor), None
    except Exception as error:  # reported with the option's name
        return None, f"{type(error).__name__}: {error}"


def measure_in_subprocess(config, shape, device, dtype, root, floor):
    """Run one option in a fresh Python process so its peak memory is its own."""
    with tempfile.TemporaryDirectory(prefix="fluxforge-bench-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"backend": config.backend, "format": config.format, "shape": asdict(shape),
                                   "device": str(device), "dtype": str(dtype)[6:], "root": str(root),
                                   "floor": floor}))
        proc = subprocess.run([sys.executable, "-m", "bench.measure", str(job), tmp], cwd=REPO, env=worker_env(),
                              capture_output=True, text=True)
        out = Path(tmp) / "result.json"
        if not out.exists():
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            return None, f"worker exited with code {proc.returncode}: {' | '.join(tail)}"
        data = json.loads(out.read_text())
        if "error" in data:
            return None, data["error"]
        return (data["records"], torch.load(Path(tmp) / "latents.pt")), None


def write_outputs(result: dict, path: Path) -> None:
    from .report import markdown, plot

    write_json(result, path)
    path.with_suffix(".md").write_text(markdown(result))
    plot(result, path.with_suffix(".png"))


if __name__ == "__main__":
    from pipelines.logs import quiet_libraries

    quiet_libraries()
    sys.exit(main())
