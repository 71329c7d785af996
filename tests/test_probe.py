"""Crash-safe capability probe: crashes, hangs, errors and NaN in the child mark a backend unusable."""

import textwrap

import pytest
import torch

CPU, BF16 = torch.device("cpu"), torch.bfloat16


@pytest.fixture
def fault_backends(tmp_path, monkeypatch):
    """A plugin module registering backends that abort, hang, raise or return NaN (importable by the child)."""
    (tmp_path / "faulty_backends.py").write_text(textwrap.dedent('''
        import os, time
        from dataclasses import dataclass
        from typing import ClassVar
        import torch
        from quantization.config import QuantConfig
        from quantization.registry import Backend, register

        @dataclass(frozen=True)
        class FaultConfig(QuantConfig):
            fault: str = "abort"
            backend: ClassVar[str] = "faulty"
            modes: ClassVar[tuple] = ("abort", "hang", "error", "nan", "fine")

            def __post_init__(self):
                self._check_mode(self.fault)

            @property
            def mode(self):
                return self.fault

            @property
            def bits(self):
                return 8

        @register(FaultConfig)
        class FaultyBackend(Backend):
            name = "faulty"

            def quantize(self, module, config, device, dtype):
                if config.fault == "abort":
                    os.abort()
                if config.fault == "hang":
                    time.sleep(3600)
                if config.fault == "error":
                    raise RuntimeError("unsupported shape")
                if config.fault == "nan":
                    for layer in module.modules():
                        if isinstance(layer, torch.nn.Linear):
                            layer.weight.data.fill_(float("nan"))
                return module.to(device)

            def is_quantized_layer(self, layer):
                return isinstance(layer, torch.nn.Linear)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("FLUXFORGE_CACHE_DIR", str(tmp_path / "cache"))
    import faulty_backends

    return faulty_backends


@pytest.mark.parametrize("fault, expected", [
    ("abort", "probe crashed (SIGABRT)"),
    ("error", "probe failed: RuntimeError: unsupported shape"),
    ("nan", "probe failed: non-finite output for a 64x32 layer"),
])
def test_child_faults_mark_the_combination_unusable(fault_backends, fault, expected):
    from quantization.probe import probe

    result = probe(fault_backends.FaultConfig(fault), CPU, BF16, [(64, 32)])
    assert (result.ok, result.reason, result.cached) == (False, expected, False)
    again = probe(fault_backends.FaultConfig(fault), CPU, BF16, [(64, 32)])
    assert (again.ok, again.reason, again.cached) == (False, expected, True)  # costs once


def test_a_hang_is_cut_off(fault_backends):
    from quantization.probe import probe

    result = probe(fault_backends.FaultConfig("hang"), CPU, BF16, [(64, 32)], timeout_s=8)
    assert not result.ok and result.reason == "probe hung (no answer in 8 s)"


def test_a_crashing_backend_falls_back_and_the_process_survives(fault_backends):
    from quantization.apply import quantize_with_fallback
    from quantization.config import FULL_PRECISION, QuantoConfig

    def load():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.GELU(), torch.nn.Linear(32, 64)).to(BF16)

    chain = [fault_backends.FaultConfig("abort"), QuantoConfig("int8"), FULL_PRECISION]
    module, chosen, record = quantize_with_fallback("transformer", load, chain, CPU, BF16)
    assert chosen == QuantoConfig("int8")
    assert record.fallbacks[0].reason == "probe crashed (SIGABRT)"
    assert torch.isfinite(module(torch.randn(2, 64, dtype=BF16))).all()


def test_cached_results_are_listed_and_can_be_cleared(fault_backends):
    from quantization.probe import cached_results, clear_cache, probe

    probe(fault_backends.FaultConfig("fine"), CPU, BF16, [(64, 32), (32, 64)])
    probe(fault_backends.FaultConfig("error"), CPU, BF16, [(64, 32)])
    rows = {(r["backend"], r["mode"]): r for r in cached_results()}
    assert rows[("faulty", "fine")]["ok"] and rows[("faulty", "fine")]["shapes"] == 2
    assert not rows[("faulty", "error")]["ok"]
    assert clear_cache() == 3 and cached_results() == []


def test_real_backends_pass_the_probe_on_this_machine(tmp_path, monkeypatch):
    from quantization.config import BitsAndBytesConfig, QuantoConfig, TorchAoConfig
    from quantization.probe import probe

    monkeypatch.setenv("FLUXFORGE_CACHE_DIR", str(tmp_path))
    for config in (QuantoConfig("int8"), BitsAndBytesConfig("nf4"), TorchAoConfig("int8_dynamic")):
        result = probe(config, CPU, BF16, [(64, 256), (256, 64)])
        assert result.ok, (config, result.reason)
