"""Backends: quantized layers are the backend's own types, weights shrink, failures fall back."""

import pytest
import torch

from pipelines.models.tiny import tiny_transformer
from quantization.config import FULL_PRECISION, BitsAndBytesConfig, QuantoConfig, TorchAoConfig
from quantization.load import load_component
from quantization.registry import backend_for
from quantization.sizes import module_bytes

CPU = torch.device("cpu")
BF16 = torch.bfloat16


def quantize(component, load, chain, device, dtype):
    """The load path without caches: (module, config it ended with, record)."""
    loaded = load_component(component, load, chain, device, dtype)
    return loaded.module, loaded.config, loaded.record


def wide_transformer():
    """The FLUX layout at a realistic-enough width (512) for weight ratios to mean something."""
    return tiny_transformer(0, hidden=512).to(BF16)


def wide_t5():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=256, d_model=512, d_kv=64, d_ff=1280, num_layers=2, num_heads=8,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    return T5EncoderModel(config).to(BF16)


CONFIGS = [
    (QuantoConfig("int8"), "optimum.quanto.nn.qlinear.QLinear", 0.55),
    # a QLinear; in torch's TinyGemm layout (in_features a multiple of 128) the QLinear subclass that moves it packed
    (QuantoConfig("int4"), "optimum.quanto.nn.qlinear.QLinear|quantization.backends.quanto_backend.PackedInt4Linear",
     0.32),
    (BitsAndBytesConfig("int8"), "quantization.backends.bitsandbytes_backend.Int8Linear", 0.55),
    (BitsAndBytesConfig("nf4"), "quantization.backends.bitsandbytes_backend.NF4Linear", 0.32),
    (TorchAoConfig("int8_dynamic"), "torch.nn.modules.linear.Linear", 0.55),
    (TorchAoConfig("int8_weight_only"), "torch.nn.modules.linear.Linear", 0.55),
]


@pytest.mark.parametrize("config, layer_type, max_ratio", CONFIGS, ids=lambda v: getattr(v, "label", None))
@pytest.mark.parametrize("build", [wide_transformer, wide_t5], ids=["transformer", "t5"])
def test_backend_quantizes_every_linear_and_shrinks_weights(config, layer_type, max_ratio, build):
    module, chosen, record = quantize("component", build, [config, FULL_PRECISION], CPU, BF16)
    assert chosen == config and record.fallbacks == []
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear) or "Linear" in type(m).__name__]
    quantized = [m for m in linears if backend_for(config).is_quantized_layer(m)]
    assert len(quantized) == len(linears) == record.quantized_layers
    assert {f"{type(m).__module__}.{type(m).__name__}" for m in quantized} <= set(layer_type.split("|"))
    if config.backend == "torchao":
        assert all(type(m.weight).__name__ != "Parameter" for m in quantized)
    assert record.bytes_before == module_bytes(build())
    assert record.bytes_after == module_bytes(module)
    assert record.bytes_after / record.bytes_before <= max_ratio


@pytest.mark.parametrize("config", [c for c, _, _ in CONFIGS], ids=lambda c: c.label)
def test_quantized_transformer_stays_close_to_full_precision(config):
    torch.manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 64, 64, dtype=BF16), encoder_hidden_states=torch.randn(1, 8, 64, dtype=BF16),
                  pooled_projections=torch.randn(1, 64, dtype=BF16), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(64, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5]))
    with torch.inference_mode():
        reference = wide_transformer()(**inputs).sample.float()
        module, _, _ = quantize("transformer", wide_transformer, [config, FULL_PRECISION], CPU, BF16)
        output = module(**inputs).sample.float()
    error = ((output - reference).norm() / reference.norm()).item()
    assert torch.isfinite(output).all()
    assert error < (0.05 if config.bits == 8 else 0.25)


def test_disabled_backend_is_skipped_with_its_reason(monkeypatch):
    monkeypatch.setenv("FLUXFORGE_DISABLE_BACKENDS", "torchao, quanto")
    chain = [TorchAoConfig("int8_dynamic"), QuantoConfig("int8"), BitsAndBytesConfig("int8"), FULL_PRECISION]
    _, chosen, record = quantize("transformer", wide_transformer, chain, CPU, BF16)
    assert chosen == BitsAndBytesConfig("int8")
    assert [(f.backend, f.format) for f in record.fallbacks] == [("torchao", "int8_dynamic"), ("quanto", "int8")]
    assert all("FLUXFORGE_DISABLE_BACKENDS" in f.reason for f in record.fallbacks)


def test_backend_that_fails_while_quantizing_falls_back_to_full_precision(monkeypatch):
    backend = backend_for(QuantoConfig("int8"))

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(type(backend), "quantize", broken)
    loads = []

    def load():
        loads.append(1)
        return wide_transformer()

    module, chosen, record = quantize("transformer", load, [QuantoConfig("int8"), FULL_PRECISION],
                                                    CPU, BF16)
    assert chosen == FULL_PRECISION and record.backend == "none"
    assert record.bytes_after == record.bytes_before
    assert "kernel exploded" in record.fallbacks[0].reason
    assert len(loads) == 2  # a half-quantized module is never reused


def test_missing_library_is_reported_with_the_install_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    from quantization.registry import check_backend

    assert check_backend(TorchAoConfig("int8_dynamic"), CPU) == "torchao is not installed (pip install torchao)"


def test_mps_takes_bitsandbytes_4bit_and_refuses_its_8bit_and_torchao():
    from quantization.registry import check_backend

    mps = torch.device("mps")
    assert check_backend(BitsAndBytesConfig("nf4"), mps) is None  # bitsandbytes 0.50 runs 4-bit on MPS
    assert "only 4-bit" in check_backend(BitsAndBytesConfig("int8"), mps)
    assert "MPS" in check_backend(TorchAoConfig("int8_dynamic"), mps)


@pytest.mark.parametrize("device, config, version, refused", [
    ("mps", BitsAndBytesConfig("nf4"), "0.50.2", None),
    ("mps", BitsAndBytesConfig("nf4"), "0.49.0", "no Apple MPS kernels"),
    ("mps", BitsAndBytesConfig("int8"), "0.50.2", "only 4-bit"),
    ("cpu", BitsAndBytesConfig("int8"), "0.50.2", None),
    ("cpu", BitsAndBytesConfig("nf4"), "0.44.1", "no CPU kernels"),
    ("cuda", BitsAndBytesConfig("int8"), "0.40.0", None),
])
def test_bitsandbytes_device_refusal_table(device, config, version, refused):
    from quantization.backends.bitsandbytes_backend import device_refusal

    reason = device_refusal(config, torch.device(device), version)
    assert reason is None if refused is None else refused in reason


@pytest.mark.parametrize("config", [c for c, _, _ in CONFIGS], ids=lambda c: c.label)
def test_t5_vocabulary_table_is_stored_in_int8_and_stays_tied(config):
    from quantization.backends.common import Int8Embedding

    reference = wide_t5()
    module, _, _ = quantize("text_encoder_2", wide_t5, [config, FULL_PRECISION], CPU, BF16)
    table = module.encoder.embed_tokens
    assert isinstance(table, Int8Embedding) and module.shared is table and table.weight.dtype == torch.int8
    assert module_bytes(table) < 0.51 * module_bytes(reference.shared)
    ids = torch.arange(256).reshape(2, 128)
    with torch.inference_mode():
        expected, got = reference.shared(ids).float(), table(ids).float()
        assert ((got - expected).norm() / expected.norm()).item() < 1e-2
        assert torch.isfinite(module(ids).last_hidden_state).all()
    # relative position tables are small and stay as they are
    assert type(module.encoder.block[0].layer[0].SelfAttention.relative_attention_bias) is torch.nn.Embedding


@pytest.mark.parametrize("config", [c for c, _, _ in CONFIGS], ids=lambda c: c.label)
def test_quantized_t5_wo_layers_keep_the_activations_in_floating_point(config):
    # T5 casts its activations to wo.weight.dtype before wo: a uint8-packed weight would turn them into bytes.
    torch.manual_seed(2)
    ids = torch.randint(0, 256, (1, 16))
    with torch.inference_mode():
        reference = wide_t5().eval()(ids).last_hidden_state.float()
        module, _, _ = quantize("text_encoder_2", wide_t5, [config, FULL_PRECISION], CPU, BF16)
        assert module.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype in (BF16, torch.int8)
        output = module.eval()(ids).last_hidden_state.float()
    error = ((output - reference).norm() / reference.norm()).item()
    assert error < (0.05 if config.bits == 8 else 0.25)


def test_a_bitsandbytes_layers_state_is_its_own_tensors_and_reading_it_changes_nothing():
    """An NF4 layer's weight and statistics are its registered tensors: its state dict gives them as they are (the
    studio reads it before every run, adapter loading too), and runs stay bit-identical."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)).to(torch.bfloat16)
    config = BitsAndBytesConfig("nf4")
    model = backend_for(config).quantize(model, config, torch.device("cpu"), torch.bfloat16).eval()
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        first = model(x)
        layer = model[0]
        packed = layer.weight.data.view(torch.uint8).clone()  # packed 4-bit codes in bf16 storage: compare the bytes
        module_bytes(model)
        state = model.state_dict()
        assert torch.equal(layer.weight.data.view(torch.uint8), packed) and torch.equal(model(x), first)
    assert {"0.weight", "0.bias", "0.absmax", "0.quant_map", "0.nested_absmax", "0.nested_quant_map",
            "0.nested_offset"} <= set(state)
    assert all(state[f"0.{name}"].data_ptr() == tensor.data_ptr()
               for name, tensor in [*layer.named_parameters(), *layer.named_buffers()])
