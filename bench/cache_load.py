"""`python app.py bench cache`: loading a quantized component from the quantized-weights cache vs quantizing it
on load, per backend that can save its layers.

Components are FLUX.1-shaped at full width (quick preset: transformer 3072 wide, 1 double + 2 single blocks; T5
d_model 4096, 2 layers) with deterministic random weights, saved once in diffusers/transformers format. Each
measurement runs in a fresh process, so peak memory is its own:

  cold    from_pretrained (bf16) + quantize now, then one forward pass; then the entry is written (store_s)
  cached  verify the entry (sha256 of every file) + build on the meta device + load the quantized tensors,
          then the same forward pass

Outputs must be bit-identical. File reads come from the OS page cache in both cases (the weights were just
written or read), so the times are CPU-bound, not disk-bound. Each kind runs --repeat times (the fastest is kept),
after waiting for other processes to go quiet; the share of the CPU other processes took during the kept run is
recorded.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import (ALL_OPTIONS, REPO, add_options, bench_args, busy_seconds, logger, other_share, parse_only,
                     weights_root, worker_env, write_json)

log = logger("bench cache")
RESULTS = REPO / "bench" / "results"
COMPONENTS = ("transformer", "text_encoder_2")
TARGET_SPEEDUP = 5.0


def build_parser() -> argparse.ArgumentParser:
    from .shapes import PRESETS

    parser = argparse.ArgumentParser(prog="app.py bench cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    add_options(parser, quiet_wait=120)
    parser.add_argument("--components", default=",".join(COMPONENTS))
    parser.add_argument("--weights", default=None, help="where the random-weight components are saved (default: "
                                                        "the studio cache, bench-weights/)")
    parser.add_argument("--json", default=None, help="write the result here and the table beside it (.md); default "
                                                     "bench/results/<machine>-cache.json")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--repeat", type=int, default=2, help="fresh-process runs per measurement (fastest kept)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(bench_args(argv))
    from .report import machine, machine_slug
    from .shapes import PRESETS

    shape = PRESETS[args.preset]
    device = torch.device("cpu")
    info = machine(device)
    configs = options(args.only)
    components = [c.strip() for c in args.components.split(",") if c.strip()]
    log(f"building FLUX-shaped components ({args.preset}) ...")
    from .models import weights_dir

    root = weights_dir(weights_root(args.weights), shape)
    records = []
    with tempfile.TemporaryDirectory(prefix="fluxforge-cache-bench-") as entries:
        for config in configs:
            for component in components:
                log(f"{component} {config.label} ...")
                record = {"component": component, "backend": config.backend, "format": config.format}
                try:
                    cold = best("cold", config, component, root, entries, args)
                    cached = best("cached", config, component, root, entries, args)
                except RuntimeError as error:
                    record["error"] = str(error)
                    log(f"  failed: {error}")
                    records.append(record)
                    continue
                record.update(cold=cold, cached=cached, identical=cold["output_sha256"] == cached["output_sha256"],
                              speedup=cold["total_s"] / cached["total_s"])
                log(f"  cold {cold['total_s']:.2f} s, cached {cached['total_s']:.2f} s "
                    f"({record['speedup']:.1f}x), identical: {record['identical']}")
                records.append(record)
    result = {"preset": args.preset, "shape": shape.to_dict(), "device": "cpu", "dtype": "bfloat16",
              "date": datetime.date.today().isoformat(), "machine": info, "target_speedup": TARGET_SPEEDUP,
              "repeat": args.repeat, "records": records}
    text = markdown(result)
    print(text)
    if not args.no_write:
        path = Path(args.json) if args.json else RESULTS / f"{machine_slug(info)}-cache.json"
        write_json(result, path)
        path.with_suffix(".md").write_text(text)
        log(f"wrote {path} and {path.with_suffix('.md').name}")
    ok = records and all(r.get("identical") and r["speedup"] >= TARGET_SPEEDUP for r in records)
    return 0 if ok else 1


def options(only: str | None):
    from quantization.registry import backend_for, check_backend

    chosen = parse_only(only) if only else ALL_OPTIONS
    return [c for c in chosen if c.bits < 16 and backend_for(c).can_serialize
            and check_backend(c, torch.device("cpu")) is None]


def best(kind: str, config, component: str, root: Path, entries: str, args) -> dict:
    """The fastest of ``args.repeat`` runs (a cold run writes the entry each time; the last one stays)."""
    from .run import wait_for_quiet

    runs = []
    for _ in range(max(1, args.repeat)):
        if args.quiet_wait > 0:
            wait_for_quiet(args.quiet_wait)
        runs.append(child(kind, config, component, root, entries, args.preset))
    if len({run["output_sha256"] for run in runs}) != 1:
        raise RuntimeError(f"{kind} runs gave different outputs")
    return min(runs, key=lambda run: run["total_s"])


def child(kind: str, config, component: str, root: Path, entries: str, preset: str) -> dict:
    """One measurement in a fresh process."""
    job = json.dumps({"kind": kind, "backend": config.backend, "format": config.format, "component": component,
                      "root": str(root), "preset": preset, "entries": entries})
    proc = subprocess.run([sys.executable, "-m", "bench.cache_load", "--child", job], cwd=REPO, env=worker_env(),
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"{kind} worker exited with code {proc.returncode}: {tail}")
    return json.loads(lines[-1])


def measure(job: dict) -> dict:
    """In the worker: load one component cold or from the store, run it once, describe what happened."""
    from quantization import store
    from quantization.config import FULL_PRECISION
    from quantization.load import ComponentSource, fingerprint, load_component
    from quantization.sizes import module_bytes

    from .common import config_for
    from .models import Inputs, load
    from .shapes import PRESETS

    torch.manual_seed(0)
    dtype, device = torch.bfloat16, torch.device("cpu")
    config = config_for(job["backend"], job["format"])
    component, root, entries = job["component"], Path(job["root"]), Path(job["entries"])
    folder = root / component
    cls = type_of(component)
    source = ComponentSource(folder, fingerprint(folder), cls, "bench")
    shape = PRESETS[job["preset"]]
    inputs = Inputs(shape, device, dtype)
    baseline = rss()
    busy, own, wall = busy_seconds(), time.process_time(), time.perf_counter()
    out: dict = {"kind": job["kind"]}
    if job["kind"] == "cold":
        start = time.perf_counter()
        module = load(component, root, dtype)
        out["load_s"] = time.perf_counter() - start
        loaded = load_component(component, lambda: module, [config, FULL_PRECISION], device, dtype)
        module, record = loaded.module, loaded.record
        if loaded.config != config:
            raise RuntimeError(f"{config.label} fell back: {record.fallbacks[0].reason if record.fallbacks else ''}")
        out["quantize_s"] = record.quantize_s
        out["total_s"] = out["load_s"] + out["quantize_s"]
        out["peak_rss_bytes"] = peak_rss() - baseline
        out["other_cpu_share"] = other_share(busy, own, time.perf_counter() - wall)
        start = time.perf_counter()
        entry = store.save(entries, source, component, config, device, dtype, module, record)
        if entry is None:
            raise RuntimeError("the entry could not be written")
        out["store_s"] = time.perf_counter() - start
        out["entry_bytes"] = sum(item["bytes"] for item in entry.manifest["files"].values())
    else:
        start = time.perf_counter()
        entry = store.lookup(entries, source, component, config, device, dtype)
        out["verify_s"] = time.perf_counter() - start
        if entry is None:
            raise RuntimeError("no cache entry")
        start = time.perf_counter()
        module = store.restore(entry, source, config, device, dtype)
        out["restore_s"] = time.perf_counter() - start
        out["total_s"] = out["verify_s"] + out["restore_s"]
        out["peak_rss_bytes"] = peak_rss() - baseline
        out["other_cpu_share"] = other_share(busy, own, time.perf_counter() - wall)
    module.eval()
    out["weight_bytes"] = module_bytes(module)
    if component == "transformer":
        latents = inputs.noise.to(device, dtype)
        output = inputs.forward(module, latents, inputs.sigmas[0])
    else:
        output = inputs.encode(module)
    out["output_sha256"] = hashlib.sha256(output.float().contiguous().numpy().tobytes()).hexdigest()
    return out


def type_of(component: str):
    if component == "transformer":
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel
    from transformers import T5EncoderModel

    return T5EncoderModel


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def markdown(result: dict) -> str:
    info = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    lines = [
        f"# Quantized-weights cache: cached load vs quantize on load ({result['preset']} preset, {result['device']})",
        "",
        f"{info['cpu']}, {info['cores']} cores, {info['ram_bytes'] / 2**30:.0f} GiB RAM; {versions}; "
        f"{result['date']}.",
        "",
        "Cold = from_pretrained (bf16) + quantize now (load + quantize). Cached = sha256 check of the entry + "
        "build on the meta device and load the quantized tensors (verify + restore). Each in a fresh process, "
        f"fastest of {result.get('repeat', 1)}; files come from the OS page cache. Peak = RSS growth during the load. "
        "Identical = one transformer step / one T5 encode, compared bit for bit. Store = one-time cost of writing "
        "the entry on the first load. Others = share of the CPU other processes took during the kept cold / cached "
        "run.",
        "",
        "| component | backend | format | cold load s | cached load s | speedup | identical | store s | entry MiB "
        "| peak cold MiB | peak cached MiB | others |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["records"]:
        if "error" in r:
            lines.append(f"| {r['component']} | {r['backend']} | {r['format']} | failed: {r['error']} ||||||||| |")
            continue
        cold, cached = r["cold"], r["cached"]
        lines.append(
            f"| {r['component']} | {r['backend']} | {r['format']} | {cold['total_s']:.2f} "
            f"({cold['load_s']:.2f} + {cold['quantize_s']:.2f}) | {cached['total_s']:.2f} "
            f"({cached['verify_s']:.2f} + {cached['restore_s']:.2f}) | {r['speedup']:.1f}x | "
            f"{'yes' if r['identical'] else 'NO'} | {cold['store_s']:.2f} | {cold['entry_bytes'] / 2**20:.0f} | "
            f"{cold['peak_rss_bytes'] / 2**20:.0f} | {cached['peak_rss_bytes'] / 2**20:.0f} | "
            f"{cold['other_cpu_share']:.0%} / {cached['other_cpu_share']:.0%} |")
    good = [r for r in result["records"] if "error" not in r]
    met = [r for r in good if r["identical"] and r["speedup"] >= result["target_speedup"]]
    lines += ["", f"Target: cached load >= {result['target_speedup']:g}x faster than quantize-on-load, identical "
                  f"outputs: met by {len(met)} of {len(result['records'])}."]
    missed = [r for r in result["records"] if r not in met]
    for r in missed:
        why = r.get("error") or (f"{r['speedup']:.1f}x" + ("" if r["identical"] else ", outputs differ"))
        lines.append(f"- missed: {r['component']} {r['backend']} {r['format']} ({why})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from pipelines.logs import quiet_libraries

    quiet_libraries()
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
