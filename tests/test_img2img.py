"""Image to image on Schnell and Dev: FluxImg2ImgPipeline on the loaded components, a strength, and every run option."""

import gc

import numpy as np
import pytest
from PIL import Image

import cli
from pipelines.engine import Engine
from pipelines.errors import UserError
from pipelines.images import read_metadata
from pipelines.loras.tiny import tiny_lora
from pipelines.manager import ModelManager
from pipelines.request import GenerationRequest
from pipelines.tools.text_to_image import steps_at_strength

BOAT = "assets/example-boat.png"


@pytest.fixture(scope="module")
def engine(tiny_root):
    return Engine(ModelManager(device="cpu"))


def run(engine, **fields):
    values = dict(tool="dev", prompt="a boat at sea", model="tiny", quant="none", seed=4, steps=4, width=128,
                  height=128)
    return engine.generate(GenerationRequest(**{**values, **fields}))


def distance(a: Image.Image, b: Image.Image) -> float:
    theirs = np.asarray(b.convert("RGB").resize(a.size), float)
    return float(np.abs(np.asarray(a.convert("RGB"), float) - theirs).mean())


@pytest.mark.parametrize("steps, strength, expected", [(4, 1.0, 4), (4, 0.5, 2), (28, 0.6, 17), (10, 0.01, 1),
                                                       (1, 0.3, 1)])
def test_steps_run_at_a_strength_follow_diffusers_rule(steps, strength, expected):
    assert steps_at_strength(steps, strength) == expected


def test_image_to_image_shares_the_loaded_transformer_and_follows_the_strength(engine):
    plain = run(engine)
    transformers = [o for o in gc.get_objects() if type(o).__name__ == "FluxTransformer2DModel"]
    low = run(engine, image=BOAT, strength=0.25)
    high = run(engine, image=BOAT, strength=1.0)
    assert [o for o in gc.get_objects() if type(o).__name__ == "FluxTransformer2DModel"] == transformers
    assert {next(t.parameters()).dtype for t in transformers} == {engine.manager.dtype}  # nothing was cast
    boat = Image.open(BOAT)
    assert distance(low.image, boat) < distance(high.image, boat)  # less strength keeps more of the input
    assert distance(plain.image, low.image) > 0
    assert low.report["parameters"]["strength"] == 0.25 and low.report["image_to_image"] == {
        "strength": 0.25, "steps_run": 1}
    assert plain.report["parameters"]["strength"] is None and "image_to_image" not in plain.report


def test_quantized_with_a_lora_previewed_and_default_strength(engine, tiny_root):
    seen = []
    result = engine.generate(GenerationRequest(tool="schnell", prompt="a boat", model="tiny", quant="8bit", seed=2,
                                               steps=4, image=BOAT, loras=[(str(tiny_lora("diffusers")), 0.8)]),
                             preview=lambda image, step, steps: seen.append((step, steps)), preview_every=1)
    assert result.report["parameters"]["strength"] == 0.6
    assert result.report["quantization"]["components"]["transformer"]["backend"] != "none"
    assert seen == [(1, 3), (2, 3), (3, 3)]  # 3 of 4 steps run at 0.6
    assert result.image.size == (128, 128)  # the square boat scaled down to the tiny area


@pytest.mark.parametrize("fields, message", [
    (dict(strength=0.5), "strength=0.5 is for image to image: give an input image"),
    (dict(image=BOAT, strength=0), "strength=0 is out of range; use 0.01..1"),
    (dict(image=BOAT, strength=1.5), "strength=1.5 is out of range"),
    (dict(tool="fill", image=BOAT, mask=BOAT, strength=0.5), "strength is only used by image to image"),
])
def test_a_bad_strength_is_refused_naming_it(tiny_root, fields, message):
    values = {**dict(tool="dev", prompt="a boat", model="tiny"), **fields}
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        GenerationRequest(**values)


def test_cli_image_to_image_batched_and_recorded(tiny_root, tmp_path, capsys):
    out = tmp_path / "boat.png"
    assert cli.main(["generate", "--tool", "dev", "--prompt", "a boat at dusk", "--model", "tiny", "--quant", "none",
                     "--image", BOAT, "--strength", "0.6", "--steps", "5", "--seed", "3", "--count", "2",
                     "--out", str(out)]) == 0, capsys.readouterr().err
    metas = [read_metadata(tmp_path / f"boat-{k}.png") for k in (1, 2)]
    assert [m["strength"] for m in metas] == [0.6, 0.6] and [m["seed"] for m in metas] == [3, 4]
    assert metas[0]["inputs"]["image"]["name"] == "example-boat.png"
    with Image.open(tmp_path / "boat-1.png") as image:
        assert "Denoising strength: 0.6" in image.text["parameters"]


def test_cli_strength_without_an_image_is_one_line_exit_2(tiny_root, tmp_path, capsys):
    assert cli.main(["generate", "--tool", "schnell", "--prompt", "x", "--model", "tiny", "--strength", "0.5",
                     "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "strength=0.5 is for image to image" in err
