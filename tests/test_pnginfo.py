"""PNG info: the parameters of our PNGs and of A1111's, Forge's, ComfyUI's and InvokeAI's, and what restores."""

import json
import shutil

import pytest
from PIL import Image, PngImagePlugin

import cli
from pipelines.loras import check_lora
from pipelines.loras.tiny import tiny_lora
from pipelines.pnginfo import read_png_info

A1111 = ("a castle on a hill, golden hour <lora:film grain:0.8>\nNegative prompt: blurry, lowres\n"
         "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 965400086, Size: 512x768, "
         'Model hash: 45dee52b, Model: sd15, Lora hashes: "film grain: 0123456789ab", Version: v1.10.1')
FORGE = ("a cat in a spacesuit\nSteps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: "
         "3.5, Seed: 42, Size: 896x1152, Model hash: 275ef623d3, Model: flux1-schnell-bnb-nf4, "
         "Version: f2.0.1v1.10.1-previous-313-g8a042934, Module 1: ae")
COMFYUI = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-dev-fp8.safetensors"}},
    "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "style/inked.safetensors", "strength_model": 0.7,
                                                  "strength_clip": 1, "model": ["4", 0], "clip": ["4", 1]}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox, snow", "clip": ["10", 1]}},
    "35": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.0, "conditioning": ["6", 0]}},
    "33": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["10", 1]}},
    "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 1}},
    "31": {"class_type": "KSampler", "inputs": {"seed": 972054013131368, "steps": 20, "cfg": 1,
                                                "sampler_name": "euler", "scheduler": "simple", "denoise": 1,
                                                "model": ["10", 0], "positive": ["35", 0], "negative": ["33", 0],
                                                "latent_image": ["27", 0]}}}
INVOKEAI = {"generation_mode": "flux_txt2img", "positive_prompt": "a lighthouse in fog", "seed": 77, "steps": 12,
            "guidance": 4, "width": 768, "height": 512, "scheduler": "euler",
            "model": {"name": "FLUX Dev (Quantized)", "base": "flux"},
            "loras": [{"model": {"name": "tiny-kohya-0", "base": "flux"}, "weight": 0.5}]}


def png_with(path, **chunks):
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    Image.new("RGB", (64, 64), (30, 60, 90)).save(path, pnginfo=info)
    return path


@pytest.fixture
def lora_folder(tiny_root, tmp_path, monkeypatch):
    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(tiny_lora("kohya"), folder / "tiny-kohya-0.safetensors")
    monkeypatch.setenv("FLUXFORGE_LORA_DIR", str(folder))
    return folder


def test_an_a1111_png_reads_with_what_cannot_be_restored_named(tmp_path, lora_folder):
    info = read_png_info(png_with(tmp_path / "a1111.png", parameters=A1111))
    assert info.source == "A1111 or Forge"
    assert info.fields["prompt"] == "a castle on a hill, golden hour"
    assert info.fields["negative prompt"] == "blurry, lowres"
    assert info.fields["Sampler"] == "DPM++ 2M" and info.fields["Model hash"] == "45dee52b"
    assert info.fields["loras"] == [{"name": "film grain", "strength": 0.8, "autov3": "0123456789ab"}]
    # no FLUX guidance and no tool in the model's name: the first text-to-image tool
    assert info.restore == {"tool": "schnell", "prompt": "a castle on a hill, golden hour", "seed": 965400086,
                            "steps": 30, "width": 512, "height": 768, "loras": []}
    notes = "\n".join(info.not_restored)
    for named in ("negative prompt", "CFG scale 7", "sampler DPM++ 2M", "model sd15", "LoRA film grain"):
        assert named in notes, notes


def test_a_forge_flux_png_restores_into_the_tool_its_model_names(tmp_path, lora_folder):
    info = read_png_info(png_with(tmp_path / "forge.png", parameters=FORGE))
    assert info.source == "Forge"
    assert info.restore == {"tool": "schnell", "prompt": "a cat in a spacesuit", "seed": 42, "steps": 20,
                            "guidance": 3.5, "width": 896, "height": 1152}
    assert info.not_restored == ["model flux1-schnell-bnb-nf4: pick it in the tab (the schnell tab's model is kept)"]


def test_a_comfyui_png_is_read_from_its_graph(tmp_path, lora_folder):
    info = read_png_info(png_with(tmp_path / "comfy.png", prompt=COMFYUI, workflow={"nodes": []}))
    assert info.source == "ComfyUI"
    assert info.restore == {"tool": "dev", "prompt": "a red fox, snow", "seed": 972054013131368, "steps": 20,
                            "guidance": 3.0, "width": 1024, "height": 768, "loras": []}
    assert info.fields["model"] == "flux1-dev-fp8.safetensors" and info.fields["sampler"] == "euler"
    assert "LoRA inked: not in the LoRA folder" in info.not_restored


def test_an_invokeai_png_finds_its_lora_in_the_folder(tmp_path, lora_folder):
    info = read_png_info(png_with(tmp_path / "invoke.png", invokeai_metadata=INVOKEAI))
    assert info.source == "InvokeAI"
    assert info.restore["loras"] == [{"name": "tiny-kohya-0", "file": "tiny-kohya-0.safetensors", "strength": 0.5}]
    assert (info.restore["prompt"], info.restore["seed"], info.restore["guidance"]) == ("a lighthouse in fog", 77, 4.0)


def test_a_lora_renamed_in_the_folder_is_found_by_its_autov3_hash(tmp_path, lora_folder):
    autov3 = check_lora(lora_folder / "tiny-kohya-0.safetensors").autov3[:12]
    text = FORGE.replace("a cat in a spacesuit", "a cat <lora:old name:0.6>") + f', Lora hashes: "old name: {autov3}"'
    info = read_png_info(png_with(tmp_path / "renamed.png", parameters=text))
    assert info.restore["loras"] == [{"name": "tiny-kohya-0", "file": "tiny-kohya-0.safetensors", "strength": 0.6}]


def test_a_png_without_parameters_says_so(tmp_path, capsys):
    path = png_with(tmp_path / "plain.png")
    assert cli.main(["info", str(path)]) == 0
    assert "no generation parameters" in capsys.readouterr().out


def test_cli_info_of_our_png_restores_every_field(tmp_path, lora_folder, capsys):
    out = tmp_path / "ours.png"
    lora = lora_folder / "tiny-kohya-0.safetensors"
    assert cli.main(["generate", "--tool", "dev", "--prompt", "a red cube", "--model", "tiny", "--quant", "none",
                     "--seed", "9", "--steps", "2", "--guidance", "5", "--width", "128", "--height", "96",
                     "--lora", f"{lora}:0.7", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["info", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "FluxForge Studio" and data["not_restored"] == []
    assert data["restore"] == {"tool": "dev", "prompt": "a red cube", "seed": 9, "steps": 2, "guidance": 5.0,
                               "width": 128, "height": 96, "quant": "none",
                               "loras": [{"name": "tiny-kohya-0", "file": "tiny-kohya-0.safetensors",
                                          "strength": 0.7}]}
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ours.png: made by FluxForge Studio") and "seed=9" in text


def test_cli_info_of_a_file_that_is_not_an_image_is_one_line_exit_2(tmp_path, capsys):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    assert cli.main(["info", str(fake)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.png" in err and str(tmp_path) not in err
