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


# ---- the duration each call asks for ----------------------------------------------------------------------------

MP = 1024 * 1024


@pytest.mark.parametrize("steps, pixels, count, condition, quant, factor, seconds, cap", [
    (4, MP, 1, 0, "none", 1.0, 40, 1),  # a Schnell image: well under ZeroGPU's default 60 s
    (4, MP, 8, 0, "none", 1.0, 75, 8),
    (28, MP, 1, 0, "none", 1.0, 55, 1),  # a Dev image
    (28, MP, 8, 0, "none", 1.0, 210, 8),
    (28, MP, 8, 0, "4bit", 1.0, 270, 8),  # bitsandbytes dequantizes in every matmul: slower steps
    (28, MP, 4, MP, "none", 1.0, 245, 4),  # Kontext: the input image's tokens join the sequence
    (28, 4 * MP, 8, 0, "none", 1.0, 300, 1),  # 2048x2048: the batch is cut to what fits the longest call
    (50, 4 * MP, 1, 0, "8bit", 1.0, 300, 1),  # even one image runs past it (batch_notice says so)
    (28, MP, 8, 0, "none", 1.5, 200, 7),  # a Blackwell card counts each second 1.5 times
    (4, 512 * 512, 1, 0, "none", 1.0, 35, 1),
])
def test_duration_and_batch_cap_table(steps, pixels, count, condition, quant, factor, seconds, cap):
    from ui.gpu import MAX_DURATION_S, MIN_DURATION_S, batch_cap, duration

    assert duration(steps, pixels, count, condition, quant, factor) == seconds
    assert MIN_DURATION_S <= seconds <= MAX_DURATION_S / factor
    assert batch_cap(steps, pixels, count, condition, quant, factor) == cap


def test_duration_grows_with_every_setting():
    from ui.gpu import job_seconds

    base = job_seconds(20, MP, 1)
    assert job_seconds(21, MP, 1) > base and job_seconds(20, 2 * MP, 1) > base
    assert job_seconds(20, MP, 2) > base and job_seconds(20, MP, 1, MP) > base
    assert job_seconds(20, MP, 1, quant="8bit") > job_seconds(20, MP, 1, quant="4bit") > base
    with pytest.raises(ValueError, match="steps=0"):
        job_seconds(0, MP, 1)


def test_batch_notice_says_what_was_cut_or_may_be_stopped():
    from ui.gpu import batch_notice

    assert batch_notice(4, MP, 8) is None
    assert "makes 1 of the 8 images" in batch_notice(28, 4 * MP, 8)
    assert "may be stopped" in batch_notice(50, 4 * MP, 1, quant="8bit")


@pytest.mark.parametrize("api_name, tool", [("generate", None), ("fill", "fill"), ("kontext", "kontext"),
                                            ("depth", "depth"), ("canny", "canny"), ("redux", "redux")])
def test_each_tabs_run_function_gives_its_duration(demo, api_name, tool):
    """The duration callable reads each tab's own run arguments (spaces.GPU calls it with them)."""
    from pipelines.tools import get_tool
    from ui.gpu import JobDuration, batch_cap, duration

    run = inspect.unwrap(job(demo, api_name).fn)
    args = job_args(job(demo, api_name), {**tab_values(api_name), "steps": 28, "width": 1024, "height": 1024,
                                           "count": 8, "model": None})
    timing = JobDuration(run, tool)
    condition = get_tool(tool or "schnell").condition_pixels(1024, 1024)
    assert timing(*args) == duration(28, MP, 8, condition)
    capped, kwargs, notice = timing.capped(tuple(args), {})
    count = inspect.signature(run).bind(*capped, **kwargs).arguments["count"]
    assert count == batch_cap(28, MP, 8, condition) and (notice is None) == (count == 8)
    big = job_args(job(demo, api_name), {**tab_values(api_name), "steps": 28, "width": 2048, "height": 2048,
                                         "count": 8, "model": None})
    capped, kwargs, notice = timing.capped(tuple(big), {})
    assert inspect.signature(run).bind(*capped, **kwargs).arguments["count"] == 1
    assert "1 of the 8" in notice or "may be stopped" in notice  # Kontext at 2048x2048: even one image


def test_on_a_space_the_gpu_call_asks_for_its_duration_and_runs_the_capped_batch():
    from ui.gpu import on_zero_gpu

    asked, ran = [], []

    def gpu(duration):
        def decorate(fn):
            def call(*args, **kwargs):
                asked.append(duration(*args, **kwargs))
                return fn(*args, **kwargs)
            return call
        return decorate

    def run(tool, prompt, steps, guidance, quant, width, height, count=1, previews=True, progress=None):
        ran.append(count)
        yield count

    wrapped = on_zero_gpu(gpu, run)
    with pytest.warns(UserWarning, match="makes 1 of the 8 images"):
        assert list(wrapped("schnell", "boat", 28, 3.5, "none", 2048, 2048, 8)) == [1]
    assert ran == [1] and asked == [190]  # the duration of what runs: one image (ui.gpu.duration)
    assert list(wrapped("schnell", "boat", 4, 0.0, "none", 1024, 1024, 8)) == [8] and asked[-1] == 75


# ---- models live in the main process; what a Space offers -------------------------------------------------------

def test_zero_gpu_only_on_a_zero_gpu_space(monkeypatch):
    from spaces.config import Config

    from ui.gpu import zero_gpu

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setattr(Config, "zero_gpu", True)
    assert zero_gpu() is False
    monkeypatch.setenv("SPACE_ID", "someone/fluxforge")
    assert zero_gpu() is True
    monkeypatch.setattr(Config, "zero_gpu", False)
    assert zero_gpu() is False


@pytest.mark.parametrize("env, tools", [(None, ["schnell"]), ("", []), ("schnell, fill", ["schnell", "fill"])])
def test_preload_tools_table(env, tools):
    from ui.gpu import preload_tools

    assert preload_tools("schnell", env) == tools


def test_a_zero_gpu_studio_offers_auto_and_full_precision_and_says_where_models_live(tmp_path, monkeypatch):
    import ui.studio
    from app import create_demo

    monkeypatch.setattr(ui.studio, "zero_gpu", lambda: True)
    demo = create_demo(model="tiny", output_dir=tmp_path)
    blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    for tool in ("schnell", "fill", "kontext", "depth", "canny", "redux"):
        assert [value for _label, value in blocks[f"{tool}-quant"].choices] == ["auto", "none"]
    notes = [b.value for b in demo.blocks.values() if "forked from this process" in str(getattr(b, "value", ""))]
    assert notes and "unloading acts on this process only" in notes[0]


def test_models_load_at_start_in_the_main_process(tmp_path):
    """What a forked worker inherits: the model loaded by ui.studio.preload before serving."""
    from app import create_demo
    from ui.studio import preload

    demo = create_demo(model="tiny", output_dir=tmp_path)
    runner = demo.studio_runner
    assert runner.loaded_models()[0] == []
    lines = preload(runner, ["schnell", "no-such-tool"])
    rows, total = runner.loaded_models()
    assert total > 0 and {"transformer", "text_encoder_2", "vae"} <= {row["component"] for row in rows}
    assert lines[0].startswith("loaded tiny for") and lines[1].startswith("not loaded at start (no-such-tool)")
    runner.unload_models()
