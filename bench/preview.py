"""`python app.py bench preview`: what live previews cost a generation (target: at most 3% of the run).

It runs the studio's engine on one model, after a warm-up run (load, prompt encoding), alternating runs without and
with previews (every --every steps, the studio's default; each preview is also encoded as a PNG, as the studio's
server does before it sends one to the page):

  --quick (default)  a FluxPipeline directory at the bench's quick shape: the real widths (hidden 3072, T5 d_model
                     4096, FLUX's VAE), 1 double + 2 single blocks and 2 T5 layers, random weights, built once under
                     the studio cache; 256x256, 8 steps
  --tiny             the offline tiny family's dev model, 128x128, 8 steps (for tests: its steps take milliseconds,
                     so the share it shows says little about a real run)

Three figures: the time spent inside the previews (the engine's `preview_s`: projection, resize and PNG) as a share
of the rest of the run, which other processes on the machine hardly disturb; and, over pairs of runs side by side
(one with, one without), the median difference of this process's CPU time and of the wall-clock time (on a shared
CPU the other processes' load shows in both, the wall clock most; their CPU share is recorded beside them). The
target is judged on the first, on --quick. The images with and without previews are compared (they must be
identical).
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .common import REPO, bench_args, busy_seconds, logger, other_share, weights_root, write_json
from .shapes import QUICK

log = logger("bench preview")
RESULTS = REPO / "bench" / "results"
TARGET = 0.03  # previews may add at most 3% to a run
PROMPT = "a lighthouse on a cliff at dusk"
SIZES = {"quick": (256, 8), "tiny": (128, 8)}  # (width and height, steps)
REPEATS = {"quick": 5, "tiny": 9}  # pairs of runs (one with previews, one without)


def quick_preset():
    """The bench's quick shape as a buildable FluxPipeline directory (a CLIP whose width is the pooled width)."""
    from .e2e import Preset

    return Preset("preview-quick", replace(QUICK, image_size=256, steps=8), clip_hidden=QUICK.pooled_dim,
                  clip_layers=2, clip_heads=12, clip_intermediate=4 * QUICK.pooled_dim, width=256, height=256, steps=8)


def model_for(preset: str, cache: Path) -> str:
    """The model the runs use: the tiny family, or the quick-shaped directory (built once)."""
    if preset == "tiny":
        from pipelines.models.tiny import ensure_tiny_family
        from pipelines.tools import all_tools

        ensure_tiny_family(all_tools())
        from pipelines.defaults import TINY_MODEL

        return TINY_MODEL
    from .e2e import model_dir

    log(f"building the quick-shaped model under {cache} (once) ...")
    return str(model_dir(quick_preset(), cache, torch.device("cpu")))


def run_once(engine, fields: dict, every: int, previews: bool) -> tuple[dict, np.ndarray]:
    """One generation; its timings, the previews made and the share of the CPU other processes used meanwhile."""
    from pipelines.request import GenerationRequest

    made = []

    def keep(image, step, steps):  # what the studio's server does with a preview: a PNG for the page
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        made.append(step)

    busy, own, start = busy_seconds(), time.process_time(), time.perf_counter()
    cpu = time.process_time()
    request = GenerationRequest(**fields)
    if previews:
        result = engine.generate(request, preview=keep, preview_every=every)
    else:
        result = engine.generate(request)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    timings = result.report["timings"]
    row = {"previews": len(made), "total_s": timings["total_s"], "cpu_s": round(cpu, 4),
           "denoise_s": timings["denoise_s"], "preview_s": timings.get("preview_s", 0.0),
           "other_cpu_share": round(other_share(busy, own, seconds), 3)}
    return row, np.asarray(result.image)


def measure(preset: str, model: str, every: int, repeat: int) -> dict:
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager

    from .e2e import dev_tool_name

    size, steps = SIZES[preset]
    fields = dict(tool=dev_tool_name(), prompt=PROMPT, model=model, quant="none", width=size, height=size,
                  steps=steps, seed=1)
    engine = Engine(ModelManager(device="cpu"))
    log(f"{preset}: warm-up runs ...")
    for previews in (False, True):
        run_once(engine, fields, every, previews)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    images: dict[str, np.ndarray] = {}
    for index in range(repeat):
        for mode in (("off", "on") if index % 2 == 0 else ("on", "off")):  # alternate, so drift hits both
            row, image = run_once(engine, fields, every, previews=mode == "on")
            runs[mode].append(row)
            images.setdefault(mode, image)
            log(f"{preset}: {mode} {index + 1}/{repeat}: total {row['total_s']:.3f} s, previews {row['previews']}, "
                f"preview {row['preview_s'] * 1000:.1f} ms, others {row['other_cpu_share']:.0%}")
    on, off = runs["on"], runs["off"]
    share = statistics.median(r["preview_s"] / (r["total_s"] - r["preview_s"]) for r in on)
    total_on, total_off = statistics.median(r["total_s"] for r in on), statistics.median(r["total_s"] for r in off)

    def paired(key: str) -> float:  # runs side by side share the machine's load: compare them pair by pair
        return statistics.median(a[key] / b[key] - 1 for a, b in zip(on, off))

    return {
        "preset": preset, "width": size, "height": size, "steps": steps, "every": every, "repeats": repeat,
        "previews_per_run": on[0]["previews"],
        "ms_per_preview": round(1000 * statistics.median(r["preview_s"] / max(1, r["previews"]) for r in on), 3),
        "preview_share": round(share, 5),
        "total_off_s": round(total_off, 4), "total_on_s": round(total_on, 4),
        "cpu_time_difference": round(paired("cpu_s"), 4), "wall_clock_difference": round(paired("total_s"), 4),
        "spread_without": round(max(r["total_s"] for r in off) / min(r["total_s"] for r in off) - 1, 4),
        "other_cpu_share": round(statistics.median(r["other_cpu_share"] for r in on + off), 3),
        "identical_images": bool(np.array_equal(images["on"], images["off"])),
        "judged": preset == "quick", "met": share <= TARGET, "runs": runs,
    }


def markdown(result: dict) -> str:
    lines = [f"# Live previews: what they cost a run ({result['machine']})", "",
             f"{result['date']}; load average before {result['load_before']}, after {result['load_after']} "
             f"(`uptime`); torch {torch.__version__}, {torch.get_num_threads()} threads. Each row: the median of "
             "the runs with previews and of those without, alternated, after two warm-up runs (one of each); each "
             "preview is also encoded as a PNG (as the studio's server does).", "",
             "| preset | size | steps | preview every | previews per run | ms per preview | preview share of the run "
             "| total without s | total with s | CPU-time difference | wall-clock difference | spread without | "
             f"others' CPU share | same image | target <= {TARGET:.0%} |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["presets"]:
        verdict = ("met" if row["met"] else "MISSED") if row["judged"] else "not judged (tiny steps)"
        lines.append(f"| {row['preset']} | {row['width']}x{row['height']} | {row['steps']} | {row['every']} | "
                     f"{row['previews_per_run']} | {row['ms_per_preview']:.2f} | {row['preview_share']:.2%} | "
                     f"{row['total_off_s']:.3f} | {row['total_on_s']:.3f} | {row['cpu_time_difference']:+.1%} | "
                     f"{row['wall_clock_difference']:+.1%} | {row['spread_without']:.0%} | "
                     f"{row['other_cpu_share']:.0%} | {'yes' if row['identical_images'] else 'NO'} | {verdict} |")
    lines += ["", "- preview share: the time inside the previews (projection, resize, PNG) against the rest of the "
                  "run, as the engine records it (`preview_s`); other processes do not change it much.",
              "- CPU-time and wall-clock differences: this process's CPU seconds and the run's total with previews "
              "against without, the median over pairs of runs side by side; on a shared CPU both move with the "
              "other processes' load (their share of the CPU is beside them; spread without: slowest against fastest "
              "run without previews, the noise the differences sit in), so the target is judged on the share."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py bench preview", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="presets", action="store_const", const=["quick"])
    size.add_argument("--tiny", dest="presets", action="store_const", const=["tiny"])
    size.add_argument("--both", dest="presets", action="store_const", const=["tiny", "quick"],
                      help="--tiny, then --quick")
    parser.set_defaults(presets=["quick"])
    parser.add_argument("--every", type=int, default=None, help="preview every N steps (default: the studio's)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs with and without previews, each (default: 9 on --tiny, 5 on --quick)")
    parser.add_argument("--cache", default=None, help="where the quick-shaped model is built (default: the studio "
                                                      "cache)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here, and the .md beside it "
                                                                "(default: bench/results/<machine>-preview.json)")
    args = parser.parse_args(bench_args(argv))
    from pipelines.defaults import PREVIEW_EVERY

    from .report import machine, machine_slug

    every = args.every or PREVIEW_EVERY
    if every < 1 or (args.repeat is not None and args.repeat < 1):
        print("error: --every and --repeat must be 1 or more.", file=sys.stderr)
        return 2
    info = machine(torch.device("cpu"))
    load_before = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    rows = [measure(preset, model_for(preset, weights_root(args.cache)), every, args.repeat or REPEATS[preset])
            for preset in args.presets]
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{machine_slug(info)}, {info['cpu']}", "info": info, "load_before": load_before,
              "load_after": ", ".join(f"{v:.2f}" for v in os.getloadavg()), "target": TARGET, "presets": rows}
    path = args.json or RESULTS / f"{machine_slug(info)}-preview.json"
    write_json(result, path)
    path.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {path} and its .md", file=sys.stderr)
    return 0 if all(row["met"] and row["identical_images"] for row in rows if row["judged"]) else 1


if __name__ == "__main__":
    sys.exit(main())
