"""Hires fix: a first pass, upscaled, refined by image to image at the larger size; both passes recorded."""

import json

import pytest
from PIL import Image

import cli
from pipelines.engine import Engine
from pipelines.errors import UserError
from pipelines.hires import target_size
from pipelines.infotext import parse
from pipelines.manager import ModelManager
from pipelines.request import GenerationRequest


@pytest.mark.parametrize("size, scale, expected", [((128, 128), 2, (256, 256)), ((128, 96), 1.5, (192, 144)),
                                                   ((1024, 768), 2, (2048, 1536)), ((100, 100), 1.3, (128, 128))])
def test_target_size_is_on_the_size_step(size, scale, expected):
    assert target_size(*size, scale) == expected


def test_a_target_over_the_limit_is_refused(tiny_root):
    with pytest.raises(UserError, match="hires_scale=3 makes 3072x3072 from 1024x1024; the limit is 2048"):
        GenerationRequest(tool="dev", prompt="x", model="tiny", width=1024, height=1024, hires_scale=3)


@pytest.mark.parametrize("fields, message", [
    (dict(hires_strength=0.3), "hires_strength, hires_steps and hires_upscaler are for the hires fix"),
    (dict(hires_upscaler="tiny-esrgan-2x.safetensors"), "give hires_scale too"),
    (dict(hires_scale=2, image="assets/example-boat.png"), "not image to image"),
    (dict(hires_scale=1.0), "hires_scale=1.0 is out of range"),
    (dict(hires_scale=2, hires_strength=0), "hires_strength=0 is out of range"),
])
def test_bad_hires_values_are_refused_naming_them(tiny_root, fields, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        GenerationRequest(**{**dict(tool="dev", prompt="x", model="tiny"), **fields})


def test_hires_fix_runs_both_passes_and_records_them(tiny_root, tmp_path):
    engine = Engine(ModelManager(device="cpu"))
    result = engine.generate(GenerationRequest(tool="dev", prompt="a tower", model="tiny", quant="none", seed=5,
                                               steps=4, width=128, height=96, hires_scale=2, hires_steps=6))
    assert result.image.size == (256, 192)
    hires = result.report["hires"]
    assert hires["first_pass"]["size"] == [128, 96] and hires["second_pass"]["size"] == [256, 192]
    assert (hires["scale"], hires["upscaler"], hires["strength"], hires["steps"]) == (2.0, "Lanczos", 0.35, 6)
    assert result.report["image_to_image"]["steps_run"] == 3  # 6 steps at 0.35
    timings = result.report["timings"]
    assert timings["total_s"] >= hires["first_pass"]["timings"]["total_s"] + hires["second_pass"]["timings"]["total_s"]
    path = result.save(tmp_path / "tower.png")
    fields = parse(Image.open(path).text["parameters"])
    assert (fields["Size"], fields["Steps"], fields["Hires upscale"], fields["Hires upscaler"], fields["Hires steps"],
            fields["Denoising strength"]) == ("256x192", "4", "2", "Lanczos", "6", "0.35")
    meta = json.loads(Image.open(path).text["fluxforge"])
    assert meta["hires"]["first_pass"]["size"] == [128, 96] and meta["inputs"] == {}
    assert any(n.startswith("Hires fix: 128x96 upscaled (Lanczos) to 256x192") for n in result.notices)


def test_cli_hires_fix(tiny_root, tmp_path, capsys):
    out, report = tmp_path / "h.png", tmp_path / "h.json"
    assert cli.main(["generate", "--tool", "schnell", "--prompt", "a tower", "--model", "tiny", "--quant", "none",
                     "--width", "128", "--height", "128", "--hires-scale", "1.5", "--hires-strength", "0.5",
                     "--out", str(out), "--report", str(report)]) == 0, capsys.readouterr().err
    assert Image.open(out).size == (192, 192)
    data = json.loads(report.read_text())
    assert data["hires"]["strength"] == 0.5 and data["hires"]["first_pass"]["size"] == [128, 128]
    assert cli.main(["generate", "--tool", "schnell", "--prompt", "x", "--model", "tiny", "--hires-steps", "3",
                     "--out", str(tmp_path / "x.png")]) == 2
    assert "give hires_scale too" in capsys.readouterr().err


def test_upscaler_choices_are_lanczos_and_the_folders_files(upscaler_dir):
    from pipelines.upscalers import check_upscaler, upscaler_choices

    assert upscaler_choices() == ["Lanczos", "not-an-upscaler.safetensors", "tiny-esrgan-2x.safetensors"]
    assert check_upscaler(None) == check_upscaler("") == check_upscaler("lanczos") == "Lanczos"
    assert check_upscaler("tiny-esrgan-2x.safetensors") == "tiny-esrgan-2x.safetensors"


@pytest.mark.parametrize("name, message", [
    ("missing.pth", "hires_upscaler='missing.pth' is not an upscaler in FLUXFORGE_UPSCALER_DIR"),
    ("../tiny-esrgan-2x.safetensors", "is not an upscaler in FLUXFORGE_UPSCALER_DIR"),
])
def test_an_unknown_upscaler_is_refused_in_one_line(upscaler_dir, tiny_root, name, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")) as caught:
        GenerationRequest(tool="dev", prompt="x", model="tiny", hires_scale=2, hires_upscaler=name)
    assert "\n" not in str(caught.value) and "tiny-esrgan-2x.safetensors" in str(caught.value)


def test_a_file_spandrel_does_not_detect_or_cannot_read_is_refused_before_anything_runs(upscaler_dir, tiny_root,
                                                                                         tmp_path):
    engine = Engine(ModelManager(device="cpu"))
    request = GenerationRequest(tool="dev", prompt="x", model="tiny", quant="none", steps=2, width=64, height=64,
                                hires_scale=2, hires_upscaler="not-an-upscaler.safetensors")
    with pytest.raises(UserError, match="not a model spandrel knows") as caught:
        engine.generate(request, progress=lambda stage, done, total: pytest.fail("nothing should run"))
    assert "\n" not in str(caught.value)
    (upscaler_dir / "broken.pth").write_bytes(b"not a checkpoint")
    try:
        request = GenerationRequest(tool="dev", prompt="x", model="tiny", quant="none", steps=2, width=64, height=64,
                                    hires_scale=2, hires_upscaler="broken.pth")
        with pytest.raises(UserError, match=r"hires_upscaler='broken\.pth' cannot be read \("):
            engine.generate(request)
    finally:
        (upscaler_dir / "broken.pth").unlink()


def test_without_spandrel_a_chosen_file_is_refused_naming_the_install(upscaler_dir, tiny_root, monkeypatch):
    import sys

    from pipelines.upscalers import load_upscaler

    monkeypatch.setitem(sys.modules, "spandrel", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"needs spandrel, which is not installed .*pip install spandrel"):
        load_upscaler("tiny-esrgan-2x.safetensors", upscaler_dir / "tiny-esrgan-2x.safetensors",
                      __import__("torch").device("cpu"), __import__("torch").bfloat16)


def test_the_esrgan_upscaler_runs_in_tiles_as_it_runs_whole(upscaler_dir):
    import numpy as np
    import torch

    from pipelines.upscalers import load_upscaler, upscale_image
    from tests.conftest import make_photo

    model = load_upscaler("tiny-esrgan-2x.safetensors", upscaler_dir / "tiny-esrgan-2x.safetensors",
                          torch.device("cpu"), torch.float32)
    assert (model.architecture, model.scale) == ("ESRGAN", 2)
    photo = make_photo(96, 64)
    whole, _ = upscale_image(photo, (192, 128), model, tile=512)
    tiled, _ = upscale_image(photo, (192, 128), model, tile=32)
    assert whole.size == tiled.size == (192, 128)
    difference = np.abs(np.asarray(whole, dtype=int) - np.asarray(tiled, dtype=int))
    assert difference.max() <= 2  # the overlap covers the receptive field of one block: no seams
    lanczos, _ = upscale_image(photo, (192, 128))
    assert np.abs(np.asarray(lanczos, dtype=int) - np.asarray(whole, dtype=int)).mean() > 1  # the model ran


def test_hires_fix_with_an_esrgan_file_records_it(upscaler_dir, tiny_root, tmp_path):
    engine = Engine(ModelManager(device="cpu"))
    request = dict(tool="dev", prompt="a tower", model="tiny", quant="none", seed=5, steps=2, width=64, height=64,
                   hires_scale=2, hires_upscaler="tiny-esrgan-2x.safetensors")
    result = engine.generate(GenerationRequest(**request))
    assert result.image.size == (128, 128)
    hires = result.report["hires"]
    assert hires["upscaler"] == "tiny-esrgan-2x.safetensors"
    assert hires["upscaler_model"]["architecture"] == "ESRGAN" and hires["upscaler_model"]["scale"] == 2
    assert hires["first_pass"]["size"] == [64, 64] and hires["second_pass"]["size"] == [128, 128]
    assert result.report["timings"]["upscale_s"] == hires["upscale_s"]
    fields = parse(Image.open(result.save(tmp_path / "t.png")).text["parameters"])
    assert (fields["Hires upscaler"], fields["Hires upscale"], fields["Size"]) == (
        "tiny-esrgan-2x.safetensors", "2", "128x128")
    assert any("upscaled (tiny-esrgan-2x.safetensors, ESRGAN 2x) to 128x128" in n for n in result.notices)
    loaded = [v for k, v in engine.manager._aux.items() if k[0] == "upscaler"]
    engine.generate(GenerationRequest(**request))
    assert [v for k, v in engine.manager._aux.items() if k[0] == "upscaler"] == loaded  # loaded once, kept


def test_cli_hires_fix_with_an_upscaler_file(upscaler_dir, tiny_root, tmp_path, capsys):
    out, report = tmp_path / "u.png", tmp_path / "u.json"
    base = ["generate", "--tool", "schnell", "--prompt", "a tower", "--model", "tiny", "--quant", "none", "--width",
            "64", "--height", "64", "--hires-scale", "2"]
    assert cli.main(base + ["--hires-upscaler", "tiny-esrgan-2x.safetensors", "--out", str(out), "--report",
                            str(report)]) == 0, capsys.readouterr().err
    assert Image.open(out).size == (128, 128)
    assert json.loads(report.read_text())["hires"]["upscaler_model"]["architecture"] == "ESRGAN"
    assert parse(Image.open(out).text["parameters"])["Hires upscaler"] == "tiny-esrgan-2x.safetensors"
    assert cli.main(base + ["--hires-upscaler", "nope.pth", "--out", str(tmp_path / "n.png")]) == 2
    err = capsys.readouterr().err
    assert "hires_upscaler='nope.pth' is not an upscaler" in err and "Traceback" not in err
    assert not (tmp_path / "n.png").exists()


@pytest.mark.parametrize("device, onednn, dtype, expected", [
    ("cpu", False, "bfloat16", "float32"), ("cpu", True, "bfloat16", "bfloat16"), ("cuda", False, "bfloat16", "bfloat16"),
    ("cuda", False, "float32", "float32")])
def test_the_upscaler_runs_in_float32_where_bf16_convolutions_are_slow(monkeypatch, device, onednn, dtype, expected):
    import types

    import torch

    from pipelines.memory import placement
    from pipelines.upscalers import run_dtype_for

    monkeypatch.setattr(placement, "onednn_bf16", lambda: onednn)
    model = types.SimpleNamespace(supports_bfloat16=True, supports_half=True)
    assert run_dtype_for(model, torch.device(device), getattr(torch, dtype)) == getattr(torch, expected)
    assert run_dtype_for(types.SimpleNamespace(supports_bfloat16=False, supports_half=False), torch.device("cuda"),
                         torch.bfloat16) == torch.float32
