"""Depth and Canny as control LoRAs on the Dev transformer already in memory: one transformer held, the Dev model
back to its own shape and outputs after each control run, the control LoRA recorded; bad files are one line."""

import hashlib
import json

import numpy as np
import pytest
import torch

import cli
from pipelines.engine import Engine
from pipelines.errors import UserError
from pipelines.images import read_metadata
from pipelines.manager import ModelManager
from pipelines.request import GenerationRequest
from pipelines.loras.tiny import tiny_control_lora as control_lora_of
from pipelines.loras.tiny import tiny_lora
from pipelines.tools import get_tool
from quantization.config import BitsAndBytesConfig, QuantoConfig, TorchAoConfig
from tests.conftest import force_chain, make_photo


def tiny_control_lora(tool: str, **options):
    return control_lora_of(get_tool(tool), **options)


@pytest.fixture
def engine(tiny_root):
    return Engine(ModelManager(device="cpu"))


def generate(engine, tool="dev", quant="none", prompt="a glass house", **fields):
    if tool != "dev":
        fields.setdefault("image", make_photo())
    request = GenerationRequest(tool=tool, prompt=prompt, model="tiny", quant=quant, seed=5, steps=2, **fields)
    return engine.generate(request)


def pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(np.int16)


def transformers_held(manager) -> list[dict]:
    return [row for row in manager.status() if row["component"] == "transformer"]


def test_generate_depth_canny_share_the_dev_transformer_and_dev_comes_back_bit_for_bit(engine):
    before = generate(engine)
    (loaded,) = engine.manager._pipelines.values()
    transformer = loaded.pipe.transformer
    embedder, norms = transformer.x_embedder, {k: v.clone() for k, v in transformer.state_dict().items()}
    depth = generate(engine, "depth", control="lora")
    canny = generate(engine, "canny", control="lora")
    for result in (depth, canny):
        assert pixels(result).std() > 1 and result.control_image is not None
        assert result.report["timings"]["load_s"] == 0.0  # nothing loaded for it
    (held,) = transformers_held(engine.manager)  # one transformer: the Dev one
    assert held["used_by"] == ["dev (none)"]
    assert list(engine.manager._pipelines) == [loaded.key]
    assert {row["component"] for row in engine.manager.status()} == set(loaded.components)
    assert loaded.pipe.transformer is transformer and transformer.x_embedder is embedder
    assert transformer.config.in_channels == 64 and not getattr(transformer, "peft_config", None)
    assert all(torch.equal(v, norms[k]) for k, v in transformer.state_dict().items())
    assert np.array_equal(pixels(generate(engine)), pixels(before))


def test_the_control_map_steers_the_lora_run(engine):
    flat = make_photo().resize((128, 96))
    one = generate(engine, "canny", control="lora", control_image=flat)
    other = generate(engine, "canny", control="lora", control_image=flat.transpose(0))
    assert np.abs(pixels(one) - pixels(other)).max() > 0
    assert np.array_equal(pixels(generate(engine, "canny", control="lora", control_image=flat)), pixels(one))


def test_lora_form_holds_one_transformer_the_model_form_two(engine):
    generate(engine)
    generate(engine, "depth")  # the full FLUX.1-Depth-dev model: a second transformer
    assert len(transformers_held(engine.manager)) == 2
    lean = Engine(ModelManager(device="cpu"))
    generate(lean)
    generate(lean, "depth", control="lora")
    assert len(transformers_held(lean.manager)) == 1


def test_the_report_and_png_record_the_control_lora(engine, tmp_path):
    request = GenerationRequest(tool="depth", prompt="a glass house", model="tiny", quant="none", seed=5, steps=2,
                                image=make_photo(), control="lora")
    result = engine.generate(request)
    assert request.control_lora is None  # the tool's own file is used, not written back into the request
    path = tiny_control_lora("depth")
    data = path.read_bytes()
    tensors = data[8 + int.from_bytes(data[:8], "little"):]  # AutoV3: the tensor data after the safetensors header
    expected = {"name": path.stem, "sha256": hashlib.sha256(data).hexdigest(),
                "autov3": hashlib.sha256(tensors).hexdigest(), "strength": 1.0}
    assert result.report["parameters"]["control"] == "lora"
    assert result.report["parameters"]["control_lora"] == expected
    assert read_metadata(result.save(tmp_path / "d.png"))["control_lora"] == expected
    assert generate(engine, "depth").report["parameters"]["control_lora"] is None  # the model form has none


def test_a_lora_on_top_of_the_control_lora_then_dev_keeps_its_own(engine):
    style = tiny_lora("diffusers")
    dev_styled = pixels(generate(engine, loras=[(str(style), 1.0)]))
    plain = pixels(generate(engine, "depth", control="lora"))
    styled = generate(engine, "depth", control="lora", loras=[(str(style), 0.8)])
    assert np.abs(pixels(styled) - plain).max() > 0
    assert np.array_equal(pixels(generate(engine, loras=[(str(style), 1.0)])), dev_styled)


CONFIGS = [("8bit", QuantoConfig("int8")), ("4bit", BitsAndBytesConfig("nf4")),
           ("8bit", TorchAoConfig("int8_weight_only"))]


@pytest.mark.parametrize("quant,config", CONFIGS, ids=lambda v: getattr(v, "format", v))
def test_a_quantized_dev_transformer_takes_the_control_lora_and_stays_as_it_was(tiny_root, monkeypatch, tmp_path,
                                                                               quant, config):
    force_chain(monkeypatch, tmp_path, config)
    engine = Engine(ModelManager(device="cpu"))
    before = generate(engine, quant=quant)
    (loaded,) = engine.manager._pipelines.values()
    modules = dict(loaded.pipe.transformer.named_modules())
    depth = generate(engine, "depth", quant=quant, control="lora")
    assert pixels(depth).std() > 1
    assert depth.report["quantization"]["components"]["transformer"]["format"] == config.format
    assert dict(loaded.pipe.transformer.named_modules()) == modules  # the very same (quantized) layers
    assert len(transformers_held(engine.manager)) == 1
    assert np.array_equal(pixels(generate(engine, quant=quant)), pixels(before))


# ---- bad input ---------------------------------------------------------------------------------------------------
def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_control_lora_of_the_wrong_width_is_one_line_and_dev_is_untouched(engine):
    before = pixels(generate(engine))
    wrong = tiny_control_lora("depth", width=192)
    with pytest.raises(UserError) as error:
        generate(engine, "depth", control_lora=str(wrong))
    text = one_line(error)
    assert text.startswith("control_lora=") and wrong.stem in text and "192" in text and "128" in text
    with pytest.raises(UserError) as error:
        generate(engine, "canny", control_lora=str(tiny_lora("diffusers")))
    assert "not a control LoRA" in one_line(error)
    assert np.array_equal(pixels(generate(engine)), before)


def test_control_lora_choices_are_checked(tiny_root):
    with pytest.raises(UserError, match="only for the depth and canny tools"):
        GenerationRequest(tool="dev", prompt="x", control="lora")
    with pytest.raises(UserError, match="control='sketch' is unknown"):
        GenerationRequest(tool="depth", prompt="x", image=make_photo(), control="sketch")
    with pytest.raises(UserError, match="no such file"):
        GenerationRequest(tool="depth", prompt="x", image=make_photo(), control_lora="missing.safetensors")
    assert GenerationRequest(tool="depth", prompt="x", image=make_photo(),
                             control_lora=str(tiny_control_lora("depth"))).control == "lora"


def test_a_control_lora_given_as_a_plain_lora_names_the_option(engine):
    with pytest.raises(UserError) as error:
        generate(engine, loras=[(str(tiny_control_lora("canny")), 1.0)])
    assert "--control lora" in one_line(error)


# ---- the command line --------------------------------------------------------------------------------------------
def test_cli_control_lora(tiny_root, tmp_path, capsys):
    photo, out, report = tmp_path / "photo.png", tmp_path / "canny.png", tmp_path / "canny.json"
    make_photo().save(photo)
    code = cli.main(["generate", "--tool", "canny", "--prompt", "a glass house", "--model", "tiny", "--quant", "none",
                     "--image", str(photo), "--control", "lora", "--seed", "1", "--steps", "2", "--out", str(out),
                     "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    recorded = json.loads(report.read_text())["parameters"]
    assert recorded["control"] == "lora" and recorded["control_lora"]["name"] == "tiny-control-canny"
    assert read_metadata(out)["control_lora"] == recorded["control_lora"]


def test_cli_bad_control_lora_is_one_line_exit_2(tiny_root, tmp_path, capsys):
    photo, out = tmp_path / "photo.png", tmp_path / "x.png"
    make_photo().save(photo)
    code = cli.main(["generate", "--tool", "depth", "--prompt", "x", "--model", "tiny", "--image", str(photo),
                     "--control-lora", str(tiny_control_lora("depth", width=96)), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    errors = [line for line in err.splitlines() if line != "load..."]  # the progress line, then the error
    assert len(errors) == 1 and "control_lora=" in errors[0] and "96" in errors[0]
