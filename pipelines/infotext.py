"""The PNG `parameters` text in AUTOMATIC1111/Forge form ("infotext"): written for our images, read from anyone's.

The form, as A1111 writes it and Forge writes FLUX images::

    a lighthouse at dusk <lora:film-grain:0.8>
    Negative prompt: ...                     (left out when there is none)
    Steps: 28, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 42, ...

A value is quoted (as JSON text) when it holds a comma, a colon or a newline, as A1111's ``quote`` does; our own
keys keep their values free of those, so readers that split on them (sd-parsers) read them whole too. A LoRA name
is written by its alias (``lora_alias``): the characters that would break the ``<lora:...>`` tag or the
``Lora hashes`` list replaced by ``_``.
"""

from __future__ import annotations

import json
import re

# A1111's scheduler names for diffusers' schedulers: (Sampler, Schedule type). FLUX runs flow-matching Euler on a
# shifted linear schedule: Forge writes its FLUX images as Euler / Simple.
SAMPLERS = {"FlowMatchEulerDiscreteScheduler": ("Euler", "Simple")}
DEFAULT_SAMPLER = SAMPLERS["FlowMatchEulerDiscreteScheduler"]

# A1111's parser (modules/infotext_utils.py): a key, a colon, then a JSON-quoted value or anything up to a comma.
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
LORA_TAG = re.compile(r"<lora:([^:>]+):([^:>]+)(?::[^>]*)?>")
_ALIAS_BREAKS = re.compile(r"[\x00-\x1f:<>,\"]")


def quote(value) -> str:
    """A1111's rule: text with a comma, colon or newline is written as a JSON string; other text as it is."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def lora_alias(name: str) -> str:
    """How a LoRA is named in the tag and the hash list: newlines, control characters, ':', '<', '>', ',' and '"'
    become '_' (each would end the tag or split the list)."""
    alias = _ALIAS_BREAKS.sub("_", str(name)).strip()
    return alias or "_"


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _compact(text: str) -> str:
    """Our own values without commas, colons or newlines (so that readers splitting on them keep them whole)."""
    return re.sub(r"\s+", " ", str(text).replace(",", ";").replace(":", " ")).strip()


def write(meta: dict) -> str:
    """The `parameters` text of one image, from its metadata (GenerationResult.metadata): A1111's keys first,
    then ours (Tool, Quantization, Inputs...)."""
    loras = meta.get("loras") or []
    prompt = str(meta.get("prompt") or "")
    tags = " ".join(f"<lora:{lora_alias(l['name'])}:{float(l['strength']):g}>" for l in loras)
    lines = [" ".join(part for part in (prompt, tags) if part)]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    sampler, schedule = SAMPLERS.get(meta.get("scheduler") or "", DEFAULT_SAMPLER)
    fields: list[tuple[str, object]] = [("Steps", meta.get("steps")), ("Sampler", sampler),
                                        ("Schedule type", schedule), ("CFG scale", meta.get("cfg_scale", 1)),
                                        ("Distilled CFG Scale", meta.get("guidance")), ("Seed", meta.get("seed")),
                                        ("Size", f"{meta.get('width')}x{meta.get('height')}")]
    if meta.get("model_hash"):
        fields.append(("Model hash", meta["model_hash"]))
    fields.append(("Model", meta.get("model")))
    if meta.get("strength") is not None:
        fields.append(("Denoising strength", meta["strength"]))
    hires = meta.get("hires")
    if hires:
        fields += [("Hires upscale", hires.get("scale")), ("Hires upscaler", _compact(hires.get("upscaler", ""))),
                   ("Hires steps", hires.get("steps")), ("Hires denoising", hires.get("strength"))]
    if loras:
        fields.append(("Lora hashes", ", ".join(f"{lora_alias(l['name'])}: {l.get('autov3', l['sha256'])[:12]}"
                                               for l in loras)))
    fields.append(("Tool", meta.get("tool")))
    if meta.get("quantization_summary"):
        fields.append(("Quantization", _compact(meta["quantization_summary"])))
    inputs = meta.get("inputs") or {}
    if inputs:
        fields.append(("Inputs", "; ".join(f"{role} {_compact(item['name'])} sha256 {item['sha256'][:16]}"
                                           for role, item in inputs.items())))
    lines.append(", ".join(f"{key}: {quote(_number(value))}" for key, value in fields if value is not None))
    return "\n".join(lines)


def parse(text: str) -> dict:
    """A `parameters` text read as A1111 reads it (parse_generation_parameters): {"Prompt", "Negative prompt",
    and each key of the last line}, values unquoted; ``Size`` kept whole and also split into Size-1/Size-2."""
    result: dict = {}
    *lines, last = str(text).strip().split("\n")
    if len(PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result["Prompt"], result["Negative prompt"] = "\n".join(prompt), "\n".join(negative)
    for key, value in PARAM.findall(last):
        value = unquote(value.strip()) if value.strip()[:1] == '"' else value.strip()
        result[key] = value
        size = IMAGE_SIZE.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
    return result


def lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its <lora:NAME:STRENGTH> tags, and those tags as (name, strength) pairs."""
    found = []
    for name, strength in LORA_TAG.findall(prompt):
        try:
            found.append((name, float(strength)))
        except ValueError:
            continue
    return re.sub(r"\s*" + LORA_TAG.pattern, "", prompt).strip(), found


def lora_hashes(value: str) -> dict[str, str]:
    """A `Lora hashes` value ("name: hash, name: hash") as {name: hash}."""
    pairs = {}
    for item in str(value or "").split(","):
        name, sep, digest = item.rpartition(":")
        if sep and name.strip():
            pairs[name.strip()] = digest.strip()
    return pairs
