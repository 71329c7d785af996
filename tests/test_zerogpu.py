"""ZeroGPU: every value a tab's job yields crosses the GPU worker's boundary (spaces pickles each one)."""

from __future__ import annotations

import asyncio
import inspect
import pickle

import pytest
from PIL import Image

from tests.ui_fixtures import asset

TABS = ("generate", "fill", "kontext", "depth", "canny", "redux")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from app import create_demo

    demo = create_demo(model="tiny", output_dir=tmp_path_factory.mktemp("outputs"))
    yield demo
    demo.studio_runner.unload_models()


def job(demo, api_name: str):
    return next(fn for fn in demo.fns.values() if fn.api_name == api_name)


def job_args(fn, values: dict) -> list:
    """The job's positional arguments by parameter name (its run function's signature), ``values`` over defaults."""
    common = dict(tool="schnell", prompt="a red boat", steps=2, guidance=0.0, quant="none", match=False, width=64,
                  height=64, seed=5, randomize=False, loras_picked=[], loras_uploaded=None, lora_strength=1.0,
                  count=2, previews=True, model=None, history=[])
    common.update(values)
    names = [n for n in inspect.signature(fn.fn).parameters if n != "progress"]
    return [common.get(name) for name in names]


def tab_values(api_name: str) -> dict:
    photo = Image.open(asset("example-boat.png")).convert("RGB").resize((64, 64))
    if api_name == "fill":
        return dict(mode="outpaint", editor={"background": photo, "layers": [], "composite": photo}, left=0, top=0,
                    right=16, bottom=0, reference=None)
    if api_name in ("depth", "canny"):
        return dict(image=photo, map_image=None, choice="photo", lo=100, hi=200, form="model")
    return dict(image=photo, references=None)


def yielded(demo, api_name: str) -> list:
    fn = job(demo, api_name)

    async def collect():
        return [item async for item in fn.fn(*job_args(fn, tab_values(api_name)))]

    return asyncio.run(collect())


@pytest.mark.parametrize("api_name", TABS)
def test_every_value_each_tab_yields_pickles_and_fills_its_outputs(demo, api_name):
    """Previews and the result alike: plain tuples (one value per output) that survive pickle, as spaces' worker
    sends them through a multiprocessing queue."""
    items = yielded(demo, api_name)
    outputs = len(job(demo, api_name).outputs)
    previews = items[:-1]
    assert previews, "live previews are on: the run yields previews before its result"
    for item in items:
        assert isinstance(item, tuple) and len(item) == outputs
        again = pickle.loads(pickle.dumps(item))
        assert len(again) == outputs
    image, _download, status, *rest = previews[0]
    assert isinstance(image, Image.Image) and "Preview" in status
    assert all(value == {"__type__": "update"} for value in rest)  # gr.skip(): the other outputs stay as they are


def test_a_dict_keyed_by_components_would_not_pickle(demo):
    """Why the values are tuples: Gradio components do not pickle."""
    image = job(demo, "generate").outputs[0]
    with pytest.raises(Exception, match="pickle"):
        pickle.dumps({image: Image.new("RGB", (8, 8))})


def test_values_cross_spaces_worker_queue():
    """Through spaces' own queue and result type, the way its forked worker sends each yielded value."""
    spaces_utils = pytest.importorskip("spaces.utils")
    from spaces.zero.types import OkResult

    from ui.runner import Preview
    from ui.widgets import preview_values

    values = preview_values(Preview(Image.new("RGB", (8, 8), "red"), 2, 4), extra=1)
    queue = spaces_utils.SimpleQueue()
    queue.put(OkResult(values))
    got = queue.get().value
    assert got[0].getpixel((0, 0)) == (255, 0, 0) and "step 2/4" in got[2] and len(got) == 8
