"""FLUX.2 [klein]: its tools run end to end on the tiny family under every quant choice, with the report naming each
component's backend; references are taken natively and recorded; its official sizes and plan are known offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.families import FLUX1, FLUX2, family_in
from pipelines.request import GenerationRequest
from pipelines.tools import all_tools, get_tool
from quantization.policy import candidates

KLEIN_TOOLS = [tool.name for tool in all_tools() if tool.family is FLUX2]


def flux2_tool_inputs(tool, photo, mask):
    return {"image": photo, "mask": mask} if "mask" in get_tool(tool).inputs else {}


def test_the_klein_tools_are_flux2_and_the_rest_flux1():
    assert len(KLEIN_TOOLS) == 2
    assert all(tool.family is FLUX1 for tool in all_tools() if tool.name not in KLEIN_TOOLS)
    assert FLUX2.quantized == ("transformer", "text_encoder") and FLUX1.quantized == ("transformer", "text_encoder_2")


@pytest.mark.parametrize("mode", ["none", "8bit", "4bit"])
@pytest.mark.parametrize("tool", KLEIN_TOOLS)
def test_klein_tool_runs_end_to_end_and_names_each_components_backend(studio, photo, mask, tool, mode):
    request = GenerationRequest(tool=tool, prompt="a lighthouse at dusk", model="tiny", quant=mode, seed=7,
                                **flux2_tool_inputs(tool, photo, mask))
    result = studio.generate(request)
    pixels = np.asarray(result.image, dtype=np.float32)
    assert np.isfinite(pixels).all() and pixels.std() > 1.0
    params = result.report["parameters"]
    assert result.image.size == (params["width"], params["height"])
    quant = result.report["quantization"]
    assert quant["resolved"] == mode and quant["fallbacks"] == []
    expected = candidates(mode, "cpu")[0]
    assert set(quant["components"]) == {"transformer", "text_encoder", "vae"}
    for name in ("transformer", "text_encoder"):  # klein's transformer and its Qwen3 text encoder
        component = quant["components"][name]
        assert (component["backend"], component["format"]) == (expected.backend, expected.format)
        if mode != "none":
            assert component["quantized_layers"] > 0 and component["bytes_after"] < 0.8 * component["bytes_before"]
    assert quant["components"]["vae"]["backend"] == "none"
    assert result.report["tool"] == tool


def test_klein_edits_with_up_to_four_references_and_records_each(studio, photo):
    images = [photo, photo.resize((64, 64)), photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.rotate(90)]
    result = studio.generate(GenerationRequest(tool="klein", prompt="make it blue", model="tiny", quant="none",
                                               seed=3, image=images))
    inputs = result.report["parameters"]["inputs"]
    assert list(inputs) == ["image", "image_2", "image_3", "image_4"]
    assert len({entry["sha256"] for entry in inputs.values()}) == 4
    assert all(len(entry["sha256"]) == 64 for entry in inputs.values())
    conditioning = result.metadata()["conditioning"]
    assert conditioning["method"] == "references" and conditioning["inputs"] == list(inputs)
    assert result.image.size == photo.size  # the first reference's size when none is asked for


def test_klein_refuses_a_fifth_reference(photo):
    from pipelines.errors import UserError

    with pytest.raises(UserError, match="at most 4"):
        GenerationRequest(tool="klein", prompt="x", model="tiny", image=[photo] * 5)


def test_klein_inpaint_needs_a_mask(photo):
    from pipelines.errors import UserError

    with pytest.raises(UserError, match="--mask"):
        GenerationRequest(tool="klein_inpaint", prompt="x", model="tiny", image=photo)


def test_klein_tools_share_the_text_encoder_and_vae(fresh_studio, photo, mask):
    """The distilled and base tiny klein models hold byte-identical Qwen3 and VAE weights: loaded once."""
    fresh_studio.generate(GenerationRequest(tool="klein", prompt="x", model="tiny", quant="8bit", seed=1))
    fresh_studio.generate(GenerationRequest(tool="klein_inpaint", prompt="x", model="tiny", quant="8bit", seed=1,
                                            image=photo, mask=mask))
    pipes = list(fresh_studio.manager._pipelines.values())
    assert len(pipes) == 2
    distilled, base = (p.pipe for p in pipes)
    assert distilled.text_encoder is base.text_encoder and distilled.vae is base.vae
    assert distilled.transformer is not base.transformer
    encoders = [row for row in fresh_studio.manager.status() if row["component"] == "text_encoder"]
    assert len(encoders) == 1 and len(encoders[0]["used_by"]) == 2


def test_tiny_klein_is_a_flux2_directory(tiny_root):
    from diffusers import Flux2KleinPipeline

    for tool in KLEIN_TOOLS:
        folder = tiny_root / get_tool(tool).tiny.folder
        assert family_in(folder) is FLUX2
        pipe = Flux2KleinPipeline.from_pretrained(folder)
        assert pipe.config.is_distilled == (tool == "klein")
        assert pipe.transformer.config.in_channels == 128 and pipe.vae.config.latent_channels == 32
        assert pipe.transformer.config.joint_attention_dim == 3 * pipe.text_encoder.config.hidden_size
        # torch's CPU int8 matmul needs in_features >= 16 in every Linear that is quantized
        for module in (pipe.transformer, pipe.text_encoder):
            assert min(m.in_features for m in module.modules() if isinstance(m, torch.nn.Linear)) >= 16
