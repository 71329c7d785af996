"""Shared helpers for the studio tests: a studio served on 127.0.0.1 in a background thread, test images."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
ARTIFACTS = ROOT / "test-artifacts"

_RUNNING: dict[str, RunningStudio] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningStudio:
    url: str
    demo: object
    output_dir: Path

    def close(self) -> None:
        self.demo.close()


def start_studio(output_dir: Path, api: bool, **kwargs) -> RunningStudio:
    """Build the studio on the tiny model and serve it on a free local port (returns at once)."""
    from pipelines.logs import quiet_libraries

    quiet_libraries()
    from app import create_demo
    from ui.studio import serve

    demo = create_demo(model="tiny", api=api, output_dir=output_dir, **kwargs)
    port = free_port()
    serve(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    return RunningStudio(f"http://127.0.0.1:{port}/", demo, Path(output_dir))


def shared_studio(name: str, request, api: bool) -> RunningStudio:
    """One server per name for the whole session (the tiny models then load once per server)."""
    if name not in _RUNNING:
        output = request.getfixturevalue("tmp_path_factory").mktemp(f"{name}-outputs")
        studio = _RUNNING[name] = start_studio(output, api=api)
        request.config.add_cleanup(studio.close)
    return _RUNNING[name]


@pytest.fixture(scope="session")
def api_studio(request) -> RunningStudio:
    """The studio with its HTTP API open (as with --api), for gradio_client tests."""
    return shared_studio("api", request, api=True)


@pytest.fixture(scope="session")
def web_studio(request) -> RunningStudio:
    """The studio with default settings (API closed), for the browser tests."""
    return shared_studio("web", request, api=False)


def asset(name: str) -> str:
    return str(ASSETS / name)


def brush_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """An RGBA layer as the image editor sends it: transparent, with white paint inside `box`."""
    layer = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    left, top, right, bottom = box
    layer[top:bottom, left:right] = 255
    return Image.fromarray(layer, "RGBA")


def at_once(count: int, send) -> list:
    """`send()` from `count` threads released together; their results (or the exceptions raised)."""
    results: list = []
    start = threading.Barrier(count)

    def one():
        start.wait(timeout=30)
        try:
            results.append(send())
        except Exception as error:  # noqa: BLE001
            results.append(error)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == count
    return results
