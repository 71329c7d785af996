"""torch.compile (inductor, on this CPU) with the step cache, LoRAs (loaded, strength changed, switched among ten,
unloaded) and offload: every combination runs, compiles again only when the graphs change (a new set of LoRA shapes),
never for a new strength or another file of the same shapes; a compile failure costs compile, not the quantization.
Tiny models only; compiling takes tens of seconds on a 2-core CPU."""

import numpy as np
import pytest

from pipelines.engine import Engine
from pipelines.loras.tiny import tiny_lora
from pipelines.manager import ModelManager
from pipelines.request import GenerationRequest
from tests.conftest import force_chain

pytestmark = pytest.mark.slow


def generate(engine, loras=(), quant="none", steps=3, seed=5):
    return engine.generate(GenerationRequest(tool="dev", prompt="a fox", model="tiny", quant=quant, seed=seed,
                                             steps=steps, loras=[(str(p), s) for p, s in loras]))


def pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(np.int16)


def close(a, b, tolerance=12.0) -> bool:
    """Compiled kernels round bf16 differently from eager ones: images agree closely, not bit for bit."""
    return float(np.abs(pixels(a) - pixels(b)).mean()) < tolerance


@pytest.fixture(scope="module")
def files(tiny_root):
    return [tiny_lora("diffusers", seed=index) for index in range(10)]


@pytest.fixture(scope="module")
def eager(tiny_root, files):
    """The same runs without compile, to compare with."""
    engine = Engine(ModelManager(device="cpu"))
    engine.manager.set_options(step_cache=0.3)
    return {"base": generate(engine), "lora": generate(engine, [(files[0], 1.0)]),
            "half": generate(engine, [(files[0], 0.5)]), "two": generate(engine, [(files[0], 1.0), (files[1], 0.7)])}


def test_compile_with_the_step_cache_and_loras_recompiles_only_when_the_graphs_change(tiny_root, files, eager):
    from torch._dynamo.utils import counters

    engine = Engine(ModelManager(device="cpu"))
    engine.manager.set_options(compile=True, step_cache=0.3)
    first = generate(engine)
    assert first.report["compiled"] is True and first.report["compile_graphs"] > 0
    assert first.report["step_cache"]["full_steps"] == eager["base"].report["step_cache"]["full_steps"]
    assert close(first, eager["base"])
    assert generate(engine).report["compile_graphs"] == 0  # the same run again: nothing new

    with_lora = generate(engine, [(files[0], 1.0)])  # a LoRA adds layers: new graphs, once
    assert with_lora.report["compiled"] and close(with_lora, eager["lora"])
    half = generate(engine, [(files[0], 0.5)])  # another strength: the same graphs
    assert half.report["compile_graphs"] == 0 and close(half, eager["half"])
    assert not close(half, with_lora, tolerance=0.5)  # ... and the strength did change the image
    for index, path in enumerate(files[1:], start=1):  # ten files of the same shapes, one after the other
        switched = generate(engine, [(path, 1.0)])
        assert switched.report["compiled"] and switched.report["compile_graphs"] == 0, index
    two = generate(engine, [(files[0], 1.0), (files[1], 0.7)])  # two at once: new graphs, once
    assert two.report["compiled"] and close(two, eager["two"])
    assert generate(engine, [(files[2], 0.3), (files[3], 1.2)]).report["compile_graphs"] == 0
    unloaded = generate(engine)
    assert unloaded.report["compile_graphs"] == 0 and close(unloaded, eager["base"])
    engine.manager.set_options(step_cache=0.0)
    assert generate(engine).report["compiled"]  # without the cache: the blocks' plain graphs, once
    assert generate(engine).report["compile_graphs"] == 0
    again = generate(engine, [(files[4], 1.0)])
    assert again.report["compiled"] and again.report["step_cache"] is None
    assert counters["stats"].get("recompile_limit_hit", 0) == 0 and not any(
        "recompile_limit" in key for key in counters["frames"])


@pytest.mark.parametrize("offload", ["model", "block", "sequential"])
def test_compile_runs_under_each_offload(tiny_root, files, eager, offload):
    engine = Engine(ModelManager(device="cpu", offload=offload))
    engine.manager.set_options(compile=True, step_cache=0.3)
    result = generate(engine, [(files[0], 1.0)])
    assert result.report["compiled"] is True and result.report["offload"] == offload
    assert close(result, eager["lora"])
    assert generate(engine, [(files[0], 0.5)]).report["compile_graphs"] == 0


def test_a_compile_failure_costs_compile_not_the_quantization(tiny_root, monkeypatch, tmp_path):
    """quanto's int4 layers fail under inductor on a CPU (a float/bf16 mismatch in its packed matmul): the run goes on
    uncompiled with quanto int4 kept, says so, and later runs do not compile that model again."""
    from quantization.config import QuantoConfig

    force_chain(monkeypatch, tmp_path, QuantoConfig("int4"))
    engine = Engine(ModelManager(device="cpu"))
    engine.manager.set_options(compile=True)
    result = generate(engine, quant="4bit")
    transformer = result.report["quantization"]["components"]["transformer"]
    assert (transformer["backend"], transformer["format"]) == ("quanto", "int4")
    assert result.report["compiled"] is False
    assert [f["backend"] for f in result.fallbacks] == ["compile"]
    assert any(n.startswith("Compile failed (") and "this run goes without it" in n for n in result.notices)
    later = generate(engine, quant="4bit")
    assert later.report["compiled"] is False and later.report["compile_graphs"] == 0
    assert any(n.startswith("Compile skipped: it failed on this model") for n in later.notices)


def test_bad_output_blames_the_backend_after_compile_is_cleared(tiny_root, monkeypatch):
    """NaN from the backend with compile on: a retry without compile gives NaN again, so compile was not the cause
    and comes back; the backend moves down its chain, and the report says the image came from a compiled
    transformer of the next backend (what really ran), with no compile fallback claimed."""
    from tests.test_engine import poison_first_backend

    second = poison_first_backend(monkeypatch, "8bit", lambda module: module.proj_out.register_forward_hook(
        lambda m, i, out: out * float("nan")))
    engine = Engine(ModelManager(device="cpu"))
    engine.manager.set_options(compile=True)
    result = generate(engine, quant="8bit")
    transformer = result.report["quantization"]["components"]["transformer"]
    assert (transformer["backend"], transformer["format"]) == (second.backend, second.format)
    assert result.report["compiled"] is True
    assert not any(f["backend"] == "compile" for f in result.fallbacks)
    assert any(f["component"] == "transformer" and "NaN" in f["reason"] for f in result.fallbacks)
