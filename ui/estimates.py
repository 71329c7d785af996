"""The estimate under each tab's Quantization dropdown: peak memory, speed and fit of every choice, before loading."""

from __future__ import annotations

import html
import logging

from . import text

log = logging.getLogger(__name__)

OFFLOAD_TITLES = {"none": "Peak", "model": "Peak, model offload", "block": "Peak, block offload",
                  "sequential": "Peak, sequential offload"}


def _gib(value: int) -> str:
    from quantization.units import size_text

    return size_text(value)


def estimate_html(plan, quant: str, offload: str, notes: tuple[str, ...] = ()) -> str:
    """A plan (pipelines.memory.estimate.Plan) as a table: one row per quant choice, the chosen one marked; a peak column
    per offload option (one on the CPU, where offload has no effect), the current one marked."""
    memory = plan.memory
    offloads = ("none",) if memory.type == "cpu" else tuple(OFFLOAD_TITLES)
    head = "<th>Quantization</th><th>Format</th>" + "".join(
        f"<th{' class=ff-current' if o == offload or memory.type == 'cpu' else ''}>{OFFLOAD_TITLES[o]}</th>"
        for o in offloads) + "<th>Step time</th><th>Fits</th>"
    body = []
    for row in (e for e in plan.estimates if e.offload == "none"):
        label = text.QUANT_LABELS.get(row.quant, row.quant)
        if row.quant == "auto":
            label += f" → {text.QUANT_LABELS.get(row.resolved, row.resolved)}"
        current = plan.row(row.quant, offload if memory.type != "cpu" else "none") or row
        peaks = "".join(f"<td>{_gib(plan.row(row.quant, o).peak_bytes)}</td>" for o in offloads)
        speed = f"{current.speed:.2f}×" if current.speed is not None else "not measured"
        fits = "<span class='ff-ok'>yes</span>" if current.fits else "<span class='ff-no'>no</span>"
        mark = " class='ff-chosen'" if row.quant == quant else ""
        body.append(f"<tr{mark} data-quant='{html.escape(row.quant)}' title='{html.escape(current.reason)}'>"
                    f"<td>{html.escape(label)}</td><td>{html.escape(row.label)}</td>{peaks}<td>{speed}</td>"
                    f"<td>{fits}</td></tr>")
    chosen = plan.row(quant, offload if memory.type != "cpu" else "none")
    label = text.QUANT_LABELS.get(quant, quant)
    why = "" if not chosen else f" {html.escape(chosen.reason)}." if quant == "auto" else \
        f" {label}: {html.escape(chosen.reason)}."  # Auto's reason says "Auto picks ..." itself
    where = "offload has no effect on the CPU" if memory.type == "cpu" else f"offload: {offload} (System tab)"
    auto = "" if quant == "auto" else f" Auto picks {html.escape(plan.auto.quant)}: {html.escape(plan.auto.reason)}."
    snapped = "".join(f" {html.escape(note[:1].upper() + note[1:].rstrip('.'))}, as a run takes it." for note in notes)
    then = ""
    if plan.hires:
        held = f", the upscaler's {_gib(plan.hires['upscaler_bytes'])} held" if plan.hires["upscaler_bytes"] else ""
        then = f" then {plan.hires['width']}×{plan.hires['height']} (hires fix: both passes{held})"
    if plan.transformer:
        then += f" with the transformer from {html.escape(plan.transformer)}"
    caption = (f"Estimated before loading for {plan.width}×{plan.height}{then}: {_gib(memory.free_bytes)} "
               f"{html.escape(memory.what)}; {where}.{auto} Step time: against full precision (2.00× takes twice "
               f"as long).{why}{snapped}")
    return (f"<table class='ff-table ff-estimate'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
            f"</table><div class='ff-muted'>{caption}</div>")


def render(runner, tool: str, quant, width, height, offload=None, model=None, hires=()) -> str:
    """The estimate of ``tool`` (on the Model choice ``model``) for these settings, at the size a run would take
    (pipelines.request.checked_size: a size off the step is snapped, with a note); a one-line note when it cannot be
    made. ``hires``: the hires fix's (scale, upscaler), when the tab has one."""
    from pipelines.errors import UserError
    from pipelines.request import checked_size

    notes: list[str] = []
    try:
        offload = offload or runner.options.offload
        size = [checked_size(name, value, notes) for name, value in (("width", width), ("height", height))]
        plan = runner.plan(tool, *size, model, *hires)
    except (UserError, ValueError, TypeError) as error:
        return f"<div class='ff-muted'>No estimate: {html.escape(str(error).splitlines()[0])}</div>"
    except Exception as error:  # noqa: BLE001  (an estimate never breaks the tab)
        log.exception("estimate failed (%s)", tool)
        return f"<div class='ff-muted'>No estimate ({html.escape(type(error).__name__)}).</div>"
    return estimate_html(plan, quant, offload, tuple(notes))
