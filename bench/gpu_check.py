"""`python app.py bench gpu-check`: seconds-long checks, on a real card, that each memory and speed option does what
it says, then one reduced end-to-end run; one table. Made to run whole within one 10-minute command (--budget).

On the tiny family (the full-size model only in the end-to-end run):

  cached 8-bit, twice       the 8-bit model quantized and stored, then read back by a fresh manager: every tensor of
                            each component on the card (bitsandbytes' int8 scales included), the same image
  encoders-off              an 8-bit T5 sent to CPU memory between phases: the card's allocated memory falls by its
                            size (torch.cuda.memory_allocated before and after), nothing of it left on the card
  moves to meta             each quantized backend's component sent to the meta device: nothing left behind, never
                            unpacked
  compile + step cache +    compiled transformer, First-Block Cache and a LoRA; a new strength and another file of
  LoRA                      the same shapes compile nothing new
  4-bit sequential offload  layer-by-layer offload of a 4-bit model: it runs, and the report says so
  block offload             block-by-block offload (CUDA streams on a GPU): it runs; its peak beside the resident run
  tiled decode              a FLUX-configured VAE (sample_size 1024) decoding 1024x1024 in tiles: its peak falls

then `bench e2e` with what is left of the budget (--full at 512x512, 8 steps, none and 4bit on a GPU with the memory
and disk for it; --narrow otherwise). --narrow runs all of it on the CPU, for a try without a card.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import Check, bench_args, finish_checks, logger

log = logger("bench gpu-check")
BUDGET_S = 560  # the whole check, inside one 600 s command
E2E_RESERVE_S = 60  # at least this much is left for the end-to-end run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py bench gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--narrow", action="store_true", help="everything on the CPU (e2e's narrow preset)")
    parser.add_argument("--device", default=None, help="the card to check (default: the best available)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, metavar="SECONDS",
                        help=f"seconds for all of it (default {BUDGET_S})")
    parser.add_argument("--no-e2e", action="store_true", help="the checks only")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = parser.parse_args(bench_args(argv))
    from pipelines.memory.device import pick_device

    try:
        device = torch.device("cpu") if args.narrow else pick_device(args.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.narrow:
        print("error: no GPU here; run `bench gpu-check --narrow` to try the checks on the CPU.", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fluxforge-gpu-check-") as tmp:
        os.environ["FLUXFORGE_QUANT_CACHE_DIR"] = str(Path(tmp) / "quantized")
        from pipelines.models.tiny import ensure_tiny_family
        from pipelines.tools import all_tools

        ensure_tiny_family(all_tools())
        checks = []
        for name, run in CHECKS:
            check = Check(name)
            began = time.perf_counter()
            log(f"{name} ...")
            try:
                check.ok, check.measured = run(device)
            except Exception as error:  # noqa: BLE001  a check that fails says how, the others still run
                check.ok, check.measured = False, f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"
            check.seconds = time.perf_counter() - began
            checks.append(check)
        if not args.no_e2e:
            checks.append(e2e(device, args.narrow, args.budget - (time.perf_counter() - start), Path(tmp)))
    return finish_checks("gpu-check", checks, device, time.perf_counter() - start, args.out)


# ---- the checks --------------------------------------------------------------------------------------------------
def _engine(device: torch.device, **options):
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager

    engine = Engine(ModelManager(device=device))
    engine.manager.set_options(**options)
    return engine


def _generate(engine, quant="none", prompt="a fox", loras=(), steps=4, **fields):
    from pipelines.request import GenerationRequest

    from .e2e import dev_tool_name

    return engine.generate(GenerationRequest(tool=dev_tool_name(), prompt=prompt, model="tiny", quant=quant, seed=1, steps=steps,
                                             loras=[(str(p), s) for p, s in loras], **fields))


def _where(module) -> str:
    from quantization.census import tensors_by_device

    return ", ".join(f"{count} on {kind}" for kind, count in sorted(tensors_by_device(module).items()))


def _only_on(module, device: torch.device) -> bool:
    from quantization.census import tensors_by_device

    return set(tensors_by_device(module)) == {device.type}


def cached_8bit_twice(device):
    first = _generate(_engine(device), "8bit")
    engine = _engine(device)
    second = _generate(engine, "8bit")
    (loaded,) = engine.manager._pipelines.values()
    components = second.report["quantization"]["components"]
    cached = all(components[name]["from_cache"] for name in ("transformer", "text_encoder_2"))
    whole = all(_only_on(loaded.components[name].module, device) for name in ("transformer", "text_encoder_2"))
    same = np.array_equal(np.asarray(first.image), np.asarray(second.image))
    backend = f"{components['transformer']['backend']} {components['transformer']['format']}"
    return cached and whole and same, (f"{backend}; from cache: {cached}; transformer {_where(loaded.components['transformer'].module)}; "
                                       f"same image: {same}")


def encoders_off(device):
    from quantization.sizes import module_bytes

    engine = _engine(device, placement="encoders-off")
    _generate(engine, "8bit")
    (loaded,) = engine.manager._pipelines.values()
    t5 = loaded.components["text_encoder_2"].module
    placement = engine.manager.place(loaded, 128 * 128, 32)
    engine.manager.enter(loaded, placement, "encode")
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    engine.manager.enter(loaded, placement, "denoise")
    after = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    parked = _only_on(t5, torch.device("cpu"))
    size = module_bytes(t5)
    if before is None:
        return parked, f"T5 ({size / 2**20:.1f} MiB) after encoding: {_where(t5)} (no card memory to read on a CPU)"
    freed = before - after
    return parked and freed >= 0.9 * size, (f"memory_allocated {before / 2**20:.1f} -> {after / 2**20:.1f} MiB "
                                            f"(freed {freed / 2**20:.1f} of T5's {size / 2**20:.1f}); T5 {_where(t5)}")


def moves_to_meta(device):
    from optimum.quanto.tensor.weights.tinygemm.packed import TinyGemmPackedTensor

    from pipelines.models.tiny import tiny_transformer
    from quantization.census import tensors_by_device
    from quantization.policy import all_configs
    from quantization.registry import backend_for, check_backend

    calls, unpack = [], TinyGemmPackedTensor.unpack
    TinyGemmPackedTensor.unpack = lambda self: calls.append(1) or unpack(self)
    results = []
    try:
        for config in all_configs():
            if check_backend(config, device) is not None:
                continue
            module = backend_for(config).quantize(tiny_transformer(0, hidden=128).to(torch.bfloat16), config, device,
                                                  torch.bfloat16).eval()
            count = sum(tensors_by_device(module).values())
            module.to("meta")
            results.append((config.label, tensors_by_device(module) == {"meta": count}))
    finally:
        TinyGemmPackedTensor.unpack = unpack
    bad = [label for label, ok in results if not ok]
    return not bad and not calls, (f"{len(results)} backends x formats, nothing left behind"
                                   if not bad else f"left behind: {', '.join(bad)}") + f"; unpacked {len(calls)} times"


def compile_step_cache_lora(device):
    from pipelines.loras.tiny import tiny_lora

    engine = _engine(device, compile=True, step_cache=0.2)
    files = [tiny_lora("diffusers", seed=i) for i in range(3)]
    first = _generate(engine, loras=[(files[0], 1.0)])
    half = _generate(engine, loras=[(files[0], 0.5)])
    other = _generate(engine, loras=[(files[1], 1.0)])
    report = first.report
    quiet = half.report["compile_graphs"] == 0 and other.report["compile_graphs"] == 0
    ok = report["compiled"] and half.report["compiled"] and quiet and report["step_cache"] is not None
    return ok, (f"compiled: {report['compiled']} ({report['compile_graphs']} graphs, first step "
                f"{report['timings']['first_step_s']:.1f} s, then {report['timings']['step_s']:.2f} s); new strength "
                f"and another file: {half.report['compile_graphs'] + other.report['compile_graphs']} new graphs; "
                f"step cache skipped {report['step_cache']['skipped_steps']} of 4")


def sequential_4bit(device):
    result = _generate(_engine(device, offload="sequential"), "4bit")
    transformer = result.report["quantization"]["components"]["transformer"]
    ok = result.report["offload"] == "sequential" and transformer["backend"] != "none"
    return ok, (f"{transformer['backend']} {transformer['format']} under {result.report['offload']} offload; peak "
                f"{result.report['memory']['peak_bytes'] / 2**20:.0f} MiB")


def block_offload(device):
    resident = _generate(_engine(device), "none")
    blocks = _generate(_engine(device, offload="block"), "none")
    same = np.array_equal(np.asarray(resident.image), np.asarray(blocks.image))
    peak, whole = blocks.report["memory"]["peak_bytes"], resident.report["memory"]["peak_bytes"]
    return blocks.report["offload"] == "block" and same, (f"peak {peak / 2**20:.0f} MiB against {whole / 2**20:.0f} "
                                                          f"MiB resident; same image: {same}")


def tiled_decode(device):
    from diffusers import AutoencoderKL

    from pipelines.memory.options import tile_vae

    from .common import LiveBytes

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16),
                        layers_per_block=1, norm_num_groups=4, sample_size=1024, use_quant_conv=False,
                        use_post_quant_conv=False).to(device).eval()
    latents = torch.randn(1, 16, 128, 128, device=device)

    def peak() -> int:
        with torch.no_grad():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                vae.decode(latents)
                torch.cuda.synchronize(device)
                return torch.cuda.max_memory_allocated(device) - base
            with LiveBytes() as meter:
                vae.decode(latents)
            return meter.peak

    whole = peak()
    tile_vae(vae)
    tiled = peak()
    return tiled < 0.5 * whole, (f"1024x1024 decode peak {whole / 2**20:.0f} MiB whole, {tiled / 2**20:.0f} MiB in "
                                 f"{vae.tile_sample_min_size}px tiles")


CHECKS = [("cached 8-bit, twice", cached_8bit_twice), ("encoders-off", encoders_off),
          ("moves to meta", moves_to_meta), ("compile + step cache + LoRA", compile_step_cache_lora),
          ("4-bit sequential offload", sequential_4bit), ("block offload", block_offload),
          ("tiled decode", tiled_decode)]


# ---- the end-to-end run ------------------------------------------------------------------------------------------
def e2e(device: torch.device, narrow: bool, left: float, work: Path) -> Check:
    import shutil

    from .e2e import FULL_MODEL_BYTES, QUANTIZED_SHARE, main as e2e_main

    from .common import weights_root

    check = Check("e2e (reduced)")
    began = time.perf_counter()
    full = (not narrow and device.type == "cuda"
            and torch.cuda.get_device_properties(device).total_memory >= 40 * 2**30
            and shutil.disk_usage(weights_root(None)).free >= FULL_MODEL_BYTES * (1 + QUANTIZED_SHARE) * 1.05)
    argv = (["--full", "--width", "512", "--height", "512", "--steps", "8"] if full else ["--narrow"])
    argv += ["--quant", "none,4bit", "--budget", f"{max(0.0, left - 10):.0f}", "--json", str(work / "e2e.json"),
             "--device", str(device)]
    if left < E2E_RESERVE_S:
        check.ok, check.measured = None, f"not run: {left:.0f} s left of the budget"
        return check
    log(f"e2e {' '.join(argv)} ...")
    code = e2e_main(argv)
    import json

    result = json.loads((work / "e2e.json").read_text())
    parts = []
    for record in result["records"]:
        if record["status"] == "ok":
            ratio = record.get("denoise_ratio")
            parts.append(f"{record['quant']}: peak {record['peak_bytes'] / 2**30:.2f} GiB"
                         + (f", {ratio:.2f}x bf16" if ratio is not None else ""))
        else:
            parts.append(f"{record['quant']}: {record['status']}")
    check.ok = code == 0
    check.measured = f"{result['preset']} {result['width']}x{result['height']}, {result['steps']} steps: " + "; ".join(parts)
    check.seconds = time.perf_counter() - began
    return check


if __name__ == "__main__":
    sys.exit(main())
