"""Security defaults of a served studio on 127.0.0.1: versions, file serving, origins, closed API, no share."""

from __future__ import annotations

import httpx
import pytest
from packaging.version import Version

from tests.ui_fixtures import ROOT, api_studio, web_studio  # noqa: F401

pytestmark = pytest.mark.slow

EVIL = "http://evil.example"


def test_gradio_is_recent_enough():
    import gradio

    assert Version(gradio.__version__) >= Version("6.20")


@pytest.fixture(scope="module")
def dotenv():
    """A secret-looking .env in the working directory (removed afterwards if we made it)."""
    path = ROOT / ".env"
    made = not path.exists()
    if made:
        path.write_text("HF_TOKEN=hf_secret_for_tests\n")
    yield path
    if made:
        path.unlink(missing_ok=True)


def file_urls(dotenv) -> list[str]:
    project = [ROOT / "app.py", ROOT / "ui" / "studio.py", ROOT / "pipelines" / "engine.py", dotenv]
    urls = []
    for path in project:
        urls += [f"gradio_api/file={path}", f"file={path}", f"gradio_api/file={path.name}"]
    urls += [
        "gradio_api/file=/etc/passwd",
        "file=/etc/passwd",
        "gradio_api/file=%2Fetc%2Fpasswd",
        "gradio_api/file=/ETC/PASSWD",
        "gradio_api/file=../../../../../../etc/passwd",
        "gradio_api/file=..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "gradio_api/file=....//....//....//etc/passwd",
        "gradio_api/file=.env",
        "gradio_api/file=./.env",
        "gradio_api/file=app.py",
        "gradio_api/file=ui/studio.py",
        "gradio_api/file=/proc/self/environ",
        "gradio_api/file=%252Fetc%252Fpasswd",
        "gradio_api/file=/tmp/../etc/passwd",
        "gradio_api/file=//etc/passwd",
        "gradio_api/file=C:\\Windows\\win.ini",
    ]
    return urls


def test_files_outside_the_app_folders_are_never_served(web_studio, dotenv):  # noqa: F811
    secrets = ("root:", "HF_TOKEN", "def create_demo", "import ", "PATH=")
    urls = file_urls(dotenv)
    with httpx.Client(base_url=web_studio.url, timeout=30) as client:
        for url in urls:
            response = client.get(url)
            leaked = response.status_code == 200 and any(s in response.text for s in secrets)
            assert response.status_code in (400, 403, 404) and not leaked, (url, response.status_code)
        # the output folder itself is served (that is where the results live)
        sample = web_studio.output_dir / "fluxforge-probe.png"
        sample.write_bytes(b"\x89PNG probe")
        try:
            assert client.get(f"gradio_api/file={sample}").status_code == 200
        finally:
            sample.unlink()
    assert len(urls) >= 25


def upload(url: str, origin: str | None) -> httpx.Response:
    headers = {"Origin": origin} if origin else {}
    return httpx.post(url + "gradio_api/upload", headers=headers, timeout=30,
                      files={"files": ("a.txt", b"hello", "text/plain")})


@pytest.mark.parametrize("origin", [EVIL, "null", "http://127.0.0.1.evil.example", "http://localhost.evil.example:7860",
                                    "https://attacker.test", "file://"])
def test_foreign_origins_are_refused(web_studio, origin):  # noqa: F811
    response = upload(web_studio.url, origin)
    assert response.status_code == 403 and "Cross-origin" in response.text
    join = httpx.post(web_studio.url + "gradio_api/queue/join", headers={"Origin": origin}, timeout=30,
                      json={"data": [], "fn_index": 0, "session_hash": "x"})
    assert join.status_code == 403
    # reading is harmless and stays possible (no CORS headers for the foreign page)
    page = httpx.get(web_studio.url, headers={"Origin": origin}, timeout=30)
    assert page.status_code == 200 and page.headers.get("access-control-allow-origin") in (None, "")


def test_local_origins_and_plain_clients_are_served(web_studio):  # noqa: F811
    port = web_studio.url.rstrip("/").rsplit(":", 1)[1]
    for origin in (None, f"http://127.0.0.1:{port}", f"http://localhost:{port}", "http://127.0.0.1:9999"):
        assert upload(web_studio.url, origin).status_code == 200, origin


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}", "10.0.0.5"])
def test_other_host_names_are_refused_on_loopback(web_studio, host):  # noqa: F811
    """DNS rebinding: a page whose name resolves to 127.0.0.1 sends its own name as Host and Origin."""
    port = web_studio.url.rstrip("/").rsplit(":", 1)[1]
    name = host.format(port=port)
    assert httpx.get(web_studio.url, headers={"Host": name}, timeout=30).status_code == 403
    response = httpx.post(web_studio.url + "gradio_api/upload", timeout=30,
                          headers={"Host": name, "Origin": f"http://{name}"},
                          files={"files": ("a.txt", b"hello", "text/plain")})
    assert response.status_code == 403
    assert httpx.get(web_studio.url, headers={"Host": f"localhost:{port}"}, timeout=30).status_code == 200


def test_the_origin_rule():
    from ui.origin import origin_allowed

    assert origin_allowed(None, "127.0.0.1:7860")
    assert origin_allowed("http://localhost:7860", "127.0.0.1:7860")
    assert origin_allowed("https://user-studio.hf.space", "user-studio.hf.space")
    assert not origin_allowed("https://evil.example", "user-studio.hf.space")
    assert not origin_allowed("null", "127.0.0.1:7860")
    assert not origin_allowed("http://[bad", "127.0.0.1:7860")


def test_python_app_py_uses_the_origin_guard():
    from ui.origin import LocalOriginMiddleware
    from ui.studio import launch_options

    class Fake:
        from ui.settings import Settings

        studio_settings = Settings()

    options = launch_options(Fake())
    [guard] = options["app_kwargs"]["middleware"]
    assert guard.cls is LocalOriginMiddleware and guard.kwargs == {"api": False, "local_only": True}
    [guard] = launch_options(Fake(), host="0.0.0.0")["app_kwargs"]["middleware"]
    assert guard.kwargs["local_only"] is False  # served on the network: the Origin rule still applies
    assert options["mcp_server"] is False and options["show_error"] is False


def test_the_raw_api_is_closed_by_default(web_studio):  # noqa: F811
    info = httpx.get(web_studio.url + "gradio_api/info", timeout=30).json()
    assert info["named_endpoints"] == {} and not info.get("unnamed_endpoints")
    with httpx.Client(base_url=web_studio.url, timeout=30) as client:
        for tool in ("generate", "fill", "kontext", "depth", "canny", "redux"):
            for path in (f"gradio_api/run/{tool}", f"gradio_api/call/{tool}", f"run/{tool}", f"api/{tool}"):
                response = client.post(path, json={"data": ["schnell", "cat", 2, 3.5, "auto", 128, 128, 1, False, []]})
                assert response.status_code in (403, 404, 405), (path, response.status_code)
        # /gradio_api/queue/join by fn_index stays open: it is how the page itself runs a job, and it gets the
        # same validation as the page (and a foreign Origin is refused, see above).
        for path in ("gradio_api/call/generate/abc", "gradio_api/call/generate"):
            assert client.get(path).status_code == 404


def test_the_api_opens_with_api(api_studio):  # noqa: F811
    info = httpx.get(api_studio.url + "gradio_api/info", timeout=30).json()
    assert "/generate" in info["named_endpoints"]


def test_no_share_link_unless_asked(web_studio):  # noqa: F811
    import inspect

    from ui.studio import serve

    assert inspect.signature(serve).parameters["share"].default is False
    assert not web_studio.demo.share and web_studio.demo.share_url is None
    assert web_studio.url.startswith("http://127.0.0.1:")


def test_cli_share_defaults_off():
    from cli import build_parser

    args = build_parser().parse_args([])
    assert not args.share and not args.api and args.host == "127.0.0.1"
