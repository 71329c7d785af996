"""The PNG `parameters` text in A1111/Forge form: what sd-parsers and A1111's own parser read back from our images."""

import hashlib
import json
import re
import shutil
import struct

import pytest
from PIL import Image
from sd_parsers import ParserManager

from pipelines import infotext
from pipelines.engine import Engine
from pipelines.loras import check_lora
from pipelines.loras.tiny import tiny_lora
from pipelines.manager import ModelManager
from pipelines.request import GenerationRequest

# A1111's own parser, modules/infotext_utils.py (parse_generation_parameters), re-implemented here as it is written:
#   re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
#   re_imagesize = re.compile(r"^(\d+)x(\d+)$")
#   values that begin and end with '"' go through unquote(): json.loads
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
A1111_SIZE = re.compile(r"^(\d+)x(\d+)$")


def a1111_parse(text: str) -> dict:
    res, prompt, negative, done_with_prompt = {}, "", "", False
    *lines, lastline = text.strip().split("\n")
    if len(A1111_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"], res["Negative prompt"] = prompt, negative
    for k, v in A1111_PARAM.findall(lastline):
        if v[0] == '"' and v[-1] == '"':
            v = json.loads(v)
        m = A1111_SIZE.match(v)
        if m is not None:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    return res


@pytest.mark.parametrize("value, written", [
    ("Euler", "Euler"), (28, "28"), ("a, b", '"a, b"'), ("key: value", '"key: value"'), ("two\nlines", '"two\\nlines"'),
    ('say "hi", then', '"say \\"hi\\", then"'), ("naïve, café", '"naïve, café"')])
def test_values_are_quoted_as_a1111_quotes_them(value, written):
    assert infotext.quote(value) == written
    assert infotext.unquote(written) == str(value)


@pytest.mark.parametrize("name, alias", [
    ("film-grain", "film-grain"), ("odd:name", "odd_name"), ("a>b<c", "a_b_c"), ("two\nlines", "two_lines"),
    ("x,y", "x_y"), ('q"uote', "q_uote"), ("\n", "_")])
def test_lora_names_are_escaped_where_they_would_break_the_tag_or_the_hash_list(name, alias):
    assert infotext.lora_alias(name) == alias
    prompt, tags = infotext.lora_tags(f"a cube <lora:{infotext.lora_alias(name)}:0.5>")
    assert prompt == "a cube" and tags == [(alias, 0.5)]


def test_our_parser_reads_an_a1111_text_as_a1111_does():
    text = ("girl with a beret, blue eyes <lora:film grain:0.8>\nsecond line\nNegative prompt: ugly, blurry\n"
            'Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 965400086, Size: 512x768, '
            'Model hash: 45dee52b, Model: sd15, Lora hashes: "film grain: 0123456789ab", Version: v1.10.1')
    ours, theirs = infotext.parse(text), a1111_parse(text)
    assert {k: v for k, v in ours.items() if k != "Size"} == theirs
    assert ours["Prompt"] == "girl with a beret, blue eyes <lora:film grain:0.8>\nsecond line"
    assert ours["Negative prompt"] == "ugly, blurry" and ours["Size"] == "512x768"
    assert infotext.lora_hashes(ours["Lora hashes"]) == {"film grain": "0123456789ab"}


def test_autov3_is_the_sha256_of_the_tensor_data_after_the_header(tiny_root):
    path = tiny_lora("diffusers")
    data = path.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    lora = check_lora(path)
    assert lora.autov3 == hashlib.sha256(data[8 + header:]).hexdigest()
    assert lora.sha256 == hashlib.sha256(data).hexdigest() and lora.autov3 != lora.sha256


@pytest.fixture(scope="module")
def made(tiny_root, tmp_path_factory):
    """A Dev image with two LoRAs, one of them named with a newline, ':', '>' and ','."""
    folder = tmp_path_factory.mktemp("loras")
    odd = folder / "grain, v2:x>y\nz.safetensors"
    shutil.copy(tiny_lora("diffusers"), odd)
    plain = tiny_lora("kohya")
    engine = Engine(ModelManager(device="cpu"))
    request = GenerationRequest(tool="dev", prompt="a lighthouse, at dusk", model="tiny", quant="none", seed=1234,
                                steps=2, guidance=4.5, width=128, height=96, loras=[(str(odd), 0.8), (str(plain), 1)])
    result = engine.generate(request)
    out = result.save(tmp_path_factory.mktemp("out") / "made.png")
    with Image.open(out) as image:
        text = image.text["parameters"]
    return out, text, result, (odd, plain)


def test_sd_parsers_reads_every_field_of_our_png(made):
    out, text, result, (odd, plain) = made
    info = ParserManager().parse(out)
    assert info is not None and info.generator.name == "AUTOMATIC1111", text
    (sampler,) = info.samplers
    prompt, tags = infotext.lora_tags(str(sampler.prompts[0]))
    assert prompt == "a lighthouse, at dusk"
    assert tags == [("grain_ v2_x_y_z", 0.8), (plain.stem, 1.0)]  # the LoRAs, by alias and strength
    assert sampler.negative_prompts == [] and info.full_negative_prompt == ""  # FLUX takes none: none is written
    assert sampler.name == "Euler"
    assert sampler.parameters == {"cfg_scale": "1", "seed": "1234", "steps": "2", "scheduler": "Simple"}
    assert sampler.model.name == "tiny"
    meta = info.metadata
    assert meta["Size"] == "128x96" and meta["Distilled CFG Scale"] == "4.5" and meta["Tool"] == "dev"
    assert meta["Quantization"] == infotext._compact(result.metadata()["quantization_summary"])
    junk = set(meta) - {"Size", "Distilled CFG Scale", "Tool", "Quantization", "Lora hashes"}
    # sd-parsers splits every value at commas and colons: A1111's own "Lora hashes" list ("a: h1, b: h2") is the
    # one value that it cuts up (into a key named after the second LoRA); every other value reads back whole.
    assert junk <= {plain.stem}, junk


def test_a1111s_parser_reads_every_field_of_our_png(made):
    out, text, result, (odd, plain) = made
    fields = a1111_parse(text)
    autov3 = [check_lora(path).autov3[:12] for path in (odd, plain)]
    assert fields["Prompt"] == f"a lighthouse, at dusk <lora:grain_ v2_x_y_z:0.8> <lora:{plain.stem}:1>"
    assert fields["Negative prompt"] == ""
    assert {k: fields[k] for k in ("Steps", "Sampler", "Schedule type", "CFG scale", "Distilled CFG Scale", "Seed",
                                   "Size-1", "Size-2", "Model", "Tool")} == {
        "Steps": "2", "Sampler": "Euler", "Schedule type": "Simple", "CFG scale": "1", "Distilled CFG Scale": "4.5",
        "Seed": "1234", "Size-1": "128", "Size-2": "96", "Model": "tiny", "Tool": "dev"}
    assert fields["Lora hashes"] == f"grain_ v2_x_y_z: {autov3[0]}, {plain.stem}: {autov3[1]}"
    assert infotext.lora_hashes(fields["Lora hashes"]) == {"grain_ v2_x_y_z": autov3[0], plain.stem: autov3[1]}
    assert "transformer none bf16" in fields["Quantization"].split("; ")
    assert "Model hash" not in fields  # a model folder has no one file to hash; a single-file transformer has
    assert json.loads(Image.open(out).text["fluxforge"])["loras"][0]["autov3"] == check_lora(odd).autov3


def test_model_hash_and_denoising_strength_read_back(tmp_path):
    from pipelines.images import save_png

    meta = {"prompt": "a boat", "steps": 8, "guidance": 3.5, "seed": 7, "width": 64, "height": 64, "model": "flux-dev",
            "model_hash": "0123456789", "strength": 0.6, "tool": "dev", "loras": [],
            "quantization_summary": "transformer: quanto int4, vae: none bf16"}
    path = save_png(Image.new("RGB", (64, 64), (200, 10, 10)), tmp_path / "boat.png", meta)
    info = ParserManager().parse(path)
    (sampler,) = info.samplers
    assert (sampler.model.name, sampler.model.hash) == ("flux-dev", "0123456789")
    assert info.metadata["Denoising strength"] == "0.6"
    assert info.metadata["Quantization"] == "transformer quanto int4; vae none bf16"
    fields = a1111_parse(Image.open(path).text["parameters"])
    assert (fields["Model hash"], fields["Denoising strength"], fields["Steps"]) == ("0123456789", "0.6", "8")


def test_the_hires_fix_reads_back_as_a1111_writes_it(tmp_path):
    from pipelines.images import save_png

    hires = {"scale": 2.0, "upscaler": "4x-UltraSharp, v2:final.pth", "strength": 0.35, "steps": 12,
             "first_pass": {"size": [512, 384]}, "second_pass": {"size": [1024, 768]}}
    meta = {"prompt": "a tower", "steps": 20, "guidance": 3.5, "seed": 3, "width": 1024, "height": 768, "model": "tiny",
            "strength": 0.35, "tool": "dev", "loras": [], "hires": hires}
    path = save_png(Image.new("RGB", (64, 64), (20, 90, 10)), tmp_path / "tower.png", meta)
    text = Image.open(path).text["parameters"]
    fields = a1111_parse(text)
    assert {k: fields[k] for k in ("Size-1", "Size-2", "Steps", "Denoising strength", "Hires upscale",
                                   "Hires upscaler", "Hires steps")} == {
        "Size-1": "1024", "Size-2": "768", "Steps": "20", "Denoising strength": "0.35", "Hires upscale": "2",
        "Hires upscaler": "4x-UltraSharp; v2 final.pth", "Hires steps": "12"}
    info = ParserManager().parse(path)
    assert {k: info.metadata[k] for k in ("Hires upscale", "Hires upscaler", "Hires steps", "Denoising strength")} == {
        "Hires upscale": "2", "Hires upscaler": "4x-UltraSharp; v2 final.pth", "Hires steps": "12",
        "Denoising strength": "0.35"}
