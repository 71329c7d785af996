"""Images as they come: every PIL mode a file decodes to is read at 8 bits without losing its levels (16- and 32-bit
depth maps scaled, never clipped), one mask rule for the CLI, the API and the brush, and a job checked from image
headers only while it joins the queue (pixels are decoded in the job)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import UserError
from pipelines.images import eight_bit, image_header, load_image, mask_pixels, open_image

RAMP = np.tile(np.linspace(0.0, 1.0, 256), (16, 1))  # black (left) to white (right)


def ramp(mode: str) -> Image.Image:
    """A black-to-white ramp, 256 wide, in ``mode`` at its own depth."""
    if mode in ("I;16", "I;16B"):
        return Image.fromarray((RAMP * 65535).round().astype("<u2" if mode == "I;16" else ">u2"), mode)
    if mode == "I":
        return Image.fromarray((RAMP * 65535).round().astype(np.int32), "I")
    if mode == "F":
        return Image.fromarray(RAMP.astype(np.float32), "F")
    gray = Image.fromarray((RAMP * 255).round().astype(np.uint8), "L")
    return gray.convert("RGB").convert(mode) if mode == "LAB" else gray.convert(mode)


# Every mode a PNG, TIFF or JPEG decodes to, saved in a format that keeps it.
MODES = [("1", "png"), ("L", "png"), ("LA", "png"), ("P", "png"), ("PA", "tiff"), ("RGB", "png"), ("RGBA", "png"),
         ("CMYK", "tiff"), ("LAB", "tiff"), ("I", "tiff"), ("I;16", "png"), ("I;16B", "tiff"), ("F", "tiff")]


@pytest.mark.parametrize("mode, ext", MODES, ids=[m for m, _ in MODES])
def test_every_mode_is_read_at_8_bits_with_its_levels(tmp_path, mode, ext):
    path = tmp_path / f"ramp.{ext}"
    ramp(mode).save(path)
    with Image.open(path) as opened:
        assert opened.mode == mode  # the file really decodes to this mode
    rgb = np.asarray(load_image(path, "image"))
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 256, 3)
    levels = len(np.unique(rgb[..., 0]))
    assert levels == 2 if mode == "1" else levels >= 230, (mode, levels)  # 16-bit: 256 levels, not 2
    assert rgb[0, 0].max() <= 2 and rgb[0, -1].min() >= 253  # black stays black, white white
    assert mode == "1" or (np.diff(rgb[0, :, 0].astype(int)) >= 0).all()  # in order (bilevel is dithered)
    gray = np.asarray(load_image(path, "control_image", mode="L"))
    assert abs(int(gray[0, 128]) - 128) <= 3 or mode == "1"


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16", [0, 257, 32896, 65535], [0, 1, 128, 255]),          # 16-bit: divided by 257
    ("I", [0, 257, 32896, 65535], [0, 1, 128, 255]),             # 32-bit holding 16-bit values: the same
    ("I", [0, 100, 200, 255], [0, 100, 200, 255]),               # 32-bit holding 8-bit values: as they are
    ("I", [-1000, 0, 1000, 3000], [0, 64, 128, 255]),            # any other range: stretched
    ("F", [0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),             # floats in 0..1: times 255
    ("F", [2.0, 4.0, 6.0, 10.0], [0, 64, 128, 255]),             # a depth in metres: stretched
    ("F", [np.nan, 0.0, 0.5, 1.0], [0, 0, 128, 255]),            # not a number: black
])
def test_eight_bit(mode, values, expected):
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray(np.array([values] * 2, dtype=dtype), mode)
    scaled = eight_bit(image)
    assert scaled.mode == "L" and np.asarray(scaled)[0].tolist() == expected


def layer(mode: str, painted: tuple, size=(32, 32), paint=255, ground=0, alpha: int | None = None) -> Image.Image:
    """A mask image: ``paint`` inside the box ``painted``, ``ground`` elsewhere; with ``alpha`` an RGBA layer whose
    ground is transparent (alpha 0) and paint has that alpha."""
    left, top, right, bottom = painted
    values = np.full((size[1], size[0]), ground, np.uint8)
    values[top:bottom, left:right] = paint
    if alpha is None:
        return Image.fromarray(values, "L").convert(mode)
    rgba = np.zeros((size[1], size[0], 4), np.uint8)
    rgba[..., :3] = values[..., None]
    rgba[top:bottom, left:right, 3] = alpha
    return Image.fromarray(rgba, "RGBA")


BOX = (8, 8, 24, 24)


@pytest.mark.parametrize("name, image, repaints", [
    ("white on black, L", layer("L", BOX), BOX),
    ("white on black, RGB", layer("RGB", BOX), BOX),
    ("white on black, opaque RGBA", layer("RGBA", BOX), BOX),       # alpha opaque everywhere: by colour
    ("black on white, L", layer("L", BOX, paint=0, ground=255), None),  # the box keeps, the rest repaints
    ("opaque black, no alpha", layer("L", BOX, paint=0, ground=0), ()),
    ("opaque black, opaque RGBA", layer("RGBA", BOX, paint=0, ground=0), ()),
    ("brush on a transparent layer", layer("RGBA", BOX, alpha=255), BOX),
    ("black brush on a transparent layer", layer("RGBA", BOX, paint=0, alpha=255), BOX),  # painted is painted
    ("faint edge only", layer("RGBA", BOX, alpha=10), ()),
    ("16-bit white on black", Image.fromarray((np.asarray(layer("L", BOX)).astype(np.uint16) * 257), "I;16"), BOX),
])
def test_the_mask_rule(name, image, repaints):
    mask = np.asarray(mask_pixels(image))
    expected = np.zeros((32, 32), bool)
    if repaints is None:
        expected[:] = True
        expected[8:24, 8:24] = False
    elif repaints:
        left, top, right, bottom = repaints
        expected[top:bottom, left:right] = True
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert ((mask == 255) == expected).all(), name


def test_a_header_is_read_without_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile

    path = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000), (10, 20, 30)).save(path)
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or original(self))
    header = image_header(path, "image")
    assert header.size == (4000, 3000) and decoded == []
    open_image(path, "image").close()
    assert decoded == []
    assert load_image(path, "image").size == (4000, 3000) and decoded  # decoding is load_image's


def test_a_truncated_png_is_refused_from_its_header(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:-300])
    with pytest.raises(UserError, match=r"image: this file is not an image we can read: cut\.png .*truncated"):
        open_image(cut, "image", shown="cut.png")


# ---- the same in the request the CLI and the studio build ----------------------------------------------------------

def test_a_16_bit_depth_map_reaches_the_pipeline_with_its_levels(tmp_path, tiny_root):
    from pipelines.request import GenerationRequest

    path = tmp_path / "depth16.png"
    ramp("I;16").resize((128, 96)).save(path)
    request = GenerationRequest(tool="depth", prompt="a room", model="tiny", image=str(path), control_image=str(path))
    levels = np.unique(np.asarray(request.control_image)[..., 0])
    assert len(levels) >= 100 and levels.max() >= 250 and levels.min() <= 5
    assert request.inputs["control_image"]["size"] == [128, 96]


def test_the_cli_takes_a_16_bit_map_and_a_mask_by_the_one_rule(tmp_path, tiny_root, monkeypatch, capsys):
    """The CLI, with the engine's run replaced by a recorder: the request it builds is what the engine gets."""
    import cli
    from pipelines.engine import Engine

    seen = []

    def record(self, request, progress=None, **options):
        seen.append(request)
        raise UserError("recorded")

    monkeypatch.setattr(Engine, "generate", record)
    depth = tmp_path / "depth16.png"
    ramp("I;16").resize((128, 96)).save(depth)
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.new("RGB", (32, 32), (90, 120, 200)).save(photo)
    layer("L", BOX).save(mask)
    assert cli.main(["generate", "--tool", "depth", "--prompt", "x", "--model", "tiny", "--image", str(photo),
                     "--control-image", str(depth), "--out", str(tmp_path / "o.png")]) == 2
    assert len(np.unique(np.asarray(seen[-1].control_image)[..., 0])) >= 100
    assert cli.main(["generate", "--tool", "fill", "--prompt", "x", "--model", "tiny", "--image", str(photo),
                     "--mask", str(mask), "--out", str(tmp_path / "o.png")]) == 2
    assert (np.asarray(seen[-1].mask) == np.asarray(mask_pixels(layer("L", BOX)))).all()
    black = tmp_path / "black.png"
    Image.new("L", (32, 32), 0).save(black)
    code = cli.main(["generate", "--tool", "fill", "--prompt", "x", "--model", "tiny", "--image", str(photo),
                     "--mask", str(black), "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: mask is empty: nothing in it repaints")


# ---- through the API: a mask layer without alpha, a 16-bit map, a join that decodes nothing ---------------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from tests.ui_fixtures import start_studio

    running = start_studio(tmp_path_factory.mktemp("modes-outputs"), api=True)
    engine = running.demo.studio_runner.engine
    running.seen = []
    original = engine.generate

    def record(request, progress=None, **options):
        running.seen.append(request)
        return original(request, progress, **options)

    engine.generate = record
    yield running
    running.close()


SIZE = dict(steps=1, guidance=3.5, quant="none", match=True, width=128, height=128, seed=1, randomize=False,
            loras_picked=[], loras_uploaded=None, lora_strength=1.0, count=1, previews=False)


@pytest.mark.slow
def test_an_opaque_black_mask_layer_without_alpha_repaints_nothing_over_the_api(api, tmp_path):
    from gradio_client import Client, handle_file

    photo, black, box = tmp_path / "photo.png", tmp_path / "black.png", tmp_path / "box.png"
    Image.new("RGB", (32, 32), (90, 120, 200)).save(photo)
    Image.new("L", (32, 32), 0).save(black)
    layer("L", BOX).save(box)
    client = Client(api.url, verbose=False)

    def fill(mask_file):
        editor = {"background": handle_file(str(photo)), "layers": [handle_file(str(mask_file))],
                  "composite": handle_file(str(photo))}
        return client.predict(mode="inpaint", editor=editor, left=0, top=0, right=0, bottom=0, prompt="a vase",
                              reference=None, **SIZE, api_name="/fill")

    with pytest.raises(Exception, match=r"No mask drawn|mask is empty"):
        fill(black)
    fill(box)
    mask = np.asarray(api.seen[-1].mask)
    assert mask[16, 16] == 255 and mask[2, 2] == 0 and (mask == 255).sum() == 16 * 16  # white repaints, black keeps


@pytest.mark.slow
def test_a_16_bit_map_uploaded_to_depth_keeps_its_levels_over_the_api(api, tmp_path):
    from gradio_client import Client, handle_file

    depth = tmp_path / "depth16.png"
    ramp("I;16").resize((128, 96)).save(depth)
    client = Client(api.url, verbose=False)
    client.predict(image=None, map_image=handle_file(str(depth)), choice="upload", prompt="a room", form="model",
                   **SIZE, api_name="/depth")
    levels = np.unique(np.asarray(api.seen[-1].control_image)[..., 0])
    assert len(levels) >= 100, len(levels)


@pytest.mark.slow
def test_a_join_reads_image_headers_only_and_the_job_decodes(api, tmp_path, monkeypatch):
    """Images large in pixels (small files): while a Kontext job joins the queue (its inputs read and checked, under
    the queue's join lock) none of them is decoded; the job decodes them."""
    from gradio_client import Client, handle_file
    from PIL import ImageFile

    from ui.runner import REFUSALS

    big = []
    for index in range(3):
        path = tmp_path / f"wide-{index}.png"
        Image.new("RGB", (6000, 4000), (40 * index, 90, 160)).save(path)
        big.append(path)
    decodes = []
    original = ImageFile.ImageFile.load

    def load(self):
        if self.size == (6000, 4000):
            decodes.append("joining" if REFUSALS.get() is not None else "job")
        return original(self)

    headers = []
    opener = Image.open

    def open_(fp, *args, **kwargs):
        image = opener(fp, *args, **kwargs)
        if image.size == (6000, 4000):
            headers.append("joining" if REFUSALS.get() is not None else "job")
        return image

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(Image, "open", open_)
    client = Client(api.url, verbose=False)
    client.predict(image=handle_file(str(big[0])), prompt="make it night",
                   references=[handle_file(str(p)) for p in big[1:]], **SIZE, api_name="/kontext")
    assert "joining" in headers  # their headers were read (and checked) while the job joined
    assert decodes and set(decodes) == {"job"}, decodes  # their pixels only in the job
    assert [image.size for image in api.seen[-1].images] == [(6000, 4000)] * 3
