"""`python app.py bench estimate`: how close the estimate before loading comes to what a run adds to the process.

Each measurement is a fresh process on the offline tiny family (the dev model, full precision, one step) whose model
is loaded and whose libraries are warm (a first run at 128x128): then one run at the size measured. Its peak
process RSS (sampled every 20 ms by the engine's pipelines.memory.device.PeakMemory) less the RSS before the run is
set against the estimate's peak less its weights (pipelines.memory.estimate; at these sizes, the VAE decode). The
weights themselves are compared exactly (the loaded pipeline holds what the estimate counts). glibc's mmap
threshold is fixed (MALLOC_MMAP_THRESHOLD_=65536) so that freed buffers leave RSS rather than being reused unseen.

The estimate claims to cover a run with its 10% slack (placement.HEADROOM: `fits` adds it before comparing with
free memory): the target is measured <= estimate x 1.1 for every run, and the estimate at most 30% above the median.
Reported per size: measured / estimated of each run, and the median, lowest and highest over all runs (the spread),
with the machine and whether torch convolves bf16 with oneDNN on it (where it does not, the decode's fallback holds
2.55x as much, which the estimate counts: placement.decode_bytes_per_pixel).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from .common import REPO, bench_args, logger, worker_env, write_json

log = logger("bench estimate")
RESULTS = REPO / "bench" / "results"
OVER = 1.3  # the estimate may exceed the median measurement by at most this much

# One measurement, in a fresh process: argv[1] is the size (width and height).
WORKER = """
import json, sys
import psutil
from pipelines.engine import Engine
from pipelines.manager import ModelManager
from pipelines.request import GenerationRequest
engine = Engine(ModelManager(device="cpu"))
def run(size):
    return engine.generate(GenerationRequest(tool="dev", prompt="a fox", model="tiny", quant="none", seed=1, steps=1,
                                             width=size, height=size)).report["memory"]["peak_bytes"]
run(128)  # loads the model and warms the libraries up
base = psutil.Process().memory_info().rss
print(json.dumps({"delta": run(int(sys.argv[1])) - base, "held": engine.manager.loaded_bytes()}))
"""


def estimated(size: int) -> dict:
    """The estimate of the tiny dev model at ``size`` x ``size`` on this machine's CPU: its weights and the working
    memory it adds to them."""
    from pipelines.memory.estimate import DeviceMemory, Format, estimate
    from pipelines.memory.sizes import model_sizes
    from pipelines.tools import get_tool

    from .e2e import dev_tool_name

    tool = get_tool(dev_tool_name())
    row = estimate(model_sizes(tool, "tiny"), Format("none", "full precision", 1.0, 1.0), "none", size * size,
                   tool.defaults("tiny").max_sequence_length, DeviceMemory("cpu", 2**40, 2**40, "available RAM"))
    return {"weights": row.weight_bytes, "work": row.peak_bytes - row.weight_bytes}


def measure(size: int) -> dict:
    """One run at ``size`` in a fresh process: what it added to the process, and the estimate of it."""
    proc = subprocess.run([sys.executable, "-c", WORKER, str(size)], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=worker_env(MALLOC_MMAP_THRESHOLD_="65536"))
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring process failed: {proc.stderr.strip().splitlines()[-1:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = estimated(size)
    return {"size": size, "measured_bytes": found["delta"], "estimated_bytes": expected["work"],
            "ratio": round(found["delta"] / expected["work"], 4),
            "weights_held": found["held"], "weights_estimated": expected["weights"]}


def summary(runs: list[dict]) -> dict:
    from pipelines.memory.placement import HEADROOM

    ratios = [run["ratio"] for run in runs]
    median = statistics.median(ratios)
    return {"median": median, "lowest": min(ratios), "highest": max(ratios),
            "covered": max(ratios) <= HEADROOM, "not_over": 1 / median <= OVER,
            "weights_exact": all(run["weights_held"] == run["weights_estimated"] for run in runs)}


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [f"# The estimate against measured runs ({result['machine']})", "",
             f"{result['date']}; torch {result['info']['versions']['torch']}, "
             f"{'oneDNN bf16 convolutions' if result['onednn_bf16'] else 'no oneDNN bf16 convolution (fallback)'}; "
             f"decode estimated at {result['decode_bytes_per_pixel']} B/pixel at the FLUX VAE's width. Each run: a "
             "fresh process, the tiny dev model loaded and warm, one step at full precision.", "",
             "| size | runs | measured MiB | estimated MiB | measured / estimated |", "|---|---|---|---|---|"]
    for size in sorted({run["size"] for run in result["runs"]}):
        runs = [run for run in result["runs"] if run["size"] == size]
        measured = ", ".join(f"{run['measured_bytes'] / 2**20:.1f}" for run in runs)
        ratios = ", ".join(f"{run['ratio']:.3f}" for run in runs)
        lines.append(f"| {size}x{size} | {len(runs)} | {measured} | {runs[0]['estimated_bytes'] / 2**20:.1f} | "
                     f"{ratios} |")
    lines += ["", f"Measured / estimated over all runs: median {s['median']:.3f}, lowest {s['lowest']:.3f}, highest "
                  f"{s['highest']:.3f}. Targets: every run within the estimate with its slack (<= 1.1): "
                  f"{'met' if s['covered'] else 'MISSED'}; the estimate at most {OVER - 1:.0%} above the median: "
                  f"{'met' if s['not_over'] else 'MISSED'}; weights exactly as estimated: "
                  f"{'yes' if s['weights_exact'] else 'NO'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py bench estimate", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,768,1024", help="comma list of sizes (width = height) to run")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per size (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here, and the .md beside it "
                                                                "(default: bench/results/<machine>-estimate.json)")
    args = parser.parse_args(bench_args(argv))
    try:
        sizes = [int(item) for item in args.sizes.split(",") if item.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size < 64 or size % 16 for size in sizes) or args.repeat < 1:
        print("error: --sizes takes multiples of 16 from 64 (e.g. 512,768) and --repeat 1 or more.", file=sys.stderr)
        return 2
    import torch

    from pipelines.memory.placement import decode_bytes_per_pixel, onednn_bf16
    from pipelines.models.tiny import ensure_tiny_family
    from pipelines.tools import all_tools

    from .report import machine, machine_slug

    ensure_tiny_family(all_tools())
    runs = []
    for size in sizes:
        for index in range(args.repeat):
            runs.append(measure(size))
            log(f"{size}x{size} {index + 1}/{args.repeat}: measured {runs[-1]['measured_bytes'] / 2**20:.1f} MiB, "
                f"estimated {runs[-1]['estimated_bytes'] / 2**20:.1f} MiB ({runs[-1]['ratio']:.3f})")
    info = machine(torch.device("cpu"))
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{machine_slug(info)}, {info['cpu']}", "info": info, "onednn_bf16": onednn_bf16(),
              "decode_bytes_per_pixel": decode_bytes_per_pixel("cpu"), "load_average": os.getloadavg(),
              "runs": runs, "summary": summary(runs)}
    path = args.json or RESULTS / f"{machine_slug(info)}-estimate.json"
    write_json(result, path)
    path.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {path} and its .md", file=sys.stderr)
    s = result["summary"]
    return 0 if s["covered"] and s["not_over"] and s["weights_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
