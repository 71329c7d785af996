"""`python app.py bench control`: Generate -> Depth -> Canny with the full control models against control LoRAs on
the shared Dev transformer, on the offline tiny family (random weights, small widths: it shows what is loaded and
held, and the per-run cost of the LoRA form's pieces, not the real model's seconds and gigabytes).

Each form runs in a fresh process (its own RSS), `--repeat` times; every step records the load time the report
gives, the control LoRA's apply time, the run's total, the weight bytes the model manager holds, the number of
transformers it holds, and the process RSS after the step and its peak. Each step shows its median repeat
(by total time).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

from .common import REPO, bench_args, logger, worker_env, write_json

log = logger("bench control")
RESULTS = REPO / "bench" / "results"
FORMS = ("model", "lora")


def steps() -> tuple:
    """Generate on the model the control LoRAs run on, then each control tool (Depth, Canny)."""
    from pipelines.tools import all_tools

    controls = [tool for tool in all_tools() if getattr(tool, "control_lora", None)]
    return (controls[0].lora_base(), *controls)


def worker(form: str) -> dict:
    """One Generate -> Depth -> Canny sequence in this process."""
    import psutil

    from pipelines.engine import Engine
    from pipelines.manager import ModelManager
    from pipelines.request import GenerationRequest
    from pipelines.models.tiny import ensure_tiny_family
    from pipelines.loras.tiny import tiny_control_lora
    from pipelines.tools import all_tools

    ensure_tiny_family(all_tools())
    base, *controls = steps()
    for tool in controls:
        tiny_control_lora(tool)
    from PIL import Image

    photo = Image.linear_gradient("L").convert("RGB").resize((128, 128))
    engine = Engine(ModelManager(device="cpu"))
    process, rows = psutil.Process(), []
    for tool in (base, *controls):
        extra = {} if tool is base else {"image": photo, "control": form}
        result = engine.generate(GenerationRequest(tool=tool.name, prompt="a glass house", model="tiny",
                                                   quant="none", seed=1, steps=2, **extra))
        timings = result.report["timings"]
        rows.append({
            "step": tool.name, "load_s": timings["load_s"], "control_lora_s": timings.get("control_lora_s", 0.0),
            "total_s": timings["total_s"], "held_bytes": engine.manager.loaded_bytes(),
            "transformers_held": sum(1 for r in engine.manager.status() if r["component"] == "transformer"),
            "rss_bytes": process.memory_info().rss,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        })
    return {"form": form, "steps": rows}


def run_form(form: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.control_lora", "--worker", form], env=worker_env(),
                          cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{form}: worker failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    """Per step: the repeat with the median total time (its times and memory), and every repeat's total."""
    steps = []
    for index, name in enumerate(row["step"] for row in runs[0]["steps"]):
        ordered = sorted((run["steps"][index] for run in runs), key=lambda row: row["total_s"])
        steps.append(dict(ordered[len(ordered) // 2], step=name, totals_s=[row["total_s"] for row in ordered]))
    return {"form": runs[0]["form"], "repeats": len(runs), "steps": steps}


def markdown(result: dict) -> str:
    mib = 2**20
    lines = [f"# Generate -> Depth -> Canny: full control models vs control LoRAs on Dev ({result['family']})", "",
             f"{result['date']}, {result['machine']}; {result['note']}; each row: the median of "
             f"{result['forms'][0]['repeats']} fresh processes.", "",
             "| form | step | load s | control LoRA s | total s | weights held MiB | transformers held | RSS MiB "
             "| peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for form in result["forms"]:
        for row in form["steps"]:
            lines.append(f"| {form['form']} | {row['step']} | {row['load_s']:.3f} | {row['control_lora_s']:.3f} | "
                         f"{row['total_s']:.3f} | {row['held_bytes'] / mib:.2f} | {row['transformers_held']} | "
                         f"{row['rss_bytes'] / mib:.0f} | {row['peak_rss_bytes'] / mib:.0f} |")
    lines.append("")
    for form in result["forms"]:
        load = sum(row["load_s"] for row in form["steps"])
        lines.append(f"- {form['form']}: load {load:.3f} s in all, weights held at the end "
                     f"{form['steps'][-1]['held_bytes'] / mib:.2f} MiB, "
                     f"{form['steps'][-1]['transformers_held']} transformer(s).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py bench control", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS / "control-lora-tiny.json")
    parser.add_argument("--worker", choices=FORMS, help=argparse.SUPPRESS)
    args = parser.parse_args(bench_args(argv))
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return 0
    forms = []
    for form in FORMS:
        runs = []
        for repeat in range(args.repeat):
            log(f"{form} {repeat + 1}/{args.repeat}")
            runs.append(run_form(form))
        forms.append(median_run(runs))
    result = {"family": "tiny family, CPU, quant none, 128x128, 2 steps",
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", python {sys.version.split()[0]}",
              "note": ("random-weight tiny models (a transformer of a few hundred KB): RSS is mostly the runtime; the "
                       "weights held and transformers held show the difference; seconds are the tiny models' own"),
              "forms": forms}
    write_json(result, args.json)
    args.json.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
