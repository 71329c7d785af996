"""`python app.py bench lora`: a transformer denoising step without and with a LoRA, on every quantization backend
x format that runs on this device.

The transformer is a FLUX.1-shaped slice at the real widths (`--quick`, the default: 1 double + 2 single blocks at
hidden 3072, 256 image + 64 text tokens; `--tiny`: narrow, for tests) with deterministic random weights, quantized as
the studio quantizes it. The LoRA (rank 16 by default, random weights) adapts every attention and MLP projection of
its blocks and is applied as the studio applies LoRAs (pipelines.loras.apply_loras: runtime peft adapters over the
layers as loaded, quantized ones included), then removed again.

Timing: after a warm-up, `--rounds` rounds; in each, the step is timed `--steps` times without the LoRA and `--steps`
times with it (the order alternating from round to round, one untimed warm-up step after each switch). A round's
ratio is the median step with the LoRA over the median step without it, timed beside each other; the row's ratio is
the median of the rounds' ratios. On a CPU a step during which other processes took a sizeable share of the cores
is timed again (bench.measure.Clock). The target, a ratio of at most TARGET, is reported per row.

After the LoRA is removed, the quantized layers must be the very same modules, of the same types, holding the same
bytes, and the step's output the same as before the LoRA: each row records it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .common import REPO, add_options, bench_args, config_for, logger, weights_root, worker_env, write_json
from .run import options, runnable
from .shapes import PRESETS, Shape

log = logger("bench lora")
TARGET = 1.15  # seconds per step with one LoRA, relative to the same model without it
RANK = 16
PRESET_NAMES = ("quick", "tiny")
DEFAULT_ROUNDS = {"quick": 4, "tiny": 2}
DEFAULT_STEPS = {"quick": 2, "tiny": 2}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py bench lora", description=__doc__.splitlines()[0],
                                     epilog="The target (ratio <= %g) is reported per row; it is not a test." % TARGET)
    size = parser.add_mutually_exclusive_group()
    for name in PRESET_NAMES:
        size.add_argument(f"--{name}", dest="preset", action="store_const", const=name)
    parser.set_defaults(preset="quick")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    parser.add_argument("--rank", type=int, default=RANK, help=f"the LoRA's rank (default {RANK})")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of timings per option (default: quick "
                                                                 f"{DEFAULT_ROUNDS['quick']}, tiny {DEFAULT_ROUNDS['tiny']})")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round, with and without the LoRA "
                                                                f"each (default: quick {DEFAULT_STEPS['quick']}, tiny "
                                                                f"{DEFAULT_STEPS['tiny']})")
    add_options(parser, quiet_wait=0, only_note="; full precision is always measured")
    parser.add_argument("--json", default=None, help="write the result here, and the .md beside it")
    parser.add_argument("--no-isolate", action="store_true",
                        help="measure every option in this process (faster; by default each has its own process)")
    parser.add_argument("--cache", default=None, help="where the random-weight components are saved "
                                                      "(default: the studio cache, bench-weights/)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(bench_args(argv))
    if args.worker:
        print(json.dumps(run_job(json.loads(args.worker))))
        return 0
    from pipelines.memory.device import pick_device, pick_dtype

    rounds = args.rounds if args.rounds is not None else DEFAULT_ROUNDS[args.preset]
    steps = args.steps if args.steps is not None else DEFAULT_STEPS[args.preset]
    refusal = next((f"--{name}={value} must be a whole number >= 1." for name, value in
                    (("rank", args.rank), ("rounds", rounds), ("steps", steps)) if value < 1), None)
    try:
        device = pick_device(args.device)
        configs = options(args.only)
    except ValueError as error:
        refusal = str(error)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    result = run(PRESETS[args.preset], args.preset, device, pick_dtype(device), weights_root(args.cache), configs,
                 rank=args.rank, rounds=rounds, steps=steps, isolate=not args.no_isolate, quiet_wait=args.quiet_wait)
    text = markdown(result)
    print(text)
    if args.json:
        path = Path(args.json)
        write_json(result, path)
        path.with_suffix(".md").write_text(text)
        print(f"wrote {path} and its .md", file=sys.stderr)
    return 0 if result["rows"] else 1


def run(shape: Shape, preset: str, device, dtype, cache: Path, configs, rank: int = RANK, rounds: int = 4,
        steps: int = 2, isolate: bool = True, quiet_wait: float = 0) -> dict:
    """Measure every usable option: the result (rows, skipped, failed, machine, load)."""
    from .models import weights_dir
    from .report import machine, machine_slug

    start = time.perf_counter()
    info = machine(device)
    loads = [_load_now()]
    log(f"building FLUX-shaped components ({preset}) in {cache} ...")
    root = weights_dir(cache, shape)
    rows, skipped, failed = [], [], []
    for config in runnable(configs, device, skipped, quiet_wait):
        log(f"{config.label} ...")
        job = {"backend": config.backend, "format": config.format, "shape": asdict(shape), "device": str(device),
               "dtype": str(dtype).replace("torch.", ""), "root": str(root), "rank": rank, "rounds": rounds,
               "steps": steps}
        option_start = time.perf_counter()
        found = run_in_subprocess(job) if isolate else run_job(job)
        loads.append(_load_now())
        if "error" in found:
            failed.append({"backend": config.backend, "format": config.format, "error": found["error"]})
            log(f"{config.label}: failed: {found['error']}")
            continue
        rows.append(found)
        log(f"{config.label}: ratio {found['ratio']:.3f} ({time.perf_counter() - option_start:.0f} s)")
    return {"preset": preset, "shape": shape.to_dict(), "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "date": datetime.date.today().isoformat(), "machine": info, "slug": machine_slug(info),
            "isolated": isolate, "rank": rank, "rounds": rounds, "steps": steps, "target_ratio": TARGET,
            "rows": rows, "skipped": skipped, "failed": failed, "load_average_1min": loads,
            "shared": max(loads) > (os.cpu_count() or 1), "total_s": time.perf_counter() - start}


def _load_now() -> float:
    """The machine's 1-minute load average (what `uptime` shows first)."""
    return round(os.getloadavg()[0], 2)


def run_in_subprocess(job: dict) -> dict:
    """One option in a fresh Python process (its own memory; no state left by another backend)."""
    done = subprocess.run([sys.executable, "-m", "bench.lora", "--worker", json.dumps(job)], cwd=REPO,
                          env=worker_env(), stdout=subprocess.PIPE, text=True, check=False)  # its log: our stderr
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": f"worker exited with code {done.returncode} (its log is above)"}


def run_job(job: dict) -> dict:
    """One option, in this process: its row, or {"error": ...}."""
    import torch

    shape = Shape(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["shape"].items()})
    try:
        return measure_lora(config_for(job["backend"], job["format"]), shape, torch.device(job["device"]),
                            getattr(torch, job["dtype"]), Path(job["root"]), job["rank"], job["rounds"], job["steps"])
    except Exception as error:  # reported by the parent, under the option's name
        return {"error": f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"}


def base_layers(transformer, config) -> dict:
    """The layers a LoRA sits over, by name: the quantized ones (full precision: every Linear), each as
    (the module's id, its type, its weight's type, its bytes)."""
    import torch

    from quantization.registry import backend_for
    from quantization.sizes import module_bytes

    if config.bits < 16:
        keep = backend_for(config).is_quantized_layer
    else:
        def keep(module):
            return type(module) is torch.nn.Linear
    return {name: (id(module), type(module).__name__, type(module.weight).__name__, module_bytes(module))
            for name, module in transformer.named_modules() if keep(module)}


def measure_lora(config, shape: Shape, device, dtype, root: Path, rank: int = RANK, rounds: int = 4,
                 steps: int = 2) -> dict:
    """Step times of ``config``'s transformer without and with a rank-``rank`` LoRA, and what its removal leaves."""
    import torch
    from diffusers import FluxPipeline

    from pipelines.loras import adapters_on, apply_loras, check_lora
    from pipelines.manager import LoadedPipeline
    from pipelines.loras.tiny import projection_lora
    from quantization.sizes import module_bytes

    from .measure import Clock, load_quantized
    from .models import Inputs, rel_error

    inputs = Inputs(shape, device, dtype)
    transformer, info = load_quantized("transformer", config, root, device, dtype)

    def step():
        return inputs.forward(transformer, inputs.noise, inputs.sigmas[0])

    step()  # the warm-up: bitsandbytes' 4-bit weights are repacked for the CPU kernel on their first run
    base_out = step()
    layers, weight_bytes = base_layers(transformer, config), module_bytes(transformer)
    if not layers:
        raise RuntimeError(f"{config.label}: the transformer has no layer to put a LoRA over")
    pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    loaded = LoadedPipeline(("bench-lora", config.label), pipe, {}, config.label, None, 0.0, 0.0)

    with tempfile.TemporaryDirectory(prefix="fluxforge-bench-lora-") as folder:
        lora = check_lora(projection_lora(transformer, Path(folder) / f"bench-rank{rank}.safetensors", rank), 1.0)
        wanted = {"without": [], "with": [lora]}
        switch_start = time.perf_counter()
        apply_loras(loaded, wanted["with"])
        apply_s = time.perf_counter() - switch_start
        log(f"{config.label}: quantized in {info['quantize_s']:.1f} s, LoRA applied in {apply_s:.1f} s")
        modules = dict(transformer.named_modules())
        adapted = [name for name in modules if name.endswith(".base_layer")]
        wrapped = sum(1 for name in layers if f"{name}.base_layer" in modules
                      and id(modules[f"{name}.base_layer"]) == layers[name][0])
        lora_dtypes = sorted({str(p.dtype).replace("torch.", "") for n, p in transformer.named_parameters()
                              if "lora_" in n})
        lora_bytes = module_bytes(transformer) - weight_bytes
        lora_out = step()  # also the warm-up with it
        clock = Clock(device)
        times = [{"without": [], "with": []} for _ in range(rounds)]
        current = "with"
        for index, timings in enumerate(times):
            for state in (("without", "with") if index % 2 == 0 else ("with", "without")):
                if state != current:
                    apply_loras(loaded, wanted[state])
                    step()  # the warm-up after a switch, not timed
                    current = state
                for _ in range(steps):
                    timings[state].append(clock.pair({state: step})[state][1])
            log(f"{config.label}: round {index + 1}/{rounds}: ratio "
                f"{statistics.median(timings['with']) / statistics.median(timings['without']):.3f}")
        switch_start = time.perf_counter()
        apply_loras(loaded, [])
        remove_s = time.perf_counter() - switch_start
    restored_out = step()
    after = base_layers(transformer, config)
    ratios = [statistics.median(t["with"]) / statistics.median(t["without"]) for t in times]
    ratio = statistics.median(ratios)
    return {
        "backend": config.backend, "format": config.format, "label": config.label, "bits": config.bits,
        "dtype": str(dtype).replace("torch.", ""), "rank": rank, "quantize_s": info["quantize_s"],
        "base_layers": len(layers), "adapted_layers": len(adapted), "wrapped_base_layers": wrapped,
        "lora_dtypes": lora_dtypes, "lora_bytes": lora_bytes, "apply_s": apply_s, "remove_s": remove_s,
        "step_s": statistics.median(t for r in times for t in r["without"]),
        "lora_step_s": statistics.median(t for r in times for t in r["with"]),
        "ratio": ratio, "round_ratios": ratios, "target_ratio": TARGET, "met": ratio <= TARGET,
        "step_times": [r["without"] for r in times], "lora_step_times": [r["with"] for r in times],
        "lora_change": rel_error(lora_out, base_out),
        "layers_kept": after == layers, "types_after": sorted({(v[1], v[2]) for v in after.values()}),
        "weight_bytes": weight_bytes, "weight_bytes_after": module_bytes(transformer),
        "adapters_left": bool(adapters_on(pipe)),
        "output_restored": bool(torch.equal(restored_out, base_out)),
        "restored_change": rel_error(restored_out, base_out),
        "other_cpu_share": clock.other_share(), "retimed": clock.retimed,
    }


def markdown(result: dict) -> str:
    from .measure import DISTURBED, RETRIES
    from .report import machine_line

    shape = result["shape"]
    lines = [
        f"# LoRA step time: {result['preset']} on {result['slug']}",
        "",
        machine_line(result["machine"]),
        f"Date: {result['date']}; total run {result['total_s']:.0f} s; dtype {result['dtype']}; each option measured "
        f"in {'its own process' if result['isolated'] else 'one shared process'}; machine load (1-minute average, "
        f"as `uptime` shows) from {min(result['load_average_1min']):.2f} to {max(result['load_average_1min']):.2f} "
        f"on {result['machine']['cores']} cores.",
        f"Shapes: transformer {shape['double_blocks']} double + {shape['single_blocks']} single blocks, hidden "
        f"{shape['hidden']} ({shape['heads']} x {shape['head_dim']}); {shape['image_size']}x{shape['image_size']} "
        f"({shape['image_tokens']} image + {shape['text_tokens']} text tokens). LoRA: rank {result['rank']} on every "
        "attention and MLP projection of the blocks, applied as the studio applies LoRAs (runtime peft adapters).",
    ]
    if result["shared"]:
        lines.append(f"The machine was shared with other work during this run (load above its "
                     f"{result['machine']['cores']} cores): the times are noisier than on a quiet machine; each ratio "
                     "compares steps timed beside each other.")
    lines += [
        "",
        f"| backend | format | s/step | s/step with LoRA | ratio | target <= {result['target_ratio']:g} | "
        "layers under the LoRA | LoRA dtype | LoRA output change | after removal: layers, bytes | output restored |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        kept = "same" if r["layers_kept"] and r["weight_bytes_after"] == r["weight_bytes"] else "CHANGED"
        lines.append(
            f"| {r['backend']} | {r['format']} | {r['step_s']:.3f} | {r['lora_step_s']:.3f} | {r['ratio']:.3f} | "
            f"{'yes' if r['met'] else 'NO'} | {r['wrapped_base_layers']} of {r['base_layers']} "
            f"{'quantized' if r['bits'] < 16 else 'Linear'} | {', '.join(r['lora_dtypes'])} | "
            f"{r['lora_change']:.2e} | {kept} "
            f"({r['base_layers']} layers, {r['weight_bytes'] / 1e6:.1f} MB) | "
            f"{'yes' if r['output_restored'] else 'no (%.1e)' % r.get('restored_change', float('nan'))} |")
    lines += [
        "",
        f"s/step: median seconds per transformer step over {result['rounds']} rounds of {result['steps']} timed steps "
        "with and without the LoRA each (order alternating, an untimed warm-up step after each switch); ratio: "
        "median of the rounds' ratios (median step with the LoRA / median step without it in the same round). "
        "Layers under the LoRA: the base layers (quantized ones; full precision: Linear) that are wrapped, as "
        "they are, by an adapter. LoRA output change: ||with - without|| / ||without|| of one step's output. After "
        "removal: the same modules of the same types holding the same bytes; output restored: the step gives "
        "the very same output as before the LoRA.",
    ]
    shares = [r for r in result["rows"] if r.get("other_cpu_share") is not None]
    if shares:
        lines.append(f"Other processes' share of the CPU during the kept timings (steps above {DISTURBED:.0%} were "
                     f"timed again, up to {RETRIES} times; retimed steps): "
                     + ", ".join(f"{r['label']} {r['other_cpu_share']:.0%} ({r['retimed']})" for r in shares) + ".")
    if result["rows"]:
        lines.append("Applying the LoRA took " + ", ".join(f"{r['label']} {r['apply_s']:.2f} s" for r in result["rows"])
                     + "; removing it " + ", ".join(f"{r['remove_s']:.2f} s" for r in result["rows"]) + ".")
    if result["skipped"] or result["failed"]:
        lines += ["", "## Not measured", ""]
        lines += [f"- {s['backend']} {s['format']}: skipped ({s['reason']})" for s in result["skipped"]]
        lines += [f"- {f['backend']} {f['format']}: failed ({f['error']})" for f in result["failed"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from pipelines.logs import quiet_libraries

    quiet_libraries()
    sys.exit(main())
