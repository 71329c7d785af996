"""`python app.py bench hires`: what the hires fix costs against a plain run at its target size.

After warm-up runs, plain runs at the target size and hires runs (the half size, upscaled 2x, refined at strength
0.35 with the same steps) alternate; each row gives the medians of the total time and the peak memory as the engine
reports them (`memory.peak_bytes`; the hires run's is the higher of its two passes). With `--upscaler FILE` (a
super-resolution model file spandrel reads) hires runs upscaled by that file alternate with them too.

  --tiny (default)  the offline tiny family's dev model: 256x256 target, 8 steps
  --quick           the bench's quick shape (real widths, few blocks; built once, as `bench preview` builds it):
                    256x256 target, 8 steps
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
from pathlib import Path

import torch

from .common import REPO, bench_args, logger, weights_root, write_json

log = logger("bench hires")
RESULTS = REPO / "bench" / "results"
TARGET, STEPS, SCALE = 256, 8, 2.0


def run_once(engine, fields: dict) -> dict:
    from pipelines.request import GenerationRequest

    result = engine.generate(GenerationRequest(**fields))
    report = result.report
    row = {"total_s": report["timings"]["total_s"], "peak_bytes": report["memory"]["peak_bytes"],
           "size": list(result.image.size)}
    if "hires" in report:
        row["first_pass_s"] = report["hires"]["first_pass"]["timings"]["total_s"]
        row["second_pass_s"] = report["hires"]["second_pass"]["timings"]["total_s"]
        row["steps_run_second"] = report["image_to_image"]["steps_run"]
        row["upscale_s"] = report["hires"]["upscale_s"]
    return row


def measure(preset: str, model: str, repeat: int, upscaler: str | None = None) -> dict:
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager

    from .e2e import dev_tool_name

    base = dict(tool=dev_tool_name(), prompt="a lighthouse on a cliff at dusk", model=model, quant="none",
                steps=STEPS, seed=1)
    plain = dict(base, width=TARGET, height=TARGET)
    hires = dict(base, width=int(TARGET / SCALE), height=int(TARGET / SCALE), hires_scale=SCALE)
    kinds = {"plain": plain, "hires": hires}
    if upscaler:
        kinds["hires_upscaler"] = dict(hires, hires_upscaler=upscaler)
    engine = Engine(ModelManager(device="cpu"))
    log(f"{preset}: warm-up ...")
    for fields in kinds.values():
        run_once(engine, fields)
    runs: dict[str, list] = {mode: [] for mode in kinds}
    for index in range(repeat):
        for mode in (list(kinds) if index % 2 == 0 else list(reversed(kinds))):
            runs[mode].append(run_once(engine, kinds[mode]))
            log(f"{preset}: {mode} {index + 1}/{repeat}: {runs[mode][-1]['total_s']:.3f} s")
    med = {mode: {key: statistics.median(r[key] for r in rows) for key in ("total_s", "peak_bytes")}
           for mode, rows in runs.items()}
    row = {"preset": preset, "target": TARGET, "steps": STEPS, "scale": SCALE, "repeats": repeat,
           "plain_total_s": round(med["plain"]["total_s"], 4), "plain_peak_bytes": int(med["plain"]["peak_bytes"])}
    for mode in kinds:
        if mode == "plain":
            continue
        row[f"{mode}_total_s"] = round(med[mode]["total_s"], 4)
        row[f"{mode}_peak_bytes"] = int(med[mode]["peak_bytes"])
        suffix = "" if mode == "hires" else "_upscaler"
        row[f"time_ratio{suffix}"] = round(med[mode]["total_s"] / med["plain"]["total_s"], 3)
        row[f"memory_ratio{suffix}"] = round(med[mode]["peak_bytes"] / med["plain"]["peak_bytes"], 3)
        row[f"{mode}_upscale_s"] = round(statistics.median(r["upscale_s"] for r in runs[mode]), 4)
    if upscaler:
        row["upscaler"] = upscaler
    row["runs"] = runs
    return row


def markdown(result: dict) -> str:
    lines = [f"# Hires fix against a plain run at the target size ({result['machine']})", "",
             f"{result['date']}; load average before {result['load_before']}, after {result['load_after']}; torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads; medians of alternated runs after warm-up.", "",
             "| preset | target | steps | run | upscaler | total s | time ratio | upscale s | peak MiB | memory ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["presets"]:
        shape = f"| {r['preset']} | {r['target']}x{r['target']} | {r['steps']} "
        lines.append(shape + f"| plain | - | {r['plain_total_s']:.3f} | 1.00 | - | "
                     f"{r['plain_peak_bytes'] / 2**20:.0f} | 1.00 |")
        for mode, suffix, name in (("hires", "", "Lanczos"), ("hires_upscaler", "_upscaler", r.get("upscaler"))):
            if f"{mode}_total_s" not in r:
                continue
            lines.append(shape + f"| hires from {int(r['target'] / r['scale'])} | {name} | {r[f'{mode}_total_s']:.3f} "
                         f"| {r[f'time_ratio{suffix}']:.2f} | {r[f'{mode}_upscale_s']:.3f} | "
                         f"{r[f'{mode}_peak_bytes'] / 2**20:.0f} | {r[f'memory_ratio{suffix}']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py bench hires", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--tiny", dest="presets", action="store_const", const=["tiny"])
    group.add_argument("--quick", dest="presets", action="store_const", const=["quick"])
    group.add_argument("--both", dest="presets", action="store_const", const=["tiny", "quick"])
    parser.set_defaults(presets=["tiny"])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--cache", default=None, help="where the quick-shaped model is built (default: the cache)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here, and the .md beside it")
    parser.add_argument("--upscaler", type=Path, default=None, metavar="FILE",
                        help="also hires runs upscaled by this super-resolution model file (needs spandrel)")
    args = parser.parse_args(bench_args(argv))
    from .preview import model_for
    from .report import machine, machine_slug

    info = machine(torch.device("cpu"))
    load_before = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    upscaler = None
    if args.upscaler is not None:  # the file is chosen by its name in its folder, as a run chooses it
        os.environ["FLUXFORGE_UPSCALER_DIR"] = str(args.upscaler.resolve().parent)
        upscaler = args.upscaler.name
    rows = [measure(preset, model_for(preset, weights_root(args.cache)), args.repeat, upscaler)
            for preset in args.presets]
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{machine_slug(info)}, {info['cpu']}", "info": info, "load_before": load_before,
              "load_after": ", ".join(f"{v:.2f}" for v in os.getloadavg()), "presets": rows}
    path = args.json or RESULTS / f"{machine_slug(info)}-hires.json"
    write_json(result, path)
    path.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0
