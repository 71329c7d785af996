"""Every tool end to end on the tiny family, under every quantization mode."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.engine import BadOutput, check_output
from pipelines.images import read_metadata
from pipelines.request import GenerationRequest
from quantization.policy import candidates
from quantization.registry import backend_for
from tests.conftest import make_photo

MODES = ["none", "8bit", "4bit", "auto"]


def tool_inputs(tool, photo, mask):
    return {
        "schnell": {},
        "dev": {},
        "fill": {"image": photo, "mask": mask},
        "kontext": {"image": photo},
        "depth": {"image": photo},
        "canny": {"image": photo},
        "redux": {"image": photo},
    }[tool]


def assert_image_is_not_flat(image: Image.Image):
    pixels = np.asarray(image, dtype=np.float32)
    assert pixels.std() > 5.0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tool", ["schnell", "dev", "fill", "kontext", "depth", "canny", "redux"])
def test_tool_runs_end_to_end_with_an_honest_report(studio, photo, mask, tool, mode):
    request = GenerationRequest(tool=tool, prompt="a lighthouse at dusk", model="tiny", quant=mode, seed=7,
                                **tool_inputs(tool, photo, mask))
    before = dict(vars(request))
    result = studio.generate(request)
    assert_image_is_not_flat(result.image)
    assert vars(request) == before  # a tool never changes the request it is given
    params = result.report["parameters"]
    assert result.image.size == (params["width"], params["height"])

    report = result.report
    assert {"tool", "model", "device", "dtype", "seed", "quantization", "memory", "timings"} <= set(report)
    assert (report["tool"], report["model"], report["device"], report["dtype"], report["seed"]) == (
        tool, "tiny", "cpu", "bfloat16", 7)
    quant = report["quantization"]
    assert quant["requested"] == mode and quant["fallbacks"] == []
    expected_mode = "none" if mode == "auto" else mode  # the tiny model fits in any free memory
    assert quant["resolved"] == expected_mode
    expected = candidates(expected_mode, "cpu")[0]
    for name in ("transformer", "text_encoder_2"):
        component = quant["components"][name]
        assert (component["backend"], component["format"]) == (expected.backend, expected.format)
        if expected_mode == "none":
            assert component["bytes_after"] == component["bytes_before"]
        else:
            assert component["bytes_after"] < 0.8 * component["bytes_before"]
            assert component["quantized_layers"] > 0
    for name in ("text_encoder", "vae"):  # CLIP and VAE stay full precision
        assert quant["components"][name]["backend"] == "none"
    assert report["memory"]["kind"] == "cpu-rss" and report["memory"]["peak_bytes"] > 0
    timings = report["timings"]
    assert 0 < timings["denoise_s"] <= timings["total_s"]
    if mode == "auto":
        assert quant["auto_reason"] and any("Auto chose" in n for n in result.notices)


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_loaded_layers_are_the_backends_quantized_types(studio, mode):
    result = studio.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant=mode, seed=1))
    loaded = next(p for p in studio.manager._pipelines.values() if p.key[1] == mode and p.key[0].endswith("dev"))
    config = candidates(mode, "cpu")[0]
    backend = backend_for(config)
    for name in ("transformer", "text_encoder_2"):
        module = loaded.components[name].module
        quantized = [m for m in module.modules() if backend.is_quantized_layer(m)]
        plain = [m for m in module.modules() if type(m) is torch.nn.Linear and not backend.is_quantized_layer(m)]
        assert quantized and not plain
        assert result.report["quantization"]["components"][name]["quantized_layers"] == len(quantized)


def test_same_seed_gives_the_same_image_and_another_seed_does_not(studio):
    def run(seed):
        return np.asarray(studio.generate(GenerationRequest(tool="schnell", prompt="x", model="tiny", quant="none",
                                                            seed=seed)).image)

    assert np.array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_outpainting_grows_the_canvas(studio, photo):
    request = GenerationRequest(tool="fill", prompt="more sky", model="tiny", quant="none", image=photo,
                                expand=(32, 16, 48, 0), seed=1)
    result = studio.generate(request)
    assert result.image.size == (photo.width + 80, photo.height + 16)
    assert_image_is_not_flat(result.image)


def test_fill_with_a_reference_image_uses_the_redux_prior(studio, photo, mask):
    plain = studio.generate(GenerationRequest(tool="fill", prompt="a vase", model="tiny", quant="none",
                                              image=photo, mask=mask, seed=2))
    steered = studio.generate(GenerationRequest(tool="fill", prompt="a vase", model="tiny", quant="none",
                                                image=photo, mask=mask, reference=photo.rotate(90), seed=2))
    assert not np.array_equal(np.asarray(plain.image), np.asarray(steered.image))
    assert any(key[0] == "redux-prior" for key in studio.manager._aux)


def test_canny_and_depth_return_their_control_maps(studio, photo):
    canny = studio.generate(GenerationRequest(tool="canny", prompt="x", model="tiny", quant="none", image=photo,
                                              seed=1, canny_low=50, canny_high=150))
    edges = np.asarray(canny.control_image)
    assert set(np.unique(edges)) == {0, 255}  # a binary edge map
    depth = studio.generate(GenerationRequest(tool="depth", prompt="x", model="tiny", quant="none", image=photo,
                                              seed=1))
    assert depth.control_image.size == depth.image.size
    assert np.asarray(depth.control_image).std() > 1.0


def test_ready_made_control_map_is_used_as_given(studio, photo):
    ready = Image.new("RGB", photo.size, (0, 0, 0))
    ready.paste((255, 255, 255), (10, 10, 60, 60))
    result = studio.generate(GenerationRequest(tool="depth", prompt="x", model="tiny", quant="none", image=photo,
                                               control_image=ready, seed=1))
    assert np.array_equal(np.asarray(result.control_image), np.asarray(ready.resize(result.image.size)))


def test_png_keeps_parameters_and_quantization_outcome(studio, tmp_path):
    result = studio.generate(GenerationRequest(tool="dev", prompt="a red fox", model="tiny", quant="4bit", seed=11,
                                               steps=3, guidance=4.0))
    path = result.save(tmp_path / "fox.png")
    meta = read_metadata(path)
    assert (meta["prompt"], meta["seed"], meta["steps"], meta["guidance"], meta["tool"], meta["model"]) == (
        "a red fox", 11, 3, 4.0, "dev", "tiny")
    assert (meta["width"], meta["height"]) == result.image.size
    first = candidates("4bit", "cpu")[0]
    assert meta["quantization"]["components"]["transformer"]["backend"] == first.backend
    with Image.open(path) as image:
        assert "Seed: 11" in image.text["parameters"] and first.label in image.text["parameters"]


def test_shared_components_are_loaded_once(fresh_studio, photo, mask):
    fresh_studio.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="8bit", seed=1))
    fresh_studio.generate(GenerationRequest(tool="fill", prompt="x", model="tiny", quant="8bit", image=photo,
                                            mask=mask, seed=1))
    pipes = list(fresh_studio.manager._pipelines.values())
    assert len(pipes) == 2
    dev, fill = (p.pipe for p in pipes)
    for name in ("text_encoder", "text_encoder_2", "vae"):
        assert getattr(dev, name) is getattr(fill, name)
    assert dev.transformer is not fill.transformer
    rows = fresh_studio.manager.status()
    t5 = [r for r in rows if r["component"] == "text_encoder_2"]
    assert len(t5) == 1 and len(t5[0]["used_by"]) == 2
    assert t5[0]["backend"] == candidates("8bit", "cpu")[0].backend
    freed = fresh_studio.manager.unload()
    assert freed > 0 and fresh_studio.manager.status() == [] and fresh_studio.manager.loaded_bytes() == 0


def test_memory_budget_evicts_the_least_recently_used_pipeline(tiny_root):
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager

    manager = ModelManager(device="cpu")
    studio = Engine(manager)
    studio.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="none", seed=1))
    one_pipeline = manager.loaded_bytes()
    manager.budget_bytes = int(one_pipeline * 1.5)  # room for one, not two
    studio.generate(GenerationRequest(tool="schnell", prompt="x", model="tiny", quant="none", seed=1))
    assert [key[0].rsplit("/", 1)[-1] for key in manager._pipelines] == ["schnell"]
    assert manager.loaded_bytes() <= manager.budget_bytes


def test_switching_mode_replaces_the_pipeline_instead_of_keeping_both(fresh_studio):
    fresh_studio.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="8bit", seed=1))
    fresh_studio.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="4bit", seed=1))
    assert [key[1] for key in fresh_studio.manager._pipelines] == ["4bit"]
    assert {r["backend"] for r in fresh_studio.manager.status() if r["component"] == "transformer"} == {
        candidates("4bit", "cpu")[0].backend}


def test_forced_fallback_is_recorded_and_the_run_completes(fresh_studio, monkeypatch):
    monkeypatch.setenv("FLUXFORGE_DISABLE_BACKENDS", "torchao,bitsandbytes,quanto")
    result = fresh_studio.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="8bit", seed=1))
    assert_image_is_not_flat(result.image)
    components = result.report["quantization"]["components"]
    assert components["transformer"]["backend"] == "none"
    fallbacks = result.report["quantization"]["fallbacks"]
    assert {(f["component"], f["backend"]) for f in fallbacks} == {
        (c, b) for c in ("transformer", "text_encoder_2") for b in ("torchao", "quanto", "bitsandbytes")}
    assert all("FLUXFORGE_DISABLE_BACKENDS" in f["reason"] for f in fallbacks)
    assert any(n.startswith("Fallback: transformer") for n in result.notices)


def test_partial_fallback_picks_the_next_backend(fresh_studio, monkeypatch):
    first, second = candidates("4bit", "cpu")[:2]
    monkeypatch.setenv("FLUXFORGE_DISABLE_BACKENDS", first.backend)
    result = fresh_studio.generate(GenerationRequest(tool="schnell", prompt="x", model="tiny", quant="4bit", seed=1))
    assert result.report["quantization"]["components"]["transformer"]["backend"] == second.backend
    assert result.report["quantization"]["fallbacks"][0]["backend"] == first.backend


def poison_first_backend(monkeypatch, mode, hook):
    """Make the first backend of the CPU chain give a transformer that misbehaves at inference."""
    first, second = candidates(mode, "cpu")[:2]
    backend_type = type(backend_for(first))
    original = backend_type.quantize

    def poisoned(self, module, config, device, dtype):
        module = original(self, module, config, device, dtype)
        if type(module).__name__ == "FluxTransformer2DModel" and config == first:
            hook(module)
        return module

    monkeypatch.setattr(backend_type, "quantize", poisoned)
    return second


def test_nan_output_from_a_quantized_model_degrades_and_retries(fresh_studio, monkeypatch):
    """A backend whose first inference yields NaN: the run moves down the chain and says why."""
    second = poison_first_backend(monkeypatch, "8bit", lambda module: module.proj_out.register_forward_hook(
        lambda m, i, out: out * float("nan")))
    result = fresh_studio.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="8bit", seed=1))
    assert_image_is_not_flat(result.image)
    transformer = result.report["quantization"]["components"]["transformer"]
    assert (transformer["backend"], transformer["format"]) == (second.backend, second.format)
    reasons = [f["reason"] for f in result.report["quantization"]["fallbacks"] if f["component"] == "transformer"]
    assert any("NaN" in reason for reason in reasons)


def test_inference_error_from_a_quantized_model_degrades_and_retries(fresh_studio, monkeypatch):
    def explode(*args):
        raise RuntimeError("kernel not implemented for this shape")

    second = poison_first_backend(monkeypatch, "4bit", lambda module: module.proj_out.register_forward_pre_hook(explode))
    result = fresh_studio.generate(GenerationRequest(tool="schnell", prompt="x", model="tiny", quant="4bit", seed=1))
    assert result.report["quantization"]["components"]["transformer"]["backend"] == second.backend
    assert any("kernel not implemented" in f["reason"] for f in result.report["quantization"]["fallbacks"])


@pytest.mark.parametrize("pixels", [np.full((1, 8, 8, 3), np.nan), np.zeros((1, 8, 8, 3)), np.ones((1, 8, 8, 3))])
def test_check_output_rejects_nan_and_flat_images(pixels):
    with pytest.raises(BadOutput):
        check_output(pixels)


def test_report_is_json_serialisable(studio):
    result = studio.generate(GenerationRequest(tool="schnell", prompt="x", model="tiny", quant="4bit", seed=1))
    assert json.loads(json.dumps(result.report))["quantization"]["requested"] == "4bit"


def test_without_a_budget_pipelines_are_unloaded_when_free_memory_runs_short(tiny_root):
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager

    free = {"bytes": 10**12}
    manager = ModelManager(device="cpu", free_memory_fn=lambda device: free["bytes"])
    studio = Engine(manager)
    studio.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="none", seed=1))
    studio.generate(GenerationRequest(tool="canny", prompt="x", model="tiny", quant="none", image=make_photo(), seed=1))
    assert len(manager._pipelines) == 2
    free["bytes"] = 1000  # nothing fits any more: everything older than the new pipeline goes
    studio.generate(GenerationRequest(tool="schnell", prompt="x", model="tiny", quant="none", seed=1))
    assert [key[0].rsplit("/", 1)[-1] for key in manager._pipelines] == ["schnell"]


def test_nan_from_a_bf16_vae_decode_is_retried_in_float32(fresh_studio, monkeypatch):
    from pipelines.engine import Engine

    original = Engine._vae_decode

    def flaky(pipe, latents, dtype):
        images = original(pipe, latents, dtype)
        return images * np.nan if dtype == torch.bfloat16 else images

    monkeypatch.setattr(Engine, "_vae_decode", staticmethod(flaky))
    result = fresh_studio.generate(GenerationRequest(tool="schnell", prompt="x", model="tiny", quant="none", seed=1))
    assert_image_is_not_flat(result.image)
    assert any(f["component"] == "vae" and "NaN" in f["reason"] for f in result.fallbacks)
    assert any("float32 VAE" in n for n in result.notices)
    assert next(fresh_studio.manager._pipelines.values().__iter__()).pipe.vae.dtype == torch.bfloat16


def test_nan_latents_stop_the_run_early_and_fall_back(fresh_studio, monkeypatch):
    calls = []

    def hook(module):
        def poison(m, i, out):
            calls.append(1)
            return out * float("nan")

        module.proj_out.register_forward_hook(poison)

    second = poison_first_backend(monkeypatch, "4bit", hook)
    request = GenerationRequest(tool="dev", prompt="x", model="tiny", quant="4bit", seed=1, steps=6)
    result = fresh_studio.generate(request)
    assert result.report["quantization"]["components"]["transformer"]["backend"] == second.backend
    assert len(calls) == 1  # stopped after the first step, not after all six
    assert any("latents became NaN/inf at step 1" in f["reason"] for f in result.fallbacks)


def test_out_of_memory_frees_other_models_and_retries_once(fresh_studio, monkeypatch, photo):
    fresh_studio.generate(GenerationRequest(tool="canny", prompt="x", model="tiny", quant="none", image=photo, seed=1))
    from diffusers import FluxTransformer2DModel

    original = FluxTransformer2DModel.forward
    raised = []

    def forward(self, *args, **kwargs):
        if not raised:
            raised.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FluxTransformer2DModel, "forward", forward)
    result = fresh_studio.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="none", seed=1))
    assert_image_is_not_flat(result.image)
    assert any("Out of memory: retrying" in n for n in result.notices)
    assert [k[0].rsplit("/", 1)[-1] for k in fresh_studio.manager._pipelines] == ["dev"]  # canny was freed


def test_out_of_memory_twice_gives_advice_and_the_next_request_works(fresh_studio, monkeypatch):
    from diffusers import FluxTransformer2DModel

    from pipelines.errors import UserError

    original = FluxTransformer2DModel.forward

    def always_oom(self, *args, **kwargs):
        raise RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)")

    monkeypatch.setattr(FluxTransformer2DModel, "forward", always_oom)
    with pytest.raises(UserError, match=r"out of memory: try a smaller size, --quant 4bit, or CPU offload "
                                        r"\(--offload block or model"):
        fresh_studio.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="none", seed=1))
    monkeypatch.setattr(FluxTransformer2DModel, "forward", original)
    result = fresh_studio.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="none", seed=1))
    assert_image_is_not_flat(result.image)


@pytest.mark.parametrize("device, steps", [("cuda", ("model offload", "block offload", "sequential offload")),
                                           ("mps", ("freed memory", "tiled decode")),  # offload frees nothing
                                           ("cpu", ("freed memory",))])
def test_oom_recovery_steps_per_device(device, steps):
    from pipelines.engine import oom_recovery_steps

    assert oom_recovery_steps(device) == steps


def test_fp8_on_a_cpu_falls_back_visibly_to_float8_weight_only(studio):
    """float8 matmuls need an NVIDIA GPU of compute capability 8.9+; on a CPU the weights are stored in float8 and
    computed in bf16 (torchao's float8 weight-only), after a visible fallback."""
    result = studio.generate(GenerationRequest(tool="schnell", prompt="x", model="tiny", quant="fp8", seed=1))
    assert_image_is_not_flat(result.image)
    transformer = result.report["quantization"]["components"]["transformer"]
    assert (transformer["backend"], transformer["format"]) == ("torchao", "float8_weight_only")
    fallbacks = [f for f in result.fallbacks if f["component"] == "transformer"]
    assert fallbacks and fallbacks[0]["format"] == "float8_dynamic" and "compute capability 8.9" in fallbacks[0]["reason"]
    assert any(n.startswith("Fallback: transformer could not use torchao float8_dynamic") for n in result.notices)


def test_fp8_weight_only_runs_end_to_end_on_the_cpu_through_the_cache(tiny_root, monkeypatch, tmp_path):
    """Quantized once, stored, read back: the same image both times, the second from the cache."""
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager
    from quantization.config import TorchAoConfig
    from tests.conftest import force_chain

    force_chain(monkeypatch, tmp_path, TorchAoConfig("float8_weight_only"))

    def run():
        engine = Engine(ModelManager(device="cpu"))
        return engine.generate(GenerationRequest(tool="dev", prompt="a fox", model="tiny", quant="fp8", seed=4,
                                                 steps=3))

    first, second = run(), run()
    for result, cached in ((first, False), (second, True)):
        for name in ("transformer", "text_encoder_2"):
            component = result.report["quantization"]["components"][name]
            assert (component["backend"], component["format"], component["from_cache"]) == (
                "torchao", "float8_weight_only", cached)
            assert component["bytes_after"] < 0.6 * component["bytes_before"]
    assert_image_is_not_flat(first.image)
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))


def test_placement_is_reported_and_recorded(studio):
    result = studio.generate(GenerationRequest(tool="dev", prompt="a fox", model="tiny", quant="none", seed=3))
    placement = result.report["placement"]
    assert placement["name"] == "resident" and "on the CPU nothing moves" in placement["reason"]
    meta = result.metadata()
    assert meta["placement"]["name"] == "resident" and meta["options"]["placement"] == "auto"
    assert {"encode_s", "denoise_s", "decode_s", "first_step_s", "step_s"} <= set(result.report["timings"])


def test_prompt_embeddings_are_reused_for_the_same_prompt(fresh_studio):
    prompts = fresh_studio.manager.prompts
    first = fresh_studio.generate(GenerationRequest(tool="dev", prompt="a fox", model="tiny", quant="none", seed=3))
    again = fresh_studio.generate(GenerationRequest(tool="dev", prompt="a fox", model="tiny", quant="none", seed=3))
    other = fresh_studio.generate(GenerationRequest(tool="dev", prompt="a cat", model="tiny", quant="none", seed=3))
    assert (first.report["placement"]["prompt_from_cache"], again.report["placement"]["prompt_from_cache"],
            other.report["placement"]["prompt_from_cache"]) == (False, True, False)
    assert (prompts.hits, prompts.misses) == (1, 2)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))


def test_encoders_leave_the_device_after_encoding_when_the_placement_says_so(fresh_studio, monkeypatch):
    """A forced placement moves each component for its phase: a spy on Module.to sees the moves in order."""
    import torch

    manager = fresh_studio.manager
    moves = []
    original = torch.nn.Module.to

    def spy(self, *args, **kwargs):
        for name in ("text_encoder", "text_encoder_2", "transformer", "vae"):
            for loaded in manager._pipelines.values():
                if loaded.components.get(name) is not None and loaded.components[name].module is self:
                    moves.append((name, str(args[0] if args else kwargs.get("device"))))
        return original(self, *args, **kwargs)

    manager.set_options(placement="swap")
    fresh_studio.generate(GenerationRequest(tool="dev", prompt="warm up", model="tiny", quant="none", seed=1))
    monkeypatch.setattr(torch.nn.Module, "to", spy)
    moves.clear()
    result = fresh_studio.generate(GenerationRequest(tool="dev", prompt="a new prompt", model="tiny", quant="none",
                                                     seed=1))
    assert result.report["placement"]["name"] == "swap"
    # encode: the encoders come to the device, the transformer waits; denoise: the encoders leave, it comes back
    encoders_in = [i for i, m in enumerate(moves) if m[0].startswith("text_encoder")][:2]
    transformer_in = [i for i, m in enumerate(moves) if m[0] == "transformer"]
    assert len(encoders_in) == 2 and transformer_in
    assert [m for m in moves if m[0].startswith("text_encoder")][-2:] == [("text_encoder", "cpu"),
                                                                          ("text_encoder_2", "cpu")]
    moves.clear()
    fresh_studio.generate(GenerationRequest(tool="dev", prompt="a new prompt", model="tiny", quant="none", seed=1))
    assert not [m for m in moves if m[0].startswith("text_encoder")]  # same prompt: the encoders stay put
    manager.set_options(placement="auto")


def test_quantized_modules_move_as_they_are(fresh_studio):
    """Moving a quantized component between phases keeps its quantized layers and weight bytes."""
    from quantization.registry import backend_for
    from quantization.sizes import module_bytes

    fresh_studio.manager.set_options(placement="encoders-off")
    fresh_studio.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="8bit", seed=1))
    loaded = next(iter(fresh_studio.manager._pipelines.values()))
    t5 = loaded.components["text_encoder_2"]
    config = candidates("8bit", "cpu")[0]
    layers = sum(1 for m in t5.module.modules() if backend_for(config).is_quantized_layer(m))
    size = module_bytes(t5.module)
    fresh_studio.generate(GenerationRequest(tool="dev", prompt="y", model="tiny", quant="8bit", seed=1))
    assert sum(1 for m in t5.module.modules() if backend_for(config).is_quantized_layer(m)) == layers > 0
    assert module_bytes(t5.module) == size
    fresh_studio.manager.set_options(placement="auto")


def test_step_cache_skips_blocks_at_a_high_threshold_and_changes_nothing_at_zero(fresh_studio):
    def run(threshold):
        fresh_studio.manager.set_options(step_cache=threshold)
        return fresh_studio.generate(GenerationRequest(tool="dev", prompt="a fox", model="tiny", quant="none",
                                                       seed=5, steps=8))

    off = run(0.0)
    assert off.report["step_cache"] is None
    high = run(1.0)
    assert high.report["step_cache"]["skipped_steps"] > 0
    assert high.report["step_cache"]["full_steps"] + high.report["step_cache"]["skipped_steps"] == 8
    assert high.metadata()["options"]["step_cache"] == 1.0
    tiny_threshold = run(1e-9)
    assert tiny_threshold.report["step_cache"]["skipped_steps"] == 0
    assert np.array_equal(np.asarray(tiny_threshold.image), np.asarray(off.image))
    fresh_studio.manager.set_options(step_cache=0.0)


@pytest.mark.parametrize("device, offered", [("cuda", True), ("cpu", True), ("mps", False)])
def test_compile_is_offered_on_nvidia_gpus_and_cpus(device, offered):
    from pipelines.speed import compile_refusal

    assert (compile_refusal(torch.device(device)) is None) == offered


def test_compile_without_a_cpp_compiler_is_refused_visibly(fresh_studio, monkeypatch):
    monkeypatch.setattr("pipelines.speed.shutil.which", lambda name: None)
    fresh_studio.manager.set_options(compile=True)
    result = fresh_studio.generate(GenerationRequest(tool="schnell", prompt="x", model="tiny", quant="none", seed=1))
    assert result.report["compiled"] is False
    assert any(n.startswith("Compile skipped: torch.compile on a CPU needs a C++ compiler") for n in result.notices)
    assert any(f["backend"] == "compile" for f in result.fallbacks)
    fresh_studio.manager.set_options(compile=False)


@pytest.mark.parametrize("tool", ["fill", "kontext", "canny"])
def test_step_cache_runs_on_pipelines_that_set_no_cache_context_of_their_own(fresh_studio, photo, mask, tool):
    fresh_studio.manager.set_options(step_cache=0.5)
    result = fresh_studio.generate(GenerationRequest(tool=tool, prompt="x", model="tiny", quant="none", seed=2,
                                                     steps=4, **tool_inputs(tool, photo, mask)))
    assert_image_is_not_flat(result.image)
    assert result.report["step_cache"]["full_steps"] + result.report["step_cache"]["skipped_steps"] == 4
    fresh_studio.manager.set_options(step_cache=0.0)
