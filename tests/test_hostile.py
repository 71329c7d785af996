"""Hostile and malformed input: every case refused before it is queued, with a readable message.

Two ways in: the studio's functions through gradio_client (API open, as with --api), and raw HTTP
queue joins against the default server (API closed, as the page itself sends them). Each table ends
with a normal request that still works.
"""

from __future__ import annotations

import http.server
import json
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.ui_fixtures import api_studio, at_once, web_studio  # noqa: F401

pytestmark = pytest.mark.slow

NO_LORAS = dict(loras_picked=[], loras_uploaded=None, lora_strength=1.0)
LORA_ORDER = list(NO_LORAS)
ONE = dict(count=1, previews=True)  # images per click, live previews
GEN = dict(tool="schnell", prompt="a cat", steps=2, guidance=3.5, quant="auto", width=128, height=128, seed=1,
           randomize=False, **NO_LORAS, **ONE, model=None, image=None, strength=0.6, hires_scale=1.0,
           hires_strength=0.35, hires_steps=0, hires_upscaler="Lanczos")
KON = dict(prompt="make it night", steps=2, guidance=3.5, quant="auto", match=True, width=128, height=128, seed=1,
           randomize=False, **NO_LORAS, **ONE, references=None, model=None)
GEN_ORDER = ["tool", "prompt", "steps", "guidance", "quant", "width", "height", "seed", "randomize", *LORA_ORDER,
             *ONE, "model", "image", "strength", "hires_scale", "hires_strength", "hires_steps", "hires_upscaler"]
KON_ORDER = ["image", "prompt", "steps", "guidance", "quant", "match", "width", "height", "seed", "randomize",
             *LORA_ORDER, *ONE, "references", "model"]
READABLE = 400  # a message, not a dump


# ---- hostile files ---------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 30000) -> bytes:
    """A few kB of PNG that declares side x side RGB pixels."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * (side * 3 + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    good = root / "good.png"
    Image.new("RGB", (96, 96), (200, 120, 40)).save(good)
    made = {
        "good": good,
        "empty": root / "empty.png",
        "truncated": root / "truncated.png",
        "bomb": root / "bomb.png",
        "mid_bomb": root / "mid-bomb.png",
        "svg": root / "image.svg",
        "html": root / "page.png",
        "text": root / "notes.txt",
        "tiny": root / "tiny.png",
        "big": root / "big.png",
    }
    made["empty"].write_bytes(b"")
    made["truncated"].write_bytes(good.read_bytes()[:60])
    made["bomb"].write_bytes(bomb_png(30000))
    made["mid_bomb"].write_bytes(bomb_png(9000))  # 81 MPixels: over the engine's 64, under PIL's own 128
    made["svg"].write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><script>alert(1)'
                           '</script></svg>')
    made["html"].write_text("<html><body>not an image</body></html>")
    made["text"].write_text("hello")
    Image.new("RGB", (4, 4)).save(made["tiny"])
    made["big"].write_bytes(good.read_bytes() + b"\x00" * (26 * 2**20))  # over the 25 MB upload limit
    return made


class Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        Recorder.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(b"\x89PNG")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def listener():
    """A local HTTP server that records every request: file 'URLs' must never reach it."""
    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


# ---- the gradio_client table (API open) ---------------------------------------------------------------------

GENERATE_CASES = [
    ("prompt 100k chars", dict(prompt="a" * 100_000), r"prompt.*limit"),
    ("prompt NUL", dict(prompt="a\x00b"), r"control characters"),
    ("prompt ESC", dict(prompt="red \x1b[31m cat"), r"control characters"),
    ("prompt blank", dict(prompt="   \n "), r"Write a prompt"),
    ("width 0", dict(width=0), r"minimum|width"),
    ("width negative", dict(width=-64), r"minimum|width"),
    ("width 8192", dict(width=8192), r"maximum|width"),
    ("height 100000", dict(height=100_000), r"maximum|height"),
    ("steps 0", dict(steps=0), r"minimum|steps"),
    ("steps 10000", dict(steps=10_000), r"maximum|steps"),
    ("guidance -1", dict(guidance=-1), r"minimum|guidance"),
    ("guidance 1000", dict(guidance=1000), r"maximum|guidance"),
    ("seed -1", dict(seed=-1), r"minimum|seed"),
    ("seed 2^64", dict(seed=2**64), r"maximum|seed"),
    ("quant unknown", dict(quant="16bit"), r"16bit|choice|quant"),
    ("tool unknown", dict(tool="pro"), r"pro|choice|schnell"),
]


def refusal(error: Exception) -> str:
    """The message a client sees: the server's message for the refused input (gradio_client lists it as
    "- <parameter>: <message>" under "1 parameter(s) failed validation:"), or the HTTP detail for a 4xx."""
    from gradio_client.exceptions import ValidationError

    if isinstance(error, ValidationError):
        listed = [line[2:].split(": ", 1)[-1] for line in str(error).splitlines() if line.startswith("- ")]
        assert listed, str(error)
        return " ".join(listed)
    response = getattr(error, "response", None)
    if response is not None:
        assert 400 <= response.status_code < 500, response.status_code
        try:
            return validation_message(response.json().get("detail", response.text))
        except ValueError:
            return response.text
    return str(error)


def assert_readable(message: str, pattern: str) -> None:
    import re

    assert message and len(message) < READABLE * 3 and "Traceback" not in message, message
    assert re.search(pattern, message, re.I), message


@pytest.fixture(scope="module")
def client(api_studio):  # noqa: F811
    return Client(api_studio.url, verbose=False)


@pytest.mark.parametrize("name,change,pattern", GENERATE_CASES, ids=[c[0] for c in GENERATE_CASES])
def test_generate_refuses(client, name, change, pattern):
    with pytest.raises(Exception) as caught:
        client.predict(**dict(GEN, **change), api_name="/generate")
    assert_readable(refusal(caught.value), pattern)


IMAGE_CASES = [
    ("0-byte file", "empty", r"cannot identify|not|image"),
    ("truncated PNG", "truncated", r"truncated|cannot identify|image"),
    ("30000x30000 bomb", "bomb", r"pixels|bomb|exceeds"),
    ("81 MPixel bomb", "mid_bomb", r"pixels|bomb|exceeds"),
    ("SVG with script", "svg", r"SVG|not supported"),
    ("HTML as .png", "html", r"cannot identify|image"),
    ("text file", "text", r"cannot identify|image"),
    ("4x4 image", "tiny", r"8x8|at least"),
]


@pytest.mark.parametrize("name,key,pattern", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_kontext_refuses_bad_images(client, files, name, key, pattern):
    with pytest.raises(Exception) as caught:
        client.predict(image=handle_file(str(files[key])), **KON, api_name="/kontext")
    assert_readable(refusal(caught.value), pattern)


def test_an_upload_over_the_limit_is_refused(client, files):
    with pytest.raises(Exception) as caught:
        client.predict(image=handle_file(str(files["big"])), **KON, api_name="/kontext")
    assert_readable(str(caught.value), r"exceeds the maximum file size")


@pytest.mark.parametrize("host", ["169.254.169.254/latest/meta-data/", "127.0.0.1:{port}/secret.png",
                                  "localhost:{port}/x.png", "[::1]:{port}/x.png", "10.0.0.1/x.png"])
def test_image_urls_are_never_fetched(client, listener, host):
    port = listener.rsplit(":", 1)[1]
    url = "http://" + host.format(port=port)
    data = handle_file(url)  # gradio_client does not fetch it either: it passes the URL on
    assert data["url"] == url and data["path"] == url
    Recorder.hits.clear()
    with pytest.raises(Exception) as caught:
        client.predict(image=data, **KON, api_name="/kontext")
    assert_readable(refusal(caught.value), r"failed validation|not allowed|hostname|url")
    assert Recorder.hits == []


def test_the_api_studio_still_serves(client, files):
    result = client.predict(image=handle_file(str(files["good"])), **KON, api_name="/kontext")
    assert Path(result[0]).is_file()
    result = client.predict(**GEN, api_name="/generate")
    assert Path(result[0]).is_file()


# ---- raw HTTP against the default server (API closed) -------------------------------------------------------

def fn_index(url: str, api_name: str) -> int:
    config = httpx.get(url + "config", timeout=30).json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)


def join(url: str, index: int, data: list, raw: str | None = None) -> httpx.Response:
    body = {"data": data, "fn_index": index, "session_hash": "hostile", "event_data": None, "trigger_id": None}
    content = raw if raw is not None else json.dumps(body)
    return httpx.post(url + "gradio_api/queue/join", content=content, timeout=30,
                      headers={"Content-Type": "application/json"})


def generate_data(**change) -> list:
    values = dict(GEN, **change)
    return [values[k] for k in GEN_ORDER] + [[]]


RAW_GENERATE = [
    ("prompt 100k chars", dict(prompt="b" * 100_000), r"limit"),
    ("prompt control chars", dict(prompt="x\x07\x08y"), r"control characters"),
    ("prompt 2001 chars", dict(prompt="c" * 2001), r"limit"),
    ("prompt unit separator", dict(prompt="cat\x1f"), r"control characters"),
    ("width NaN", dict(width=float("nan")), r"nan|number|width|valid"),
    ("width inf", dict(width=float("inf")), r"inf|number|width|maximum|valid"),
    ("steps NaN", dict(steps=float("nan")), r"nan|number|steps|valid"),
    ("guidance -inf", dict(guidance=float("-inf")), r"inf|minimum|guidance|valid"),
    ("seed 2^64", dict(seed=2**64), r"maximum|seed"),
    ("seed -1", dict(seed=-1), r"minimum|seed"),
    ("steps as text", dict(steps="many"), r"number|steps|valid|many"),
]


@pytest.mark.parametrize("name,change,pattern", RAW_GENERATE, ids=[c[0] for c in RAW_GENERATE])
def test_raw_generate_refuses(web_studio, name, change, pattern):  # noqa: F811
    response = join(web_studio.url, fn_index(web_studio.url, "generate"), generate_data(**change))
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:200])
    assert_readable(validation_message(response.json().get("detail", response.text)), pattern)


def validation_message(detail) -> str:
    """The message of a refusal: the validator's message for the refused input, or the text itself."""
    if isinstance(detail, list):
        return " ".join(item["message"] for item in detail if isinstance(item, dict) and not item.get("is_valid"))
    return str(detail)


def test_raw_huge_bodies_are_refused(web_studio):  # noqa: F811
    index = fn_index(web_studio.url, "generate")
    response = join(web_studio.url, index, generate_data(prompt="d" * (20 * 2**20)))
    assert response.status_code == 413 and "too large" in response.text


def test_raw_garbage_bodies_are_refused(web_studio):  # noqa: F811
    index = fn_index(web_studio.url, "generate")
    for raw in ("", "{", "[]", "null", '{"data": "x", "fn_index": %d, "session_hash": "h"}' % index,
                "\x00" * 100):
        response = join(web_studio.url, index, [], raw=raw)
        assert 400 <= response.status_code < 500, (raw, response.status_code)
    # an unknown event number is a 500 inside Gradio's queue; the body says nothing of the server
    response = join(web_studio.url, index, [], raw='{"data": [], "fn_index": 99999, "session_hash": "h"}')
    assert response.status_code in (404, 422, 500) and "Traceback" not in response.text, response.text
    assert len(response.text) < READABLE


def kontext_data(image, **change) -> list:
    values = dict(KON, image=image, **change)
    return [values[k] for k in KON_ORDER] + [[], "kontext"]  # the history, then the Edit tab's model choice


def upload(url: str, path: Path) -> str:
    response = httpx.post(url + "gradio_api/upload", timeout=60, files={"files": (path.name, path.read_bytes())})
    response.raise_for_status()
    return response.json()[0]


def file_data(path: str, url: str | None = None) -> dict:
    data = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": Path(path).name}
    if url:
        data["url"] = url
    return data


@pytest.mark.parametrize("key", ["empty", "truncated", "bomb", "mid_bomb", "svg", "html"])
def test_raw_uploads_that_are_not_images_are_refused(web_studio, files, key):  # noqa: F811
    stored = upload(web_studio.url, files[key])
    response = join(web_studio.url, fn_index(web_studio.url, "kontext"), kontext_data(file_data(stored)))
    assert 400 <= response.status_code < 500, (key, response.status_code)
    message = validation_message(response.json().get("detail", response.text))
    assert message and len(message) < READABLE * 3 and "Traceback" not in response.text, response.text


def test_raw_upload_over_the_limit_is_refused(web_studio, files):  # noqa: F811
    response = httpx.post(web_studio.url + "gradio_api/upload", timeout=60,
                          files={"files": ("big.png", files["big"].read_bytes())})
    assert response.status_code == 413 and "exceeded maximum allowed size" in response.text


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/hostname", "../../../../etc/passwd", "app.py", ".env",
                                  "/proc/self/environ", "file:///etc/passwd", "~/.bashrc"])
def test_raw_paths_outside_the_upload_cache_are_refused(web_studio, path):  # noqa: F811
    response = join(web_studio.url, fn_index(web_studio.url, "kontext"), kontext_data(file_data(path)))
    assert 400 <= response.status_code < 500, (path, response.status_code)
    assert "root:" not in response.text


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/iam/", "{listener}/secret.png",
                                    "http://localhost:{port}/a.png", "http://0.0.0.0:{port}/a.png"])
def test_raw_file_urls_are_never_fetched(web_studio, listener, target):  # noqa: F811
    port = listener.rsplit(":", 1)[1]
    url = target.format(listener=listener, port=port)
    Recorder.hits.clear()
    for data in (file_data(url, url), file_data("x.png", url), {"url": url, "meta": {"_type": "gradio.FileData"}}):
        response = join(web_studio.url, fn_index(web_studio.url, "kontext"), kontext_data(data))
        assert 400 <= response.status_code < 500, (data, response.status_code)
    assert Recorder.hits == []


def test_the_default_server_still_serves(web_studio, files):  # noqa: F811
    assert httpx.get(web_studio.url, timeout=30).status_code == 200
    stored = upload(web_studio.url, files["good"])
    response = join(web_studio.url, fn_index(web_studio.url, "kontext"), kontext_data(file_data(stored)))
    assert response.status_code == 200 and "event_id" in response.json()
    # follow the job to its end, as the page does (bounded in time)
    deadline = time.monotonic() + 60
    completed = None
    with httpx.stream("GET", web_studio.url + "gradio_api/queue/data", params={"session_hash": "hostile"},
                      timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and '"process_completed"' in line:
                completed = json.loads(line[5:])
                break
            assert time.monotonic() < deadline
    assert completed is not None and completed["success"], completed


# ---- the limits hold on every route, from outside ---------------------------------------------------------------

QUEUE_SIZE, KEEP = 2, 3
NO_PATH = re.compile(r"(/tmp/|/root/|/home/|/var/|gradio_api/file=|\\\\|[A-Za-z]:\\\\)")


class Gate:
    """Wraps Engine.generate. While `hold` is set the first job waits on the device until released and every
    job then stops with a short error, so the queue is measured without generating anything."""

    def __init__(self, generate):
        self.generate = generate
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.now = 0
        self.lock = threading.Lock()

    def __call__(self, request, progress=None, **options):
        with self.lock:
            self.now += 1
        try:
            if not self.hold:
                return self.generate(request, progress, **options)
            self.entered.set()
            self.release.wait(timeout=120)
            from pipelines.errors import UserError

            raise UserError("stopped by the test")
        finally:
            with self.lock:
                self.now -= 1


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """The studio with --api, room for 2 waiting jobs and 3 kept outputs; the engine behind a Gate."""
    import os

    from tests.ui_fixtures import start_studio

    os.environ["FLUXFORGE_OUTPUT_KEEP"] = str(KEEP)
    try:
        running = start_studio(tmp_path_factory.mktemp("limited-outputs"), api=True, queue_size=QUEUE_SIZE)
    finally:
        os.environ.pop("FLUXFORGE_OUTPUT_KEEP", None)
    engine = running.demo.studio_runner.engine
    running.gate = engine.generate = Gate(engine.generate)
    yield running
    running.close()


def endpoint_order(url: str, name: str) -> list[str]:
    info = httpx.get(url + "gradio_api/info", timeout=30).json()
    return [p["parameter_name"] for p in info["named_endpoints"][f"/{name}"]["parameters"]]


def tool_values(files: dict[str, Path], masks: dict[str, Path], as_file) -> dict[str, dict]:
    """Valid values, by parameter name, for each endpoint that starts a generation."""
    good = as_file(files["good"])
    editor = {"background": good, "layers": [as_file(masks["mask"])], "composite": good}
    size = dict(steps=2, guidance=3.5, quant="auto", match=True, width=128, height=128, seed=1, randomize=False,
                **NO_LORAS, **ONE, model=None)
    return {
        "generate": dict(GEN),
        "fill": dict(mode="inpaint", editor=editor, left=0, top=0, right=64, bottom=0, prompt="a vase",
                     reference=None, **size, filler="fill"),
        "kontext": dict(image=good, prompt="make it night", **size, references=None, editor="kontext"),
        "depth": dict(image=good, map_image=None, choice="photo", prompt="a room", form="model", **size),
        "canny": dict(image=good, map_image=None, choice="photo", prompt="a boat", lo=100, hi=200, form="model",
                      **size),
        "redux": dict(image=good, prompt="", **size),
    }


@pytest.fixture(scope="module")
def masks(tmp_path_factory, files) -> dict[str, Path]:
    from tests.ui_fixtures import brush_mask

    root = tmp_path_factory.mktemp("masks")
    made = {"mask": root / "mask.png", "small_mask": root / "small-mask.png"}
    brush_mask((96, 96), (20, 20, 60, 60)).save(made["mask"])
    brush_mask((48, 48), (10, 10, 30, 30)).save(made["small_mask"])
    return made


def wait_idle(studio, timeout: float = 60) -> None:
    """Until no job waits or runs."""
    deadline = time.monotonic() + timeout
    while len(studio.demo._queue) or studio.gate.now:
        assert time.monotonic() < deadline, "the queue did not drain"
        time.sleep(0.1)
    time.sleep(0.3)


def raw_upload(url: str, path: Path) -> dict:
    return file_data(upload(url, path))


def call(url: str, name: str, data: list) -> httpx.Response:
    return httpx.post(f"{url}gradio_api/call/{name}", json={"data": data}, timeout=60)


ROUTES = ["call", "call/v2", "gradio_client"]
ENDPOINTS = ["generate", "fill", "kontext", "depth", "canny", "redux"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", ENDPOINTS)
def test_n_plus_k_at_once_gives_exactly_k_refusals_on_every_route(limited, files, masks, name, route):
    """One job on the device, then N + k at once (N = 2 waiting places, k = 2): exactly k are refused, on each
    route that can start a generation."""
    extra = 2
    url = limited.url
    order = endpoint_order(url, name)
    if route == "gradio_client":
        client = Client(url, verbose=False, download_files=False)
        values = tool_values(files, masks, lambda p: handle_file(str(p)))[name]
        args = [values[k] for k in order]

        def send():  # the outcome is read once the device is free again (see `settle`)
            return client.submit(*args, api_name=f"/{name}")
    else:
        values = tool_values(files, masks, lambda p: raw_upload(url, p))[name]
        args = [values[k] for k in order]

        def send():
            if route == "call":
                return call(url, name, args)
            return httpx.post(f"{url}gradio_api/call/v2/{name}", json=dict(zip(order, args)), timeout=60)

    gate = limited.gate
    gate.hold, gate.entered, gate.release = True, threading.Event(), threading.Event()
    try:
        blocker = threading.Thread(target=lambda: settle(send()))
        blocker.start()
        assert gate.entered.wait(timeout=60), "the first job never reached the device"
        outcomes = at_once(QUEUE_SIZE + extra, send)
        deadline = time.monotonic() + 30
        while len(limited.demo._queue) < QUEUE_SIZE and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the refused joins answer at once; nothing more may join
        assert gate.now == 1  # still one job on the device
    finally:
        gate.release.set()
        blocker.join(timeout=60)
        wait_idle(limited)
        gate.hold = False
    outcomes = [settle(o) for o in outcomes]

    def refused(outcome) -> bool:
        if isinstance(outcome, httpx.Response):
            return outcome.status_code == 503 and "queue is full" in outcome.text.lower()
        return isinstance(outcome, Exception) and "queue is full" in str(outcome).lower()

    def accepted(outcome) -> bool:
        if isinstance(outcome, httpx.Response):
            return outcome.status_code == 200 and "event_id" in outcome.json()
        return isinstance(outcome, Exception) and "stopped by the test" in str(outcome)

    assert sum(map(refused, outcomes)) == extra, outcomes
    assert sum(map(accepted, outcomes)) == QUEUE_SIZE, outcomes


def settle(outcome):
    """An HTTP response as it is; a gradio_client job as its result or the exception it raised."""
    if not hasattr(outcome, "result"):
        return outcome
    try:
        return outcome.result(timeout=120)
    except Exception as error:  # noqa: BLE001
        return error


@pytest.mark.parametrize("name", ENDPOINTS)
def test_the_direct_routes_that_bypass_the_queue_are_refused(limited, name):
    with httpx.Client(base_url=limited.url, timeout=30) as http:
        for path in (f"gradio_api/run/{name}", f"gradio_api/api/{name}"):
            response = http.post(path, json={"data": []})
            assert response.status_code == 404, (path, response.status_code, response.text)
            assert f"/gradio_api/call/{name}" in response.json()["error"] and len(response.text) < READABLE
        # as the page calls its unqueued handlers: by fn_index, under any name
        response = http.post("gradio_api/run/predict", json={"data": [], "fn_index": fn_index(limited.url, name),
                                                               "session_hash": "direct"})
        assert response.status_code == 404 and f"/gradio_api/call/{name}" in response.json()["error"]
    assert limited.gate.now == 0


@pytest.mark.parametrize("path", ["gradio_api/run/predict", "gradio_api/call/predict", "gradio_api/call/v2/predict",
                                  "gradio_api/api/predict", "gradio_api/run/show"])
def test_unknown_endpoints_get_404_with_a_short_message(limited, path):
    response = httpx.post(limited.url + path, json={"data": []}, timeout=30)
    assert response.status_code == 404, (path, response.status_code, response.text[:200])
    assert "No API endpoint named" in response.json()["error"] and "/generate" in response.text
    assert len(response.text) < READABLE and "Traceback" not in response.text


def test_a_session_of_twice_keep_generations_returns_every_result(limited, tmp_path):
    """gradio_client downloads every file of a result (the image, the PNG and the history): none is missing,
    though the output folder keeps only KEEP images, and the history holds no dead entry."""
    client = Client(limited.url, verbose=False, download_files=str(tmp_path))
    for index in range(2 * KEEP):
        image, download, _status, _warning, _notices, gallery, seed = client.predict(
            **dict(GEN, seed=index), api_name="/generate")
        assert Path(image).is_file() and Path(download["value"] if isinstance(download, dict) else download).is_file()
        assert seed == index
        assert 1 <= len(gallery) <= min(index + 1, KEEP), gallery
        assert all(Path(item["image"]).is_file() for item in gallery)
    saved = sorted(limited.output_dir.glob("fluxforge-*.png"))
    assert len(saved) == KEEP


def test_more_variations_than_keep_are_all_returned(limited, files, tmp_path):
    client = Client(limited.url, verbose=False, download_files=str(tmp_path))
    result = client.predict(image=handle_file(str(files["good"])), prompt="", steps=2, guidance=3.5, quant="auto",
                            match=True, width=128, height=128, seed=7, randomize=False, count=KEEP + 1,
                            api_name="/redux")
    gallery = result[5]
    assert len(gallery) == KEEP + 1 and all(Path(item["image"]).is_file() for item in gallery)


# ---- bad uploads: one readable line, no server path, on every image input -----------------------------------

BAD_UPLOADS = [("text named .png", "text_png", r"this file is not an image we can read: (\S*/)?notes\.png"),
               ("HTML named .png", "html", r"this file is not an image we can read: (\S*/)?page\.png"),
               ("0-byte file", "empty", r"this file is not an image we can read: (\S*/)?empty\.png"),
               ("truncated PNG", "truncated", r"this file is not an image we can read: (\S*/)?truncated\.png"),
               ("decompression bomb", "bomb", r"(\S*/)?bomb\.png is too large")]
IMAGE_INPUTS = ["kontext image", "kontext references", "redux image", "canny image", "depth map_image", "fill editor",
                "fill reference"]


@pytest.fixture(scope="module")
def bad(files, tmp_path_factory) -> dict[str, Path]:
    made = dict(files)
    made["text_png"] = tmp_path_factory.mktemp("bad") / "notes.png"
    made["text_png"].write_text("hello, not an image")
    return made


def with_bad_input(values: dict, name: str, field: str, bad_file):
    """Valid values for endpoint `name` with `bad_file` in the image input `field`."""
    values = dict(values)
    if field == "editor":
        values["editor"] = {"background": bad_file, "layers": [], "composite": bad_file}
    elif field == "references":  # several files
        values["references"] = [bad_file]
    else:
        values[field] = bad_file
    if field == "map_image":
        values["choice"] = "upload"
    return values


def assert_one_readable_line(message: str, pattern: str) -> None:
    assert_readable(message, pattern)
    assert "\n" not in message.strip() and "Could not preprocess" not in message, message
    assert "Original error" not in message and not NO_PATH.search(message), message


@pytest.mark.parametrize("target", IMAGE_INPUTS)
@pytest.mark.parametrize("label,key,pattern", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_uploads_get_one_readable_line_through_the_api(limited, bad, masks, target, label, key, pattern):
    name, field = target.split()
    client = Client(limited.url, verbose=False, download_files=False)
    values = tool_values(bad, masks, lambda p: handle_file(str(p)))[name]
    values = with_bad_input(values, name, field, handle_file(str(bad[key])))
    with pytest.raises(Exception) as caught:
        client.predict(*[values[k] for k in endpoint_order(limited.url, name)], api_name=f"/{name}")
    assert_one_readable_line(refusal(caught.value), pattern)
    assert limited.gate.now == 0


@pytest.mark.parametrize("label,key,pattern", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_uploads_get_one_readable_line_over_raw_http(web_studio, bad, label, key, pattern):  # noqa: F811
    stored = upload(web_studio.url, bad[key])
    data = {"path": stored, "meta": {"_type": "gradio.FileData"}, "orig_name": bad[key].name}
    response = join(web_studio.url, fn_index(web_studio.url, "kontext"), kontext_data(data))
    assert 400 <= response.status_code < 500, (key, response.status_code)
    assert_one_readable_line(validation_message(response.json()["detail"]), pattern)


@pytest.mark.parametrize("label,key,pattern", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_images_get_the_same_line_from_the_cli(bad, tmp_path, capsys, label, key, pattern):
    from cli import main

    code = main(["generate", "--tool", "kontext", "--prompt", "x", "--model", "tiny", "--image", str(bad[key]),
                 "--out", str(tmp_path / "out.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not (tmp_path / "out.png").exists()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert_readable(err, pattern)


# ---- one mask rule; every input recorded -----------------------------------------------------------------------

def test_a_mask_of_another_size_is_refused_in_the_api_as_in_the_cli(limited, files, masks, tmp_path, capsys):
    from cli import main

    client = Client(limited.url, verbose=False, download_files=False)
    values = tool_values(files, masks, lambda p: handle_file(str(p)))["fill"]
    good = handle_file(str(files["good"]))
    values["editor"] = {"background": good, "layers": [handle_file(str(masks["small_mask"]))], "composite": good}
    with pytest.raises(Exception) as caught:
        client.predict(*[values[k] for k in endpoint_order(limited.url, "fill")], api_name="/fill")
    rule = r"mask is 48x48 but image is 96x96; they must be the same size"
    message = refusal(caught.value)  # the validator's message, on the editor input
    assert_readable(message, rule)
    assert not NO_PATH.search(message), message
    code = main(["generate", "--tool", "fill", "--prompt", "x", "--model", "tiny", "--image", str(files["good"]),
                 "--mask", str(masks["small_mask"]), "--out", str(tmp_path / "out.png")])
    assert code == 2 and re.search(rule, capsys.readouterr().err)


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_fill_with_a_reference_names_every_input_with_its_hash(limited, files, masks, tmp_path):
    from pipelines.images import read_metadata

    reference = tmp_path / "reference.png"
    Image.new("RGB", (80, 64), (10, 90, 200)).save(reference)
    client = Client(limited.url, verbose=False, download_files=str(tmp_path / "downloads"))
    values = tool_values(files, masks, lambda p: handle_file(str(p)))["fill"]
    values["reference"] = handle_file(str(reference))
    result = client.predict(*[values[k] for k in endpoint_order(limited.url, "fill")], api_name="/fill")
    meta = read_metadata(Path(result[0]))
    inputs = meta["inputs"]
    assert set(inputs) == {"image", "mask", "reference"}, inputs
    assert inputs["reference"] == {"name": "reference.png", "sha256": sha256(reference), "sha256_of": "file",
                                   "size": [80, 64]}
    assert inputs["image"]["size"] == [96, 96] and inputs["mask"]["size"] == [96, 96]
    assert all(re.fullmatch(r"[0-9a-f]{64}", item["sha256"]) and item["name"] for item in inputs.values())
    with Image.open(result[0]) as image:
        text = image.text["parameters"]
    assert f"reference reference.png sha256 {sha256(reference)[:16]}" in text and "mask " in text


@pytest.mark.parametrize("name", ["kontext", "redux", "canny"])
def test_an_uploaded_image_is_named_and_hashed_as_sent(limited, files, masks, tmp_path, name):
    from pipelines.images import read_metadata

    client = Client(limited.url, verbose=False, download_files=str(tmp_path))
    values = tool_values(files, masks, lambda p: handle_file(str(p)))[name]
    result = client.predict(*[values[k] for k in endpoint_order(limited.url, name)], api_name=f"/{name}")
    inputs = read_metadata(Path(result[0]))["inputs"]
    assert inputs["image"] == {"name": "good.png", "sha256": sha256(files["good"]), "sha256_of": "file",
                               "size": [96, 96]}
