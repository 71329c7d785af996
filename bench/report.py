"""Machine description, targets, Markdown table, PNG plot and the measured CPU table for the policy."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import torch

from quantization.doctor import device_name, library_versions
from quantization.policy import MEASURED, RATIO, forget_measured

from .measure import DISTURBED, RETRIES

# Targets the numbers are checked against (the weight-ratio targets are the policy's RATIO).
STEP_TARGET = 1.1  # auto on CPU: seconds per step relative to full precision
ERROR_TARGET = {8: 1e-3, 4: 3e-2}  # transformer output, relative to full precision


def quant_of(bits: int) -> str:
    return "8bit" if bits == 8 else "4bit"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    import psutil

    versions = library_versions()
    info = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "ram_bytes": int(psutil.virtual_memory().total), "os": platform.platform(),
        "python": platform.python_version(), "device": str(device), "device_name": device_name(device),
        "versions": {name: versions.get(name) for name in
                     ("torch", "diffusers", "transformers", "optimum-quanto", "bitsandbytes", "torchao")},
    }
    if device.type == "cuda":
        info["gpu_memory_bytes"] = int(torch.cuda.get_device_properties(device).total_memory)
    return info


def machine_slug(info: dict) -> str:
    """Short file-name form: cpu-2core-emulated-bf16 (cores and class of CPU), or the GPU's name."""
    if info["device"].startswith("cpu"):
        from quantization.policy import cpu_class

        return f"cpu-{info['cores']}core-{cpu_class()}"
    return re.sub(r"[^a-z0-9]+", "-", info["device_name"].lower()).strip("-")


def targets(records: list[dict]) -> list[dict]:
    """Each target with what was measured and whether it was met."""
    rows = []
    by = {(r["component"], r["backend"], r["format"]): r for r in records}
    quantized = [r for r in records if r["bits"] < 16]
    for r in quantized:
        # Judged at the real depth: a 2-layer T5 slice is dominated by its 32128-row vocabulary table, which the
        # real 24 layers are not. The transformer's ratio is the same at any depth.
        limit = RATIO[quant_of(r["bits"])]
        rows.append({"target": f"{r['component']} {r['label']}: weight ratio <= {limit} (at full depth)",
                     "measured": f"{r['full_depth_weight_ratio']:.3f} est. from this slice's {r['weight_ratio']:.3f}",
                     "met": r["full_depth_weight_ratio"] <= limit})
    for r in quantized:
        if r["component"] != "transformer":
            continue
        limit = ERROR_TARGET[r["bits"]]
        rows.append({"target": f"transformer {r['label']}: rel error <= {limit:g}",
                     "measured": f"{r['rel_error']:.2e}", "met": r["rel_error"] <= limit})
    for r in quantized:
        if r["component"] != "transformer" or not r.get("auto") or not r["device"].startswith("cpu"):
            continue
        t5 = next((by[(name, r["backend"], r["format"])] for name in ("text_encoder_2", "text_encoder")
                   if (name, r["backend"], r["format"]) in by), None)
        limit = RATIO[quant_of(r["bits"])]
        meets_ratio = r["weight_ratio"] <= limit and (t5 is None or t5["full_depth_weight_ratio"] <= limit)
        rows.append({"target": f"auto {quant_of(r['bits'])} on CPU ({r['label']}): step <= {STEP_TARGET}x "
                               f"full precision, weight ratio <= {limit}",
                     "measured": f"{r['step_ratio']:.2f}x, transformer {r['weight_ratio']:.3f}"
                                 + (f", text encoder full depth est. {t5['full_depth_weight_ratio']:.3f}"
                                    if t5 else ""),
                     "met": r["step_ratio"] <= STEP_TARGET and meets_ratio})
    return rows


def _bytes(value: int) -> str:
    return f"{value / 1e9:.2f} GB" if value >= 1e9 else f"{value / 1e6:.1f} MB"


def _num(value, fmt: str, none: str = "-") -> str:
    return none if value is None else format(value, fmt)


def machine_line(info: dict) -> str:
    """'Machine: <device>, CPU ..., N cores, RAM; library versions' for the Markdown reports."""
    return (f"Machine: {info['device_name']} ({info['device']}), CPU {info['cpu']}, {info['cores']} cores, "
            f"{info['ram_bytes'] / 2**30:.0f} GiB RAM; "
            + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))


def _text_encoder_line(shape: dict) -> str:
    if shape.get("family", "flux1") == "flux1":
        return f"T5 {shape['t5_layers']} layers, d_model {shape['joint_attention_dim']}, d_ff {shape['t5_d_ff']}"
    return (f"Qwen3 {shape['qwen_layers']} layers, hidden {shape['qwen_hidden']}, intermediate "
            f"{shape['qwen_intermediate']}, vocab {shape['qwen_vocab']} (text embedding 3 x {shape['qwen_hidden']})")


def markdown(result: dict) -> str:
    info, shape = result["machine"], result["shape"]
    flux2 = shape.get("family", "flux1") == "flux2"
    lines = [
        f"# Quantization benchmark: {result['preset']} on {result['slug']}",
        "",
        machine_line(info),
        f"Date: {result['date']}; total run {result['total_s']:.0f} s; dtype {result['dtype']}; "
        f"each option measured in {'its own process' if result['isolated'] else 'one shared process'}.",
        f"Shapes: transformer {shape['double_blocks']} double + {shape['single_blocks']} single blocks, hidden "
        f"{shape['hidden']} ({shape['heads']} x {shape['head_dim']}"
        + (", FLUX.2 [klein]'s Flux2Transformer2DModel" if flux2 else "") + f"); {_text_encoder_line(shape)}; "
        f"{shape['image_size']}x{shape['image_size']} "
        f"({shape['image_tokens']} image + {shape['text_tokens']} text tokens), {shape['steps']} steps, seed "
        f"{shape['seed']}.",
        "",
        "| component | backend | format | auto | weights | ratio | ratio at full depth (est.) | load s | quantize s "
        "| s/step | vs full | peak memory | resident | rel error | PSNR dB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["records"]:
        lines.append(
            f"| {r['component']} | {r['backend']} | {r['format']} | {r['auto_for'] or ''} | {_bytes(r['weight_bytes'])} "
            f"| {r['weight_ratio']:.3f} | {r['full_depth_weight_ratio']:.3f} | {r['load_s']:.1f} "
            f"| {r['quantize_s']:.1f} | {r['step_s']:.3f} | {r['step_ratio']:.2f}x "
            f"| {r['peak_bytes'] / 2**30:.2f} GiB | {r['resident_bytes'] / 2**30:.2f} GiB | {r['rel_error']:.2e} "
            f"| {_num(r.get('psnr'), '.1f')} |")
    lines += [
        "",
        "s/step: median seconds per transformer step (T5: per encode) after a warm-up; 'vs full': median of the "
        "ratios of each step to the full-precision step timed beside it in the same process. Peak memory: "
        f"{result['records'][0]['memory_kind'] if result['records'] else ''} of the whole run of that option "
        "(loading, quantizing, one encode and one step; both components held); resident: after that run, once "
        "freed memory is collected. Rel error: ||q - ref|| / ||ref|| "
        "of one transformer output (T5: last hidden state) on the same inputs. PSNR: images decoded by a "
        "random-weight FLUX-shaped VAE from the final latents of the quantized and full-precision trajectories. "
        f"Ratio at full depth: bytes per block measured here, extrapolated to {shape.get('full_double', 19)} + "
        f"{shape.get('full_single', 38)} blocks and {shape.get('full_text_layers', 24)} "
        + ("Qwen3 layers (a 2-layer Qwen3 slice's ratio is dominated by its 151936-row embedding table)."
           if flux2 else "T5 layers (a 2-layer T5 slice's ratio is dominated by its vocabulary table, stored in "
                         "int8)."),
    ]
    floor = next((r["bf16_floor"] for r in result["records"] if r.get("bf16_floor") is not None), None)
    if floor is not None:
        lines.append(f"For scale: the bf16 transformer's output differs from the same weights computed in "
                     f"float32 by {floor:.2e} (relative).")
    shares = [r for r in result["records"] if r["component"] == "transformer" and r.get("other_cpu_share") is not None]
    if shares:
        lines.append("Other processes' share of the CPU during the kept timings (pairs above "
                     f"{DISTURBED:.0%} were timed again, up to {RETRIES} times; retimed pairs): "
                     + ", ".join(f"{r['label']} {r['other_cpu_share']:.0%} ({r['retimed']})" for r in shares) + ".")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |" for t in result["targets"]]
    int8_ok = [t for t in result["targets"] if "rel error <= 0.001" in t["target"] and t["met"]]
    if not int8_ok and any("rel error <= 0.001" in t["target"] for t in result["targets"]):
        lines.append("\nNo int8 option meets the rel error <= 1e-3 target here.")
    if result["skipped"] or result["failed"]:
        lines += ["", "## Not measured", ""]
        lines += [f"- {s['backend']} {s['format']}: skipped ({s['reason']})" for s in result["skipped"]]
        lines += [f"- {f['backend']} {f['format']}: failed ({f['error']})" for f in result["failed"]]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Memory and transformer weight bytes against the step-time ratio to full precision, one point per option."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["records"] if r["component"] == "transformer"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for index, r in enumerate(rows):
        color = f"C{index}"
        label = f"{r['backend']} {r['format']}" + (f" (auto {r['auto_for']})" if r["auto_for"] else "")
        size = 180 if r["auto_for"] else 60
        marker = "*" if r["auto_for"] else "o"
        axes[0].scatter(r["step_ratio"], r["peak_bytes"] / 2**30, marker=marker, s=size, color=color, label=label)
        axes[0].scatter(r["step_ratio"], r["resident_bytes"] / 2**30, marker=marker, s=size, facecolors="none",
                        edgecolors=color)
        axes[1].scatter(r["step_ratio"], r["weight_bytes"] / 1e9, marker=marker, s=size, color=color)
        axes[1].annotate(label, (r["step_ratio"], r["weight_bytes"] / 1e9), textcoords="offset points",
                         xytext=(6, 4 + 10 * (index % 3)), fontsize=8)
    axes[0].set_ylabel(f"{rows[0]['memory_kind'] if rows else ''} GiB (filled: peak; hollow: resident after)")
    axes[1].set_ylabel("transformer weights (GB)")
    for axis in axes:
        axis.set_xlabel("seconds per transformer step / full precision (same process)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    shape = result["shape"]
    fig.suptitle(f"{result['slug']} {result['preset']}: {shape['double_blocks']}+{shape['single_blocks']} blocks "
                 f"at hidden {shape['hidden']}, {shape['image_tokens']} image tokens; full precision "
                 f"{next((r['ref_step_s'] for r in rows), 0):.2f} s/step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def measured_tables(records: list[dict]) -> tuple[dict, dict]:
    """(backend, format) -> step ratio and weight ratio of the transformer, for quantized options."""
    rows = [r for r in records if r["component"] == "transformer" and r["bits"] < 16]
    steps = {(r["backend"], r["format"]): round(r["step_ratio"], 3) for r in rows}
    weights = {(r["backend"], r["format"]): round(r["weight_ratio"], 3) for r in rows}
    return steps, weights


def write_measured(records: list[dict], result: dict, path: Path = MEASURED,
                   cpu: str | None = None, gpu: str | None = None, family: str = "flux1") -> tuple[dict, dict]:
    """Rewrite quantization/measured.json: this run's transformer ratios become the table of ``gpu`` (a GPU class,
    for a run on a GPU) or of ``cpu`` (default: this machine's class of CPU); the other classes' tables are kept
    (and the weight ratios, the same on every device, are rewritten only from a CPU run of FLUX.1's components).
    A run on another ``family``'s components (FLUX.2 [klein]'s: "flux2") writes that family's tables, under
    "families", and keeps FLUX.1's."""
    from quantization.policy import FAMILY, cpu_class

    steps, weights = measured_tables(records)
    info, shape = result["machine"], result["shape"]
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        old = {}
    data = _tables(old)
    data["cpu_weight_ratio"] = old.get("cpu_weight_ratio", {})
    families = {name: _tables(table) for name, table in old.get("families", {}).items()}
    tables = data if family == FAMILY else families.setdefault(family, _tables({}))
    shares = [r["other_cpu_share"] for r in records if r.get("other_cpu_share") is not None]
    busy = f"; others used {sum(shares) / len(shares):.0%} of the CPU" if shares else ""
    where = (f"{shape['double_blocks']} double + {shape['single_blocks']} single blocks at hidden {shape['hidden']}, "
             f"{shape['image_tokens']} image + {shape['text_tokens']} text tokens")
    if gpu is not None:
        tables["gpu_step_ratio"][gpu] = _names(steps)
        tables["gpu_machines"][gpu] = (f"{info['device_name']}, torch {info['versions']['torch']}, "
                                       f"{result['date']}; {where}")
    else:
        cpu = cpu or cpu_class()
        tables["cpu_step_ratio"][cpu] = _names(steps)
        if family == FAMILY:
            data["cpu_weight_ratio"] = _names(weights)
        tables["cpu_machines"][cpu] = (f"{info['cpu']}, {info['cores']} cores, torch {info['versions']['torch']}, "
                                       f"{result['date']}; {where}{busy}")
    if families:
        data["families"] = families
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    forget_measured()
    return steps, weights


def _tables(old: dict) -> dict:
    """The step-ratio and machine tables of a measured.json (or of one family in it), per CPU and GPU class."""
    return {"cpu_step_ratio": {k: v for k, v in old.get("cpu_step_ratio", {}).items() if isinstance(v, dict)},
            "cpu_machines": dict(old.get("cpu_machines", {})),
            "gpu_step_ratio": {k: v for k, v in old.get("gpu_step_ratio", {}).items() if isinstance(v, dict)},
            "gpu_machines": dict(old.get("gpu_machines", {}))}


def _names(table: dict) -> dict:
    """(backend, format) keys as the JSON file writes them: 'backend format'."""
    return {f"{backend} {fmt}": value for (backend, fmt), value in table.items()}
