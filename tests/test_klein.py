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


def build_klein_on_meta(config):
    """klein's transformer and Qwen3 text encoder built on the meta device from ``config`` (a KleinConfig)."""
    from diffusers import Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with torch.device("meta"):
        transformer = Flux2Transformer2DModel(
            in_channels=128, num_layers=config.double, num_single_layers=config.single,
            attention_head_dim=config.head_dim, num_attention_heads=config.heads,
            joint_attention_dim=config.joint_attention_dim, guidance_embeds=False)
        qwen = Qwen3ForCausalLM(Qwen3Config(
            vocab_size=config.vocab, hidden_size=config.text_width, intermediate_size=config.text_intermediate,
            num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
            num_key_value_heads=config.text_kv_heads, head_dim=config.head_dim, tie_word_embeddings=config.tied))
    return transformer, qwen


def _counts(module, blocks):
    """(params, largest tensor, largest block, all blocks) as the size table keeps them; parameters shared by tied
    weights are counted once."""
    sizes = [p.numel() for p in module.parameters()]
    block_sizes = [sum(p.numel() for p in block.parameters()) for block in blocks]
    return sum(sizes), max(sizes), max(block_sizes), sum(block_sizes)


def test_official_klein_sizes_match_their_configs_on_the_meta_device():
    """The table of official klein sizes (pipelines.models.official) is what the published configs build on the meta
    device: parameters, largest tensor, largest block and all blocks, for the 4B and 9B and their base models."""
    from diffusers import AutoencoderKLFlux2

    from pipelines.memory.sizes import official_sizes
    from pipelines.models.official import KLEIN_CONFIGS

    with torch.device("meta"):
        vae = AutoencoderKLFlux2()
    vae_params = [p.numel() for p in vae.parameters()]
    for size, config in KLEIN_CONFIGS.items():
        transformer, qwen = build_klein_on_meta(config)
        expected = {
            "transformer": _counts(transformer, [*transformer.transformer_blocks,
                                                 *transformer.single_transformer_blocks]),
            "text_encoder": _counts(qwen, qwen.model.layers),
            "vae": (sum(vae_params), max(vae_params), 0, 0),
        }
        assert transformer.config.num_layers == config.double and qwen.config.hidden_size == config.text_width
        for repo in (f"black-forest-labs/FLUX.2-klein-{size}", f"black-forest-labs/FLUX.2-klein-base-{size}"):
            sizes = official_sizes(repo)
            assert sizes.family == "flux2" and sizes.quantized == FLUX2.quantized
            table = {c.name: (c.params, c.largest, c.block, c.in_blocks) for c in sizes.components}
            assert table == expected, repo
            assert {c.name: c.stored_bytes for c in sizes.components} == {
                name: 2 * counts[0] for name, counts in expected.items() if name != "vae"} | {"vae": 168_092_230}
            assert sizes.hidden == config.hidden and sizes.text_dim == config.text_width


def test_the_9b_has_8_double_blocks_as_its_parameter_count_says():
    """klein 9B's published 9B parameters need 8 double blocks; 6 (as sometimes quoted) would give about 8.2B."""
    from dataclasses import replace

    from pipelines.models.official import KLEIN_CONFIGS

    nine = KLEIN_CONFIGS["9B"]
    assert (nine.double, nine.single, nine.hidden, nine.joint_attention_dim) == (8, 24, 4096, 12288)
    params = {double: sum(p.numel() for p in build_klein_on_meta(replace(nine, double=double))[0].parameters())
              for double in (6, 8)}
    assert round(params[8] / 1e9, 1) == 9.1 and round(params[6] / 1e9, 1) == 8.2


def test_plan_gives_the_official_4b_and_9b_offline(capsys, monkeypatch):
    import json

    import cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["plan", "--tool", "klein", "--size", "1024x1024", "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)
    assert [p["model"] for p in plans] == ["black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-9B"]
    four, nine = ({(e["quant"], e["offload"]): e for e in p["estimates"]} for p in plans)
    for plan in plans:
        assert plan["sizes_from"] == "known" and set(plan["components"]) == {"transformer", "text_encoder", "vae"}
    for quant in ("none", "8bit", "4bit"):
        assert four[quant, "none"]["weight_bytes"] < nine[quant, "none"]["weight_bytes"]
    assert four["4bit", "none"]["weight_bytes"] < 0.5 * four["none", "none"]["weight_bytes"]
    assert cli.main(["plan", "--tool", "klein", "--size", "1024x1024"]) == 0
    out = capsys.readouterr().out
    assert "klein on black-forest-labs/FLUX.2-klein-4B (known sizes), 1024x1024" in out
    assert "klein on black-forest-labs/FLUX.2-klein-9B (known sizes), 1024x1024" in out


def test_cli_generates_with_repeated_image_references(tmp_path, image_files, tiny_root):
    import cli
    from pipelines.images import read_metadata

    out = tmp_path / "edit.png"
    assert cli.main(["generate", "--tool", "klein", "--prompt", "make it blue", "--model", "tiny", "--quant", "8bit",
                     "--image", str(image_files["photo"]), "--image", str(image_files["mask"]), "--seed", "2",
                     "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["tool"] == "klein" and list(meta["inputs"]) == ["image", "image_2"]
    assert meta["conditioning"]["method"] == "references"
    assert meta["quantization"]["components"]["text_encoder"]["backend"] == candidates("8bit", "cpu")[0].backend


def test_flux2_preview_maps_32_channels_from_packed_latents():
    from pipelines.preview import FLUX2_LATENT_RGB_BIAS, flux2_packed_preview

    zeros = torch.zeros(1, (96 // 16) * (160 // 16), 128)
    picture = flux2_packed_preview(zeros, 160, 96)
    assert picture.size == (160, 96)
    assert np.asarray(picture)[0, 0].tolist() == [round((b + 1) * 127.5) for b in FLUX2_LATENT_RGB_BIAS]
    with pytest.raises(ValueError, match="packed FLUX.2 latents"):
        flux2_packed_preview(torch.zeros(1, 10, 64), 160, 96)


def test_klein_previews_arrive_during_a_run(studio):
    seen = []
    studio.generate(GenerationRequest(tool="klein", prompt="x", model="tiny", quant="none", seed=1),
                    preview=lambda image, step, steps: seen.append((image.size, step, steps)), preview_every=1)
    assert [s[1] for s in seen] == [1, 2, 3, 4] and all(s[0] == (128, 128) for s in seen)
