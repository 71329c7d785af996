"""What joins the tabs: a result sent on to another tab as its input ("Send to"), and a PNG's parameters restored
into the tab that made it (the PNG info tab). Each tool tab registers itself as a Target; the studio wires the rest
once every tab is built."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from . import text


@dataclass
class Target:
    """A tool tab as the other tabs reach it: the tools it runs, where its prompt, settings and input image are."""

    tab: str  # the tab's id in the studio's Tabs
    title: str
    tools: tuple[str, ...]
    prompt: gr.Textbox
    controls: object  # ui.widgets.Controls
    panel: object  # ui.widgets.ResultPanel
    image: gr.components.Component | None = None  # the input image (None: the tab takes none)
    editor: bool = False  # the input is an ImageEditor (its background gets the image)
    tool_choice: gr.Radio | None = None  # the control that picks among ``tools``
    model: gr.Dropdown | None = None  # with tool_choice: the Model dropdown, which follows the tool chosen
    holder: gr.Accordion | None = None  # an accordion the input image sits in (opened when an image is sent)


def target_for(targets: list[Target], tool: str) -> Target | None:
    return next((t for t in targets if tool in t.tools), None)


def image_value(target: Target, path):
    """What the target's input takes for the image file at ``path``."""
    if target.editor:
        return {"background": path, "layers": [], "composite": path}
    return path


def wire_send_to(targets: list[Target], tabs: gr.Tabs) -> None:
    """Under each result, one button per tab that takes an input image: the result becomes that tab's input and the
    page switches to it."""
    receivers = [t for t in targets if t.image is not None]
    for source in targets:
        if source.panel.send_row is None:
            continue
        with source.panel.send_row:
            for receiver in receivers:
                button = gr.Button(f"Send to {receiver.title}", size="sm", min_width=80,
                                   elem_id=f"{source.tab}-send-{receiver.tab}", elem_classes=["ff-send"])

                def send(path, receiver=receiver):
                    opened = [gr.Accordion(open=True)] if receiver.holder is not None else []
                    if not path:
                        gr.Warning("No result to send yet: make an image first.")
                        return gr.skip(), gr.skip(), *[gr.skip()] * len(opened)
                    return image_value(receiver, path), gr.Tabs(selected=receiver.tab), *opened

                holder = [receiver.holder] if receiver.holder is not None else []
                button.click(send, source.panel.image, [receiver.image, tabs, *holder], queue=False,
                             api_visibility="private", show_progress="hidden")


def restore_outputs(targets: list[Target]) -> list:
    """Every control a restore may set, target by target (see restore_values)."""
    outputs = []
    for target in targets:
        c = target.controls
        outputs += [target.tool_choice, target.model] if target.tool_choice is not None else []
        outputs += [target.prompt, c.steps, c.guidance, c.quant, c.width, c.height, c.seed, c.randomize,
                    c.loras.picked, c.loras.strength]
        outputs += [c.match_input] if c.match_input is not None else []
    return outputs


def restore_values(targets: list[Target], info: dict, quants, runner) -> tuple[list, str | None, list[str]]:
    """(the values for restore_outputs, the tab restored into, notes on what was not restored) for a PNG's info
    (pipelines.pnginfo.PngInfo.to_dict)."""
    restore = dict(info.get("restore") or {})
    notes = list(info.get("not_restored") or [])
    target = target_for(targets, restore.get("tool"))
    values = []
    for each in targets:
        c = each.controls
        count = 10 + 2 * (each.tool_choice is not None) + (c.match_input is not None)
        if each is not target:
            values += [gr.skip()] * count
            continue
        if each.tool_choice is not None:
            from .models import follow_tool

            values += [restore["tool"], follow_tool(runner, restore["tool"])]
        values.append(restore.get("prompt", gr.skip()))
        for key in ("steps", "guidance"):
            values.append(restore[key] if key in restore else gr.skip())
        quant = restore.get("quant")
        offered = [value for _, value in text.quant_choices(quants)]
        if quant is not None and quant not in offered:
            notes.append(f"quantization {quant}: not offered on this device")
            quant = None
        values.append(quant if quant is not None else gr.skip())
        sized = "width" in restore and "height" in restore
        values += [restore["width"] if sized else gr.skip(), restore["height"] if sized else gr.skip()]
        values += [restore["seed"], False] if "seed" in restore else [gr.skip(), gr.skip()]
        loras = restore.get("loras") or []
        values.append([item["file"] for item in loras])
        strengths = sorted({float(item["strength"]) for item in loras})
        if len(strengths) > 1:
            notes.append(f"LoRA strengths {', '.join(f'{s:g}' for s in strengths)}: the tab has one strength for "
                         f"all; {strengths[-1]:g} is set")
        values.append(strengths[-1] if strengths else 1.0)
        if c.match_input is not None:
            values.append(False if sized else gr.skip())
    return values, target.tab if target else None, notes


def info_html(info: dict, notes: list[str] | None = None) -> str:
    """A PNG's parameters as the PNG info tab shows them."""
    import html

    if not info.get("source"):
        return ("<div class='ff-status ff-muted'>No generation parameters in this image (no A1111, Forge, ComfyUI, "
                "InvokeAI or FluxForge metadata).</div>")
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_shown(v))}</td></tr>"
                   for k, v in info.get("fields", {}).items())
    restore = info.get("restore") or {}
    parts = [f"<div class='ff-pnginfo'><p>Made by <b>{html.escape(info['source'])}</b>.</p>",
             f"<table>{rows}</table>"]
    if restore:
        parts.append("<p>Restores into the <b>" + html.escape(str(restore.get("tool"))) + "</b> tool: "
                     + html.escape(", ".join(k for k in restore if k != "tool")) + ".</p>")
    missing = notes if notes is not None else info.get("not_restored") or []
    if missing:
        parts.append("<p>Not restored:</p><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in missing) + "</ul>")
    return "".join(parts) + "</div>"


def _shown(value) -> str:
    if isinstance(value, list):
        return "; ".join(f"{item.get('name')} {item.get('strength')}" if isinstance(item, dict) else str(item)
                         for item in value) or "none"
    if isinstance(value, dict):
        import json

        return json.dumps(value)[:400]
    return str(value)[:1000]
