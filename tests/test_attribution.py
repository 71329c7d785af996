"""A failed run is put down to its cause: LoRAs (refused by name, the model left as it was), the step cache or offload
(the run goes on without it), or the quantization backend (the only cause that moves down its fallback chain)."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.engine import Engine
from pipelines.errors import UserError
from pipelines.loras.tiny import tiny_lora
from pipelines.manager import ModelManager
from pipelines.request import GenerationRequest
from quantization.policy import candidates
from tests.test_engine import assert_image_is_not_flat, poison_first_backend


def generate(engine, quant="8bit", loras=(), **fields):
    return engine.generate(GenerationRequest(tool="dev", prompt="a fox", model="tiny", quant=quant, seed=3, steps=3,
                                             loras=[(str(path), strength) for path, strength in loras], **fields))


def scaled_lora(tmp_path, name: str, factor: float) -> str:
    """A real LoRA file of the tiny family with its up-projections multiplied by ``factor``."""
    state = load_file(str(tiny_lora("diffusers", seed=7)))
    state = {k: (v.float() * factor).to(v.dtype) if "lora_B" in k else v for k, v in state.items()}
    path = tmp_path / name
    save_file(state, str(path))
    return str(path)


def snapshot(engine):
    (loaded,) = engine.manager._pipelines.values()
    return {name: (id(c.module), c.quant.backend if c.quant else None) for name, c in loaded.components.items()}


@pytest.mark.parametrize("factor, says", [(1e19, "gives NaN or infinite pixels with this model"),
                                          (float("inf"), "holds NaN or infinite weights")])
def test_a_lora_that_breaks_the_run_is_refused_by_name_and_the_model_stays_as_it_was(tiny_root, tmp_path, factor,
                                                                                      says):
    engine = Engine(ModelManager(device="cpu"))
    base = generate(engine)
    before = snapshot(engine)
    bad = scaled_lora(tmp_path, "overcooked.safetensors", factor)
    with pytest.raises(UserError) as caught:
        generate(engine, loras=[(bad, 1.0)])
    message = str(caught.value)
    assert "lora='overcooked'" in message and says in message and "\n" not in message
    assert snapshot(engine) == before  # no component replaced, none moved down its chain
    again = generate(engine)
    assert again.report["quantization"] == base.report["quantization"] and not again.fallbacks
    assert np.array_equal(np.asarray(again.image), np.asarray(base.image))


def test_a_backend_that_gives_nan_with_a_lora_active_still_falls_back(tiny_root, monkeypatch):
    """The run without the LoRA gives NaN too: the backend is to blame, not the LoRA."""
    second = poison_first_backend(monkeypatch, "8bit", lambda module: module.proj_out.register_forward_hook(
        lambda m, i, out: out * float("nan")))
    engine = Engine(ModelManager(device="cpu"))
    result = generate(engine, loras=[(tiny_lora("diffusers"), 1.0)])
    assert_image_is_not_flat(result.image)
    transformer = result.report["quantization"]["components"]["transformer"]
    assert (transformer["backend"], transformer["format"]) == (second.backend, second.format)
    assert result.report["parameters"]["loras"][0]["name"].startswith("tiny-diffusers")


def test_a_step_cache_failure_goes_without_the_step_cache_and_keeps_the_quantization(tiny_root, monkeypatch):
    from diffusers.hooks.first_block_cache import FBCHeadBlockHook

    def broken(self, residual):
        raise RuntimeError("the cache's decision failed")

    monkeypatch.setattr(FBCHeadBlockHook, "_should_compute_remaining_blocks", broken)
    engine = Engine(ModelManager(device="cpu"))
    engine.manager.set_options(step_cache=0.2)
    result = generate(engine)
    assert_image_is_not_flat(result.image)
    first = candidates("8bit", "cpu")[0]
    transformer = result.report["quantization"]["components"]["transformer"]
    assert (transformer["backend"], transformer["format"]) == (first.backend, first.format)
    assert result.report["step_cache"] is None
    assert [(f["backend"], f["reason"]) for f in result.fallbacks] == [
        ("step cache", "RuntimeError: the cache's decision failed")]
    assert any(n.startswith("Step cache failed (RuntimeError: the cache's decision failed)") for n in result.notices)


def test_a_backend_failure_under_the_step_cache_is_the_backends(tiny_root, monkeypatch):
    """The step cache's hooks wrap every block: an error raised in a block beneath them is not theirs."""
    def explode(*args):
        raise RuntimeError("kernel not implemented for this shape")

    second = poison_first_backend(monkeypatch, "4bit", lambda module: module.proj_out.register_forward_pre_hook(explode))
    engine = Engine(ModelManager(device="cpu"))
    engine.manager.set_options(step_cache=0.2)
    result = generate(engine, quant="4bit")
    assert result.report["quantization"]["components"]["transformer"]["backend"] == second.backend
    assert result.report["step_cache"] is not None
    assert not any(f["backend"] == "step cache" for f in result.fallbacks)


def test_an_offload_failure_goes_without_offload_and_keeps_the_quantization(tiny_root, monkeypatch):
    from accelerate.hooks import CpuOffload

    original, calls = CpuOffload.pre_forward, []

    def failing(self, module, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("could not bring the weights in")
        return original(self, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", failing)
    engine = Engine(ModelManager(device="cpu", offload="model"))
    result = generate(engine)
    assert_image_is_not_flat(result.image)
    first = candidates("8bit", "cpu")[0]
    assert result.report["quantization"]["components"]["transformer"]["backend"] == first.backend
    assert result.report["offload"] == "none" and result.report["options"]["offload"] == "model"
    assert [(f["backend"], f["format"]) for f in result.fallbacks] == [("offload", "model")]


def test_where_an_error_was_raised_names_its_cause():
    from pipelines.engine import _raised_in

    def raise_in(filename: str, line: str = "raise error"):
        source = f"def fail(error):\n    {line}\n" if line == "raise error" else \
            f"def fail(error):\n    {line}\n    raise error\n"
        namespace = {}
        exec(compile(source, filename, "exec"), namespace)
        try:
            namespace["fail"](RuntimeError("x"))
        except RuntimeError as error:
            return error

    site = "/usr/lib/python3/site-packages"
    assert _raised_in(raise_in(f"{site}/torch/_inductor/codegen.py")) == "compile"
    assert _raised_in(raise_in(f"{site}/diffusers/hooks/first_block_cache.py")) == "step cache"
    assert _raised_in(raise_in(f"{site}/accelerate/hooks.py")) == "offload"
    assert _raised_in(raise_in(f"{site}/peft/tuners/lora/layer.py")) == "loras"
    assert _raised_in(raise_in(f"{site}/bitsandbytes/functional.py")) == "backend"
    assert _raised_in(raise_in(f"{site}/diffusers/models/attention.py")) is None
    assert _raised_in(raise_in(f"{site}/torch/_dynamo/eval_frame.py")) is None  # compiled code's entry passes calls on
    assert _raised_in(raise_in(f"{site}/torch/_inductor/codegen.py"), skip={"compile"}) is None
