"""The studio without a server: how it is built, served, and what its helpers do."""

from __future__ import annotations

import inspect
import types
from pathlib import Path

import gradio as gr
import numpy as np

import pytest
from PIL import Image

from pipelines import defaults
from pipelines.tools import get_tool, tool_names
from pipelines.errors import UserError
from pipelines.models.catalog import Assignment
from tests.ui_fixtures import asset, brush_mask

GENERATION_APIS = {"generate", "fill", "kontext", "depth", "canny", "redux"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from app import create_demo

    return create_demo(model="tiny", output_dir=tmp_path_factory.mktemp("outputs"))


def test_build_loads_no_model(demo):
    assert demo.studio_manager.loaded_bytes() == 0
    assert demo.studio_manager.status() == []


def test_every_tab_is_there(demo):
    labels = [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]
    assert labels == ["Generate", "Fill", "Edit", "Depth", "Canny", "Redux", "PNG info", "System"]


def _blocks(demo, cls, suffix):
    return {b.elem_id: b for b in demo.blocks.values() if isinstance(b, cls) and (b.elem_id or "").endswith(suffix)}


def test_every_tool_tab_has_the_four_quantization_modes(demo):
    dropdowns = _blocks(demo, gr.Dropdown, "-quant")
    assert set(dropdowns) == {f"{t}-quant" for t in ("schnell", "fill", "kontext", "depth", "canny", "redux")}
    for dropdown in dropdowns.values():
        assert [label for label, _ in dropdown.choices] == ["Auto", "None", "8-bit", "4-bit"]
        assert [value for _, value in dropdown.choices] == ["auto", "none", "8bit", "4bit"]  # no fp8 on a CPU
        assert dropdown.value == "auto"
        assert dropdown.label == "Quantization"
        assert "CPU" in dropdown.info


def test_quantization_sits_right_after_guidance(demo):
    ids = [b.elem_id for b in demo.blocks.values() if b.elem_id]
    for tool in ("schnell", "fill", "kontext", "depth", "canny", "redux"):
        assert ids.index(f"{tool}-quant") == ids.index(f"{tool}-guidance") + 1


def test_settings_defaults_come_from_the_defaults_module(demo):
    for tool in ("schnell", "fill", "kontext", "depth", "canny", "redux"):
        expected = get_tool(tool).defaults("tiny")
        blocks = {b.elem_id: b for b in demo.blocks.values() if b.elem_id}
        assert blocks[f"{tool}-steps"].value == expected.steps
        assert blocks[f"{tool}-guidance"].value == expected.guidance
        assert blocks[f"{tool}-width"].value == expected.width
        assert blocks[f"{tool}-width"].step == defaults.SIZE_STEP
        assert blocks[f"{tool}-height"].step == defaults.SIZE_STEP
        assert blocks[f"{tool}-randomize"].value is True


def test_generation_shares_one_device_queue(demo):
    runs = [fn for fn in demo.fns.values() if fn.api_name in GENERATION_APIS]
    assert {fn.api_name for fn in runs} == GENERATION_APIS
    for fn in runs:
        assert fn.concurrency_id == "device" and fn.concurrency_limit == 1
        assert fn.api_visibility == "private"  # API closed unless --api
    assert demo._queue.max_size == demo.studio_settings.queue_size
    assert demo.api_open is False


def test_bad_input_is_checked_before_the_queue(demo):
    """Each job has a cheap validator that refuses bad input before the job joins the queue."""
    for fn in demo.fns.values():
        if fn.api_name in GENERATION_APIS:
            assert fn.validator is not None


def test_api_flag_opens_the_endpoints(tmp_path):
    from app import create_demo

    demo = create_demo(model="tiny", api=True, output_dir=tmp_path)
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert public == GENERATION_APIS | {"png_info"}  # the tools, and reading a PNG's parameters
    assert demo.api_open is True


def test_launch_options_are_safe_by_default(demo):
    from ui.studio import launch_options

    options = launch_options(demo)
    assert options["allowed_paths"] == [str(demo.studio_settings.output_dir)]
    assert options["max_file_size"]
    assert "api" not in options["footer_links"]
    assert options["mcp_server"] is False


def test_launch_serves_locally_without_share(monkeypatch):
    from cli import build_parser
    from ui import studio

    seen = {}
    built = types.SimpleNamespace(studio_notices=[])
    monkeypatch.setattr(studio, "create_demo", lambda **kw: seen.setdefault("build", kw) and built)
    monkeypatch.setattr(studio, "serve", lambda demo, **kw: seen.setdefault("serve", kw))
    monkeypatch.delenv("SPACE_ID", raising=False)
    studio.launch(build_parser().parse_args([]))
    assert seen["serve"] == {"host": "127.0.0.1", "port": 7860, "share": False}
    assert seen["build"]["api"] is False


def test_gpu_wrapper_is_identity_off_spaces(monkeypatch):
    from ui.gpu import gpu_decorator

    monkeypatch.delenv("SPACE_ID", raising=False)

    def job():
        return 1

    assert gpu_decorator()(job) is job


def test_gpu_wrapper_uses_spaces_on_a_space(monkeypatch):
    import spaces

    from ui.gpu import gpu_decorator

    calls = []
    monkeypatch.setenv("SPACE_ID", "someone/fluxforge")
    monkeypatch.setattr(spaces, "GPU", lambda **kw: calls.append(kw) or (lambda fn: ("wrapped", fn)))
    assert gpu_decorator()(print) == ("wrapped", print)
    assert calls and calls[0]["duration"]() == 40  # not a generation: a short call (ui.gpu.JobDuration)


def test_demo_banner_names_the_tools_on_the_demo_model_and_how_to_get_real_weights():
    from pipelines.models.catalog import Assignment
    from ui.text import demo_banner

    official = {name: get_tool(name).model_id for name in tool_names()}
    assert demo_banner(Assignment(official)) == ""
    offline = demo_banner(Assignment(dict.fromkeys(tool_names(), "tiny"), demo=tool_names()))
    assert "Every tool runs" in offline and "the Hugging Face hub cannot be reached" in offline
    assert "hf auth login" in offline and "models download" in offline and "FLUXFORGE_MODEL_DIR" in offline
    assert "as asked" in demo_banner(Assignment(dict.fromkeys(tool_names(), "tiny")))
    one = demo_banner(Assignment({**official, "kontext": "tiny"}, demo=("kontext",)))
    assert "FLUX.1 Kontext runs" in one and "FLUX.1 [dev]" not in one


def test_quant_hint_is_device_specific():
    from ui.text import quant_hint

    hints = {device: quant_hint(device) for device in ("cpu", "cuda", "mps")}
    assert hints["cpu"].startswith("On this CPU")
    assert hints["cuda"].startswith("On this GPU")
    assert hints["mps"].startswith("On Apple Silicon")
    assert all("8-bit" in h and "4-bit" in h and "Auto" in h and "\n" not in h for h in hints.values())

    # the CPU hint quotes the step ratio measured on this class of CPU
    from quantization.policy import candidates, cpu_step_ratios

    first = candidates("8bit", "cpu")[0]
    assert f"{first.label}) ~51% of weight RAM, ~{cpu_step_ratios()[(first.backend, first.format)]:.1f}×" in hints["cpu"]


def test_system_tab_names_the_class_of_cpu_the_order_was_measured_on():
    import torch

    from quantization.doctor import doctor_report
    from ui.tabs.system import doctor_html

    report = doctor_report(torch.device("cpu"), torch.bfloat16)
    _, right = doctor_html(report)
    assert f"CPU class {report['cpu_class']}; order measured on" in right and "Fallback order" in right


def test_system_tab_lists_the_quantized_weights_cache(tmp_path, monkeypatch):
    from ui.tabs.system import cache_html

    monkeypatch.setenv("FLUXFORGE_QUANT_CACHE_DIR", str(tmp_path))
    assert "cache is empty" in cache_html([])
    rows = [{"component": "transformer", "backend": "quanto", "format": "int8", "bytes": 3 * 2**20, "status": "ok",
             "model": "/models/flux-dev", "name": "x"},
            {"component": "", "backend": "", "format": "", "bytes": 0, "status": "incomplete", "model": "",
             "name": "leftover<b>"}]
    text = cache_html(rows)
    assert "<td>transformer</td><td>quanto</td><td>int8</td><td>3.0 MiB</td><td>ok</td>" in text
    assert "leftover&lt;b&gt;" in text and "2 entries, 3.0 MiB" in text and str(tmp_path) in text


REPORT = {
    "tool": "dev", "model": "tiny", "device": "cpu", "dtype": "bfloat16", "seed": 7,
    "parameters": {"width": 128, "height": 128, "steps": 8},
    "quantization": {"requested": "8bit", "resolved": "8bit", "auto_reason": None,
                     "components": {"transformer": {"backend": "none", "format": "bf16"},
                                    "text_encoder_2": {"backend": "none", "format": "bf16"},
                                    "vae": {"backend": "none", "format": "bf16"}},
                     "fallbacks": [{"component": "transformer", "backend": "torchao", "format": "int8_dynamic",
                                    "reason": "torchao is disabled"}]},
    "memory": {"peak_bytes": 600 * 2**20, "kind": "cpu-rss"},
    "timings": {"load_s": 1.0, "quantize_s": 0.5, "denoise_s": 0.25, "total_s": 1.75},
}


def test_status_line_names_backends_memory_and_times():
    from ui.text import status_html

    line = status_html(REPORT, "x.png")
    for part in ("transformer", "text_encoder_2", "full precision bf16", "peak 600 MiB", "process RSS",
                 "load 1.00 s", "denoise 0.25 s", "total 1.75 s", "seed 7"):
        assert part in line


def test_warning_box_lists_each_fallback_and_reason():
    from ui.text import warning_html

    assert warning_html([], {}) == ""
    box = warning_html(REPORT["quantization"]["fallbacks"], REPORT["quantization"]["components"])
    assert "ff-warning" in box and "torchao int8_dynamic" in box and "torchao is disabled" in box
    assert "<b>transformer</b> → full precision (tried torchao int8_dynamic)" in box
    from ui.text import fallback_summary

    assert fallback_summary(REPORT["quantization"]["fallbacks"], REPORT["quantization"]["components"]) == (
        "Quantization fell back: transformer → full precision.")


def test_editor_mask_is_the_painted_layer():
    from ui.images import editor_image, editor_mask

    room = Image.open(asset("example-room.png"))
    value = {"background": room.convert("RGBA"), "layers": [brush_mask(room.size, (10, 20, 50, 60))],
             "composite": room}
    image = editor_image(value)
    mask = editor_mask(value, image.size)
    assert image.mode == "RGB" and mask.size == room.size
    pixels = np.asarray(mask)
    assert pixels[30, 20] == 255 and pixels[5, 5] == 0 and pixels.max() == 255
    empty = {"background": room, "layers": [brush_mask(room.size, (0, 0, 0, 0))], "composite": room}
    assert editor_mask(empty, room.size) is None
    assert editor_mask({"background": room, "layers": [], "composite": room}, room.size) is None
    assert editor_image(None) is None


def test_output_folder_keeps_the_newest(tmp_path):
    import os

    from ui.outputs import OutputFolder

    folder = OutputFolder(tmp_path, keep=3)
    (tmp_path / "mine.png").write_bytes(b"x")
    for index in range(5):
        path = folder.new_path("dev", index)
        path.write_bytes(b"png")
        os.utime(path, (index, index))
    folder.prune()
    left = sorted(p.name for p in tmp_path.glob("fluxforge-*.png"))
    assert len(left) == 3 and all(f"-dev-{i}-" in " ".join(left) for i in (2, 3, 4))
    assert (tmp_path / "mine.png").exists()  # other files are never touched
    oldest = sorted(tmp_path.glob("fluxforge-*-dev-2-*.png"))[0]
    folder.keep = 1
    folder.prune(keep=(oldest,))  # a result being returned survives whatever its age
    assert sorted(p.name for p in tmp_path.glob("fluxforge-*.png")) == sorted([oldest.name, left[-1]])


def test_a_mask_of_another_size_is_refused_with_both_sizes():
    from ui.images import editor_mask

    room = Image.open(asset("example-room.png"))
    small = (room.width // 2, room.height // 2)
    value = {"background": room, "layers": [brush_mask(small, (0, 0, 20, 20))], "composite": room}
    with pytest.raises(UserError, match=rf"mask is {small[0]}x{small[1]} but image is {room.width}x{room.height}"):
        editor_mask(value, room.size)


def test_history_is_newest_first_and_bounded(tmp_path, monkeypatch):
    from ui.runner import add_history
    from ui.settings import HISTORY_LIMIT

    monkeypatch.chdir(tmp_path)

    class Fake:
        def __init__(self, name):
            Path(name).write_bytes(b"png")  # the history keeps only files that exist
            self.path, self.caption, self.status = name, name, f"status of {name}"

    history = add_history([], [Fake("a")])
    history = add_history(history, [Fake("b"), Fake("c")])
    assert [p for p, *_ in history] == ["c", "b", "a"]
    assert [status for *_, status in history] == ["status of c", "status of b", "status of a"]
    for index in range(HISTORY_LIMIT + 5):
        history = add_history(history, [Fake(str(index))])
    assert len(history) == HISTORY_LIMIT and history[0][0] == str(HISTORY_LIMIT + 4)
    pruned = history[1][0]
    Path(pruned).unlink()  # pruned by the output folder
    history = add_history(history, [Fake("new")])
    assert len(history) == HISTORY_LIMIT and pruned not in [p for p, *_ in history]
    assert all(Path(p).is_file() for p, *_ in history)


def test_user_errors_become_readable_gr_errors(tmp_path):
    from ui.outputs import OutputFolder
    from ui.runner import Runner

    class Broken:
        def __init__(self, error):
            self.error = error

        def generate(self, request, progress):
            raise self.error

    models = {tool: "tiny" for tool in tool_names()}
    runner = Runner(Broken(UserError("out of memory: try 4-bit.")), Assignment(models), OutputFolder(tmp_path, 5))
    request = runner.request("dev", prompt="cat")
    with pytest.raises(gr.Error, match="out of memory: try 4-bit."):
        runner.run(request)
    runner.engine = Broken(RuntimeError("CUDA kernel exploded at 0xdeadbeef"))
    with pytest.raises(gr.Error) as caught:
        runner.run(request)
    assert "RuntimeError" in caught.value.message and "0xdeadbeef" not in caught.value.message
    with pytest.raises(gr.Error, match="prompt is empty"):
        runner.request("dev", prompt="  ")


def test_progress_reports_stages_and_steps():
    from ui.runner import _progress_adapter

    calls = []
    report = _progress_adapter(lambda value, desc=None, unit=None: calls.append((value, desc)), "")
    report("load", 1, 4)
    report("quantize", 0, 1)
    report("denoise", 3, 8)
    assert calls == [((1, 4), "Loading model"), (None, "Quantizing weights"), ((3, 8), "Denoising")]


def test_examples_are_small_and_made_by_the_script(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_examples", asset("make_examples.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    module.main()
    for name in module.EXAMPLES:
        committed = Image.open(asset(name))
        drawn = Image.open(tmp_path / name)
        assert committed.size == drawn.size and np.array_equal(np.asarray(committed), np.asarray(drawn))
        assert (tmp_path / name).stat().st_size < 64 * 1024


def test_depth_preview_uses_the_tools_estimator(demo):
    runner = demo.studio_runner
    photo = Image.open(asset("example-house.png"))
    depth = runner.control_map("depth", photo)
    assert depth.size == photo.size and depth.mode == "RGB"
    assert np.asarray(depth).std() > 0
    assert any(key[0] == "depth" for key in runner.engine.manager._aux)  # the Depth tool's estimator, kept
    with pytest.raises(gr.Error, match="the kontext tool has no control map"):
        runner.control_map("kontext", photo)
    runner.unload_models()


def test_depth_tab_runs_the_control_lora_on_the_dev_model(demo):
    runner = demo.studio_runner
    photo = Image.open(asset("example-house.png"))
    assert "depth-form" in {b.elem_id for b in demo.blocks.values() if b.elem_id}
    request = runner.request("depth", prompt="a room", image=photo, control="lora", seed=1, steps=2)
    assert request.model == runner.models["dev"] and request.control == "lora"
    outcome = runner.run(request)
    assert outcome.result.report["parameters"]["control"] == "lora"
    tools_held = {row["used_by"][0] for row in runner.engine.manager.status() if row["component"] == "transformer"}
    assert len(tools_held) == 1
    runner.unload_models()


# ---- batches and live previews ---------------------------------------------------------------------------------

TOOL_TABS = ("schnell", "fill", "kontext", "depth", "canny", "redux")


def job(demo, api_name: str):
    return next(fn for fn in demo.fns.values() if fn.api_name == api_name)


def run_job(demo, api_name: str, args: list) -> list:
    """Every value the job function of ``api_name`` yields (an async generator, as Gradio runs it)."""
    import asyncio

    async def collect():
        return [item async for item in job(demo, api_name).fn(*args)]

    return asyncio.run(collect())


def generate_args(count=2, previews=True, seed=41, steps=4):
    return ["schnell", "a lighthouse", steps, 0.0, "none", 128, 128, seed, False, [], None, 1.0, count, previews, None,
            None, 0.6, 1.0, 0.35, 0, "Lanczos", []]  # ..., model, image, strength, the hires fix (off), history


def test_every_tool_tab_has_the_batch_count_and_live_previews(demo):
    blocks = {b.elem_id: b for b in demo.blocks.values() if b.elem_id}
    for tool in TOOL_TABS:
        count, previews = blocks[f"{tool}-count"], blocks[f"{tool}-previews"]
        assert (count.minimum, count.maximum, count.value, count.step) == (1, defaults.BATCH_MAX, 1, 1)
        assert previews.value is True
    assert "redux-variations" not in blocks  # Redux's variations are the shared count
    for fn in demo.fns.values():
        if fn.api_name in GENERATION_APIS:
            ids = [block.elem_id for block in fn.inputs]
            assert ids.index(f"{'schnell' if fn.api_name == 'generate' else fn.api_name}-previews") == \
                ids.index(f"{'schnell' if fn.api_name == 'generate' else fn.api_name}-count") + 1


def test_a_run_yields_previews_of_each_image_then_the_whole_batch(demo, monkeypatch):
    from pipelines.manager import ModelManager
    from pipelines.images import read_metadata

    runner = demo.studio_runner
    runner.unload_models()
    loads, original = [], ModelManager._load_pipeline
    monkeypatch.setattr(ModelManager, "_load_pipeline", lambda self, *a, **k: loads.append(a[0]) or original(
        self, *a, **k))
    items = run_job(demo, "generate", generate_args())
    *previews, final = items
    assert previews and all(isinstance(item, tuple) and len(item) == len(final) for item in previews)
    labels = []
    for item in previews:
        image, _download, status, *_skipped = item
        assert isinstance(image, Image.Image) and image.size == (128, 128)
        labels.append(status)
    assert any("Preview · image 1/2 · step" in label for label in labels)
    assert any("Preview · image 2/2 · step" in label for label in labels)
    image_path, download, status, _warning, _notices, gallery, history, seed = final
    assert len(history) >= 2 and seed == 41
    seeds = [read_metadata(path)["seed"] for path, *_ in history[:2]]
    assert seeds == [42, 41] and read_metadata(image_path)["seed"] == 42  # the newest is shown
    assert "2 images" in status and "seeds 41, 42" in status
    assert len(loads) == 1  # the model loads once for the batch


def test_previews_are_sent_at_most_the_preview_size(demo):
    """A preview carries 1/8 of the output's detail: the studio sends it no larger than PREVIEW_MAX_SIDE."""
    from ui.runner import Preview

    fields = dict(prompt="a lighthouse", steps=2, guidance=0.0, quant="none", width=768, height=512, seed=3)
    previews = [item for item in demo.studio_runner.batch("schnell", fields, 1, None, True) if isinstance(item, Preview)]
    side = defaults.PREVIEW_MAX_SIDE
    assert previews and all(p.image.size == (side, side * 512 // 768) for p in previews)


def test_without_previews_a_run_yields_only_the_result(demo):
    items = run_job(demo, "generate", generate_args(count=1, previews=False))
    assert len(items) == 1 and isinstance(items[0], tuple) and items[0][7] == 41


def test_every_image_of_a_batch_is_kept_whatever_the_folder_keeps(tmp_path, tiny_root):
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager
    from ui.outputs import OutputFolder
    from ui.runner import Runner

    runner = Runner(Engine(ModelManager(device="cpu")), Assignment({tool: "tiny" for tool in tool_names()}),
                    OutputFolder(tmp_path, keep=1))
    fields = dict(prompt="a fox", quant="none", steps=1, seed=defaults.SEED_MAX)
    *_, outcomes = runner.batch("dev", fields, count=3, previews=True)
    assert [o.request.seed for o in outcomes] == [defaults.SEED_MAX, 0, 1]  # wrapping past the largest seed
    assert all(o.path.is_file() for o in outcomes)
    assert len(list(tmp_path.glob("fluxforge-*.png"))) == 3


def test_stopping_a_job_stops_its_run_and_frees_the_device(demo):
    import threading

    runner = demo.studio_runner
    items = runner.batch("dev", dict(prompt="a fox", quant="none", steps=40, seed=1), count=2, previews=True)
    first = next(items)
    # the first preview the job gets (an older one waiting behind a newer is dropped, so not always step 2)
    assert first.index == 1 and first.step % defaults.PREVIEW_EVERY == 0 and first.step < 40
    items.close()  # the page went away: the run stops at its next step
    assert not any(thread.name == "fluxforge-run" for thread in threading.enumerate())
    assert runner.engine.manager.lock.acquire(timeout=0)
    runner.engine.manager.lock.release()
    *_, outcomes = runner.batch("dev", dict(prompt="a fox", quant="none", steps=2, seed=1), count=1, previews=True)
    assert outcomes[0].result.report["quantization"]["fallbacks"] == []


def test_a_failure_in_a_batch_is_one_readable_error(demo, monkeypatch):
    runner = demo.studio_runner
    calls = []

    def broken(request, progress=None, **options):
        calls.append(request.seed)
        raise UserError("out of memory: try 4-bit.")

    monkeypatch.setattr(runner.engine, "generate", broken)
    with pytest.raises(gr.Error, match="out of memory: try 4-bit."):
        run_job(demo, "generate", generate_args(count=3))
    assert calls == [41]  # the batch stops at the first failure


@pytest.mark.parametrize("count, message", [(0, "count=0 is out of range"),
                                            (defaults.BATCH_MAX + 1, f"1..{defaults.BATCH_MAX} images"),
                                            (1.5, "not a whole number"), ("two", "not a whole number")])
def test_the_count_is_checked_before_the_queue(demo, count, message):
    fn = job(demo, "generate")
    verdicts = fn.validator(*generate_args(count=count))
    names = [name for name in inspect.signature(fn.fn).parameters if name != "progress"]
    refused = [(names[i], v["message"]) for i, v in enumerate(verdicts) if not v["is_valid"]]
    assert len(refused) == 1 and refused[0][0] == "count" and message in refused[0][1]
    assert all(v["is_valid"] for v in fn.validator(*generate_args(count=defaults.BATCH_MAX)))


def test_batch_count():
    from ui.runner import batch_count

    assert [batch_count(v) for v in (1, 2.0, " 3 ", defaults.BATCH_MAX)] == [1, 2, 3, defaults.BATCH_MAX]
    for bad in (True, None, -1, "", "1e3", float("nan")):
        with pytest.raises(gr.Error, match="count="):
            batch_count(bad)


def test_progress_shows_under_the_result_so_the_preview_stays_in_view(demo):
    for fn in demo.fns.values():
        if fn.api_name in GENERATION_APIS:
            shown_on = fn.show_progress_on if isinstance(fn.show_progress_on, (list, tuple)) else [fn.show_progress_on]
            assert [block.elem_id for block in shown_on] == [f"{fn.api_name}-notices"]
