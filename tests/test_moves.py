"""A quantized component moves whole: every tensor it owns goes where it is sent (nothing left on the CPU), packed
weights are never unpacked, and accelerate's and diffusers' offload hooks carry each backend, or the backend refuses
that offload before anything is loaded. Shown with the real mechanisms: meta-device moves, accelerate.cpu_offload,
diffusers' group offloading, the engine's own offload hooks."""

import numpy as np
import pytest
import torch

from pipelines.models.tiny import tiny_transformer
from quantization.census import tensors_by_device
from quantization.config import FULL_PRECISION, BitsAndBytesConfig, QuantoConfig, TorchAoConfig
from quantization.registry import backend_for, offload_refusal
from tests.conftest import force_chain

CPU, BF16 = torch.device("cpu"), torch.bfloat16
CONFIGS = [BitsAndBytesConfig("nf4"), BitsAndBytesConfig("int8"), QuantoConfig("int8"), QuantoConfig("int4"),
           TorchAoConfig("int8_dynamic"), TorchAoConfig("int8_weight_only"), TorchAoConfig("float8_weight_only")]


def transformer():
    """The FLUX layout at width 128: in_features multiples of 128, so quanto int4 takes its packed TinyGemm form."""
    return tiny_transformer(0, hidden=128).to(BF16).eval()


def t5():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=256, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    return T5EncoderModel(config).to(BF16).eval()


def run(module):
    torch.manual_seed(1)
    with torch.no_grad():
        if isinstance(module, torch.nn.Module) and hasattr(module, "encoder"):
            return module(torch.randint(0, 256, (1, 12))).last_hidden_state
        return module(hidden_states=torch.randn(1, 16, 64, dtype=BF16),
                      encoder_hidden_states=torch.randn(1, 8, 64, dtype=BF16),
                      pooled_projections=torch.randn(1, 64, dtype=BF16), timestep=torch.tensor([0.5]),
                      img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5])).sample


def quantized(config, build=transformer):
    return backend_for(config).quantize(build(), config, CPU, BF16).eval()


@pytest.fixture
def unpacks(monkeypatch):
    """How often quanto unpacked an int4 weight (the real unpacking still runs)."""
    from optimum.quanto.tensor.weights.tinygemm.packed import TinyGemmPackedTensor

    calls, original = [], TinyGemmPackedTensor.unpack

    def counted(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(TinyGemmPackedTensor, "unpack", counted)
    return calls


# ---- moves ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.label)
@pytest.mark.parametrize("build", [transformer, t5], ids=["transformer", "t5"])
def test_a_component_moved_to_meta_leaves_nothing_on_the_cpu_and_is_never_unpacked(config, build, unpacks):
    module = quantized(config, build)
    run(module)  # bitsandbytes' own int8 layer makes its state object (copies of its tensors) on the first call
    before = tensors_by_device(module)
    assert set(before) == {"cpu"}
    module.to("meta")
    assert tensors_by_device(module) == {"meta": before["cpu"]}
    assert unpacks == []


@pytest.mark.parametrize("config", [BitsAndBytesConfig("int8"), BitsAndBytesConfig("nf4"), QuantoConfig("int4")],
                         ids=lambda c: c.label)
def test_a_component_read_from_the_cache_moves_whole_too(config, tiny_root, tmp_path, unpacks):
    from diffusers import FluxTransformer2DModel

    from quantization.load import Caches, ComponentSource, fingerprint, load_component

    folder = tiny_root / "dev" / "transformer"
    source = ComponentSource(folder, fingerprint(folder), FluxTransformer2DModel)

    def load():
        return FluxTransformer2DModel.from_pretrained(folder, dtype=BF16)

    caches = Caches(weights=tmp_path / "quantized")
    first = load_component("transformer", load, [config, FULL_PRECISION], CPU, BF16, source, caches)
    cached = load_component("transformer", load, [config, FULL_PRECISION], CPU, BF16, source, caches)
    assert not first.record.from_cache and cached.record.from_cache
    module = cached.module.eval()
    inputs = dict(hidden_states=torch.randn(1, 16, 64, dtype=BF16), encoder_hidden_states=torch.randn(1, 8, 64,
                  dtype=BF16), pooled_projections=torch.randn(1, 64, dtype=BF16), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5]))
    with torch.no_grad():
        assert torch.equal(module(**inputs).sample, first.module.eval()(**inputs).sample)
    count = tensors_by_device(module)["cpu"]
    module.to("meta")
    assert tensors_by_device(module) == {"meta": count} and unpacks == []


def test_a_packed_int4_layer_moves_within_a_device_type_and_refuses_to_compute_elsewhere():
    """quanto itself fails to move a TinyGemm weight within a device type (cpu:0), and computes garbage from bytes
    packed for another device type; the layer moves the packed bytes and says where it can compute."""
    module = quantized(QuantoConfig("int4"), t5)
    reference = run(module)
    module.to(torch.device("cpu:0"))
    assert torch.equal(run(module), reference)
    layer = next(m for m in module.modules() if type(m).__name__ == "PackedInt4Linear")
    layer.packed_for = "cuda"  # as if packed on a GPU and waiting in CPU memory
    with pytest.raises(RuntimeError, match="packed for cuda and cannot compute on cpu"):
        run(module)


# ---- offload hooks over each backend -----------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS + [FULL_PRECISION], ids=lambda c: c.label)
def test_sequential_offload_carries_each_backend_or_the_backend_refuses_it(config):
    """accelerate's per-layer hooks keep the weights on the meta device between calls and rebuild them from a CPU
    copy for each call (here the execution device is the CPU): quantized layers must come back whole."""
    from accelerate import cpu_offload

    for build in (transformer, t5):
        module = quantized(config, build) if config.bits < 16 else build()
        reference = run(module)
        refusal = offload_refusal(config, "sequential")
        if refusal:
            assert config.backend == "quanto" and "\n" not in refusal
            continue
        cpu_offload(module, execution_device=CPU)
        assert torch.equal(run(module), reference)
        assert torch.equal(run(module), reference)


@pytest.mark.parametrize("config", CONFIGS + [FULL_PRECISION], ids=lambda c: c.label)
def test_block_offload_carries_each_backend_or_the_backend_refuses_it(config):
    from diffusers.hooks import apply_group_offloading

    from pipelines.memory.offload import _block_path

    for build in (transformer, t5):
        module = quantized(config, build) if config.bits < 16 else build()
        reference = run(module)
        if offload_refusal(config, "block"):
            assert config.backend == "quanto"
            continue
        apply_group_offloading(module, onload_device=CPU, offload_type="block_level", num_blocks_per_group=1,
                               block_modules=_block_path(module))
        assert torch.equal(run(module), reference)


def test_a_quant_choice_no_backend_of_which_runs_under_the_offload_is_refused_before_loading(tiny_root, monkeypatch,
                                                                                              tmp_path):
    from pipelines.engine import Engine
    from pipelines.errors import UserError
    from pipelines.manager import ModelManager
    from pipelines.request import GenerationRequest

    force_chain(monkeypatch, tmp_path, QuantoConfig("int4"))
    engine = Engine(ModelManager(device="cpu", offload="sequential"))
    with pytest.raises(UserError) as caught:
        engine.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="4bit", seed=1, steps=2))
    message = str(caught.value)
    assert "\n" not in message and "offload='sequential'" in message and "quanto int4" in message
    assert engine.manager._pipelines == {} and engine.manager.loaded_bytes() == 0


OFFLOADS = ("model", "block", "sequential")


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS + [FULL_PRECISION], ids=lambda c: c.label)
def test_the_engine_runs_each_backend_under_each_offload_it_takes(config, tiny_root, monkeypatch, tmp_path):
    """Each backend and format, under each offload kind: the studio's own hooks are installed (the report says
    which), the image is the one without offload, bit for bit; a kind the backend refuses is refused before loading
    in one line. Switching back to none takes the hooks off."""
    from pipelines.engine import Engine
    from pipelines.errors import UserError
    from pipelines.manager import ModelManager
    from pipelines.memory.offload import installed
    from pipelines.request import GenerationRequest

    force_chain(monkeypatch, tmp_path, config)
    engine = Engine(ModelManager(device="cpu"))
    quant = "8bit" if config.bits == 8 else ("4bit" if config.bits == 4 else "none")

    def generate():
        result = engine.generate(GenerationRequest(tool="dev", prompt="a fox", model="tiny", quant=quant, seed=2,
                                                   steps=2))
        assert result.report["quantization"]["components"]["transformer"]["format"] == config.format
        return result

    base = generate()
    for kind in OFFLOADS:
        engine.manager.set_options(offload=kind)
        if offload_refusal(config, kind):
            with pytest.raises(UserError, match=f"offload='{kind}'"):
                generate()
            continue
        result = generate()
        assert result.report["offload"] == kind and result.report["options"]["offload"] == kind
        assert np.array_equal(np.asarray(result.image), np.asarray(base.image)), kind
    engine.manager.set_options(offload="none")
    result = generate()
    (loaded,) = engine.manager._pipelines.values()
    assert result.report["offload"] == "none" and installed(loaded.pipe) == "none"
    assert not any(hasattr(m, "_hf_hook") or getattr(m, "_diffusers_hook", None) is not None
                   and m._diffusers_hook.get_hook("group_offloading") for m in loaded.pipe.transformer.modules())
    assert np.array_equal(np.asarray(result.image), np.asarray(base.image))


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_bitsandbytes_own_layers_from_a_loader_are_adopted_whole_and_then_offload(kind):
    """A pre-quantized checkpoint read by diffusers' or transformers' loader holds bitsandbytes' own layers (their
    statistics beside the registered tensors); they are taken over, tensors and all, and then run under offload."""
    import bitsandbytes as bnb
    from accelerate import cpu_offload

    from quantization.backends.bitsandbytes_backend import Int8Linear, NF4Linear, adopt_layers

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 128)).to(BF16)
    for index in (0, 2):
        linear = model[index]
        if kind == "nf4":
            layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, compute_dtype=BF16, quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4")
        else:
            layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, has_fp16_weights=False)
            layer.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
        layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
        model[index] = layer.to("cpu")
    model.eval()
    x = torch.randn(4, 128, dtype=BF16)
    with torch.no_grad():
        reference = model(x)
        assert adopt_layers(model, BF16) == 2
        assert all(isinstance(model[i], (NF4Linear, Int8Linear)) for i in (0, 2))
        assert torch.equal(model(x), reference)
        cpu_offload(model, execution_device=CPU)
        assert torch.equal(model(x), reference)
