"""Quantization configs and the device policy: pure functions, tested as tables."""

import dataclasses

import pytest

from quantization.config import (FULL_PRECISION, BitsAndBytesConfig, NoQuantConfig, QuantoConfig,
                                 TorchAoConfig)
from quantization.policy import candidates, choose_auto_mode

GIB = 2**30


@pytest.mark.parametrize(
    "mode, device, first",
    [
        ("8bit", "mps", QuantoConfig("int8")),
        ("4bit", "mps", QuantoConfig("int4")),
        ("8bit", "cuda", BitsAndBytesConfig("int8")),
        ("4bit", "cuda", BitsAndBytesConfig("nf4")),
        ("none", "cuda", FULL_PRECISION),
        ("none", "cpu", FULL_PRECISION),
    ],
)
def test_first_candidate_follows_the_device_policy(mode, device, first):
    assert candidates(mode, device)[0] == first


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_every_chain_ends_in_full_precision_and_matches_the_bit_width(mode, device):
    chain = candidates(mode, device)
    assert chain[-1] == FULL_PRECISION
    assert all(config.bits == int(mode[0]) for config in chain[:-1])


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_cpu_first_choice_is_the_fastest_measured_option_within_the_weight_ratio(mode):
    from quantization.measured import CPU_WEIGHT_RATIO
    from quantization.policy import CPU_OPTIONS, RATIO, cpu_step_ratios

    options = {(c.backend, c.mode) for c in CPU_OPTIONS[mode]}
    eligible = {name: step for name, step in cpu_step_ratios().items()
                if name in options and CPU_WEIGHT_RATIO.get(name, 1.0) <= RATIO[mode]}
    first = candidates(mode, "cpu")[0]
    assert (first.backend, first.mode) == min(eligible, key=eligible.get)


def test_mps_never_uses_bitsandbytes_torchao_or_float8():
    for mode in ("8bit", "4bit"):
        assert {c.backend for c in candidates(mode, "mps")} == {"quanto", "none"}


@pytest.mark.parametrize("mode", ["auto", "2bit", ""])
def test_candidates_refuse_unresolved_or_unknown_modes(mode):
    with pytest.raises(ValueError, match="mode="):
        candidates(mode, "cpu")


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
def test_auto_mode_from_model_size_and_free_memory(quantizable_gib, other_gib, free_gib, expected):
    choice = choose_auto_mode(int(quantizable_gib * GIB), int(other_gib * GIB), int(free_gib * GIB))
    assert choice.mode == expected
    assert "GiB" in choice.reason


def test_auto_mode_with_unknown_free_memory_is_full_precision():
    assert choose_auto_mode(GIB, GIB, None).mode == "none"


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
