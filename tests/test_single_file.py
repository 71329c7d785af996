"""Single-file FLUX.1 transformers: safetensors in bf16, fp8 (plain or with scales) or under ComfyUI's prefix, and GGUF,
each read from its tensor table, checked against the tool's model, loaded through diffusers' from_single_file, and run at
the quantization asked for; anything else is refused in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.engine import Engine
from pipelines.errors import UserError
from pipelines.manager import ModelManager
from pipelines.models import single_file
from pipelines.request import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]


def run(engine, file, quant="none", tool="dev"):
    return engine.generate(GenerationRequest(tool=tool, prompt="a fox", model="tiny", transformer=str(file), quant=quant,
                                             seed=3, steps=2))


@pytest.fixture(scope="module")
def engine(tiny_root):
    return Engine(ModelManager(device="cpu"))


def transformer_of(engine):
    return next(p for key, p in engine.manager._pipelines.items() if any("transformer=" in str(k) for k in key)).pipe


def test_a_bf16_file_gives_the_models_own_image(engine, tiny_transformer_files):
    own = engine.generate(GenerationRequest(tool="dev", prompt="a fox", model="tiny", quant="none", seed=3, steps=2))
    result = run(engine, tiny_transformer_files["bf16"])
    assert (torch.tensor(list(result.image.getdata())) == torch.tensor(list(own.image.getdata()))).all()
    file = result.report["transformer_file"]
    assert (file["container"], file["layout"], file["weights"], file["loaded_as"]) == \
        ("safetensors", "diffusers", "bf16", "bfloat16")
    assert file["path"] == "dev-bf16.safetensors"  # the name only, never a local path
    assert "Transformer from dev-bf16.safetensors: bf16 weights, loaded as bfloat16." in result.notices


@pytest.mark.parametrize("name, weights, scaled", [("fp8", "fp8_e4m3", False), ("fp8_scaled", "fp8_e4m3", True),
                                                   ("prefixed", "bf16", False)])
def test_fp8_and_prefixed_files_load_as_the_run_dtype_then_quantize_as_asked(engine, tiny_root,
                                                                             tiny_transformer_files, name, weights,
                                                                             scaled):
    from diffusers import FluxTransformer2DModel

    result = run(engine, tiny_transformer_files[name], quant="8bit")
    file = result.report["transformer_file"]
    component = result.report["quantization"]["components"]["transformer"]
    assert (file["weights"], file["scaled"], component["quantized_layers"] > 0) == (weights, scaled, True)
    assert f"then quantized: {component['backend']} {component['format']}" in file["summary"]
    if weights == "fp8_e4m3":
        assert "upcast to bfloat16" in file["summary"]
    # What loaded is the file's weights, upcast: within fp8's rounding of the original (bf16: the same weights).
    loaded = single_file.load(single_file.inspect(tiny_transformer_files[name]), FluxTransformer2DModel,
                              tiny_root / "dev", torch.bfloat16)
    own = FluxTransformer2DModel.from_pretrained(tiny_root / "dev", subfolder="transformer", dtype=torch.bfloat16)
    for (key, got), want in zip(loaded.state_dict().items(), own.state_dict().values()):
        assert got.dtype == torch.bfloat16
        tolerance = 0.07 * want.float().abs().max() if weights.startswith("fp8") and got.dim() == 2 else 0
        assert (got.float() - want.float()).abs().max() <= tolerance, key


def test_a_gguf_file_is_used_as_it_is(engine, tiny_transformer_files):
    result = run(engine, tiny_transformer_files["gguf"], quant="4bit")
    component = result.report["quantization"]["components"]["transformer"]
    assert (component["backend"], component["format"], component["prequantized"]) == ("gguf", "Q8_0", True)
    assert "GGUF Q8_0, used as it is" in result.report["transformer_file"]["summary"]


def test_a_quantized_file_is_cached_by_its_content(tiny_root, tiny_transformer_files, tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXFORGE_QUANT_CACHE_DIR", str(tmp_path / "quantized"))
    first = run(Engine(ModelManager(device="cpu")), tiny_transformer_files["fp8"], quant="8bit")
    again = run(Engine(ModelManager(device="cpu")), tiny_transformer_files["fp8"], quant="8bit")
    assert not first.report["quantization"]["components"]["transformer"]["from_cache"]
    assert again.report["quantization"]["components"]["transformer"]["from_cache"]


def real_dev_table(prefix: str = "") -> dict:
    """FLUX.1-dev's tensor table in BFL's names (shapes only, as its safetensors header lists them)."""
    table = {f"{prefix}img_in.weight": ("BF16", (3072, 64)), f"{prefix}guidance_in.in_layer.weight": ("BF16", (3072, 256)),
             f"{prefix}txt_in.weight": ("BF16", (3072, 4096))}
    table.update({f"{prefix}double_blocks.{i}.img_attn.qkv.weight": ("BF16", (9216, 3072)) for i in range(19)})
    table.update({f"{prefix}single_blocks.{i}.linear1.weight": ("BF16", (21504, 3072)) for i in range(38)})
    return table


def test_bfl_and_comfyui_tables_read_as_flux1_transformers():
    for prefix in ("", "model.diffusion_model."):
        file = single_file.classify(Path("flux1-krea-dev.safetensors"), real_dev_table(prefix))
        assert (file.layout, file.in_channels, file.hidden, file.double_blocks, file.single_blocks, file.guidance,
                file.weights) == ("bfl", 64, 3072, 19, 38, True, "bf16")
    schnell = {k: v for k, v in real_dev_table().items() if not k.startswith("guidance_in")}
    assert not single_file.classify(Path("schnell.safetensors"), schnell).guidance


@pytest.mark.parametrize("table, message", [
    ({"model.diffusion_model.input_blocks.0.0.weight": ("F16", (320, 4, 3, 3))}, "is not a FLUX transformer"),
    ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": ("BF16", (16, 3072))}, "or a LoRA"),
])
def test_other_files_are_refused_in_one_line(table, message):
    with pytest.raises(UserError, match=message) as caught:
        single_file.classify(Path("x.safetensors"), table)
    assert "\n" not in str(caught.value) and "x.safetensors" in str(caught.value)


def test_a_file_of_another_kind_or_size_is_refused_before_loading(tiny_root, tiny_transformer_files):
    with pytest.raises(UserError, match=r"fill-bf16.safetensors' is a FLUX.1 transformer \(Fill: 384 input channels.*"
                                        r"the dev tool needs a FluxPipeline \(64-channel"):
        GenerationRequest(tool="dev", prompt="a fox", model="tiny", transformer=str(tiny_transformer_files["fill"]))
    big = single_file.classify(Path("flux1-dev.safetensors"), real_dev_table())
    with pytest.raises(UserError, match=r"does not fit the dev tool's model: width 3072 \(the model has 64\); blocks "
                                        r"\(19, 38\) \(the model has \(1, 2\)\)"):
        single_file.check_fits(big, tiny_root / "dev", "dev")
    for bad in ("notes.txt", "missing.safetensors"):
        with pytest.raises(UserError, match="transformer="):
            GenerationRequest(tool="dev", prompt="a fox", model="tiny", transformer=bad)


def test_the_cli_runs_a_safetensors_transformer_and_refuses_a_damaged_one(tiny_transformer_files, tmp_path):
    out = tmp_path / "fox.png"
    proc = subprocess.run([sys.executable, "app.py", "generate", "--tool", "dev", "--prompt", "a fox", "--model",
                           "tiny", "--transformer", str(tiny_transformer_files["fp8"]), "--quant", "none", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Transformer from dev-fp8.safetensors: fp8_e4m3 weights, upcast to bfloat16" in proc.stderr
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    proc = subprocess.run([sys.executable, "app.py", "generate", "--tool", "dev", "--prompt", "a fox", "--model",
                           "tiny", "--transformer", str(damaged), "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "damaged.safetensors" in proc.stderr and "not a readable safetensors file" in proc.stderr
