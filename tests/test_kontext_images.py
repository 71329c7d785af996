"""Kontext with several images: the image to edit and references, joined side by side into one conditioning
image; each input named and hashed; the request, the engine, the CLI and the API."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

import cli
from pipelines import defaults
from pipelines.errors import UserError
from pipelines.images import read_metadata, side_by_side, side_by_side_layout
from pipelines.request import GenerationRequest
from tests.conftest import make_photo
from tests.ui_fixtures import api_studio  # noqa: F401

RUN = dict(prompt="put the ball in the room", model="tiny", quant="none", steps=2, seed=3)


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def refs(tmp_path, image_files):
    """room.png (the image to edit), ball.png and cup.png (references of other sizes)."""
    ball, cup = Image.new("RGB", (80, 120), (20, 90, 200)), Image.new("RGB", (160, 64), (230, 230, 210))
    ImageDraw.Draw(ball).ellipse((10, 30, 70, 90), fill=(250, 60, 20))
    ImageDraw.Draw(cup).rectangle((40, 8, 120, 56), fill=(120, 40, 40))
    paths = {"room": image_files["photo"], "ball": tmp_path / "ball.png", "cup": tmp_path / "cup.png"}
    ball.save(paths["ball"])
    cup.save(paths["cup"])
    return {**image_files, **paths}


# ---- the concatenation: one row at one height, within the area, multiples of 16 -----------------------------

LAYOUTS = {  # sizes (w, h), max_area -> (height, widths)
    "one image at the preferred area": ([(1024, 1024)], 1024 * 1024, (1024, [1024])),
    "two squares share the area": ([(1024, 1024), (1024, 1024)], 1024 * 1024, (720, [720, 720])),
    "tiny family, two 4:3 photos": ([(128, 96), (128, 96)], 128 * 128, (64, [80, 80])),
    "heights matched, aspect kept": ([(800, 600), (300, 900)], 1024 * 1024, (784, [1040, 256])),
    "small images are not enlarged": ([(64, 64), (32, 64)], 1024 * 1024, (64, [64, 32])),
    "rounded widths over the area: one step lower": ([(60, 100), (115, 100)], 128 * 128, (80, [48, 96])),
    "four references at 1024x1024": ([(1024, 768), (768, 1024), (512, 512), (2048, 1024)], 1024 * 1024,
                                     (448, [592, 336, 448, 896])),
}


@pytest.mark.parametrize("sizes,max_area,expected", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_side_by_side_layout(sizes, max_area, expected):
    height, widths = side_by_side_layout(sizes, max_area)
    assert (height, widths) == expected
    assert height * sum(widths) <= max_area
    assert height % defaults.SIZE_STEP == 0 and all(w % defaults.SIZE_STEP == 0 for w in widths)
    assert height <= max(h for _, h in sizes)
    for (w, h), width in zip(sizes, widths):  # each keeps its aspect ratio to within one step
        assert abs(width - w * height / h) <= defaults.SIZE_STEP / 2


@pytest.mark.parametrize("sizes,max_area", [([], 1024 * 1024), ([(4096, 8)], 128 * 128), ([(64, 64)] * 4, 512)])
def test_side_by_side_layout_refuses_what_cannot_fit(sizes, max_area):
    with pytest.raises(ValueError):
        side_by_side_layout(sizes, max_area)


def test_side_by_side_pastes_each_image_resized_left_to_right():
    first, second = make_photo(128, 96), Image.new("L", (40, 80), 200)  # a grey image comes out RGB
    row = side_by_side([first, second], 128 * 128)
    height, widths = side_by_side_layout([first.size, second.size], 128 * 128)
    assert row.mode == "RGB" and row.size == (sum(widths), height)
    assert row.crop((0, 0, widths[0], height)).tobytes() == first.resize((widths[0], height)).tobytes()
    assert set(row.crop((widths[0], 0, row.width, height)).getdata()) == {(200, 200, 200)}


# ---- the request: a list of images for Kontext, one image elsewhere ---------------------------------------------

def test_every_image_is_loaded_named_and_hashed(refs, tiny_root):
    request = GenerationRequest(tool="kontext", image=[str(refs["room"]), str(refs["ball"]), refs["cup"]], **RUN)
    assert [image.size for image in request.images] == [(128, 96), (80, 120), (160, 64)]
    assert request.image is request.images[0]  # the image edited, which sets the output size
    assert list(request.inputs) == ["image", "image_2", "image_3"]
    for name, key in zip(request.inputs, ("room", "ball", "cup")):
        assert request.inputs[name] == {"name": refs[key].name, "sha256": sha256(refs[key]), "sha256_of": "file",
                                        "size": list(Image.open(refs[key]).size)}
    assert request.parameters()["inputs"] == request.inputs and "images" not in request.parameters()


def test_one_image_in_a_list_is_the_single_image_path(refs, tiny_root):
    alone = GenerationRequest(tool="kontext", image=str(refs["room"]), **RUN)
    listed = GenerationRequest(tool="kontext", image=[str(refs["room"])], **RUN)
    assert listed.parameters() == alone.parameters() and list(listed.inputs) == ["image"]
    assert listed.image.tobytes() == alone.image.tobytes() and len(listed.images) == 1
    prepared = alone.spec.prepare(alone, None)  # one image: exactly the arguments the single-image tool passed
    width, height = alone.spec.output_size(alone, alone.image)
    assert set(prepared.kwargs) == {"prompt", "image", "max_area", "_auto_resize"} and not prepared.details
    assert prepared.kwargs["image"].tobytes() == alone.image.resize((width, height)).tobytes()
    assert (prepared.kwargs["max_area"], prepared.kwargs["_auto_resize"]) == (width * height, False)


BAD = {
    "too many images": (lambda f: [str(f["room"])] * (defaults.KONTEXT_MAX_IMAGES + 1), "kontext",
                        rf"^image: {defaults.KONTEXT_MAX_IMAGES + 1} images given; the kontext tool takes at most "
                        rf"{defaults.KONTEXT_MAX_IMAGES} \(the image to edit and {defaults.KONTEXT_MAX_IMAGES - 1} "
                        r"references\); give fewer\.$"),
    "an unreadable reference": (lambda f: [str(f["room"]), str(f["ball"]), str(f["truncated"])], "kontext",
                                r"^image_3: this file is not an image we can read: .*truncated\.png "),
    "a text file as reference": (lambda f: [str(f["room"]), str(f["text"])], "kontext",
                                 r"^image_2: this file is not an image we can read: .*notes\.txt"),
    "a missing reference": (lambda f: [str(f["room"]), "/nonexistent/ball.png"], "kontext",
                            r"^image_2='/nonexistent/ball\.png': no such file\.$"),
    "an empty entry": (lambda f: [str(f["room"]), None], "kontext", r"^image_2 is empty; give an image file"),
    "references too wide to join": (lambda f: [str(f["room"]), Image.new("RGB", (4096, 8))], "kontext",
                                    r"^image: image 128x96, image_2 4096x8 are too wide to join side by side"),
    "two images for canny": (lambda f: [str(f["room"]), str(f["ball"])], "canny",
                             r"^image: 2 images given, but the canny tool takes one; give one image \(--image once\); "
                             r"several are for the kontext and klein tools\.$"),
    "two images for redux": (lambda f: [str(f["room"]), str(f["ball"])], "redux", r"^image: 2 images given, but the "
                             "redux tool takes one"),
}


@pytest.mark.parametrize("images,tool,pattern", BAD.values(), ids=BAD.keys())
def test_bad_images_are_refused_with_one_line(refs, tiny_root, images, tool, pattern):
    with pytest.raises(UserError, match=pattern) as caught:
        GenerationRequest(tool=tool, image=images(refs), **{**RUN, "prompt": "x"})
    assert "\n" not in str(caught.value)


# ---- the engine: the references shape the edit; the report and PNG name every input ---------------------------

def pixels(result) -> np.ndarray:
    return np.asarray(result.image, dtype=np.int16)


def test_references_change_the_edit_and_are_recorded(studio, refs, tmp_path):
    one = studio.generate(GenerationRequest(tool="kontext", image=str(refs["room"]), **RUN))
    two = studio.generate(GenerationRequest(tool="kontext", image=[str(refs["room"]), str(refs["ball"])], **RUN))
    three = studio.generate(GenerationRequest(tool="kontext", image=[str(refs["room"]), str(refs["ball"]),
                                                                     str(refs["cup"])], **RUN))
    assert one.image.size == two.image.size == three.image.size == (128, 96)  # the first image sets the size
    assert not np.array_equal(pixels(one), pixels(two)) and not np.array_equal(pixels(two), pixels(three))
    assert "conditioning" not in one.report and list(one.report["parameters"]["inputs"]) == ["image"]
    joined = three.report["conditioning"]
    assert joined["method"] == "concatenated" and joined["inputs"] == ["image", "image_2", "image_3"]
    height, widths = side_by_side_layout([(128, 96), (80, 120), (160, 64)], 128 * 128)
    assert joined["size"] == [sum(widths), height]
    inputs = three.report["parameters"]["inputs"]
    assert [(item["name"], item["sha256"]) for item in inputs.values()] == [
        (refs[key].name, sha256(refs[key])) for key in ("room", "ball", "cup")]
    path = three.save(tmp_path / "edit.png")
    meta = read_metadata(path)
    assert meta["inputs"] == inputs and meta["conditioning"] == joined
    text = Image.open(path).text["parameters"]
    for name, key in (("image", "room"), ("image_2", "ball"), ("image_3", "cup")):
        assert f"{name} {refs[key].name} sha256 {sha256(refs[key])[:16]}" in text


def test_reference_order_matters(studio, refs):
    ball_cup = studio.generate(GenerationRequest(tool="kontext", image=[str(refs["room"]), str(refs["ball"]),
                                                                        str(refs["cup"])], **RUN))
    cup_ball = studio.generate(GenerationRequest(tool="kontext", image=[str(refs["room"]), str(refs["cup"]),
                                                                        str(refs["ball"])], **RUN))
    assert not np.array_equal(pixels(ball_cup), pixels(cup_ball))
    assert cup_ball.report["parameters"]["inputs"]["image_2"]["name"] == "cup.png"


# ---- the CLI: --image repeatable for Kontext, refused twice elsewhere ---------------------------------------------

def test_cli_kontext_with_two_images(refs, tmp_path, tiny_root, capsys):
    out, report = tmp_path / "edit.png", tmp_path / "edit.json"
    code = cli.main(["generate", "--tool", "kontext", "--prompt", "put the ball in the room", "--model", "tiny",
                     "--image", str(refs["room"]), "--image", str(refs["ball"]), "--steps", "2", "--seed", "3",
                     "--out", str(out), "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["conditioning"]["method"] == "concatenated"
    assert {name: item["name"] for name, item in data["parameters"]["inputs"].items()} == {
        "image": "photo.png", "image_2": "ball.png"}
    assert data["parameters"]["inputs"]["image_2"]["sha256"] == sha256(refs["ball"])
    assert read_metadata(out)["inputs"] == data["parameters"]["inputs"]
    assert Image.open(out).size == (128, 96)


def test_cli_refuses_two_images_for_a_one_image_tool(refs, tmp_path, tiny_root, capsys):
    out = tmp_path / "x.png"
    code = cli.main(["generate", "--tool", "depth", "--prompt", "x", "--model", "tiny", "--image", str(refs["room"]),
                     "--image", str(refs["ball"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.strip() == ("error: image: 2 images given, but the depth tool takes one; give one image (--image "
                           "once); several are for the kontext and klein tools.")


def test_cli_refuses_an_unreadable_reference(refs, tmp_path, tiny_root, capsys):
    out = tmp_path / "x.png"
    code = cli.main(["generate", "--tool", "kontext", "--prompt", "x", "--model", "tiny", "--image", str(refs["room"]),
                     "--image", str(refs["empty"]), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists() and "\n" not in err
    assert err == "error: image_2: this file is not an image we can read: " + str(refs["empty"]) + \
        " is an empty file (0 bytes)."


# ---- the studio's API: the Kontext endpoint takes reference images -----------------------------------------------

API = dict(prompt="put the ball in the room", steps=2, guidance=3.5, quant="auto", match=True, width=128,
           height=128, seed=3, randomize=False, api_name="/kontext")


@pytest.fixture(scope="module")
def client(api_studio):  # noqa: F811
    from gradio_client import Client

    return Client(api_studio.url, verbose=False, download_files=True)


@pytest.mark.slow
def test_the_kontext_endpoint_takes_reference_images(client, refs):
    from gradio_client import handle_file

    result = client.predict(image=handle_file(str(refs["room"])),
                            references=[handle_file(str(refs["ball"])), handle_file(str(refs["cup"]))], **API)
    image_path, status = result[0], result[2]
    meta = read_metadata(image_path)
    assert {name: (item["name"], item["sha256"]) for name, item in meta["inputs"].items()} == {
        "image": ("photo.png", sha256(refs["room"])), "image_2": ("ball.png", sha256(refs["ball"])),
        "image_3": ("cup.png", sha256(refs["cup"]))}
    assert meta["conditioning"]["method"] == "concatenated"
    assert "3 images concatenated side by side: photo.png + ball.png + cup.png" in status


@pytest.mark.slow
@pytest.mark.parametrize("key,shown", [("text_png", "notes.png"), ("empty", "empty.png"),
                                       ("truncated", "truncated.png")])
def test_the_kontext_endpoint_refuses_a_bad_reference_in_one_line(client, refs, tmp_path, key, shown):
    from gradio_client import handle_file
    from gradio_client.exceptions import ValidationError

    refs = dict(refs, text_png=tmp_path / "notes.png")
    refs["text_png"].write_text("not an image")
    with pytest.raises(ValidationError) as caught:  # refused before the queue, the message on its input
        client.predict(image=handle_file(str(refs["room"])), references=[handle_file(str(refs["ball"])),
                                                                         handle_file(str(refs[key]))], **API)
    (line,) = [line for line in str(caught.value).splitlines() if line.startswith("- references: ")]
    message = line[len("- references: "):]
    assert message.startswith(f"references: this file is not an image we can read: {shown} "), message
    assert "\n" not in message and "/tmp/" not in message and "Traceback" not in message


@pytest.mark.slow
def test_the_kontext_endpoint_refuses_too_many_references(client, refs):
    from gradio_client import handle_file

    many = [handle_file(str(refs["ball"]))] * defaults.KONTEXT_MAX_IMAGES
    with pytest.raises(Exception) as caught:
        client.predict(image=handle_file(str(refs["room"])), references=many, **API)
    assert (f"references: {defaults.KONTEXT_MAX_IMAGES} files; Kontext takes up to "
            f"{defaults.KONTEXT_MAX_IMAGES - 1} reference images: remove some.") in str(caught.value)
