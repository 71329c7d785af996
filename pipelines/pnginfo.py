"""PNG info: what a PNG says of how it was made (ours, A1111's, Forge's, ComfyUI's or InvokeAI's), and which of it a
tool of ours can take back (prompt, seed, steps, guidance, size, quantization, LoRAs found in the LoRA folder)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import defaults, infotext
from .errors import UserError
from .images import open_image

# What a run of ours takes back from an image: the request fields, in the order they are shown.
RESTORABLE = ("tool", "prompt", "seed", "steps", "guidance", "width", "height", "quant", "loras")


@dataclass
class PngInfo:
    """One PNG's parameters: ``source`` (which program wrote them), ``fields`` (everything it holds, as named
    there), ``restore`` (request fields a tool of ours takes back) and ``not_restored`` (what cannot be, and why)."""

    name: str
    source: str | None
    fields: dict = field(default_factory=dict)
    restore: dict = field(default_factory=dict)
    not_restored: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """As the CLI prints it."""
        if self.source is None:
            return [f"{self.name}: no generation parameters (no A1111, Forge, ComfyUI, InvokeAI or FluxForge "
                    "metadata)."]
        out = [f"{self.name}: made by {self.source}"]
        out += [f"  {key}: {_shown(value)}" for key, value in self.fields.items()]
        if self.restore:
            out.append("restores: " + ", ".join(f"{key}={_shown(value)}" for key, value in self.restore.items()))
        out += [f"not restored: {item}" for item in self.not_restored]
        return out


def _shown(value) -> str:
    if isinstance(value, list):
        return "; ".join(f"{item['name']} {item['strength']:g}" if isinstance(item, dict) else str(item)
                         for item in value) or "none"
    text = str(value)
    return text if len(text) <= 400 else text[:400] + "…"


def read_png_info(path, shown: str | None = None, lora_folder: Path | None = None) -> PngInfo:
    """The parameters in the image file at ``path`` (a UserError names it when it is not an image we read);
    LoRAs are looked for in ``lora_folder`` (default: the LoRA folder)."""
    name = shown or Path(str(path)).name
    with open_image(path, "image", shown=name) as image:
        chunks = {str(k): v for k, v in image.info.items() if isinstance(v, str)}
        if hasattr(image, "text"):
            chunks.update({str(k): v for k, v in image.text.items()})
    return info_from_chunks(chunks, name, lora_folder)


def info_from_chunks(chunks: dict, name: str = "image", lora_folder: Path | None = None) -> PngInfo:
    """PngInfo from a PNG's text chunks (see read_png_info)."""
    for reader in (_ours, _invokeai, _comfyui, _a1111):
        info = reader(chunks, name)
        if info is not None:
            _match_loras(info, lora_folder)
            return info
    return PngInfo(name, None)


def _json(text):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _ours(chunks: dict, name: str) -> PngInfo | None:
    meta = _json(chunks.get("fluxforge"))
    if not isinstance(meta, dict):
        return None
    fields = {key: meta[key] for key in ("tool", "prompt", "model", "seed", "steps", "guidance", "width", "height")
              if key in meta}
    quant = (meta.get("quantization") or {}).get("requested") or meta.get("quant")
    fields["quantization"] = meta.get("quantization_summary") or quant
    fields["loras"] = [{"name": l.get("name"), "strength": float(l.get("strength", 1)), "autov3": l.get("autov3")}
                       for l in meta.get("loras") or []]
    for key in ("strength", "hires", "inputs"):
        if meta.get(key):
            fields[key] = meta[key]
    restore = {key: meta[key] for key in ("tool", "prompt", "seed", "steps", "guidance", "width", "height")
               if meta.get(key) is not None}
    if quant in defaults.QUANTS:
        restore["quant"] = quant
    info = PngInfo(name, "FluxForge Studio", fields, restore)
    info.restore["loras"] = fields["loras"]
    if meta.get("inputs"):
        info.not_restored.append("input images (" + ", ".join(meta["inputs"]) + "): give them again")
    if meta.get("hires"):
        info.not_restored.append(f"hires fix (x{meta['hires']['scale']:g}): the size restored is the final one; "
                                 "set the hires fix again to make it the same way")
    return info


def _a1111(chunks: dict, name: str) -> PngInfo | None:
    text = chunks.get("parameters")
    if not isinstance(text, str) or not text.strip():
        return None
    parsed = infotext.parse(text)
    prompt, tags = infotext.lora_tags(parsed.pop("Prompt", ""))
    negative = parsed.pop("Negative prompt", "")
    source = "Forge" if str(parsed.get("Version", "")).startswith("f") else "A1111 or Forge"
    fields = {"prompt": prompt, **({"negative prompt": negative} if negative else {})}
    fields.update({k: v for k, v in parsed.items() if not re.fullmatch(r".+-[12]", k)})
    hashes = infotext.lora_hashes(parsed.get("Lora hashes", ""))
    loras = [{"name": n, "strength": s, "autov3": hashes.get(n)} for n, s in tags]
    fields["loras"] = loras
    size = parsed.get("Size", "")
    width, height = (int(v) for v in size.split("x")) if re.fullmatch(r"\d+x\d+", size) else (None, None)
    guidance = parsed.get("Distilled CFG Scale", parsed.get("Guidance"))
    values = dict(prompt=prompt, seed=parsed.get("Seed"), steps=parsed.get("Steps"), guidance=guidance,
                  width=width, height=height, model=parsed.get("Model"), cfg=parsed.get("CFG scale"),
                  sampler=parsed.get("Sampler"), negative=negative, strength=parsed.get("Denoising strength"),
                  tool=parsed.get("Tool"), quant=None, loras=loras)
    return _restorable(PngInfo(name, source, fields), values)


def _comfyui(chunks: dict, name: str) -> PngInfo | None:
    graph = _json(chunks.get("prompt"))
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        return None
    nodes = {str(k): v for k, v in graph.items()}
    found: dict = {"guidance": None}

    def node(link):
        return nodes.get(str(link[0])) if isinstance(link, list) and link else None

    def text_of(link, depth=0):
        """The prompt text a conditioning link leads to (FLUX guidance picked up on the way)."""
        current = node(link)
        if current is None or depth > 20:
            return ""
        inputs = current.get("inputs", {})
        if "guidance" in inputs and not isinstance(inputs["guidance"], list):
            found["guidance"] = inputs["guidance"]
        for key in ("text", "t5xxl", "clip_l", "text_g"):
            if isinstance(inputs.get(key), str):
                return inputs[key]
        for key in ("conditioning", "positive", "conditioning_to", "conditioning_1"):
            if key in inputs:
                return text_of(inputs[key], depth + 1)
        return ""

    by_type = lambda *types: [n for n in nodes.values() if n.get("class_type") in types]  # noqa: E731
    samplers = by_type("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
    if not samplers:
        return None
    sampler = samplers[0].get("inputs", {})
    positive = sampler.get("positive")
    if positive is None and node(sampler.get("guider")):
        guider = node(sampler["guider"]).get("inputs", {})
        found["cfg"] = guider.get("cfg")
        positive = guider.get("conditioning", guider.get("positive"))
    prompt = text_of(positive)
    negative = text_of(sampler.get("negative"))
    first = lambda key, *types: next((n["inputs"][key] for n in by_type(*types)  # noqa: E731
                                      if not isinstance(n.get("inputs", {}).get(key, []), list)), None)
    seed = sampler.get("seed", sampler.get("noise_seed"))
    seed = seed if not isinstance(seed, list) else first("noise_seed", "RandomNoise")
    steps = sampler.get("steps")
    steps = steps if not isinstance(steps, list) and steps is not None else first("steps", "BasicScheduler")
    latents = ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyFlux2LatentImage")
    width, height = first("width", *latents), first("height", *latents)
    model = first("ckpt_name", "CheckpointLoaderSimple") or first("unet_name", "UNETLoader", "UnetLoaderGGUF")
    loras = [{"name": Path(str(n["inputs"].get("lora_name"))).stem, "strength": float(n["inputs"].get(
        "strength_model", 1)), "autov3": None} for n in by_type("LoraLoader", "LoraLoaderModelOnly")]
    fields = {"prompt": prompt, **({"negative prompt": negative} if negative else {}), "seed": seed, "steps": steps,
              "cfg": sampler.get("cfg", found.get("cfg")), "sampler": sampler.get("sampler_name"),
              "scheduler": sampler.get("scheduler"), "guidance": found["guidance"], "width": width, "height": height,
              "model": model, "denoise": sampler.get("denoise"), "loras": loras}
    fields = {k: v for k, v in fields.items() if v is not None}
    values = dict(prompt=prompt, seed=seed, steps=steps, guidance=found["guidance"], width=width, height=height,
                  model=model, cfg=fields.get("cfg"), sampler=None, negative=negative,
                  strength=sampler.get("denoise") if sampler.get("denoise") not in (None, 1, 1.0) else None,
                  tool=None, quant=None, loras=loras)
    return _restorable(PngInfo(name, "ComfyUI", fields), values)


def _invokeai(chunks: dict, name: str) -> PngInfo | None:
    meta = _json(chunks.get("invokeai_metadata"))
    if not isinstance(meta, dict):
        return None
    model = meta.get("model")
    model = model.get("name") or model.get("model_name") if isinstance(model, dict) else model
    loras = []
    for item in meta.get("loras") or []:
        entry = item.get("model") or item.get("lora") or {}
        lora_name = entry.get("name") or entry.get("model_name") if isinstance(entry, dict) else None
        if lora_name:
            loras.append({"name": lora_name, "strength": float(item.get("weight", 1)), "autov3": None})
    fields = {key: meta.get(key) for key in ("positive_prompt", "negative_prompt", "seed", "steps", "cfg_scale",
                                             "guidance", "scheduler", "width", "height", "strength")
              if meta.get(key) not in (None, "")}
    fields.update(model=model, loras=loras)
    values = dict(prompt=meta.get("positive_prompt", ""), seed=meta.get("seed"), steps=meta.get("steps"),
                  guidance=meta.get("guidance"), width=meta.get("width"), height=meta.get("height"), model=model,
                  cfg=meta.get("cfg_scale"), sampler=None, negative=meta.get("negative_prompt"),
                  strength=meta.get("strength") if meta.get("generation_mode", "").endswith("i2l") else None,
                  tool=None, quant=None, loras=loras)
    return _restorable(PngInfo(name, "InvokeAI", fields), values)


def _number(value, kind):
    try:
        number = kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        return None
    return number


def _restorable(info: PngInfo, v: dict) -> PngInfo:
    """What of another program's parameters a tool of ours takes, and what it cannot (named, with why)."""
    from .tools import all_tools, tool_names

    text_tools = [t for t in all_tools() if t.pipeline_class == "FluxPipeline"]
    tool = v["tool"] if v["tool"] in tool_names() else None
    model = str(v.get("model") or "").lower()
    if tool is None:
        named = [t for t in text_tools if re.search(rf"(?<![a-z]){re.escape(t.name)}(?![a-z])", model)]
        guided = [t for t in text_tools if t.guidance > 0]
        tool = (named or (guided if v["guidance"] not in (None, "") else text_tools) or text_tools)[0].name
    restore = {"tool": tool, "prompt": v["prompt"] or ""}
    for key, kind in (("seed", int), ("steps", int), ("guidance", float), ("width", int), ("height", int)):
        number = _number(v[key], kind)
        if number is not None:
            restore[key] = number
    info.restore = restore
    info.restore["loras"] = v["loras"]
    notes = info.not_restored
    if v.get("negative"):
        notes.append("negative prompt: FLUX tools take none")
    cfg = _number(v.get("cfg"), float)
    if cfg not in (None, 1.0):
        notes.append(f"CFG scale {cfg:g}: FLUX runs with its distilled guidance instead")
    if v.get("sampler") and v["sampler"] != infotext.DEFAULT_SAMPLER[0]:
        notes.append(f"sampler {v['sampler']}: FLUX runs its own (Euler)")
    if v.get("strength") not in (None, ""):
        notes.append(f"denoising strength {v['strength']}: the input image is not in the PNG")
    if v.get("model"):
        notes.append(f"model {v['model']}: pick it in the tab (the {tool} tab's model is kept)")
    return info


def _match_loras(info: PngInfo, folder: Path | None) -> None:
    """Each LoRA of ``info.restore`` found in the LoRA folder (by AutoV3 hash, else by name) gets its file name;
    those not found are named in ``not_restored``."""
    wanted = info.restore.get("loras")
    if not wanted:
        info.restore.pop("loras", None)
        return
    from .loras import available_loras, file_hashes
    from .paths import lora_dir

    folder = Path(folder) if folder else lora_dir()
    files = available_loras(folder)
    by_alias = {infotext.lora_alias(p.stem): p for p in files}
    found = []
    for lora in wanted:
        path = by_alias.get(infotext.lora_alias(lora["name"]))
        digest = (lora.get("autov3") or "").lower()
        if digest and (path is None or not file_hashes(path)[1].startswith(digest)):
            path = next((p for p in files if file_hashes(p)[1].startswith(digest)), None)
        if path is None:
            info.not_restored.append(f"LoRA {lora['name']}: not in the LoRA folder")
            continue
        found.append({"name": path.stem, "file": path.relative_to(folder).as_posix(), "strength": lora["strength"]})
    info.restore["loras"] = found

