"""Texts the studio shows: quantization labels and hints, the status line, warnings and banners."""

from __future__ import annotations

import html

from pipelines import defaults
from pipelines.tools import tool_names
from quantization.policy import RATIO, candidates

QUANT_LABELS = {"auto": "Auto", "none": "None", "8bit": "8-bit", "4bit": "4-bit", "fp8": "FP8"}


def quant_choices(quants) -> list[tuple[str, str]]:
    """(label, value) for the Quantization dropdown: the quant choices offered on this device."""
    return [(QUANT_LABELS[quant], quant) for quant in quants]



def tool_title(name: str) -> str:
    """The tool's title (its name when no such tool is registered)."""
    from pipelines.errors import UserError
    from pipelines.tools import get_tool

    try:
        return get_tool(name).title
    except UserError:
        return name


def _first(mode: str, device_type: str):
    return candidates(mode, device_type)[0]


def _cpu_speed(config) -> str:
    """', ~1.0x step time' from the CPU measurements, when there are any."""
    from quantization.policy import cpu_step_ratios

    ratio = cpu_step_ratios().get((config.backend, config.format))
    return f", ~{ratio:.1f}× step time" if ratio else ""


def quant_hint(device_type: str) -> str:
    """One line on the memory/speed trade-off of each mode on this kind of device."""
    eight, four = round(RATIO["8bit"] * 100), round(RATIO["4bit"] * 100)
    q8, q4 = _first("8bit", device_type), _first("4bit", device_type)
    if device_type == "cuda":
        return (f"On this GPU: 8-bit ({q8.label}) ~{eight}% of weight VRAM, a bit slower · 4-bit ({q4.label}) "
                f"~{four}%, small quality cost · Auto: highest precision that fits.")
    if device_type == "mps":
        return (f"On Apple Silicon: 8-bit ({q8.label}) ~{eight}% of weight memory · 4-bit ({q4.label}, then "
                f"bitsandbytes nf4, then 8-bit) ~{four}% · both slower per step than bf16 · Auto: bf16 whenever it "
                "fits, quantized only to fit.")
    return (f"On this CPU: 8-bit ({q8.label}) ~{eight}% of weight RAM{_cpu_speed(q8)} · 4-bit ({q4.label}) "
            f"~{four}%{_cpu_speed(q4)} · Auto: full precision while it fits.")


def _mib(value: int | None) -> str:
    from quantization.units import size_text

    return size_text(value) if value else "n/a"


MEMORY_KINDS = {"cuda": "GPU peak allocated", "mps": "MPS driver peak", "cpu-rss": "process RSS peak"}
COMPONENT_ORDER = ("transformer", "text_encoder_2", "text_encoder", "vae")


def status_html(report: dict, path_name: str | None = None) -> str:
    """The status line after a run: backend and mode per component, peak memory and times."""
    quant = report["quantization"]
    names = sorted(quant["components"], key=lambda n: (COMPONENT_ORDER.index(n) if n in COMPONENT_ORDER else 9, n))
    parts = []
    for name in names:
        comp = quant["components"][name]
        backend = "full precision" if comp["backend"] == "none" else comp["backend"]
        parts.append(f"<span class='ff-chip'><b>{html.escape(name)}</b> {html.escape(backend)} "
                     f"{html.escape(str(comp['format']))}</span>")
    timings = report["timings"]
    memory = report["memory"]
    params = report["parameters"]
    requested = QUANT_LABELS.get(quant["requested"], quant["requested"])
    resolved = QUANT_LABELS.get(quant["resolved"], quant["resolved"])
    resolved = "full precision" if quant["resolved"] == "none" else resolved
    mode = requested if requested == resolved else f"{requested} → {resolved}"
    head = (f"<b>{html.escape(tool_title(report['tool']))}</b> · {params['width']}×"
            f"{params['height']} · {params['steps']} steps · seed {report['seed']} · {html.escape(report['device'])} "
            f"{html.escape(report['dtype'])} · quantization {html.escape(mode)}")
    if params.get("loras"):
        head += " · LoRAs " + ", ".join(f"{html.escape(lora['name'])} {lora['strength']:g}" for lora in params["loras"])
    hires = report.get("hires")
    if hires:  # both passes: the first's size, the upscaler, the refining pass
        first = hires["first_pass"]["size"]
        head += (f" · hires fix from {first[0]}×{first[1]} ({html.escape(str(hires['upscaler']))}, "
                 f"{hires['steps']} steps at {hires['strength']:g}, upscale {hires['upscale_s']:.2f} s)")
    joined = report.get("conditioning")
    if joined:  # several input images, one conditioning image
        names = [params["inputs"][role]["name"] for role in joined["inputs"] if role in params["inputs"]]
        head += (f" · {len(joined['inputs'])} images {html.escape(joined['method'])} side by side: "
                 + " + ".join(html.escape(name) for name in names))
    numbers = (f"peak {_mib(memory['peak_bytes'])} ({MEMORY_KINDS.get(memory['kind'], memory['kind'])}) · "
               f"load {timings['load_s']:.2f} s · quantize {timings['quantize_s']:.2f} s · "
               f"denoise {timings['denoise_s']:.2f} s · total {timings['total_s']:.2f} s")
    placement = report.get("placement")
    if placement:
        numbers += f" · placement {html.escape(placement['name'])}" + (" (tiled decode)" if placement["tiled_decode"]
                                                                      else "")
    if report.get("step_cache"):
        numbers += f" · step cache skipped {report['step_cache']['skipped_steps']} of {params['steps']} steps"
    saved = f" · saved {html.escape(path_name)}" if path_name else ""
    return (f"<div class='ff-status'><div>{head}</div><div class='ff-chips'>{''.join(parts)}</div>"
            f"<div class='ff-muted'>{numbers}{saved}</div></div>")


def batch_html(seeds: list[int]) -> str:
    """The line above the status of a batch: how many images, and their seeds (the status is the last one's)."""
    listed = ", ".join(str(seed) for seed in seeds)
    return (f"<div class='ff-batch ff-muted'><b>{len(seeds)} images</b> · seeds {listed} · the status below is the "
            "last one's</div>")


def stopped_html() -> str:
    """The status line once the Stop button has stopped a job (a preview shown stays as it was)."""
    return ("<div class='ff-status ff-muted'><b>Stopped.</b> The run stopped at its next denoising step; no further "
            "image of the job was started.</div>")


def earlier_html(caption: str, path_name: str) -> str:
    """The line above the status of a result shown again from the history."""
    return (f"<div class='ff-earlier ff-muted'><b>From the history</b> · {html.escape(caption)} · "
            f"{html.escape(path_name)}</div>")


def preview_html(label: str) -> str:
    """The status line while a run shows its live preview (e.g. 'Preview · image 2/3 · step 4/8')."""
    return (f"<div class='ff-status ff-preview'><b>{html.escape(label)}</b> · <span class='ff-muted'>a quick look at "
            "the image in progress; the full image follows</span></div>")


def _used(component: dict | None) -> str:
    if not component:
        return "?"
    return "full precision" if component["backend"] == "none" else f"{component['backend']} {component['format']}"


def fallback_summary(fallbacks: list[dict], components: dict) -> str:
    """One line for the toast: which components fell back, and to what."""
    names = list(dict.fromkeys(f["component"] for f in fallbacks))
    return "Quantization fell back: " + ", ".join(f"{n} → {_used(components.get(n))}" for n in names) + "."


def warning_html(fallbacks: list[dict], components: dict) -> str:
    """The visible warning box shown in the tab when a quantization fell back: what ran, what was tried, why."""
    if not fallbacks:
        return ""
    tried: dict[str, list[str]] = {}
    for f in fallbacks:
        tried.setdefault(f["component"], []).append(f"{f['backend']} {f['format']}")
    groups: dict[tuple, list[str]] = {}  # components with the same outcome share a line
    for name, attempts in tried.items():
        groups.setdefault((_used(components.get(name)), tuple(attempts)), []).append(name)
    items = "".join(f"<li><b>{html.escape(', '.join(names))}</b> → {html.escape(used)} (tried "
                    f"{html.escape(', '.join(attempts))})</li>" for (used, attempts), names in groups.items())
    reasons = list(dict.fromkeys(f["reason"] for f in fallbacks))
    why = "; ".join(html.escape(r) for r in reasons)
    return (f"<div class='ff-warning' role='alert'><b>⚠ Quantization fell back.</b> The image was made with less "
            f"quantization than asked for:<ul>{items}</ul><div class='ff-why'>Why: {why}.</div></div>")


def notices_html(notices: list[str]) -> str:
    keep = [n for n in notices if not n.startswith("Fallback:")]
    if not keep:
        return ""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in keep)
    return f"<ul class='ff-notices'>{items}</ul>"


def demo_banner(assignment) -> str:
    """The banner shown while any tool runs the demo model `tiny`: which tools, why, and how to get real weights."""
    from pipelines.models.hub import offline

    tiny = [tool for tool, model in assignment.models.items() if model == defaults.TINY_MODEL]
    if not tiny:
        return ""
    every = len(tiny) == len(tool_names())
    names = "Every tool runs" if every else ", ".join(tool_title(t) for t in tiny) + (" runs" if len(tiny) == 1
                                                                                      else " run")
    asked = [t for t in tiny if t not in assignment.demo]
    if not assignment.demo:
        why = f"{html.escape(names)} <code>tiny</code>, the demo model, as asked"
        how = "Start without <code>--model tiny</code> for the official models."
    else:
        reason = "HF_HUB_OFFLINE is set" if offline() else "the Hugging Face hub cannot be reached"
        why = (f"{html.escape(names)} <code>tiny</code>, the demo model: the official weights are not in the local "
               f"cache and {reason}")
        how = ("For real images: connect and restart (each official model downloads on its first run, with "
               "progress; the Dev family needs its licence accepted on its Hugging Face page and a login: "
               "<code>hf auth login</code> or <code>HF_TOKEN</code>), run <code>python app.py models download --tool "
               "TOOL</code> on a connected machine, or choose your own model in a tab's Model list "
               "(<code>FLUXFORGE_MODEL_DIR</code>).")
        if asked:
            why += f" ({html.escape(', '.join(tool_title(t) for t in asked))} as asked)"
    return (f"<div class='ff-banner' role='status'><b>Demo model.</b> {why}. Its random weights make noise-like "
            f"images; quantization, fallbacks, memory and metadata are real. {how}</div>")
