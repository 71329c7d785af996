"""Quantization configs and the device policy: pure functions, tested as tables."""

import dataclasses

import pytest

from quantization.config import (FULL_PRECISION, BitsAndBytesConfig, NoQuantConfig, QuantoConfig,
                                 TorchAoConfig)
from quantization.policy import candidates, choose_auto

GIB = 2**30


@pytest.mark.parametrize(
    "quant, device, first",
    [
        ("8bit", "mps", QuantoConfig("int8")),
        ("4bit", "mps", QuantoConfig("int4")),
        ("8bit", "cuda", BitsAndBytesConfig("int8")),
        ("4bit", "cuda", BitsAndBytesConfig("nf4")),
        ("none", "cuda", FULL_PRECISION),
        ("none", "cpu", FULL_PRECISION),
    ],
)
def test_first_candidate_follows_the_device_policy(quant, device, first):
    assert candidates(quant, device)[0] == first


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_every_chain_ends_in_full_precision_and_matches_the_bit_width(quant, device):
    chain = candidates(quant, device)
    assert chain[-1] == FULL_PRECISION
    if (quant, device) == ("4bit", "mps"):  # 8-bit before full precision: see the MPS chain below
        assert [c.bits for c in chain[:-1]] == [4, 4, 8]
        return
    assert all(config.bits == int(quant[0]) for config in chain[:-1])


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_cpu_first_choice_is_the_fastest_measured_option_within_the_weight_ratio(quant):
    from quantization.policy import CANDIDATES, RATIO, cpu_step_ratios, cpu_weight_ratios

    options = {(c.backend, c.format) for c in CANDIDATES[("cpu", quant)]}
    eligible = {name: step for name, step in cpu_step_ratios().items()
                if name in options and cpu_weight_ratios().get(name, 1.0) <= RATIO[quant]}
    first = candidates(quant, "cpu")[0]
    assert eligible[(first.backend, first.format)] == min(eligible.values())  # ties are equally fast


@pytest.mark.parametrize("quant, chain", [
    # a failed 4-bit must not end at the 34 GB of bf16 on a 16-32 GB Mac: 8-bit comes before full precision
    ("4bit", (QuantoConfig("int4"), BitsAndBytesConfig("nf4"), QuantoConfig("int8"), FULL_PRECISION)),
    ("8bit", (QuantoConfig("int8"), FULL_PRECISION)),  # bitsandbytes runs only 4-bit on MPS
    ("none", (FULL_PRECISION,)),
])
def test_mps_chain(quant, chain):
    assert candidates(quant, "mps") == chain


def test_mps_never_uses_torchao_or_float8_weights():
    for quant in ("8bit", "4bit"):
        chain = candidates(quant, "mps")
        assert {c.backend for c in chain} <= {"quanto", "bitsandbytes", "none"}
        assert not any("float8" in c.format for c in chain)


@pytest.mark.parametrize("free_gib, expected", [
    (128, "none"), (64, "none"),  # bf16 whenever it fits (4-bit weight-only is slower on M1/M2)
    (36, "8bit"), (24, "8bit"), (20, "4bit"),  # quantized only to fit
    (8, "4bit"),  # even 4-bit is short: the advice is not CPU offload, which frees nothing on a Mac
])
def test_mps_auto_keeps_bf16_whenever_it_fits(free_gib, expected):
    choice = choose_auto(int(33.6 * GIB), int(0.4 * GIB), free_gib * GIB, None, "mps")
    assert choice.quant == expected
    assert "offload" not in choice.reason


@pytest.mark.parametrize("quant", ["auto", "2bit", ""])
def test_candidates_refuse_unresolved_or_unknown_quants(quant):
    with pytest.raises(ValueError, match="quant="):
        candidates(quant, "cpu")


def test_every_config_of_the_table_is_listed_once():
    from quantization.policy import CANDIDATES, all_configs

    listed = all_configs()
    assert len(set(listed)) == len(listed) and FULL_PRECISION not in listed
    assert set(listed) == {config for chain in CANDIDATES.values() for config in chain}


@pytest.mark.parametrize(
    "quantizable_gib, other_gib, free_gib, expected",
    [
        (0.001, 0.001, 20, "none"),   # tiny model
        (33.6, 0.4, 80, "none"),      # FLUX.1-dev bf16 on an 80 GB card
        (33.6, 0.4, 24, "8bit"),      # 24 GB card
        (33.6, 0.4, 16, "4bit"),      # 16 GB card
        (33.6, 0.4, 8, "4bit"),       # too small even for 4-bit: still the smallest choice
    ],
)
def test_auto_quant_from_model_size_and_free_memory(quantizable_gib, other_gib, free_gib, expected):
    choice = choose_auto(int(quantizable_gib * GIB), int(other_gib * GIB), int(free_gib * GIB))
    assert choice.quant == expected
    assert "GiB" in choice.reason


def test_auto_quant_with_unknown_free_memory_is_full_precision():
    assert choose_auto(GIB, GIB, None).quant == "none"


@pytest.mark.parametrize(
    "factory, bad",
    [(QuantoConfig, "float8"), (BitsAndBytesConfig, "fp4x"), (TorchAoConfig, "int4")],
)
def test_configs_validate_on_construction(factory, bad):
    with pytest.raises(ValueError, match=repr(bad)):
        factory(bad)


def test_configs_are_frozen_and_hashable():
    config = QuantoConfig("int4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.weights = "int8"
    assert {config: 1}[QuantoConfig("int4")] == 1
    assert config.bits == 4 and BitsAndBytesConfig("int8").bits == 8 and NoQuantConfig().bits == 16


def test_fp8_is_offered_only_where_float8_runs_and_refused_clearly_elsewhere():
    import torch

    from quantization.policy import offered
    from quantization.registry import check_backend

    assert candidates("fp8", "cuda")[:2] == (TorchAoConfig("float8_dynamic"), TorchAoConfig("float8_weight_only"))
    assert "fp8" not in offered(torch.device("cpu"))
    assert offered(torch.device("cpu")) == ("auto", "none", "8bit", "4bit")
    chain = candidates("fp8", "cpu")
    assert chain == (TorchAoConfig("float8_dynamic"), TorchAoConfig("float8_weight_only"), FULL_PRECISION)
    reason = check_backend(chain[0], torch.device("cpu"))
    assert reason.startswith("float8 needs an NVIDIA GPU of compute capability 8.9 or newer")
    assert check_backend(chain[1], torch.device("cpu")) is None  # float8 weights, bf16 compute


FP8 = ("torchao", "float8_dynamic")
INT8 = ("bitsandbytes", "int8")


@pytest.mark.parametrize(
    "free_gib, ratios, expected",
    [
        (24, {}, "8bit"),                              # this GPU class not measured: fp8 is never picked
        (24, {FP8: 0.9, INT8: 1.3}, "fp8"),            # fits as 8-bit, and fp8 measured faster than bnb int8
        (24, {FP8: 1.4, INT8: 1.3}, "8bit"),           # measured slower than 8-bit
        (24, {FP8: 0.9}, "8bit"),                      # 8-bit not measured beside it: no comparison, no fp8
        (80, {FP8: 0.7, INT8: 1.3}, "fp8"),            # full precision fits, but fp8 measured faster than bf16
        (80, {FP8: 1.1, INT8: 1.3}, "none"),           # ... slower than bf16: full precision
        (16, {FP8: 0.5, INT8: 1.3}, "4bit"),           # only 4-bit fits: fp8 (8-bit memory) does not
    ],
)
def test_auto_picks_fp8_only_where_this_gpu_class_measured_it_faster(free_gib, ratios, expected):
    choice = choose_auto(int(33.6 * GIB), int(0.4 * GIB), free_gib * GIB, ratios, "cuda")
    assert choice.quant == expected
    if expected == "fp8":
        assert "fp8 (torchao float8_dynamic) measured" in choice.reason


def test_auto_never_picks_fp8_on_a_cpu_or_a_mac():
    ratios = {FP8: 0.1, INT8: 1.3, ("torchao", "int8_dynamic"): 1.2}
    assert choose_auto(int(33.6 * GIB), int(0.4 * GIB), 24 * GIB, ratios, "cpu").quant == "8bit"
    assert choose_auto(int(33.6 * GIB), int(0.4 * GIB), 24 * GIB, ratios, "mps").quant == "8bit"


def test_the_measured_table_has_a_gpu_part_keyed_by_gpu_class(tmp_path):
    import json

    from quantization.policy import MEASURED, read_measured

    raw = json.loads(MEASURED.read_text())
    raw["gpu_step_ratio"] = {"sm_90": {"torchao float8_dynamic": 0.6, "bitsandbytes int8": 1.2}}
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(raw))
    table = read_measured(path)
    assert table["gpu_step"]["sm_90"] == {FP8: 0.6, INT8: 1.2}
    assert read_measured(MEASURED)["gpu_step"] == {}  # no GPU measured yet: Auto does not pick fp8 anywhere
