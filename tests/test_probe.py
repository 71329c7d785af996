"""Crash-safe capability probe: crashes, hangs, errors and NaN in the child mark a backend unusable."""

import textwrap

import pytest
import torch

CPU, BF16 = torch.device("cpu"), torch.bfloat16


@pytest.fixture
def fault_backends(tmp_path, monkeypatch):
    """A plugin module registering backends that abort, hang, raise or return NaN (importable by the child, which
    inherits sys.path: no PYTHONPATH is set)."""
    (tmp_path / "faulty_backends.py").write_text(textwrap.dedent('''
        import os, time
        from dataclasses import dataclass
        from typing import ClassVar
        import torch
        from quantization.backends.base import Backend
        from quantization.config import QuantConfig
        from quantization.registry import register

        @dataclass(frozen=True)
        class FaultConfig(QuantConfig):
            fault: str = "abort"
            backend: ClassVar[str] = "faulty"
            formats: ClassVar[tuple] = ("abort", "hang", "error", "nan", "fine")

            def __post_init__(self):
                self._check_format(self.fault)

            @property
            def format(self):
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
    monkeypatch.delenv("PYTHONPATH", raising=False)
    import faulty_backends

    return faulty_backends


@pytest.mark.parametrize("fault, expected", [
    ("abort", "probe crashed (SIGABRT)"),
    ("error", "probe failed: RuntimeError: unsupported shape"),
    ("nan", "probe failed: non-finite output for a 64x32 layer"),
])
def test_child_faults_mark_the_combination_unusable(fault_backends, tmp_path, fault, expected):
    from quantization.probe import probe

    result = probe(fault_backends.FaultConfig(fault), CPU, BF16, [(64, 32)], tmp_path / "probes")
    assert (result.ok, result.reason, result.cached) == (False, expected, False)
    again = probe(fault_backends.FaultConfig(fault), CPU, BF16, [(64, 32)], tmp_path / "probes")
    assert (again.ok, again.reason, again.cached) == (False, expected, True)  # costs once


def test_a_hang_is_cut_off(fault_backends, tmp_path):
    from quantization.probe import probe

    result = probe(fault_backends.FaultConfig("hang"), CPU, BF16, [(64, 32)], tmp_path / "probes", timeout_s=8)
    assert not result.ok and result.reason == "probe hung (no answer in 8 s)"


def test_a_crashing_backend_falls_back_and_the_process_survives(fault_backends, tmp_path):
    from quantization.config import FULL_PRECISION, QuantoConfig
    from quantization.load import Caches, load_component

    def load():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.GELU(), torch.nn.Linear(32, 64)).to(BF16)

    chain = [fault_backends.FaultConfig("abort"), QuantoConfig("int8"), FULL_PRECISION]
    loaded = load_component("transformer", load, chain, CPU, BF16, caches=Caches(probes=tmp_path / "probes"))
    assert loaded.config == QuantoConfig("int8") and loaded.remaining == (FULL_PRECISION,)
    assert loaded.record.fallbacks[0].reason == "probe crashed (SIGABRT)"
    assert torch.isfinite(loaded.module(torch.randn(2, 64, dtype=BF16))).all()


def test_cached_results_are_listed_and_can_be_cleared(fault_backends, tmp_path):
    from quantization.probe import cached_results, clear_cache, probe

    folder = tmp_path / "probes"
    probe(fault_backends.FaultConfig("fine"), CPU, BF16, [(64, 32), (32, 64)], folder)
    probe(fault_backends.FaultConfig("error"), CPU, BF16, [(64, 32)], folder)
    rows = {(r["backend"], r["format"]): r for r in cached_results(folder)}
    assert rows[("faulty", "fine")]["ok"] and rows[("faulty", "fine")]["shapes"] == 2
    assert not rows[("faulty", "error")]["ok"]
    assert clear_cache(folder) == 3 and cached_results(folder) == []


def test_real_backends_pass_the_probe_on_this_machine(tmp_path, monkeypatch):
    from quantization.config import BitsAndBytesConfig, QuantoConfig, TorchAoConfig
    from quantization.probe import probe

    for config in (QuantoConfig("int8"), BitsAndBytesConfig("nf4"), TorchAoConfig("int8_dynamic")):
        result = probe(config, CPU, BF16, [(64, 256), (256, 64)], tmp_path)
        assert result.ok, (config, result.reason)


def test_a_models_quantized_components_are_probed_in_one_child(tmp_path, monkeypatch, tiny_root):
    """The first 4-bit run of a model probes the shapes of its transformer and T5 together, before loading them."""
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager
    from pipelines.request import GenerationRequest
    from pipelines import paths
    from quantization import probe

    monkeypatch.setattr(paths, "probes_dir", lambda: tmp_path / "probes")  # nothing probed yet
    monkeypatch.setenv("FLUXFORGE_QUANT_CACHE", "0")
    monkeypatch.setenv("FLUXFORGE_DISABLE_BACKENDS", "bitsandbytes,torchao")
    children = []
    real = probe._run_child

    def counted(config, device, dtype, shapes, timeout_s, while_running=None):
        children.append(shapes)
        return real(config, device, dtype, shapes, timeout_s, while_running)

    monkeypatch.setattr(probe, "_run_child", counted)
    request = GenerationRequest(tool="dev", prompt="x", model="tiny", quant="4bit", seed=1, steps=1)
    result = Engine(ModelManager(device="cpu")).generate(request)
    quant = result.report["quantization"]["components"]
    assert quant["transformer"]["backend"] == quant["text_encoder_2"]["backend"] == "quanto"
    assert len(children) == 1 and probe.cached_results(tmp_path / "probes")[0]["ok"]
