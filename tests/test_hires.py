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
    (dict(hires_strength=0.3), "hires_strength and hires_steps are for the hires fix"),
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
