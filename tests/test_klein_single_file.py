"""BFL's single-file FLUX.2 [klein] transformers (tests.klein_files): bf16, fp8r (row scales) and nvfp4, in BFL's
names, read from their tensor tables and loaded through the single-file path on the klein tools' own model. bf16 and
fp8 run at the quantization asked for, as FLUX.1 files do; nvfp4 loads as it is through diffusers' BFL quantization
config. A FLUX.2 file on a FLUX.1 tool, or the reverse, is refused in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.engine import Engine
from pipelines.errors import UserError
from pipelines.manager import ModelManager
from pipelines.models import catalog, single_file
from pipelines.request import GenerationRequest
from pipelines.tools import get_tool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine(tiny_root):
    return Engine(ModelManager(device="cpu"))


def run(engine, file=None, quant="none", tool="klein", **fields):
    return engine.generate(GenerationRequest(tool=tool, prompt="a fox", model="tiny", quant=quant, seed=3,
                                             transformer=str(file) if file else None, **fields))


def pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(np.int16)


def real_klein_table(hidden: int, double: int, single: int, weights: str = "bf16") -> dict:
    """An official klein transformer's tensor table in BFL's names (shapes only), in bf16, fp8r or nvfp4."""
    def linear(name: str, rows: int, cols: int) -> dict:
        if weights == "bf16":
            return {f"{name}.weight": ("BF16", (rows, cols))}
        if weights == "fp8r":
            return {f"{name}.weight": ("F8_E4M3", (rows, cols)), f"{name}.weight_scale": ("F32", (rows,)),
                    f"{name}.input_scale": ("F32", ())}
        return {f"{name}.weight": ("U8", (rows, cols // 2)), f"{name}.weight_scale": ("F8_E4M3", (rows, cols // 16)),
                f"{name}.weight_scale_2": ("F32", ()), f"{name}.input_scale": ("F32", ())}

    table = {"img_in.weight": ("BF16", (hidden, 128)), "txt_in.weight": ("BF16", (hidden, 3 * 2560)),
             "double_stream_modulation_img.lin.weight": ("BF16", (6 * hidden, hidden)),
             "single_stream_modulation.lin.weight": ("BF16", (3 * hidden, hidden))}
    for i in range(double):
        table.update(linear(f"double_blocks.{i}.img_attn.qkv", 3 * hidden, hidden))
    for i in range(single):
        table.update(linear(f"single_blocks.{i}.linear1", 9 * hidden, hidden))
    return table


@pytest.mark.parametrize("weights", ["bf16", "fp8r", "nvfp4"])
def test_the_official_klein_tables_read_as_flux2_klein_transformers(weights):
    for hidden, double, single, size in ((3072, 5, 20, "4b"), (4096, 8, 24, "9b")):
        file = single_file.classify(Path(f"flux-2-klein-{size}-{weights}.safetensors"),
                                    real_klein_table(hidden, double, single, weights))
        expected = {"bf16": ("bf16", False, None), "fp8r": ("fp8_e4m3", True, None),
                    "nvfp4": ("nvfp4", False, ("bfl", "nvfp4"))}[weights]
        assert (file.family, file.layout, file.in_channels, file.hidden, file.double_blocks, file.single_blocks,
                file.guidance) == ("flux2", "bfl", 128, hidden, double, single, False)
        assert (file.weights, file.scaled, file.prequantized) == expected
        assert file.describe().startswith("a FLUX.2 transformer (text-to-image, editing and inpainting: 128 input")
        assert get_tool("klein").accepts_transformer(file) and get_tool("klein_inpaint").accepts_transformer(file)
        assert not any(get_tool(name).accepts_transformer(file) for name in ("dev", "schnell", "depth", "canny"))


def test_a_bf16_klein_file_in_bfl_names_gives_the_models_own_image(engine, tiny_klein_files):
    own = run(engine)
    result = run(engine, tiny_klein_files["bf16"])
    assert np.array_equal(pixels(result), pixels(own))
    file = result.report["transformer_file"]
    assert (file["family"], file["layout"], file["weights"], file["path"]) == \
        ("flux2", "bfl", "bf16", "flux-2-klein-tiny.safetensors")


def test_an_fp8_klein_file_with_row_scales_is_upcast_then_quantized_as_asked(engine, tiny_root, tiny_klein_files):
    from diffusers import Flux2Transformer2DModel

    result = run(engine, tiny_klein_files["fp8"], quant="8bit")
    file = result.report["transformer_file"]
    component = result.report["quantization"]["components"]["transformer"]
    assert (file["weights"], file["scaled"], component["prequantized"], component["quantized_layers"] > 0) == \
        ("fp8_e4m3", True, False, True)
    assert "fp8_e4m3 weights with scales, upcast to bfloat16, then quantized" in file["summary"]
    # The weights that loaded are the file's, their row scales applied: within e4m3's rounding of the model's own.
    loaded = single_file.load(single_file.inspect(tiny_klein_files["fp8"]), Flux2Transformer2DModel,
                              tiny_root / "klein", torch.bfloat16)
    own = Flux2Transformer2DModel.from_pretrained(tiny_root / "klein", subfolder="transformer", dtype=torch.bfloat16)
    wanted = own.state_dict()
    for name, got in loaded.state_dict().items():
        want = wanted[name].float()
        rows = want.abs().amax(dim=1, keepdim=True) if want.dim() == 2 else want.abs().max()
        assert ((got.float() - want).abs() <= 0.07 * rows + 1e-6).all(), name  # e4m3: 3 mantissa bits


@pytest.mark.parametrize("tool", ["klein", "klein_inpaint"])
def test_an_nvfp4_klein_file_loads_as_it_is_through_diffusers_bfl_config(engine, tiny_klein_files, tool, photo,
                                                                        mask):
    from diffusers.quantizers.bfl.utils import BFLNVFP4Linear

    fields = {"image": photo, "mask": mask} if tool == "klein_inpaint" else {}
    own = run(engine, tiny_klein_files["bf16"], tool=tool, **fields)  # the same weights, unquantized
    result = run(engine, tiny_klein_files["nvfp4"], quant="8bit", tool=tool, **fields)
    components = result.report["quantization"]["components"]
    assert (components["transformer"]["backend"], components["transformer"]["format"],
            components["transformer"]["prequantized"]) == ("bfl", "nvfp4", True)
    # every block linear: 12 in the double block (its fused QKVs split in three), 2 in each of the 2 single blocks
    assert components["transformer"]["quantized_layers"] == 16
    assert components["text_encoder"]["backend"] != "none"  # the quant choice still applies to the Qwen3 encoder
    file = result.report["transformer_file"]
    assert (file["prefixed"], file["weights"]) == (True, "nvfp4")  # ComfyUI's prefix, dropped as it loads
    assert "BFL nvfp4 weights, used as they are (bfl nvfp4)" in file["summary"]
    assert any("does not apply to it" in notice for notice in result.notices)
    loaded = next(p for key, p in engine.manager._pipelines.items() if any("transformer=" in str(k) for k in key)
                  and p.pipe.__class__.__name__ == get_tool(tool).pipeline_class)
    packed = [m for m in loaded.pipe.transformer.modules() if isinstance(m, BFLNVFP4Linear)]
    assert len(packed) == 16 and all(m.weight.dtype == torch.uint8 for m in packed)
    # 4-bit weights of the same model: the image is near the bf16 file's, not equal to it
    difference = np.abs(pixels(result) - pixels(own))
    assert 0 < difference.mean() < 8, difference.mean()


def test_klein_loras_sit_over_the_packed_nvfp4_layers_and_come_off_exactly(engine, tiny_klein_files):
    from pipelines.loras.tiny import KLEIN_FORMATS, tiny_klein_lora

    base = run(engine, tiny_klein_files["nvfp4"])
    for fmt in KLEIN_FORMATS:
        path = tiny_klein_lora(fmt)
        result = run(engine, tiny_klein_files["nvfp4"], loras=[(str(path), 0.8)])
        assert np.abs(pixels(result) - pixels(base)).max() > 0, fmt
        assert [lora["name"] for lora in result.report["parameters"]["loras"]] == [path.stem]
    assert np.array_equal(pixels(run(engine, tiny_klein_files["nvfp4"])), pixels(base))


def test_a_klein_file_on_a_flux1_tool_and_a_flux1_file_on_klein_are_refused_in_one_line(tiny_root, tiny_klein_files,
                                                                                         photo,
                                                                                         tiny_transformer_files):
    with pytest.raises(UserError, match=r"flux-2-klein-tiny-nvfp4.safetensors' is a FLUX.2 transformer \(text-to-image, "
                                        r"editing and inpainting: 128 input channels.*the depth tool needs a "
                                        r"FluxControlPipeline") as caught:
        GenerationRequest(tool="depth", prompt="x", model="tiny", image=photo,
                          transformer=str(tiny_klein_files["nvfp4"]))
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match=r"dev-bf16.safetensors' is a FLUX.1 transformer .*the klein tool needs a "
                                        r"Flux2KleinPipeline"):
        GenerationRequest(tool="klein", prompt="x", model="tiny", transformer=str(tiny_transformer_files["bf16"]))
    flux2 = single_file.inspect(tiny_klein_files["bf16"])
    with pytest.raises(UserError, match=r"does not fit the dev tool's model: it is a FLUX.2 transformer .* the model "
                                        r"is a FLUX.1 one"):
        single_file.check_fits(flux2, tiny_root / "dev", "dev")


def test_klein_files_are_offered_to_the_klein_tools_only(tiny_klein_files, monkeypatch):
    folder = tiny_klein_files["bf16"].parent
    monkeypatch.setenv("FLUXFORGE_MODEL_DIR", str(folder))
    klein = {c.value: c.label for c in catalog.choices(get_tool("klein"), "tiny", cached=lambda repo: False)}
    assert klein[str(tiny_klein_files["nvfp4"])].endswith("(transformer file, nvfp4)")
    assert {str(path) for path in tiny_klein_files.values()} <= set(klein)
    dev = {c.value for c in catalog.choices(get_tool("dev"), "tiny", cached=lambda repo: False)}
    assert not any("klein" in value for value in dev)


def test_the_cli_runs_klein_from_an_nvfp4_file(tiny_klein_files, tmp_path):
    out = tmp_path / "fox.png"
    proc = subprocess.run([sys.executable, "app.py", "generate", "--tool", "klein", "--prompt", "a fox", "--model",
                           "tiny", "--transformer", str(tiny_klein_files["nvfp4"]), "--quant", "none", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Transformer from flux-2-klein-tiny-nvfp4.safetensors: BFL nvfp4 weights, used as they are" in proc.stderr
    assert out.is_file()


def test_an_nvfp4_file_runs_under_model_offload_and_is_refused_block_offload_in_one_line(tiny_klein_files):
    engine = Engine(ModelManager(device="cpu", offload="model"))
    result = run(engine, tiny_klein_files["nvfp4"])
    assert result.report["quantization"]["components"]["transformer"]["format"] == "nvfp4"
    blocked = Engine(ModelManager(device="cpu", offload="block"))
    with pytest.raises(UserError, match=r"transformer='flux-2-klein-tiny-nvfp4.safetensors' with offload='block': bfl "
                                        r"nvfp4 weights are not known to survive block offload; use model offload") as e:
        run(blocked, tiny_klein_files["nvfp4"])
    assert "\n" not in str(e.value)
    assert run(blocked, tiny_klein_files["bf16"]).report["transformer_file"]["weights"] == "bf16"  # plain weights: any


def test_an_nvfp4_file_is_refused_on_apple_mps_before_it_loads(tiny_root, tiny_klein_files):
    """nvfp4's block scales are float8, which MPS cannot hold: refused in one line, nothing read."""
    from diffusers import Flux2Transformer2DModel

    from quantization.errors import QuantizationError
    from quantization.prequantized import load_prequantized
    from quantization.records import ComponentSource

    file = single_file.inspect(tiny_klein_files["nvfp4"])
    source = ComponentSource(tiny_root / "klein" / "transformer", "fingerprint", Flux2Transformer2DModel, "tiny",
                             file.path, file.prequantized)
    loads = []
    with pytest.raises(QuantizationError, match=r"flux-2-klein-tiny-nvfp4.safetensors is a bfl nvfp4 file, whose block "
                                                r"scales are float8, which Apple MPS does not hold") as caught:
        load_prequantized("transformer", source, torch.device("mps"), torch.bfloat16, lambda: loads.append(1))
    assert not loads and "\n" not in str(caught.value)


def test_plan_counts_a_prequantized_file_as_it_is_and_a_plain_one_as_the_models_own(tiny_klein_files,
                                                                                    tiny_transformer_files, capsys):
    """`plan --transformer`: an nvfp4 file holds its own bytes under every quant choice (the choice still quantizes
    the text encoder); a bf16 file plans as the model does; a file of the other family is refused in one line."""
    import json

    import cli

    def plan(*extra) -> dict:
        assert cli.main(["plan", "--tool", "klein", "--model", "tiny", "--size", "256x256", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    own, plain, packed = plan(), plan("--transformer", str(tiny_klein_files["bf16"])), plan(
        "--transformer", str(tiny_klein_files["nvfp4"]))
    weights = {name: {e["quant"]: e["weight_bytes"] for e in p["estimates"] if e["offload"] == "none"}
               for name, p in (("own", own), ("plain", plain), ("packed", packed))}
    assert weights["plain"] == weights["own"] and plain["transformer"] == "flux-2-klein-tiny.safetensors"
    assert packed["transformer"] == "flux-2-klein-tiny-nvfp4.safetensors"
    params = own["components"]
    assert weights["packed"]["none"] == \
        weights["own"]["none"] - params["transformer"] * 2 + tiny_klein_files["nvfp4"].stat().st_size
    share = params["text_encoder"] / (params["text_encoder"] + params["transformer"])
    for quant in ("8bit", "4bit"):  # what a quant choice saves: the text encoder's part only
        saved = {name: weights[name]["none"] - weights[name][quant] for name in ("own", "packed")}
        assert saved["packed"] == pytest.approx(saved["own"] * share, abs=2)
    assert cli.main(["plan", "--tool", "klein", "--model", "tiny", "--transformer",
                     str(tiny_transformer_files["bf16"])]) == 2
    assert "dev-bf16.safetensors' is a FLUX.1 transformer" in capsys.readouterr().err


def test_auto_weighs_a_prequantized_file_among_what_it_cannot_shrink(tiny_root, tiny_klein_files):
    from pipelines.models.assembly import weight_bytes

    root = tiny_root / "klein"
    quantizable, other = weight_bytes(root, torch.bfloat16)
    with_file = weight_bytes(root, torch.bfloat16, tiny_klein_files["nvfp4"])
    transformer = weight_bytes(root, torch.bfloat16)[0] - with_file[0]  # what left the quantizable side
    assert transformer > 0 and with_file[1] == other + tiny_klein_files["nvfp4"].stat().st_size
    assert weight_bytes(root, torch.bfloat16, tiny_klein_files["fp8"]) == (quantizable, other)  # upcast as it loads
    result = run(Engine(ModelManager(device="cpu")), tiny_klein_files["nvfp4"], quant="auto")
    assert result.report["quantization"]["components"]["transformer"]["format"] == "nvfp4"
