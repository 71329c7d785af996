"""Quantize once: cached quantized weights give identical images, damaged entries are rebuilt, pre-quantized
checkpoints (GGUF, bitsandbytes folders) load as they are."""

import json
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from pipelines.engine import Engine
from pipelines.errors import UserError
from pipelines.manager import ModelManager
from pipelines.paths import quantized_dir
from pipelines.request import GenerationRequest
from quantization import admin, store
from quantization.config import FULL_PRECISION, BitsAndBytesConfig, QuantoConfig
from quantization.errors import QuantizationError
from quantization.load import Caches, ComponentSource, fingerprint, load_component
from quantization.policy import all_configs, candidates
from quantization.registry import check_backend
from quantization.prequantized import load_prequantized
from quantization.probe import ProbeResult
from quantization.registry import backend_for
from tests.conftest import fail_first_4bit_run, write_gguf

CPU = torch.device("cpu")
BF16 = torch.bfloat16
QUANTIZED = ("transformer", "text_encoder_2")
BACKENDS = ("quanto", "bitsandbytes", "torchao")


@pytest.fixture
def quant_cache(tmp_path, monkeypatch):
    """An empty quantized-weights cache of the test's own; probing is not under test here."""
    folder = tmp_path / "quantized"
    monkeypatch.setenv("FLUXFORGE_QUANT_CACHE_DIR", str(folder))
    monkeypatch.setenv("FLUXFORGE_PROBE", "0")
    return folder


def only(monkeypatch, backend: str) -> None:
    monkeypatch.setenv("FLUXFORGE_DISABLE_BACKENDS", ",".join(b for b in BACKENDS if b != backend))


def generate(quant="4bit", **kwargs):
    """One run on a fresh manager (nothing loaded in memory), as a new studio process would do it."""
    request = GenerationRequest(tool="dev", prompt="x", model="tiny", quant=quant, seed=1, steps=2, **kwargs)
    return Engine(ModelManager(device="cpu")).generate(request)


def pixels(result) -> np.ndarray:
    return np.asarray(result.image)


def components(result) -> dict:
    return result.report["quantization"]["components"]


def entries() -> list[dict]:
    """The studio's quantized-weights store, as the CLI lists it."""
    return admin.entries(quantized_dir())


def entry_of(component: str) -> Path:
    (path,) = [Path(row["path"]) for row in entries() if row["component"] == component]
    return path


def load_stored(load, chain, source, folder: Path, probes: Path | None = None):
    """The load path with a store in ``folder``: (module, config it ended with, record)."""
    loaded = load_component("transformer", load, chain, CPU, BF16, source, Caches(weights=folder, probes=probes))
    return loaded.module, loaded.config, loaded.record


# ---- identical outputs, quantized now or read from the cache -------------------------------------------
FORCED = [("8bit", "quanto"), ("4bit", "quanto"), ("4bit", "bitsandbytes"), ("8bit", "bitsandbytes"),
          ("8bit", "torchao")]


@pytest.mark.parametrize("quant, backend", FORCED, ids=[f"{b}-{q}" for q, b in FORCED])
def test_cached_load_gives_the_same_image_as_quantizing(quant_cache, tiny_root, monkeypatch, quant, backend):
    only(monkeypatch, backend)
    expected = next(c for c in candidates(quant, "cpu") if c.backend == backend)
    first = generate(quant)
    second = generate(quant)
    for name in QUANTIZED:
        before, after = components(first)[name], components(second)[name]
        assert (before["backend"], before["format"]) == (after["backend"], after["format"]) == (backend, expected.format)
        assert (before["from_cache"], after["from_cache"]) == (False, True)
        assert before["bytes_after"] == after["bytes_after"] and before["bytes_before"] == after["bytes_before"]
        assert before["quantized_layers"] == after["quantized_layers"] > 0
    assert not components(first)["vae"]["from_cache"]
    assert np.array_equal(pixels(first), pixels(second))
    assert sorted(row["component"] for row in entries()) == sorted(QUANTIZED)
    assert all(row["status"] == "ok" and row["backend"] == backend for row in entries())


def transformer_source(tiny_root):
    from diffusers import FluxTransformer2DModel

    folder = tiny_root / "dev" / "transformer"
    return ComponentSource(folder, fingerprint(folder), FluxTransformer2DModel, "tiny")


def transformer_inputs():
    torch.manual_seed(0)
    return dict(hidden_states=torch.randn(1, 64, 64, dtype=BF16), encoder_hidden_states=torch.randn(1, 8, 64, dtype=BF16),
                pooled_projections=torch.randn(1, 64, dtype=BF16), timestep=torch.tensor([0.5]),
                img_ids=torch.zeros(64, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5]))


CPU_CONFIGS = [c for c in all_configs() if check_backend(c, torch.device("cpu")) is None]  # float8 needs a GPU


@pytest.mark.parametrize("config", CPU_CONFIGS, ids=lambda c: c.label)
def test_cache_hit_never_reads_the_full_precision_weights(quant_cache, tiny_root, config):
    source = transformer_source(tiny_root)
    loads = []

    def load():
        loads.append(1)
        return source.cls.from_pretrained(source.folder, dtype=BF16)

    chain = [config, FULL_PRECISION]
    fresh, chosen, record = load_stored(load, chain, source, quant_cache)
    cached, chosen_again, cached_record = load_stored(load, chain, source, quant_cache)
    assert chosen == chosen_again == config and len(loads) == 1
    assert (record.from_cache, cached_record.from_cache) == (False, True) and cached_record.quantize_s == 0.0
    assert cached_record.bytes_after == record.bytes_after and cached_record.bytes_before == record.bytes_before
    layers = [type(m) for m in cached.modules() if backend_for(config).is_quantized_layer(m)]
    assert len(layers) == record.quantized_layers and {type(m) for m in fresh.modules()} == {type(m) for m in cached.modules()}
    with torch.no_grad():
        assert torch.equal(fresh(**transformer_inputs()).sample, cached(**transformer_inputs()).sample)


def test_cache_hit_still_runs_the_probe_with_the_recorded_shapes(quant_cache, tiny_root, monkeypatch, tmp_path):
    import quantization.probe

    source = transformer_source(tiny_root)
    chain = [BitsAndBytesConfig("nf4"), QuantoConfig("int4"), FULL_PRECISION]
    load = lambda: source.cls.from_pretrained(source.folder, dtype=BF16)  # noqa: E731
    load_stored(load, chain, source, quant_cache)
    calls = []

    def fake_probe(config, device, dtype, shapes, folder, timeout_s=None, while_running=None):
        calls.append((config, shapes, folder))
        return ProbeResult(config.backend != "bitsandbytes", "probe crashed (SIGSEGV)")

    monkeypatch.setattr(quantization.probe, "probe", fake_probe)
    module, chosen, record = load_stored(load, chain, source, quant_cache, probes=tmp_path / "probes")
    assert calls[0][0] == BitsAndBytesConfig("nf4") and (64, 64) in calls[0][1]
    assert calls[0][2] == tmp_path / "probes"
    assert chosen == QuantoConfig("int4") and not record.from_cache  # the crashing option is skipped, as without a cache
    assert [(f.backend, f.reason) for f in record.fallbacks] == [("bitsandbytes", "probe crashed (SIGSEGV)")]


# ---- runtime fallbacks ----------------------------------------------------------------------------------------
def test_runtime_fallback_is_stored_and_read_back(quant_cache, tiny_root, monkeypatch):
    """A first run that fails after quantizing moves the transformer one step down its chain through the same load
    path: the next config is stored, and a fresh studio reads it back instead of quantizing it again."""
    first, second = fail_first_4bit_run(monkeypatch)
    degraded = generate("4bit")
    transformer = components(degraded)["transformer"]
    assert (transformer["backend"], transformer["format"], transformer["from_cache"]) == (
        second.backend, second.format, False)
    stored = {(row["component"], row["backend"], row["format"]) for row in entries()}
    assert ("transformer", second.backend, second.format) in stored
    assert ("transformer", first.backend, first.format) not in stored
    again = generate("4bit")
    transformer = components(again)["transformer"]
    assert (transformer["backend"], transformer["format"], transformer["from_cache"]) == (
        second.backend, second.format, True)
    reasons = [f["reason"] for f in again.report["quantization"]["fallbacks"] if f["component"] == "transformer"]
    assert any("kernel not implemented" in reason for reason in reasons)
    assert np.array_equal(pixels(degraded), pixels(again))


# ---- damaged entries -------------------------------------------------------------------------------------------
def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped-bytes": lambda entry: flip_bytes(entry / "weights.safetensors"),
    "truncated": lambda entry: (entry / "weights.safetensors").write_bytes(
        (entry / "weights.safetensors").read_bytes()[:1000]),
    "deleted-file": lambda entry: (entry / "weights.safetensors").unlink(),
    "partial-no-manifest": lambda entry: (entry / "manifest.json").unlink(),
    "garbled-manifest": lambda entry: (entry / "manifest.json").write_text("{not json"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entry_is_never_loaded_and_is_rebuilt(quant_cache, tiny_root, monkeypatch, damage):
    only(monkeypatch, "bitsandbytes")
    reference = generate("4bit")
    entry = entry_of("transformer")
    DAMAGE[damage](entry)
    restored = []
    real_restore = store.restore
    monkeypatch.setattr(store, "restore", lambda e, *a: restored.append(e.path.name) or real_restore(e, *a))
    rebuilt = generate("4bit")
    assert entry.name not in restored  # verified before use: the damaged files were never read into a model
    assert components(rebuilt)["transformer"]["from_cache"] is False
    assert components(rebuilt)["text_encoder_2"]["from_cache"] is True
    assert np.array_equal(pixels(reference), pixels(rebuilt))
    assert store.verify(entry_of("transformer"))["files"]  # rebuilt whole
    assert components(generate("4bit"))["transformer"]["from_cache"] is True


def test_entry_that_does_not_rebuild_as_recorded_is_discarded(quant_cache, tiny_root, monkeypatch):
    only(monkeypatch, "quanto")
    reference = generate("8bit")
    manifest_file = entry_of("transformer") / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    keys = manifest["keys"]
    manifest["keys"] = keys[1:]  # the files check out, but the module they build is not the one recorded
    manifest_file.write_text(json.dumps(manifest))
    again = generate("8bit")
    assert components(again)["transformer"]["from_cache"] is False
    assert np.array_equal(pixels(reference), pixels(again))
    assert json.loads((entry_of("transformer") / "manifest.json").read_text())["keys"] == keys


def test_key_covers_source_component_backend_format_dtype_device_versions_and_code(tiny_root, tmp_path, monkeypatch):
    source = transformer_source(tiny_root)
    config = QuantoConfig("int8")
    fields = store.key_fields(source, "transformer", config, CPU, BF16)
    assert {"source", "class", "component", "backend", "config", "dtype", "device", "torch", "library", "code"} <= set(
        fields)
    assert fields["library"].startswith("optimum-quanto==") and fields["torch"] == torch.__version__
    base = store.entry_path(tmp_path, fields)
    others = [
        store.key_fields(source, "transformer", QuantoConfig("int4"), CPU, BF16),
        store.key_fields(source, "transformer", config, CPU, torch.float16),
        store.key_fields(source, "transformer", config, torch.device("cuda"), BF16),
        store.key_fields(source, "text_encoder_2", config, CPU, BF16),
        store.key_fields(ComponentSource(source.folder, "another-fingerprint", source.cls), "transformer", config, CPU,
                         BF16),
        store.key_fields(source, "transformer", BitsAndBytesConfig("nf4", double_quant=False), CPU, BF16),
    ]
    assert len({base} | {store.entry_path(tmp_path, f) for f in others}) == len(others) + 1
    monkeypatch.setattr(type(backend_for(config)), "quantize", lambda self, module, *args: module)
    assert store.entry_path(tmp_path, store.key_fields(source, "transformer", config, CPU, BF16)) != base


def test_cache_can_be_turned_off_and_a_failed_save_does_not_stop_the_run(quant_cache, tiny_root, monkeypatch):
    only(monkeypatch, "bitsandbytes")
    monkeypatch.setenv("FLUXFORGE_QUANT_CACHE", "0")
    assert components(generate("4bit"))["transformer"]["from_cache"] is False and entries() == []
    monkeypatch.delenv("FLUXFORGE_QUANT_CACHE")

    def full_disk(self, module, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(backend_for(BitsAndBytesConfig("nf4"))), "save", full_disk)
    result = generate("4bit")
    assert components(result)["transformer"]["backend"] == "bitsandbytes" and entries() == []
    assert not list(quant_cache.glob(".tmp-*"))  # the temporary folder went too


def no_unpacking(monkeypatch):
    """quanto's int4 TinyGemm layout may not be unpacked from here on (saving and loading keep it as it is)."""
    from optimum.quanto.tensor.weights.tinygemm import TinyGemmPackedTensor

    def unpack(self):
        raise AssertionError("the int4 TinyGemm layout was unpacked")

    monkeypatch.setattr(TinyGemmPackedTensor, "unpack", unpack)


def tinygemm_layers(module) -> dict:
    return {name: m for name, m in module.named_modules() if type(getattr(m, "weight", None)).__name__ ==
            "TinyGemmWeightQBitsTensor"}


def test_quanto_int4_round_trip_keeps_the_tinygemm_layout_and_never_unpacks_it(quant_cache, tiny_root, monkeypatch):
    from quantization.sizes import tensor_bytes

    no_unpacking(monkeypatch)
    source = transformer_source(tiny_root)
    load = lambda: source.cls.from_pretrained(source.folder, dtype=BF16)  # noqa: E731
    chain = [QuantoConfig("int4"), FULL_PRECISION]
    fresh, _, record = load_stored(load, chain, source, quant_cache)
    cached, chosen, cached_record = load_stored(load, chain, source, quant_cache)
    assert chosen == QuantoConfig("int4") and (record.from_cache, cached_record.from_cache) == (False, True)
    before, after = tinygemm_layers(fresh), tinygemm_layers(cached)
    assert before and sorted(before) == sorted(after)
    for name, layer in before.items():
        old, new = layer.weight, after[name].weight
        assert type(after[name]) is type(layer) and type(new) is type(old) and new.size() == old.size()
        assert torch.equal(new._data._data, old._data._data) and torch.equal(new._scale_shift, old._scale_shift)
        assert tensor_bytes(new) == tensor_bytes(old)
    assert {type(m) for m in fresh.modules()} == {type(m) for m in cached.modules()}
    assert cached_record.bytes_after == record.bytes_after
    with torch.no_grad():
        assert torch.equal(fresh(**transformer_inputs()).sample, cached(**transformer_inputs()).sample)


def test_large_quanto_int4_module_is_cached(quant_cache, monkeypatch):
    """Past the size whose saving used to be refused (50M int4 weights), with neither saving nor loading unpacking."""
    no_unpacking(monkeypatch)
    width, layers = 4096, 4

    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width * 3, dtype=BF16) for _ in range(layers))

        def forward(self, x):
            return sum(layer(x) for layer in self.layers)

    torch.manual_seed(0)
    fresh = Wide()
    assert sum(layer.weight.numel() for layer in fresh.layers) > 50_000_000
    config = QuantoConfig("int4")
    backend = backend_for(config)
    fresh = backend.quantize(fresh, config, CPU, BF16)
    assert len(tinygemm_layers(fresh)) == layers
    names = backend.save(fresh, quant_cache.parent)
    assert names and (quant_cache.parent / names[0]).stat().st_size < 60 * width * width  # ~ half a byte per weight
    with torch.device("meta"):
        skeleton = Wide()
    cached = backend.load(skeleton, quant_cache.parent, config, CPU, BF16)
    assert backend.state_keys(cached) == backend.state_keys(fresh) and len(tinygemm_layers(cached)) == layers
    x = torch.randn(3, width, dtype=BF16)
    with torch.no_grad():
        assert torch.equal(fresh(x), cached(x))


def test_module_with_hooks_is_not_cached(quant_cache, tiny_root):
    source = transformer_source(tiny_root)
    load = lambda: source.cls.from_pretrained(source.folder, dtype=BF16)  # noqa: E731
    loaded = load_component("transformer", load, [QuantoConfig("int8"), FULL_PRECISION], CPU, BF16)
    loaded.module.proj_out.register_forward_hook(lambda *args: None)
    assert store.save(quant_cache, source, "transformer", loaded.config, CPU, BF16, loaded.module,
                      loaded.record) is None and entries() == []


# ---- listing and clearing ----------------------------------------------------------------------------------------
def test_cache_list_and_clear_from_the_command_line(quant_cache, tiny_root, monkeypatch, capsys):
    from cli import main

    only(monkeypatch, "torchao")
    generate("8bit")
    (quant_cache / "leftover").mkdir()  # a folder without a manifest, e.g. from a killed process
    rows = entries()
    assert {(r["component"], r["backend"], r["status"]) for r in rows} == {
        ("transformer", "torchao", "ok"), ("text_encoder_2", "torchao", "ok"), ("", "", "incomplete")}
    assert all(r["bytes"] > 0 for r in rows if r["status"] == "ok") and rows[0]["model"]
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    torchao = next(c for c in candidates("8bit", "cpu") if c.backend == "torchao")  # the order is measured per CPU
    assert "transformer" in out and "torchao" in out and torchao.format in out and "3 entries" in out
    assert main(["cache", "list", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["cache", "clear"]) == 0
    assert "removed 3 entries" in capsys.readouterr().out
    assert entries() == [] and list(quant_cache.iterdir()) == []
    assert main(["cache", "list"]) == 0 and "empty" in capsys.readouterr().out


# ---- pre-quantized checkpoints ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf_file(tiny_root, tmp_path_factory):
    from diffusers import FluxTransformer2DModel

    module = FluxTransformer2DModel.from_pretrained(tiny_root / "dev", subfolder="transformer", dtype=BF16)
    return write_gguf(module, tmp_path_factory.mktemp("gguf") / "flux1-tiny-Q8_0.gguf")


def test_gguf_transformer_replaces_the_models_own_and_wins_over_the_quant(quant_cache, tiny_root, gguf_file):
    full = generate("none")
    result = generate("4bit", transformer=str(gguf_file))
    transformer = components(result)["transformer"]
    assert (transformer["backend"], transformer["format"], transformer["prequantized"]) == ("gguf", "Q8_0", True)
    assert transformer["quantized_layers"] > 0 and transformer["bytes_after"] < 0.6 * transformer["bytes_before"]
    assert components(result)["text_encoder_2"]["backend"] == candidates("4bit", "cpu")[0].backend
    assert any("pre-quantized checkpoint (gguf Q8_0)" in n and "quant=4bit" in n for n in result.notices)
    assert result.report["parameters"]["transformer"] == str(gguf_file)
    assert not [row for row in entries() if row["component"] == "transformer"]  # nothing to cache
    difference = np.abs(pixels(result).astype(int) - pixels(full).astype(int))
    assert 0 < difference.mean() < 8  # Q8_0 of the same weights: close to full precision, not equal


def test_bad_gguf_arguments_are_one_line_errors(tiny_root, tmp_path, capsys):
    from cli import main

    with pytest.raises(UserError, match="must be a .safetensors or .gguf file"):
        GenerationRequest(tool="dev", prompt="x", model="tiny", transformer=str(tmp_path / "model.ckpt"))
    with pytest.raises(UserError, match="no such file"):
        GenerationRequest(tool="dev", prompt="x", model="tiny", transformer=str(tmp_path / "missing.gguf"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(UserError, match="transformer=.broken.gguf. is not a readable GGUF file"):
        generate("none", transformer=str(broken))
    assert main(["generate", "--tool", "dev", "--prompt", "x", "--model", "tiny", "--out", str(tmp_path / "a.png"),
                 "--transformer", str(tmp_path / "missing.gguf")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bnb_checkpoint(tiny_root, tmp_path_factory):
    """A FLUX.1-dev folder whose transformer and T5 were quantized (nf4) and saved by diffusers and transformers
    with their BitsAndBytesConfig. diffusers' bitsandbytes loader insists on a GPU; only here, to write the
    folder on a CPU, is its check bypassed. Returns the folder and diffusers' own quantized transformer."""
    from diffusers import BitsAndBytesConfig as DiffusersBnb
    from diffusers import FluxTransformer2DModel
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer
    from transformers import BitsAndBytesConfig as TransformersBnb
    from transformers import T5EncoderModel

    root = tmp_path_factory.mktemp("bnb") / "FLUX.1-dev-bnb-nf4"
    shutil.copytree(tiny_root / "dev", root)
    with mock.patch.object(BnB4BitDiffusersQuantizer, "validate_environment", lambda self, *a, **k: None):
        transformer = FluxTransformer2DModel.from_pretrained(
            tiny_root / "dev", subfolder="transformer", dtype=BF16, device_map={"": "cpu"},
            quantization_config=DiffusersBnb(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=BF16))
    t5 = T5EncoderModel.from_pretrained(
        tiny_root / "dev", subfolder="text_encoder_2", dtype=BF16,
        quantization_config=TransformersBnb(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=BF16))
    for name, module in (("transformer", transformer), ("text_encoder_2", t5)):
        shutil.rmtree(root / name)
        module.save_pretrained(root / name)
    return root, transformer


def test_bitsandbytes_checkpoint_folder_loads_as_it_is_on_the_cpu(quant_cache, bnb_checkpoint):
    root, reference = bnb_checkpoint
    assert json.loads((root / "transformer" / "config.json").read_text())["quantization_config"]["quant_method"] == (
        "bitsandbytes")
    studio = Engine(ModelManager(device="cpu"))
    result = studio.generate(GenerationRequest(tool="dev", prompt="x", model=str(root), quant="8bit", seed=1, steps=2))
    assert np.asarray(result.image).std() > 5.0
    for name in QUANTIZED:
        item = components(result)[name]
        assert (item["backend"], item["format"], item["prequantized"], item["from_cache"]) == (
            "bitsandbytes", "nf4", True, False)
        assert item["quantized_layers"] > 0 and any(f"{name} is a pre-quantized checkpoint" in n for n in result.notices)
    assert entries() == []  # a pre-quantized checkpoint is not cached again
    loaded = next(iter(studio.manager._pipelines.values())).pipe.transformer
    with torch.no_grad():  # the same layers and numbers as diffusers' own loader makes
        assert torch.equal(loaded(**transformer_inputs()).sample, reference(**transformer_inputs()).sample)


def test_an_8bit_bitsandbytes_checkpoint_on_apple_mps_names_the_fix(bnb_checkpoint, tmp_path):
    """bitsandbytes 0.50 runs 4-bit on MPS (its checkpoints load there), not 8-bit: an 8-bit checkpoint is refused
    before a weight is read, naming what to do instead."""
    from diffusers import FluxTransformer2DModel

    root, _ = bnb_checkpoint
    folder = tmp_path / "FLUX.1-dev-bnb-int8"
    shutil.copytree(root / "transformer", folder / "transformer")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config["quantization_config"].update(load_in_4bit=False, _load_in_4bit=False, load_in_8bit=True,
                                         _load_in_8bit=True)
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    source = ComponentSource(folder / "transformer", "fp", FluxTransformer2DModel, str(folder))
    with pytest.raises(QuantizationError, match="bitsandbytes int8 checkpoint; bitsandbytes runs only 4-bit on Apple "
                                                "MPS: use a full-precision model with --quant 4bit or 8bit instead"):
        load_prequantized("transformer", source, torch.device("mps"), BF16)
