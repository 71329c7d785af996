"""System: device, libraries, usable backends (the doctor report), loaded models, unload, offload options, and the
quantized-weights cache."""

from __future__ import annotations

import html

import gradio as gr

from pipelines.memory.options import OFFLOADS
from pipelines.memory.placement import PLACEMENTS
from pipelines.paths import quantized_dir
from quantization import admin

from ..models import models_panel
from ..settings import DEVICE_QUEUE
from ..widgets import TabContext

PLACEMENT_LABELS = {"auto": "Auto (from free memory)", "resident": "Everything stays on the device",
                    "encoders-off": "Text encoders leave after encoding",
                    "swap": "The transformer, too, waits on the CPU while encoding"}
OFFLOAD_LABELS = {"none": "None (everything on the device)", "model": "Model CPU offload (one model at a time)",
                  "block": "Block CPU offload (block by block, the next one copied in while one computes)",
                  "sequential": "Sequential CPU offload (layer by layer, lowest memory, slowest)"}


ZERO_GPU_NOTE = ("On ZeroGPU each run happens in a GPU worker forked from this process. The models listed here are "
                 "the ones this process holds (loaded at start): every worker inherits them. A model a run loads in "
                 "a worker stays in that worker, is not listed here, and may load again in the next one; unloading "
                 "acts on this process only. Options changed here reach the next new worker; a worker kept from an "
                 "earlier run keeps the options it started with. Quantization offered here: Auto (full precision "
                 "fits the GPU slice) and full precision.")


def _mib(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table class='ff-table {cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def doctor_html(report: dict) -> tuple[str, str]:
    """(device and libraries, backends and fallback chains) as HTML."""
    libs = [[html.escape(name), html.escape(version) if version else "<span class='ff-no'>not installed</span>"]
            for name, version in report["libraries"].items()]
    left = (f"<div class='ff-kv'><b>Device</b> {html.escape(report['device'])} ({html.escape(report['device_name'])})"
            f" · <b>dtype</b> {html.escape(report['dtype'])} · <b>Python</b> {html.escape(report['python'])}</div>"
            + _table(["Library", "Version"], libs))
    rows = []
    for row in report["backends"]:
        state = "<span class='ff-ok'>yes</span>" if row["usable"] else "<span class='ff-no'>no</span>"
        rows.append([html.escape(row["backend"]), html.escape(row["format"]), state, html.escape(row["reason"])])
    chains = "".join(f"<li><b>{html.escape(mode)}</b>: {' → '.join(html.escape(c) for c in chain)}</li>"
                     for mode, chain in report["policy"].items())
    cpu = ""
    if report["device"].startswith("cpu"):
        measured = report.get("cpu_measured_on") or "not measured yet: listed order"
        cpu = (f"<div class='ff-muted'>CPU class {html.escape(report.get('cpu_class', '?'))}; order measured on "
               f"{html.escape(measured)}</div>")
    right = (_table(["Backend", "Format", "Usable", "Why not"], rows)
             + f"<div class='ff-kv'><b>Fallback order on this device</b><ul>{chains}</ul>{cpu}</div>")
    return left, right


def cache_html(rows: list[dict]) -> str:
    """The quantized-weights cache: one row per entry, with its size and state."""
    if not rows:
        return (f"<div class='ff-muted'>The quantized-weights cache is empty ({html.escape(str(quantized_dir()))})"
                ". A component is saved there the first time it is quantized.</div>")
    cells = [[html.escape(r["component"] or "?"), html.escape(r["backend"] or "?"), html.escape(r["format"] or "?"),
              _mib(r["bytes"]), html.escape(r["status"]), html.escape(r["model"] or r["name"])] for r in rows]
    total = sum(r["bytes"] for r in rows)
    return (_table(["Component", "Backend", "Format", "Size", "State", "Model"], cells)
            + f"<div class='ff-kv'><b>{len(rows)} entries, {_mib(total)}</b> in "
              f"{html.escape(str(quantized_dir()))}</div>")


def loaded_html(rows: list[dict], total: int) -> str:
    rows = sorted((r for r in rows if r["bytes"]), key=lambda r: -r["bytes"])  # tokenizers hold no weights
    if not rows:
        return "<div class='ff-muted'>No models are loaded. They load on the first run of a tool.</div>"
    cells = [[html.escape(r["component"]), html.escape(r["class"]),
              "full precision" if r["backend"] == "none" else html.escape(str(r["backend"])),
              html.escape(str(r["format"])), _mib(r["bytes"]), html.escape(", ".join(r["used_by"]))] for r in rows]
    return (_table(["Component", "Class", "Backend", "Format", "Memory", "Used by"], cells)
            + f"<div class='ff-kv'><b>Total held by loaded models:</b> {_mib(total)}</div>")


def build(ctx: TabContext, tab: gr.Tab) -> None:
    runner = ctx.runner
    options = runner.options
    gr.Markdown("### Loaded models")
    if ctx.zero_gpu:
        gr.HTML(f"<div class='ff-note' id='system-zero-gpu'>{html.escape(ZERO_GPU_NOTE)}</div>")
    loaded = gr.HTML(loaded_html([], 0), elem_id="system-loaded")
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=120, elem_id="system-refresh")
        unload = gr.Button("Unload all models", variant="stop", size="sm", scale=0, min_width=180,
                           elem_id="system-unload")
    gr.Markdown("### Memory and speed options")
    with gr.Row(equal_height=True):
        offload = gr.Radio([(OFFLOAD_LABELS[m], m) for m in OFFLOADS], value=options.offload,
                           label="CPU offload", elem_id="system-offload", scale=3,
                           info="Lowers GPU memory by keeping weights in RAM until used; saves nothing on a CPU or "
                                "a Mac.")
        with gr.Column(scale=1, min_width=200):
            tiling = gr.Checkbox(options.vae_tiling, label="VAE tiling (large images, less memory)",
                                 elem_id="system-vae-tiling")
            slicing = gr.Checkbox(options.vae_slicing, label="VAE slicing (decode one image at a time)",
                                  elem_id="system-vae-slicing")
    with gr.Row(equal_height=True):
        placement = gr.Radio([(PLACEMENT_LABELS[p], p) for p in PLACEMENTS], value=options.placement,
                             label="Placement", elem_id="system-placement", scale=3,
                             info="Where the text encoders and the transformer wait between phases of a run.")
        with gr.Column(scale=1, min_width=200):
            compiled = gr.Checkbox(options.compile, label="Compile the transformer (NVIDIA GPUs and CPUs)",
                                   elem_id="system-compile")
            cache_steps = gr.Slider(0.0, 0.3, value=options.step_cache, step=0.01, label="Step cache threshold",
                                    info="0 = off; skips work on steps that barely change", elem_id="system-step-cache")
    options_note = gr.HTML("", elem_id="system-options-note")
    gr.Markdown("### Models")
    models, downloads, show_models = models_panel(ctx)
    gr.Markdown("### Quantized-weights cache")
    cached = gr.HTML("", elem_id="system-cache")
    clear = gr.Button("Clear the cache", variant="stop", size="sm", scale=0, min_width=180, elem_id="system-cache-clear")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            gr.Markdown("### This machine")
            machine = gr.HTML("<div class='ff-muted'>Loading…</div>", elem_id="system-machine")
        with gr.Column(scale=1):
            gr.Markdown("### Quantization backends")
            backends = gr.HTML("", elem_id="system-backends")

    def show_doctor():
        return doctor_html(runner.doctor())

    def show_loaded():
        return loaded_html(*runner.loaded_models())

    def refresh_all():
        return (*show_doctor(), show_loaded(), cache_html(admin.entries(quantized_dir())), *show_models())

    def clear_cache():
        removed = admin.clear(quantized_dir())
        gr.Info(f"Removed {removed['entries']} cached entries ({_mib(removed['bytes'])}).")
        return cache_html(admin.entries(quantized_dir()))

    def unload_all():
        freed = runner.unload_models()
        gr.Info(f"Unloaded all models ({_mib(freed)} freed).")
        return show_loaded()

    def set_options(mode, tile, slice_, place, compile_, threshold):
        runner.set_options(offload=mode, vae_tiling=tile, vae_slicing=slice_, placement=place, compile=compile_,
                           step_cache=float(threshold))
        note = ("Applied: offload {}, VAE tiling {}, VAE slicing {}, placement {}, compile {}, step cache {}; they "
                "take effect from the next run.").format(mode, "on" if tile else "off", "on" if slice_ else "off",
                                                         place, "on" if compile_ else "off",
                                                         f"{float(threshold):g}" if threshold else "off")
        if mode != "none" and ctx.device_type == "cpu":
            note += " CPU offload saves no memory here: this studio runs on the CPU (its hooks still run)."
        elif mode != "none" and ctx.device_type == "mps":
            note += " CPU offload saves no memory on a Mac: the CPU and the GPU share one pool of memory."
        return f"<div class='ff-muted'>{html.escape(note)}</div>"

    outputs = [machine, backends, loaded, cached, models, *downloads]
    refresh.click(refresh_all, None, outputs, queue=False, api_visibility="private", show_progress="minimal")
    tab.select(refresh_all, None, outputs, queue=False, api_visibility="private", show_progress="minimal")
    unload.click(unload_all, None, loaded, api_visibility="private", concurrency_id=DEVICE_QUEUE,
                 concurrency_limit=1)
    clear.click(clear_cache, None, cached, api_visibility="private", concurrency_id=DEVICE_QUEUE,
                concurrency_limit=1)
    for inputs, panel, refresh in ctx.estimates:  # each tab's estimate follows the offload option
        offload.change(refresh, [*inputs, offload], panel, queue=False, api_visibility="private",
                       show_progress="hidden")
    controls = [offload, tiling, slicing, placement, compiled, cache_steps]
    for control in controls:
        control.change(set_options, controls, options_note, queue=False,
                       api_visibility="private", show_progress="hidden")
