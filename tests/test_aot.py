"""Blocks compiled ahead of time (pipelines.aot), ZeroGPU's form of compile, through `spaces`' own AoT functions and
AOTInductor on this CPU: compiled once for every image size, they run each size, agree with the eager blocks, and are
set aside (visibly) for a run that changes what the blocks compute, then taken up again."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pipelines import aot
from pipelines.loras.tiny import tiny_lora
from pipelines.request import GenerationRequest
from tests.test_compile import close

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def aoti():
    """spaces' AoT module (spaces.zero.torch.aoti), loaded by its file: the package around it patches CUDA as it is
    imported, which this CPU build of torch has not got; the module itself is plain torch.export and AOTInductor."""
    import spaces.zero

    path = Path(spaces.zero.__file__).parent / "torch" / "aoti.py"
    spec = importlib.util.spec_from_file_location("spaces.zero.torch.aoti", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runner(tiny_root, tmp_path_factory):
    from app import create_demo

    demo = create_demo(model="tiny", output_dir=tmp_path_factory.mktemp("outputs"))
    yield demo.studio_runner
    demo.studio_runner.unload_models()


def generate(runner, size, loras=()):
    return runner.engine.generate(GenerationRequest(tool="schnell", prompt="a fox", model="tiny", quant="none", seed=3,
                                                    steps=2, width=size, height=size,
                                                    loras=[(str(p), s) for p, s in loras]))


def test_blocks_compiled_ahead_of_time_run_every_size_and_step_aside_for_loras(runner, aoti, monkeypatch):
    import spaces

    from ui.gpu import compile_ahead

    eager = {size: generate(runner, size) for size in (64, 96)}
    lora = tiny_lora("diffusers", seed=1)
    eager_lora = generate(runner, 64, [(lora, 1.0)])
    assert not eager[64].report["compiled"]

    for name in ("aoti_capture", "aoti_compile_and_save", "aoti_load_from_package_dir"):
        monkeypatch.setattr(spaces, name, getattr(aoti, name))  # spaces' own, as on a Space
    lines = compile_ahead(runner, ["schnell", "no-such-tool"])  # what a ZeroGPU Space does at start (spaces.GPU
    line = lines[0]  # returns the function as it is off ZeroGPU)
    assert "compiled 3 transformer blocks ahead of time" in line, line  # tiny schnell: 1 double, 2 single blocks
    assert lines[1].startswith("not compiled ahead of time (no-such-tool)") and lines[1].endswith("uncompiled")
    assert "already" in runner.compile_ahead("schnell", aoti)

    for size in (64, 96):  # one package per block kind serves every size (its dimensions are dynamic)
        result = generate(runner, size)
        assert result.report["compiled"] and result.image.size == (size, size)
        assert close(result, eager[size]), size
        assert not any("ahead-of-time" in n for n in result.notices)

    with_lora = generate(runner, 64, [(lora, 1.0)])
    assert not with_lora.report["compiled"]
    assert any("ahead-of-time compiled blocks are set aside for this run: the transformer carries LoRA layers" in n
               for n in with_lora.notices)
    assert any(f.get("format") == "ahead of time" for f in with_lora.report["quantization"]["fallbacks"])
    assert np.array_equal(np.asarray(with_lora.image), np.asarray(eager_lora.image))  # the eager blocks ran

    again = generate(runner, 96)  # LoRAs gone: the compiled blocks are taken up again
    assert again.report["compiled"] and close(again, eager[96])

    runner.set_options(step_cache=0.1)
    try:
        cached = generate(runner, 64)
        assert not cached.report["compiled"]
        assert any("set aside for this run: the step cache is on" in n for n in cached.notices)
    finally:
        runner.set_options(step_cache=0.0)
    transformer = runner.engine.manager.pipeline(_schnell_root(runner), "none").pipe.transformer
    assert aot.has_aot(transformer) and aot.in_use(transformer) is False  # set aside until the next run decides
    aot.drop(transformer)
    assert not aot.has_aot(transformer) and not generate(runner, 64).report["compiled"]


def _schnell_root(runner):
    from pipelines.models.sources import resolve_model
    from pipelines.tools import get_tool

    return resolve_model(runner.models["schnell"], get_tool("schnell")).root


@pytest.mark.parametrize("env, wanted", [("1", True), ("true", True), ("on", True), ("", False), ("0", False),
                                         ("no", False)])
def test_aot_at_start_table(env, wanted):
    from ui.gpu import aot_at_start

    assert aot_at_start(env) is wanted
