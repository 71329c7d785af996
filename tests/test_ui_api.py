"""Every tool through the studio's HTTP API (gradio_client), on the tiny model, plus the serving rules."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import ValidationError
from PIL import Image

from pipelines import defaults
from pipelines.errors import UserError
from quantization.policy import candidates
from tests.ui_fixtures import api_studio, asset, brush_mask, start_studio, web_studio  # noqa: F401

pytestmark = pytest.mark.slow

SETTINGS = dict(steps=2, guidance=3.5, quant="auto", width=128, height=128, seed=11, randomize=False)
IMAGE_SETTINGS = dict(SETTINGS, match=True)


@pytest.fixture(scope="module")
def client(api_studio):  # noqa: F811
    return Client(api_studio.url, verbose=False, download_files=True)


def metadata(path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["fluxforge"])


def check_result(result, tool: str, seed: int = 11, size=(128, 128)) -> dict:
    image_path, download, status, warning, _notices, gallery, used_seed = result[:7]
    with Image.open(image_path) as image:
        assert image.format == "PNG" and image.size == size
    meta = metadata(image_path)  # the served file is the saved PNG, metadata intact
    assert meta["tool"] == tool and meta["seed"] == seed and meta["model"] == "tiny"
    assert "quantization_summary" in meta
    assert metadata(download["value"])["seed"] == seed
    assert "transformer" in status and "peak" in status and "denoise" in status
    assert warning["visible"] is False
    assert gallery and gallery[0]["caption"].startswith(tool)
    assert used_seed == seed
    return meta


def test_only_the_tools_are_public(client):
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert endpoints == {"/generate", "/fill", "/kontext", "/depth", "/canny", "/redux", "/png_info"}


@pytest.mark.parametrize("variant", ["schnell", "dev"])
def test_generate(client, variant):
    result = client.predict(tool=variant, prompt="a lighthouse", **SETTINGS, api_name="/generate")
    meta = check_result(result, variant)
    assert meta["steps"] == 2 and meta["prompt"] == "a lighthouse"


def painted_room(tmp_path) -> dict:
    """The Fill editor's value: the example room with a brushed layer (what the page sends)."""
    room = Image.open(asset("example-room.png"))
    layer = tmp_path / "layer.png"
    brush_mask(room.size, (60, 100, 120, 160)).save(layer)
    return {"background": handle_file(asset("example-room.png")), "layers": [handle_file(str(layer))],
            "composite": handle_file(asset("example-room.png"))}


def test_fill_inpaint_with_a_painted_layer(client, tmp_path):
    editor = painted_room(tmp_path)
    result = client.predict(mode="inpaint", editor=editor, left=0, top=0, right=0, bottom=0, prompt="a plant",
                            reference=None, **IMAGE_SETTINGS, api_name="/fill")
    assert check_result(result, "fill")["expand"] is None


def test_fill_outpaint_grows_the_canvas(client):
    editor = {"background": handle_file(asset("example-room.png")), "layers": [], "composite": None}
    result = client.predict(mode="outpaint", editor=editor, left=0, top=0, right=64, bottom=0, prompt="more room",
                            reference=None, **IMAGE_SETTINGS, api_name="/fill")
    assert check_result(result, "fill", size=(320, 256))["expand"] == [0, 0, 64, 0]


def test_fill_with_a_reference_image(client, tmp_path):
    room = Image.open(asset("example-room.png"))
    layer = tmp_path / "layer.png"
    brush_mask(room.size, (0, 0, 128, 128)).save(layer)
    editor = {"background": handle_file(asset("example-room.png")), "layers": [handle_file(str(layer))],
              "composite": None}
    result = client.predict(mode="inpaint", editor=editor, left=0, top=0, right=0, bottom=0, prompt="a boat",
                            reference=handle_file(asset("example-boat.png")), **IMAGE_SETTINGS, api_name="/fill")
    check_result(result, "fill")


def test_fill_without_a_mask_is_refused(client):
    editor = {"background": handle_file(asset("example-room.png")), "layers": [], "composite": None}
    with pytest.raises(Exception, match="No mask drawn"):
        client.predict(mode="inpaint", editor=editor, left=0, top=0, right=0, bottom=0, prompt="a plant",
                       reference=None, **IMAGE_SETTINGS, api_name="/fill")


def test_kontext(client):
    result = client.predict(image=handle_file(asset("example-house.png")), prompt="make it night",
                            **IMAGE_SETTINGS, api_name="/kontext")
    check_result(result, "kontext")


def test_kontext_without_an_image_is_refused(client):
    with pytest.raises(Exception, match="upload an input image"):
        client.predict(image=None, prompt="make it night", **IMAGE_SETTINGS, api_name="/kontext")


@pytest.mark.parametrize("tool", ["depth", "canny"])
def test_control_tools_show_their_map(client, tool):
    extra = {"lo": 50, "hi": 150} if tool == "canny" else {}
    result = client.predict(image=handle_file(asset("example-house.png")), map_image=None, choice="photo",
                            prompt="a cottage", **extra, **IMAGE_SETTINGS, api_name=f"/{tool}")
    meta = check_result(result, tool)
    with Image.open(result[7]) as control:
        assert control.size == (128, 128)
    if tool == "canny":
        assert (meta["canny_low"], meta["canny_high"]) == (50, 150)


def test_canny_with_an_uploaded_map(client):
    result = client.predict(image=None, map_image=handle_file(asset("example-boat.png")), choice="upload",
                            prompt="a boat", lo=100, hi=200, **IMAGE_SETTINGS, api_name="/canny")
    check_result(result, "canny")


def test_redux_variations(client):
    result = client.predict(image=handle_file(asset("example-boat.png")), prompt="", count=2, **IMAGE_SETTINGS,
                            api_name="/redux")
    gallery = result[5]
    assert [item["caption"].split(" · ")[1] for item in gallery[:2]] == ["seed 12", "seed 11"]
    assert metadata(result[0])["seed"] == 12  # the newest is shown


def test_a_batch_returns_every_image_with_the_next_seeds(client):
    result = client.predict(tool="schnell", prompt="a lighthouse", **SETTINGS, count=3, api_name="/generate")
    gallery = result[5]
    assert [item["caption"].split(" · ")[1] for item in gallery[:3]] == ["seed 13", "seed 12", "seed 11"]
    assert sorted(metadata(item["image"])["seed"] for item in gallery[:3]) == [11, 12, 13]
    assert metadata(result[0])["seed"] == 13 and result[6] == 11  # the newest shown; the seed box keeps the first
    assert "3 images" in result[2] and "seeds 11, 12, 13" in result[2]


HIRES_OFF = [1.0, defaults.HIRES_STRENGTH, 0, "Lanczos"]  # Generate's hires fix inputs, off (scale 1)


def sse_events(url: str, name: str, data: list) -> list[tuple[str, object]]:
    """POST /gradio_api/call/<name>, then read its server-sent events: (event, data) pairs in order."""
    event_id = httpx.post(f"{url}gradio_api/call/{name}", json={"data": data}, timeout=60).json()["event_id"]
    events, kind = [], None
    with httpx.stream("GET", f"{url}gradio_api/call/{name}/{event_id}", timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1])))
    return events


def test_call_route_streams_previews_then_ends_with_the_final_result(api_studio):  # noqa: F811
    data = ["dev", "a lighthouse", 6, 3.5, "auto", 128, 128, 21, False, [], None, 1.0, 1, True, None, None, 0.6,
            *HIRES_OFF, []]
    events = sse_events(api_studio.url, "generate", data)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "complete" and "generating" in kinds, kinds
    final = events[-1][1]
    saved = final[0]["path"]
    assert (api_studio.output_dir / Path(saved).name).is_file() and metadata(saved)["seed"] == 21
    shown = [Path(payload[0]["path"]).name for kind, payload in events if kind == "generating" and payload[0]]
    previews = [name for name in shown if not (api_studio.output_dir / name).exists()]
    assert len(previews) >= 1 and shown.index(previews[0]) < shown.index(Path(saved).name)
    assert final[7] == 21  # every output in the last event (the history state, [6], is not sent), as without previews
    off = sse_events(api_studio.url, "generate", data[:-9] + [False, None, None, 0.6, *HIRES_OFF, []])
    assert [kind for kind, _ in off][-1] == "complete" and metadata(off[-1][1][0]["path"])["seed"] == 21


def test_bad_numbers_are_refused_with_the_reason(client):
    with pytest.raises(Exception, match="prompt is 2500 characters; the limit is 2000"):
        client.predict(tool="dev", prompt="c" * 2500, **SETTINGS, api_name="/generate")
    # Out-of-range slider values are refused by Gradio itself while it reads the input: gradio_client shows the
    # reason (not a bare "400 Bad Request"), on the parameter it is about.
    with pytest.raises(ValidationError, match=r"- steps: steps: Value 0 is less than minimum value 1"):
        client.predict(tool="dev", prompt="cat", **{**SETTINGS, "steps": 0}, api_name="/generate")
    with pytest.raises(ValidationError, match=r"- count: count: Value 99 is greater than maximum value 8"):
        client.predict(tool="dev", prompt="cat", **SETTINGS, count=99, api_name="/generate")
    with pytest.raises(ValidationError, match=r"- quant: quant: .*16bit"):
        client.predict(tool="dev", prompt="cat", **{**SETTINGS, "quant": "16bit"}, api_name="/generate")


def test_forced_fallback_is_reported(client, api_studio, monkeypatch):  # noqa: F811
    manager = api_studio.demo.studio_manager
    monkeypatch.setenv("FLUXFORGE_DISABLE_BACKENDS", "bitsandbytes,torchao,quanto")
    manager.unload()
    try:
        result = client.predict(tool="dev", prompt="cat", **{**SETTINGS, "quant": "8bit"}, api_name="/generate")
    finally:
        manager.unload()  # nothing degraded stays loaded for other tests
    warning = result[3]
    assert warning["visible"] is True
    assert "Quantization fell back" in warning["value"] and "disabled by FLUXFORGE_DISABLE_BACKENDS" in warning["value"]
    assert metadata(result[0])["quantization"]["fallbacks"]


# ---- serving rules -------------------------------------------------------------------------------------

def test_api_is_closed_by_default(web_studio):  # noqa: F811
    info = httpx.get(web_studio.url + "gradio_api/info", timeout=30).json()
    assert info["named_endpoints"] == {}
    response = httpx.post(web_studio.url + "gradio_api/run/generate", timeout=30,
                          json={"data": ["dev", "cat", 2, 3.5, "auto", 128, 128, 1, False, []]})
    assert response.status_code == 404
    config = httpx.get(web_studio.url + "config", timeout=30).json()
    assert "api" not in config["footer_links"]
    assert config["max_file_size"] > 0


def test_output_folder_is_the_only_allowed_path(web_studio):  # noqa: F811
    blocks = web_studio.demo
    assert blocks.allowed_paths == [str(web_studio.output_dir.resolve())]
    assert not blocks.share


def test_a_full_queue_says_so(tmp_path):
    studio = start_studio(tmp_path, api=True, queue_size=1)
    try:
        def slow(request, progress=None, **options):
            time.sleep(4)
            raise UserError("stopped on purpose")

        studio.demo.studio_runner.engine.generate = slow
        client = Client(studio.url, verbose=False)
        jobs = []
        for _ in range(3):  # one at a time: joins that race each other are all checked against an empty queue
            jobs.append(client.submit(tool="dev", prompt="cat", **SETTINGS, api_name="/generate"))
            time.sleep(1)
        messages = []
        for job in jobs:
            try:
                job.result()
            except Exception as error:  # noqa: BLE001
                messages.append(str(error))
        assert messages.count("stopped on purpose") == 2  # one ran, one waited
        assert any("Queue is full" in m for m in messages)
    finally:
        studio.close()


def test_booleans_are_read_strictly(api_studio):  # noqa: F811
    """"false" is false (no previews, the seed as given), "true" true; anything else is refused with its reason."""
    data = ["dev", "a lighthouse", 6, 3.5, "auto", 128, 128, 23, "false", [], None, 1.0, 1, "false", None, None, 0.6,
            *HIRES_OFF, []]
    events = sse_events(api_studio.url, "generate", data)
    kinds = [kind for kind, _ in events if kind != "heartbeat"]
    assert kinds == ["generating", "complete"], kinds  # the result, then the end: no previews streamed
    first, last = [data for kind, data in events if kind != "heartbeat"]
    assert first[0]["path"] == last[0]["path"]
    assert metadata(events[-1][1][0]["path"])["seed"] == 23  # randomize="false": the seed given
    on = sse_events(api_studio.url, "generate", data[:-9] + ["TRUE", None, None, 0.6, *HIRES_OFF, []])
    assert "generating" in [kind for kind, _ in on]
    response = httpx.post(f"{api_studio.url}gradio_api/call/generate",
                          json={"data": data[:-9] + ["yes", None, None, 0.6, *HIRES_OFF, []]},
                          timeout=60)
    assert response.status_code == 422
    refused = [item for item in response.json()["detail"] if not item["is_valid"]]
    assert [(item["parameter_name"], item["message"]) for item in refused] == [
        ("previews", "previews='yes' is not true or false.")]


def test_a_refusal_reaches_gradio_client_with_its_reason_on_every_route(api_studio, tmp_path):  # noqa: F811
    """What Gradio itself refuses while reading an input (a slider's range, a file that is not an image) comes back
    as the validator's refusals do: HTTP 422 with the message on its input, which gradio_client shows."""
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    client = Client(api_studio.url, verbose=False)
    with pytest.raises(ValidationError) as refused:
        client.predict(image=handle_file(str(fake)), prompt="make it night", **IMAGE_SETTINGS, api_name="/kontext")
    assert "- image: image: this file is not an image we can read: notes.png" in str(refused.value)
    data = ["dev", "a lighthouse", 0, 3.5, "auto", 128, 128, 1, False, [], None, 1.0, 1, False, None, None, 0.6,
            *HIRES_OFF, []]
    response = httpx.post(f"{api_studio.url}gradio_api/call/generate", json={"data": data}, timeout=60)
    assert response.status_code == 422 and "Bad Request" not in response.text
    refused = [(item["parameter_name"], item["message"]) for item in response.json()["detail"] if not item["is_valid"]]
    assert refused == [("steps", "steps: Value 0 is less than minimum value 1.")]


# ---- models ------------------------------------------------------------------------------------------------------
def test_every_tool_takes_a_model_and_refuses_one_it_is_not_offered(client, tiny_root):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/generate", "/fill", "/kontext", "/depth", "/canny", "/redux"):
        assert "model" in [p["parameter_name"] for p in info[name]["parameters"]], name
    result = client.predict(tool="schnell", prompt="a lighthouse", **SETTINGS, model="tiny", api_name="/generate")
    assert metadata(result[0])["model"] == "tiny"
    for value in (str(tiny_root / "fill"), "/etc", "someone/anything"):
        with pytest.raises(Exception, match="is not one of the schnell tool's models; choose one from its Model list"):
            client.predict(tool="schnell", prompt="a lighthouse", **SETTINGS, model=value, api_name="/generate")


def test_an_official_model_downloads_on_first_use_and_a_gated_one_says_how_to_get_it(client, hub_home, local_hub):
    result = client.predict(tool="schnell", prompt="a lighthouse", **SETTINGS, model="black-forest-labs/FLUX.1-schnell",
                            api_name="/generate")
    assert metadata(result[0])["model"] == "black-forest-labs/FLUX.1-schnell"
    assert local_hub.downloads("black-forest-labs/FLUX.1-schnell")
    with pytest.raises(Exception) as refused:
        client.predict(tool="dev", prompt="a lighthouse", **SETTINGS, model="black-forest-labs/FLUX.1-dev",
                       api_name="/generate")
    message = str(refused.value)
    assert "is gated: accept its licence on https://huggingface.co/black-forest-labs/FLUX.1-dev" in message
    assert "hf auth login" in message and "Traceback" not in message


def test_png_info_reads_our_png_and_refuses_a_file_that_is_not_an_image(client, tmp_path):
    made = client.predict(tool="dev", prompt="a red fox, snow", **dict(SETTINGS, seed=23), api_name="/generate")
    info = client.predict(handle_file(made[0]), api_name="/png_info")
    assert info["source"] == "FluxForge Studio" and info["not_restored"] == []
    assert {k: info["restore"][k] for k in ("tool", "prompt", "seed", "steps", "guidance", "width", "height")} == {
        "tool": "dev", "prompt": "a red fox, snow", "seed": 23, "steps": 2, "guidance": 3.5, "width": 128,
        "height": 128}
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    with pytest.raises(Exception) as error:
        client.predict(handle_file(str(fake)), api_name="/png_info")
    assert "notes.png" in str(error.value) and str(tmp_path) not in str(error.value)


def test_generate_image_to_image_over_the_api(client):
    result = client.predict(tool="schnell", prompt="a boat", **SETTINGS, image=handle_file(asset("example-boat.png")),
                            strength=0.5, api_name="/generate")
    meta = check_result(result, "schnell")
    assert meta["strength"] == 0.5 and meta["inputs"]["image"]["name"] == "example-boat.png"


def test_generate_hires_fix_over_the_api(client, upscaler_dir):
    """The hires fix's parameters as the page's Hires fix accordion sends them (scale 1: off; steps 0: as steps)."""
    settings = dict(SETTINGS, width=64, height=64)
    result = client.predict(tool="dev", prompt="a tower", **settings, hires_scale=2, hires_strength=0.5,
                            hires_steps=3, hires_upscaler="tiny-esrgan-2x.safetensors", api_name="/generate")
    meta = check_result(result, "dev", size=(128, 128))
    assert meta["hires"]["upscaler"] == "tiny-esrgan-2x.safetensors" and meta["hires"]["steps"] == 3
    assert meta["hires"]["first_pass"]["size"] == [64, 64] and meta["hires"]["strength"] == 0.5
    assert meta["hires"]["upscaler_model"]["architecture"] == "ESRGAN"
    result = client.predict(tool="schnell", prompt="a tower", **settings, hires_scale=1.5, api_name="/generate")
    meta = check_result(result, "schnell", size=(96, 96))
    assert meta["hires"]["upscaler"] == "Lanczos" and meta["hires"]["steps"] == 2
    plain = client.predict(tool="schnell", prompt="a tower", **settings, hires_scale=1, api_name="/generate")
    assert "hires" not in check_result(plain, "schnell", size=(64, 64))
    with pytest.raises(ValidationError) as refused:
        client.predict(tool="dev", prompt="a tower", **settings, hires_scale=2, hires_upscaler="nope.pth",
                       api_name="/generate")
    assert "hires_upscaler='nope.pth' is not an upscaler in FLUXFORGE_UPSCALER_DIR" in str(refused.value)
    assert str(upscaler_dir) not in str(refused.value)


@pytest.mark.parametrize("quant", ["none", "8bit", "4bit"])
def test_klein_in_generate_edit_and_fill(client, tmp_path, quant):
    """FLUX.2 [klein] through the API: Generate's variant, the Edit tab's model choice (the input image and a
    reference, each recorded with its sha256) and Fill's klein inpaint; the report names each component's backend."""
    settings = dict(SETTINGS, quant=quant)
    meta = check_result(client.predict(tool="klein", prompt="a lighthouse", **settings, api_name="/generate"),
                        "klein")
    assert set(meta["quantization"]["components"]) == {"transformer", "text_encoder", "vae"}
    assert meta["quantization"]["components"]["text_encoder"]["backend"] == (
        "none" if quant == "none" else candidates(quant, "cpu")[0].backend)

    result = client.predict(image=handle_file(asset("example-house.png")), prompt="make it night",
                            **dict(IMAGE_SETTINGS, quant=quant), references=[handle_file(asset("example-boat.png"))],
                            editor="klein", api_name="/kontext")
    meta = check_result(result, "klein")
    assert list(meta["inputs"]) == ["image", "image_2"] and all(len(v["sha256"]) == 64
                                                                  for v in meta["inputs"].values())
    assert meta["conditioning"]["method"] == "references"

    editor = painted_room(tmp_path)
    result = client.predict(mode="inpaint", editor=editor, left=0, top=0, right=0, bottom=0, prompt="a plant",
                            reference=None, **dict(IMAGE_SETTINGS, quant=quant), filler="klein_inpaint",
                            api_name="/fill")
    meta = check_result(result, "klein_inpaint")
    assert meta["quantization"]["components"]["transformer"]["backend"] == (
        "none" if quant == "none" else candidates(quant, "cpu")[0].backend)


def test_klein_inpaint_refuses_outpainting(client):
    editor = {"background": handle_file(asset("example-room.png")), "layers": [], "composite": None}
    with pytest.raises(Exception, match="inpaints only"):
        client.predict(mode="outpaint", editor=editor, left=0, top=0, right=64, bottom=0, prompt="more room",
                       reference=None, **IMAGE_SETTINGS, filler="klein_inpaint", api_name="/fill")
