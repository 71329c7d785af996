"""LoRAs: every file format, several at once with strengths, on full precision and every quantized form, without
reloading or de-quantizing the base model; bad files are one-line errors that leave the model as it was."""

import json

import numpy as np
import pytest
import torch

import cli
from pipelines.engine import Engine
from pipelines.errors import UserError
from pipelines.images import read_metadata
from pipelines.loras import check_lora, check_loras, parse_lora_arg
from pipelines.manager import ModelManager
from pipelines.request import GenerationRequest
from pipelines.loras.tiny import FORMATS, KLEIN_FORMATS, tiny_klein_lora, tiny_lora
from quantization.config import BitsAndBytesConfig, QuantoConfig, TorchAoConfig
from quantization.registry import backend_for
from quantization.sizes import module_bytes
from tests.conftest import fail_first_4bit_run, force_chain


@pytest.fixture(scope="module")
def lora_files(tiny_root, tmp_path_factory):
    return {fmt: tiny_lora(fmt) for fmt in FORMATS} | {"second": tiny_lora("diffusers", seed=1)}


@pytest.fixture(scope="module")
def engine(tiny_root):
    return Engine(ModelManager(device="cpu"))


def generate(engine, loras=(), quant="none", tool="dev", prompt="a red cube", steps=2, **fields):
    request = GenerationRequest(tool=tool, prompt=prompt, model="tiny", quant=quant, seed=3, steps=steps,
                                loras=[(str(path), strength) for path, strength in loras], **fields)
    return engine.generate(request)


def pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(np.int16)


# ---- what a LoRA does ------------------------------------------------------------------------------------------
def test_lora_changes_the_output_strength_zero_and_removal_give_the_base_bit_for_bit(engine, lora_files):
    base = generate(engine)
    loaded = engine.manager._pipelines[next(iter(engine.manager._pipelines))]
    transformer = loaded.pipe.transformer
    with_lora = generate(engine, [(lora_files["diffusers"], 1.0)])
    assert np.abs(pixels(with_lora) - pixels(base)).max() > 0
    assert np.array_equal(pixels(generate(engine, [(lora_files["diffusers"], 0.0)])), pixels(base))
    assert np.array_equal(pixels(generate(engine)), pixels(base))
    assert loaded.pipe.transformer is transformer  # never reloaded
    assert not any("lora" in name for name, _ in transformer.named_modules())
    assert with_lora.report["timings"]["load_s"] == 0.0


def test_two_loras_combine_each_with_its_strength(engine, lora_files):
    one = pixels(generate(engine, [(lora_files["diffusers"], 1.0)]))
    two = pixels(generate(engine, [(lora_files["second"], 0.7)]))
    both = generate(engine, [(lora_files["diffusers"], 1.0), (lora_files["second"], 0.7)])
    assert not np.array_equal(pixels(both), one) and not np.array_equal(pixels(both), two)
    assert [l["strength"] for l in both.report["parameters"]["loras"]] == [1.0, 0.7]
    weaker = generate(engine, [(lora_files["diffusers"], 1.0), (lora_files["second"], 0.2)])
    assert not np.array_equal(pixels(weaker), pixels(both))  # a strength change alone takes effect


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_file_format_loads(engine, lora_files, fmt):
    base = pixels(generate(engine))
    result = generate(engine, [(lora_files[fmt], 1.0)])
    assert np.abs(pixels(result) - base).max() > 0
    (entry,) = result.report["parameters"]["loras"]
    assert entry["name"] == lora_files[fmt].stem and len(entry["sha256"]) == 64


def test_text_encoder_lora_has_its_own_prompt_embeddings(engine, lora_files):
    base = generate(engine, prompt="a text encoder test")
    assert generate(engine, prompt="a text encoder test").report["placement"]["prompt_from_cache"]
    with_te = generate(engine, [(lora_files["diffusers-te"], 1.0)], prompt="a text encoder test")
    assert not with_te.report["placement"]["prompt_from_cache"]  # not the embeddings made without it
    assert "text_encoder" in engine.manager._pipelines[next(iter(engine.manager._pipelines))].lora_state[1]
    again = generate(engine, prompt="a text encoder test")
    assert again.report["placement"]["prompt_from_cache"] and np.array_equal(pixels(again), pixels(base))


def test_a_text_encoder_shared_with_another_pipeline_follows_each_run(engine, lora_files):
    """CLIP is one module for dev and schnell: each run sees it with exactly its own LoRAs."""
    dev_base = pixels(generate(engine, prompt="shared clip"))
    schnell_base = pixels(generate(engine, tool="schnell", prompt="shared clip"))
    dev_lora = pixels(generate(engine, [(lora_files["diffusers-te"], 1.0)], prompt="shared clip"))
    assert np.array_equal(pixels(generate(engine, tool="schnell", prompt="shared clip")), schnell_base)
    assert np.array_equal(pixels(generate(engine, [(lora_files["diffusers-te"], 1.0)], prompt="shared clip")),
                          dev_lora)
    assert np.array_equal(pixels(generate(engine, prompt="shared clip")), dev_base)


def test_a_lora_runs_on_other_tools_too(engine, lora_files, photo):
    base = pixels(generate(engine, tool="kontext", image=photo))
    assert not np.array_equal(pixels(generate(engine, [(lora_files["kohya"], 1.0)], tool="kontext", image=photo)),
                              base)


# ---- quantized models -------------------------------------------------------------------------------------------
CONFIGS = [("8bit", QuantoConfig("int8")), ("4bit", QuantoConfig("int4")), ("4bit", BitsAndBytesConfig("nf4")),
           ("8bit", BitsAndBytesConfig("int8")), ("8bit", TorchAoConfig("int8_weight_only")),
           ("8bit", TorchAoConfig("int8_dynamic"))]


@pytest.mark.parametrize("quant,config", CONFIGS, ids=lambda v: getattr(v, "format", v))
def test_each_quantization_backend_takes_a_lora_and_stays_quantized(tiny_root, lora_files, monkeypatch, tmp_path,
                                                                    quant, config):
    force_chain(monkeypatch, tmp_path, config)
    engine = Engine(ModelManager(device="cpu"))
    base = generate(engine, quant=quant)
    assert base.report["quantization"]["components"]["transformer"]["format"] == config.format
    (loaded,) = engine.manager._pipelines.values()
    transformer, backend = loaded.pipe.transformer, backend_for(config)
    layers = {name: m for name, m in transformer.named_modules() if backend.is_quantized_layer(m)}
    assert layers
    weights = module_bytes(transformer)
    entries = sorted(p.name for p in (tmp_path / "quantized").rglob("*"))
    result = generate(engine, [(lora_files["diffusers"], 1.0), (lora_files["xlabs"], 0.5)], quant=quant)
    assert np.abs(pixels(result) - pixels(base)).max() > 0 and np.isfinite(pixels(result)).all()
    modules = dict(transformer.named_modules())
    wrapped = [name for name in layers if f"{name}.base_layer" in modules]
    assert wrapped  # the adapters sit over the quantized layers, which are the very same modules
    # in the run's dtype on every backend (peft would leave them float32 over bitsandbytes int8 layers)
    assert {p.dtype for n, p in transformer.named_parameters() if ".lora_" in n} == {engine.manager.dtype}
    assert all(modules[f"{name}.base_layer"] is layers[name] for name in wrapped)
    assert all(modules.get(name, modules.get(f"{name}.base_layer")) is layer or modules[f"{name}.base_layer"] is layer
               for name, layer in layers.items())
    restored = generate(engine, quant=quant)
    assert np.array_equal(pixels(restored), pixels(base))
    assert {name: m for name, m in transformer.named_modules() if backend.is_quantized_layer(m)} == layers
    assert module_bytes(transformer) == weights and loaded.pipe.transformer is transformer
    assert sorted(p.name for p in (tmp_path / "quantized").rglob("*")) == entries  # the cache is not touched


KLEIN_CONFIGS = [("none", None), ("8bit", QuantoConfig("int8")), ("8bit", BitsAndBytesConfig("int8")),
                 ("4bit", QuantoConfig("int4")), ("4bit", BitsAndBytesConfig("nf4"))]


@pytest.mark.parametrize("quant,config", KLEIN_CONFIGS, ids=lambda v: getattr(v, "format", v))
def test_klein_loras_load_change_the_output_and_unload_under_each_quantization(tiny_root, monkeypatch, tmp_path,
                                                                               quant, config):
    """A FLUX.2 [klein] LoRA in diffusers/PEFT and in BFL/ComfyUI naming goes through the studio's LoRA path
    (diffusers' Flux2 loader): it changes the image, names itself in the report and the PNG, sits over the quantized
    layers without changing them, and its removal gives the base image back bit for bit."""
    from quantization.config import FULL_PRECISION

    force_chain(monkeypatch, tmp_path, config or FULL_PRECISION)
    engine = Engine(ModelManager(device="cpu"))
    files = {fmt: tiny_klein_lora(fmt) for fmt in KLEIN_FORMATS}
    base = generate(engine, quant=quant, tool="klein")
    components = base.report["quantization"]["components"]
    assert components["transformer"]["format"] == (config or FULL_PRECISION).format
    (loaded,) = engine.manager._pipelines.values()
    transformer = loaded.pipe.transformer
    layers = {name: m for name, m in transformer.named_modules()
              if config is not None and backend_for(config).is_quantized_layer(m)}
    assert bool(layers) == (config is not None)
    weights = module_bytes(transformer)
    images = {}
    for fmt, path in files.items():
        result = generate(engine, [(path, 0.8)], quant=quant, tool="klein")
        images[fmt] = pixels(result)
        assert np.abs(images[fmt] - pixels(base)).max() > 0, fmt
        sha = __import__("hashlib").sha256(path.read_bytes()).hexdigest()
        (named,) = result.report["parameters"]["loras"]
        assert (named["name"], named["sha256"], named["strength"]) == (path.stem, sha, 0.8)
        assert result.metadata()["loras"] == [named]  # what the PNG records
        modules = dict(transformer.named_modules())
        assert all(modules[f"{name}.base_layer"] is layer for name, layer in layers.items()
                   if f"{name}.base_layer" in modules)
        assert any(".lora_" in name for name, _ in transformer.named_parameters())
    assert not np.array_equal(images["diffusers"], images["bfl"])
    restored = generate(engine, quant=quant, tool="klein")
    assert np.array_equal(pixels(restored), pixels(base))
    assert not any(".lora_" in name for name, _ in transformer.named_parameters())
    assert module_bytes(transformer) == weights and loaded.pipe.transformer is transformer


def test_a_flux1_lora_on_klein_is_one_line_naming_flux2(engine, lora_files):
    with pytest.raises(UserError) as caught:
        generate(engine, [(lora_files["diffusers"], 1.0)], tool="klein")
    message = str(caught.value)
    assert "\n" not in message and "FLUX.2" in message and lora_files["diffusers"].stem in message


def test_a_lora_on_quanto_int4_never_unpacks_the_int4_weights(tiny_root, lora_files, monkeypatch, tmp_path):
    """Loading an adapter reads the transformer's state dict for its keys; quanto's own would unpack every int4
    weight (minutes for a FLUX transformer on a CPU). The layers get their own state dict back afterwards."""
    from optimum.quanto.tensor.weights.tinygemm.packed import TinyGemmPackedTensor

    force_chain(monkeypatch, tmp_path, QuantoConfig("int4"))
    engine = Engine(ModelManager(device="cpu"))
    base = generate(engine, quant="4bit")
    (loaded,) = engine.manager._pipelines.values()
    int4 = [m for m in loaded.pipe.transformer.modules()
            if type(m._parameters.get("weight")).__name__ == "TinyGemmWeightQBitsTensor"]
    assert int4  # the tiny transformer has layers in quanto's packed int4 layout
    unpacks = []
    original = TinyGemmPackedTensor.unpack
    monkeypatch.setattr(TinyGemmPackedTensor, "unpack", lambda self: unpacks.append(1) or original(self))
    result = generate(engine, [(lora_files["diffusers"], 1.0)], quant="4bit")
    assert not unpacks and np.abs(pixels(result) - pixels(base)).max() > 0
    assert all("_save_to_state_dict" not in vars(m) for m in int4)
    assert np.array_equal(pixels(generate(engine, quant="4bit")), pixels(base))


# ---- with the run options (offload, compile, step cache) ---------------------------------------------------------
@pytest.mark.parametrize("offload", ["model", "block", "sequential"])
def test_a_lora_under_offload_hooks_applies_and_changes_nothing_else(fresh_studio, lora_files, offload):
    """On the CPU offload saves nothing (said so), but its hooks run as on a GPU; LoRAs go on and off under them."""
    plain = pixels(generate(fresh_studio, [(lora_files["diffusers"], 1.0)]))
    fresh_studio.manager.set_options(offload=offload)
    base = generate(fresh_studio)
    with_lora = generate(fresh_studio, [(lora_files["diffusers"], 1.0)])
    assert any("saves no memory on the CPU" in n for n in with_lora.notices)
    assert with_lora.report["offload"] == offload
    assert with_lora.report["options"]["offload"] == offload == with_lora.metadata()["options"]["offload"]
    assert not np.array_equal(pixels(with_lora), pixels(base))
    assert np.array_equal(pixels(with_lora), plain)  # the same LoRA run as without the option
    assert np.array_equal(pixels(generate(fresh_studio)), pixels(base))


def test_a_lora_with_a_refused_compile_reports_the_refusal_and_still_applies(fresh_studio, lora_files, monkeypatch):
    monkeypatch.setattr("pipelines.speed.shutil.which", lambda name: None)  # no C++ compiler: compile is refused
    plain = pixels(generate(fresh_studio, [(lora_files["kohya"], 0.8)]))
    fresh_studio.manager.set_options(compile=True)
    base = generate(fresh_studio)
    with_lora = generate(fresh_studio, [(lora_files["kohya"], 0.8)])
    assert with_lora.report["compiled"] is False and with_lora.metadata()["compiled"] is False
    assert any(n.startswith("Compile skipped: torch.compile on a CPU needs a C++ compiler") for n in with_lora.notices)
    assert any(f["backend"] == "compile" and f["reason"].startswith("torch.compile") for f in with_lora.fallbacks)
    assert [l["name"] for l in with_lora.report["parameters"]["loras"]] == [lora_files["kohya"].stem]
    assert not np.array_equal(pixels(with_lora), pixels(base))
    assert np.array_equal(pixels(with_lora), plain)
    assert np.array_equal(pixels(generate(fresh_studio)), pixels(base))


def test_a_lora_with_the_step_cache_changes_the_output_and_removing_it_restores(fresh_studio, lora_files):
    steps = 6
    plain = pixels(generate(fresh_studio, [(lora_files["diffusers"], 1.0)], steps=steps))
    fresh_studio.manager.set_options(step_cache=1e-9)  # on, but no step is close enough to skip
    exact = generate(fresh_studio, [(lora_files["diffusers"], 1.0)], steps=steps)
    assert exact.report["step_cache"]["skipped_steps"] == 0 and np.array_equal(pixels(exact), plain)
    fresh_studio.manager.set_options(step_cache=1.0)  # every step after the first is a candidate to skip
    base = generate(fresh_studio, steps=steps)
    with_lora = generate(fresh_studio, [(lora_files["diffusers"], 1.0)], steps=steps)
    cache = with_lora.report["step_cache"]
    assert cache["skipped_steps"] > 0 and cache["full_steps"] + cache["skipped_steps"] == steps
    assert not np.array_equal(pixels(with_lora), pixels(base))
    assert np.array_equal(pixels(generate(fresh_studio, steps=steps)), pixels(base))
    transformer = next(iter(fresh_studio.manager._pipelines.values())).pipe.transformer
    assert not any("lora" in name for name, _ in transformer.named_modules())


# ---- bad input: one line, nothing loaded, the next run works ----------------------------------------------------
def write_lora(path, tensors: dict):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, lora_files):
    folder = tmp_path_factory.mktemp("bad-loras")
    down, up = torch.randn(4, 320), torch.randn(320, 4)
    good = lora_files["diffusers"].read_bytes()
    (folder / "model.ckpt").write_bytes(good)
    (folder / "notes.safetensors").write_text("not a safetensors file at all")
    (folder / "truncated.safetensors").write_bytes(good[:-200])
    return {
        "not_safetensors": (folder / "model.ckpt", "not a .safetensors file"),
        "garbage": (folder / "notes.safetensors", "not a safetensors file"),
        "truncated": (folder / "truncated.safetensors", "truncated or damaged"),
        "sdxl_kohya": (write_lora(folder / "sdxl.safetensors", {
            "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": down,
            "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": up,
            "lora_unet_down_blocks_1_attentions_0_proj_in.alpha": torch.tensor(4.0)}), "not a LoRA for FLUX.1"),
        "sd15_diffusers": (write_lora(folder / "sd15.safetensors", {
            "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": down,
            "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": up}), "not a LoRA for FLUX.1"),
        "shapes": (write_lora(folder / "wide.safetensors", {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 3072),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(3072, 4)}), "does not fit"),
        "text_encoder_shapes": (write_lora(folder / "clip-wide.safetensors", {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 64),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(64, 4),
            "text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 768),
            "text_encoder.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(768, 4)}),
            "could not be applied"),
        "control": (write_lora(folder / "depth-control.safetensors", {
            "transformer.x_embedder.lora_A.weight": torch.randn(4, 128),
            "transformer.x_embedder.lora_B.weight": torch.randn(64, 4),
            "transformer.transformer_blocks.0.attn.norm_q.weight": torch.ones(32)}), "control LoRA"),
    }


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text and "Traceback" not in text
    return text


BAD = ["not_safetensors", "garbage", "truncated", "sdxl_kohya", "sd15_diffusers", "shapes", "text_encoder_shapes",
       "control"]


@pytest.mark.parametrize("kind", BAD)
def test_a_bad_lora_file_is_one_line_and_the_next_run_keeps_its_loras(engine, lora_files, bad_files, kind):
    path, words = bad_files[kind]
    kept = [(lora_files["diffusers"], 0.8)]
    before = pixels(generate(engine, kept))
    with pytest.raises(UserError) as error:
        generate(engine, [*kept, (path, 1.0)])
    text = one_line(error)
    assert text.startswith("lora=") and path.stem in text and words in text
    assert np.array_equal(pixels(generate(engine, kept)), before)  # the LoRAs it had, as they were
    assert np.array_equal(pixels(generate(engine)), pixels(generate(engine)))


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), "strong", 5, -4.5, True])
def test_a_bad_strength_is_one_line(lora_files, strength):
    with pytest.raises(UserError) as error:
        check_loras([(lora_files["diffusers"], strength)])
    text = one_line(error)
    assert text.startswith("lora strength=") and "-4..4" in text


def test_missing_and_repeated_files_are_refused(lora_files, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        check_loras([(tmp_path / "gone.safetensors", 1.0)])
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(lora_files["diffusers"].read_bytes())
    with pytest.raises(UserError, match="listed twice"):
        check_loras([(lora_files["diffusers"], 1.0), (copy, 0.5)])


def test_file_and_strength_from_text():
    assert parse_lora_arg("style.safetensors") == ("style.safetensors", 1.0)
    assert parse_lora_arg("style.safetensors:0.6") == ("style.safetensors", "0.6")
    assert parse_lora_arg("C:/loras/a.safetensors:-1.5") == ("C:/loras/a.safetensors", "-1.5")
    assert parse_lora_arg("C:/loras/a.safetensors") == ("C:/loras/a.safetensors", 1.0)


# ---- the command line and the PNG metadata -----------------------------------------------------------------------
def test_cli_lora_writes_the_metadata(tiny_root, lora_files, tmp_path, capsys):
    out, report = tmp_path / "lora.png", tmp_path / "lora.json"
    code = cli.main(["generate", "--tool", "dev", "--prompt", "a cube", "--model", "tiny", "--quant", "none",
                     "--seed", "2", "--lora", f"{lora_files['kohya']}:0.75", "--lora", str(lora_files["xlabs"]),
                     "--out", str(out), "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    sha = __import__("hashlib").sha256(lora_files["kohya"].read_bytes()).hexdigest()
    autov3 = {fmt: check_lora(lora_files[fmt]).autov3 for fmt in ("kohya", "xlabs")}
    expected = [{"name": lora_files["kohya"].stem, "sha256": sha, "autov3": autov3["kohya"], "strength": 0.75},
                {"name": lora_files["xlabs"].stem, "sha256": __import__("hashlib").sha256(
                    lora_files["xlabs"].read_bytes()).hexdigest(), "autov3": autov3["xlabs"], "strength": 1.0}]
    assert read_metadata(out)["loras"] == expected
    assert json.loads(report.read_text())["parameters"]["loras"] == expected
    from PIL import Image

    with Image.open(out) as image:
        text = image.text["parameters"]
    assert text.startswith(f"a cube <lora:{lora_files['kohya'].stem}:0.75> <lora:{lora_files['xlabs'].stem}:1>")
    assert f'Lora hashes: "{lora_files["kohya"].stem}: {autov3["kohya"][:12]}' in text  # A1111's AutoV3


def test_cli_bad_lora_is_one_line_exit_2(tiny_root, tmp_path, capsys):
    out = tmp_path / "x.png"
    code = cli.main(["generate", "--tool", "dev", "--prompt", "x", "--model", "tiny", "--lora",
                     str(tmp_path / "missing.safetensors:0.5"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and "missing.safetensors" in err and "no such file" in err


# ---- the studio ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_studio(tiny_root, lora_files, tmp_path_factory):
    import os
    import shutil

    from tests.ui_fixtures import start_studio

    folder = tmp_path_factory.mktemp("lora-dir")
    shutil.copy(lora_files["diffusers"], folder / "film-look.safetensors")
    previous = os.environ.get("FLUXFORGE_LORA_DIR")
    os.environ["FLUXFORGE_LORA_DIR"] = str(folder)
    try:
        studio = start_studio(tmp_path_factory.mktemp("lora-outputs"), api=True)
    finally:
        if previous is None:
            os.environ.pop("FLUXFORGE_LORA_DIR")
        else:
            os.environ["FLUXFORGE_LORA_DIR"] = previous
    yield studio, folder
    studio.close()


def test_studio_tabs_take_loras_from_the_folder_and_uploads(lora_studio, lora_files):
    from gradio_client import Client, handle_file

    studio, folder = lora_studio
    client = Client(studio.url, verbose=False, download_files=True)
    settings = dict(steps=2, guidance=3.5, quant="none", width=128, height=128, seed=11, randomize=False)
    picked = str(folder / "film-look.safetensors")
    result = client.predict(tool="dev", prompt="a cube", loras_picked=[picked],
                            loras_uploaded=[handle_file(str(lora_files["xlabs"]))], lora_strength=0.5,
                            **settings, api_name="/generate")
    meta = read_metadata(result[0])
    assert [(l["name"], l["strength"]) for l in meta["loras"]] == [("film-look", 0.5), (lora_files["xlabs"].stem, 0.5)]
    assert "LoRAs film-look 0.5" in result[2]  # the status line names them
    plain = client.predict(tool="dev", prompt="a cube", **settings, api_name="/generate")  # LoRA inputs left out
    assert read_metadata(plain[0])["loras"] == []
    with pytest.raises(Exception):  # out of the slider's range: refused before it is queued
        client.predict(tool="dev", prompt="a cube", loras_picked=[picked], lora_strength=9, **settings,
                       api_name="/generate")


def test_studio_bad_lora_upload_is_a_message(lora_studio, bad_files):
    from gradio_client import Client, handle_file

    studio, _folder = lora_studio
    client = Client(studio.url, verbose=False)
    settings = dict(steps=2, guidance=3.5, quant="none", width=128, height=128, seed=11, randomize=False)
    with pytest.raises(Exception, match="truncated or damaged"):
        client.predict(tool="dev", prompt="a cube", loras_uploaded=[handle_file(str(bad_files["truncated"][0]))],
                       **settings, api_name="/generate")


def test_a_gguf_transformer_takes_a_lora_and_stays_gguf(tiny_root, lora_files, tmp_path):
    from diffusers import FluxTransformer2DModel

    from tests.test_cache import write_gguf

    module = FluxTransformer2DModel.from_pretrained(tiny_root / "dev", subfolder="transformer", dtype=torch.bfloat16)
    gguf = write_gguf(module, tmp_path / "flux1-tiny-Q8_0.gguf")
    engine = Engine(ModelManager(device="cpu"))
    base = generate(engine, transformer=str(gguf))
    (loaded,) = engine.manager._pipelines.values()
    transformer = loaded.pipe.transformer
    weights = module_bytes(transformer)
    with_lora = generate(engine, [(lora_files["diffusers"], 1.0)], transformer=str(gguf))
    assert np.abs(pixels(with_lora) - pixels(base)).max() > 0
    assert with_lora.report["quantization"]["components"]["transformer"]["backend"] == "gguf"
    assert np.array_equal(pixels(generate(engine, transformer=str(gguf))), pixels(base))
    assert module_bytes(transformer) == weights and loaded.pipe.transformer is transformer


def test_loras_follow_a_runtime_fallback_to_the_next_backend(tiny_root, lora_files, monkeypatch, tmp_path):
    monkeypatch.setenv("FLUXFORGE_QUANT_CACHE_DIR", str(tmp_path / "quantized"))
    monkeypatch.setenv("FLUXFORGE_PROBE", "0")
    first, second = fail_first_4bit_run(monkeypatch)
    engine = Engine(ModelManager(device="cpu"))
    with_lora = generate(engine, [(lora_files["diffusers"], 1.0)], quant="4bit")
    transformer = with_lora.report["quantization"]["components"]["transformer"]
    assert (transformer["backend"], transformer["format"]) == (second.backend, second.format)
    (loaded,) = engine.manager._pipelines.values()
    assert loaded.lora_state == ((("lora0", check_loras([(lora_files["diffusers"], 1.0)])[0].sha256),),
                                 {"transformer": ("lora0",)})
    base = generate(engine, quant="4bit")
    assert not np.array_equal(pixels(with_lora), pixels(base))
    assert np.array_equal(pixels(generate(engine, [(lora_files["diffusers"], 1.0)], quant="4bit")), pixels(with_lora))


# ---- a file's header checked whole; the file named as the user knows it -----------------------------------------
def raw_safetensors(path, header, data: bytes = b""):
    """A file with ``header`` (any JSON value, or text) as its safetensors header."""
    text = header if isinstance(header, str) else json.dumps(header)
    encoded = text.encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)
    return path


def header_cases(folder) -> dict:
    bf16 = {"dtype": "BF16", "shape": [4, 64]}
    return {
        "a list": (raw_safetensors(folder / "list.safetensors", [1, 2, 3]), "its header is a JSON list, not an object"),
        "a number": (raw_safetensors(folder / "number.safetensors", 7), "its header is a JSON int, not an object"),
        "deep nesting": (raw_safetensors(folder / "deep.safetensors", "[" * 100_000 + "]" * 100_000),
                         "nested too deeply"),
        "entries not objects": (raw_safetensors(folder / "flat.safetensors", {"a.lora_A.weight": [0, 1]}),
                                "tensor 'a.lora_A.weight' is described wrongly"),
        "unknown dtype": (raw_safetensors(folder / "dtype.safetensors", {"a": {"dtype": "Q3", "shape": [2],
                                                                              "data_offsets": [0, 2]}}, b"\0" * 2),
                          "tensor 'a' is described wrongly"),
        "tensors overrun their offsets": (raw_safetensors(folder / "overrun.safetensors", {"a": dict(
            bf16, data_offsets=[0, 10])}, b"\0" * 10), "needs 512 bytes but its offsets give 10"),
        "tensors overlap": (raw_safetensors(folder / "overlap.safetensors", {
            "a": dict(bf16, data_offsets=[0, 512]), "b": dict(bf16, data_offsets=[256, 768])}, b"\0" * 768),
            "overlap or leave gaps"),
        "past the end": (raw_safetensors(folder / "short.safetensors", {"a": dict(bf16, data_offsets=[0, 512])},
                                         b"\0" * 100), "truncated or damaged"),
        "rank 0": (write_lora(folder / "rank0.safetensors", {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(0, 64, dtype=torch.bfloat16),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, 0, dtype=torch.bfloat16)}),
            "holds no weights (rank 0: every tensor is empty)"),
        "no tensors": (raw_safetensors(folder / "empty.safetensors", {"__metadata__": {"format": "pt"}}),
                       "holds no weights (no tensors)"),
    }


@pytest.fixture(scope="module")
def bad_headers(tmp_path_factory):
    return header_cases(tmp_path_factory.mktemp("bad-headers"))


HEADERS = ["a list", "a number", "deep nesting", "entries not objects", "unknown dtype", "tensors overrun their offsets",
           "tensors overlap", "past the end", "rank 0", "no tensors"]


@pytest.mark.parametrize("kind", HEADERS)
def test_a_bad_header_is_one_line_naming_the_file(bad_headers, kind):
    path, words = bad_headers[kind]
    with pytest.raises(UserError) as error:
        check_loras([{"path": str(path), "strength": 1.0, "shown": path.name}])
    text = one_line(error)
    assert text.startswith(f"lora={path.name!r}") and words in text and str(path.parent) not in text


@pytest.mark.parametrize("kind", HEADERS)
def test_cli_bad_header_is_one_line_exit_2(tiny_root, bad_headers, tmp_path, capsys, kind):
    path, words = bad_headers[kind]
    out = tmp_path / "x.png"
    code = cli.main(["generate", "--tool", "dev", "--prompt", "x", "--model", "tiny", "--lora", str(path),
                     "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and err.startswith("error: lora=") and words in err, err


def test_a_library_error_names_the_file_not_its_path():
    from pipelines.loras import without_paths

    text = "Error while deserializing header: '/tmp/gradio/3f2a9c/style.safetensors' (C:\\Users\\me\\loras\\b.safetensors)"
    assert without_paths(text) == "Error while deserializing header: 'style.safetensors' (b.safetensors)"


# ---- the studio's LoRA inputs over the API -------------------------------------------------------------------------
API_SETTINGS = dict(steps=2, guidance=3.5, quant="none", width=128, height=128, seed=11, randomize=False)


def refused_on(error, parameter: str) -> str:
    """The message gradio_client shows for ``parameter`` (one line, no server path)."""
    lines = [line for line in str(error.value).splitlines() if line.startswith(f"- {parameter}: ")]
    assert lines, str(error.value)
    message = lines[0][len(f"- {parameter}: "):]
    assert "/tmp/" not in message and "/root/" not in message and "gradio" not in message, message
    return message


@pytest.mark.parametrize("kind", ["truncated", "not_safetensors_header"])
def test_studio_bad_lora_upload_is_named_as_uploaded_on_the_upload_box(lora_studio, bad_files, bad_headers, kind):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import ValidationError

    studio, _folder = lora_studio
    path, words = bad_files["truncated"] if kind == "truncated" else bad_headers["tensors overrun their offsets"]
    with pytest.raises(ValidationError) as error:
        Client(studio.url, verbose=False).predict(tool="dev", prompt="a cube", loras_uploaded=[handle_file(str(path))],
                                                  **API_SETTINGS, api_name="/generate")
    message = refused_on(error, "loras_uploaded")
    assert message.startswith(f"lora={path.name!r}") and words in message


def test_a_lora_added_to_the_folder_after_the_start_is_taken_over_the_api(lora_studio, lora_files):
    import shutil

    from gradio_client import Client

    studio, folder = lora_studio
    shutil.copy(lora_files["second"], folder / "added-later.safetensors")
    try:
        result = Client(studio.url, verbose=False).predict(
            tool="dev", prompt="a cube", loras_picked=["added-later.safetensors"], **API_SETTINGS, api_name="/generate")
    finally:
        (folder / "added-later.safetensors").unlink()
    assert [lora["name"] for lora in read_metadata(result[0])["loras"]] == ["added-later"]


def test_loras_picked_as_one_name_is_one_file_and_anything_else_one_line(lora_studio):
    from gradio_client import Client
    from gradio_client.exceptions import ValidationError

    studio, _folder = lora_studio
    client = Client(studio.url, verbose=False)
    result = client.predict(tool="dev", prompt="a cube", loras_picked="film-look.safetensors", **API_SETTINGS,
                            api_name="/generate")
    assert [lora["name"] for lora in read_metadata(result[0])["loras"]] == ["film-look"]
    for picked, shown in (("nope.safetensors", "'nope.safetensors'"), (["/etc/passwd"], "'passwd'"),
                          (["../secret.safetensors"], "'../secret.safetensors'")):
        with pytest.raises(ValidationError) as error:
            client.predict(tool="dev", prompt="a cube", loras_picked=picked, **API_SETTINGS, api_name="/generate")
        message = refused_on(error, "loras_picked")
        assert shown in message and "is not a LoRA file in the LoRA folder" in message and "/etc" not in message
