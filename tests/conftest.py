"""Shared fixtures: a private model cache, the tiny family, a studio on the CPU, and test images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# Before any project import: the tiny family and outputs go to a private folder for the session.
os.environ.setdefault("FLUXFORGE_CACHE_DIR", tempfile.mkdtemp(prefix="fluxforge-test-cache-"))
os.environ.setdefault("FLUXFORGE_OUTPUT_DIR", tempfile.mkdtemp(prefix="fluxforge-test-outputs-"))
os.environ.setdefault("FLUXFORGE_DEVICE", "cpu")
os.environ.pop("FLUXFORGE_DISABLE_BACKENDS", None)
# A private Hugging Face home (cache and token file), and no token or model choices from the environment.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="fluxforge-test-hf-")
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "FLUXFORGE_MODELS",
              "FLUXFORGE_MODEL_DIR", "FLUXFORGE_UPSCALER_DIR", "SPACE_ID"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def tiny_root():
    from pipelines.models.tiny import ensure_tiny_family
    from pipelines.tools import all_tools

    return ensure_tiny_family(all_tools())


@pytest.fixture(scope="session")
def studio(tiny_root):
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager

    return Engine(ModelManager(device="cpu"))


@pytest.fixture
def fresh_studio(tiny_root):
    """A studio with its own manager, for tests that change what is loaded."""
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager

    return Engine(ModelManager(device="cpu"))


def import_spandrel():
    """spandrel, imported with a stand-in `torchvision` in sys.modules only while it imports (then taken out again).

    spandrel's LaMa and RestoreFormer architectures import torchvision when `import spandrel` loads every
    architecture; the tests install spandrel without its dependencies because PyPI's torchvision cannot load against
    the CPU build of torch the tests run on (and an installed torchvision changes what transformers imports). The
    ESRGAN path the tests run never touches torchvision; the stand-in only lets those two modules import."""
    import sys
    import types

    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    pytest.importorskip("einops", reason="spandrel needs einops (requirements-dev.txt)")
    if "torchvision" in sys.modules:  # a real one
        return pytest.importorskip("spandrel", reason="pip install --no-deps spandrel==0.4.2")

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision stand-in: not available in the tests")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest", BICUBIC="bicubic")
    functional.rotate = functional.normalize = unavailable
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    vision = types.ModuleType("torchvision")
    vision.transforms = transforms
    stand_ins = {"torchvision": vision, "torchvision.transforms": transforms,
                 "torchvision.transforms.functional": functional}
    sys.modules.update(stand_ins)
    try:
        return pytest.importorskip("spandrel", reason="pip install --no-deps spandrel==0.4.2")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)


@pytest.fixture(scope="session")
def esrgan_folder(tmp_path_factory):
    """An upscaler folder with a tiny random-weight ESRGAN file (2x; 8 filters, 1 block, seeded) that spandrel
    detects, and a file that is not a super-resolution model."""
    import torch
    from safetensors.torch import save_file

    spandrel = import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    folder = tmp_path_factory.mktemp("upscalers")
    torch.manual_seed(7)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "tiny-esrgan-2x.safetensors")
    assert isinstance(spandrel.ModelLoader().load_from_file(folder / "tiny-esrgan-2x.safetensors"),
                      spandrel.ImageModelDescriptor)
    save_file({"weight": torch.zeros(4, 4)}, folder / "not-an-upscaler.safetensors")
    return folder


@pytest.fixture
def upscaler_dir(esrgan_folder, monkeypatch):
    """FLUXFORGE_UPSCALER_DIR set to the tiny ESRGAN folder for this test."""
    monkeypatch.setenv("FLUXFORGE_UPSCALER_DIR", str(esrgan_folder))
    return esrgan_folder


def make_photo(width: int = 128, height: int = 96) -> Image.Image:
    """A synthetic photo with edges and gradients (so Canny and depth have structure)."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, width // 2, height * 3 // 4), fill=(240, 200, 40))
    draw.rectangle((width * 5 // 8, height // 5, width * 7 // 8, height // 2), fill=(30, 60, 200))
    return image


def make_mask(width: int = 128, height: int = 96) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=255)
    return mask


@pytest.fixture
def photo():
    return make_photo()


@pytest.fixture
def mask():
    return make_mask()


@pytest.fixture
def image_files(tmp_path):
    """photo.png, mask.png, a mismatched mask, an empty file and a truncated PNG on disk."""
    paths = {"photo": tmp_path / "photo.png", "mask": tmp_path / "mask.png", "small_mask": tmp_path / "small.png",
             "empty": tmp_path / "empty.png", "truncated": tmp_path / "truncated.png", "text": tmp_path / "notes.txt"}
    make_photo().save(paths["photo"])
    make_mask().save(paths["mask"])
    make_mask(64, 64).save(paths["small_mask"])
    paths["empty"].write_bytes(b"")
    paths["truncated"].write_bytes(paths["photo"].read_bytes()[:200])
    paths["text"].write_text("not an image")
    return paths


def force_chain(monkeypatch, tmp_path, config) -> None:
    """Quantize with ``config`` (then full precision) whatever the policy says; a private store, no probe."""
    from quantization.config import FULL_PRECISION

    monkeypatch.setenv("FLUXFORGE_QUANT_CACHE_DIR", str(tmp_path / "quantized"))
    monkeypatch.setenv("FLUXFORGE_PROBE", "0")
    monkeypatch.setattr("pipelines.manager.candidates",
                        lambda quant, device, family="flux1": (config, FULL_PRECISION) if quant != "none"
                        else (FULL_PRECISION,))


def fail_first_4bit_run(monkeypatch):
    """The transformer quantized with the first 4-bit CPU option fails its first run (as an unsupported kernel
    would): returns (first, second), the options the run starts with and falls back to."""
    from quantization.policy import candidates
    from quantization.registry import backend_for

    first, second = candidates("4bit", "cpu")[:2]
    backend_type = type(backend_for(first))
    original = backend_type.quantize

    def explode(*args):
        raise RuntimeError("kernel not implemented for this shape")

    def poisoned(self, module, config, device, dtype):
        module = original(self, module, config, device, dtype)
        if type(module).__name__ == "FluxTransformer2DModel" and config == first:
            module.proj_out.register_forward_pre_hook(explode)  # a hooked module is never stored
        return module

    monkeypatch.setattr(backend_type, "quantize", poisoned)
    return first, second


def write_gguf(module, path: Path) -> Path:
    """The module's weights as GGUF: Q8_0 where a row is a whole number of 32-value blocks, F32 elsewhere.

    Tensor names are diffusers' own: diffusers converts original (BFL) names only at FLUX.1's real width (3072).
    """
    import gguf

    kinds = gguf.GGMLQuantizationType
    writer = gguf.GGUFWriter(str(path), "flux")
    for name, tensor in module.state_dict().items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[1] % 32 == 0:
            writer.add_tensor(name, gguf.quantize(array, kinds.Q8_0), raw_dtype=kinds.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---- a local Hugging Face hub ------------------------------------------------------------------------------------
# The tiny family under the official repo ids (the Dev family gated, as on the hub), served by tests/hub_server.py.
OFFICIAL_TINY = {"black-forest-labs/FLUX.1-schnell": "schnell", "black-forest-labs/FLUX.1-dev": "dev",
                 "black-forest-labs/FLUX.1-Fill-dev": "fill", "black-forest-labs/FLUX.1-Kontext-dev": "kontext",
                 "black-forest-labs/FLUX.1-Depth-dev": "depth", "black-forest-labs/FLUX.1-Canny-dev": "canny",
                 "black-forest-labs/FLUX.1-Redux-dev": "redux-prior",
                 "depth-anything/Depth-Anything-V2-Small-hf": "depth-estimator"}
BIG_REPO = "fluxforge-test/big-files"  # the tiny Schnell model and a 12 MB file (past one 10 MB download chunk)


@pytest.fixture(scope="session")
def local_hub(tiny_root, tmp_path_factory):
    import shutil

    from tests.hub_server import Hub, Repo

    big = tmp_path_factory.mktemp("big-repo") / "repo"
    shutil.copytree(tiny_root / "schnell", big)
    (big / "big.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 12 << 20, dtype=np.uint8).tobytes())
    repos = {repo_id: Repo(tiny_root / folder, gated=repo_id.endswith("-dev"))
             for repo_id, folder in OFFICIAL_TINY.items()}
    repos[BIG_REPO] = Repo(big)
    hub = Hub(repos).start()
    yield hub
    hub.stop()


@pytest.fixture
def hub_home(local_hub, tmp_path, monkeypatch):
    """This process and its children use the local hub and a fresh, empty Hugging Face cache; returns the env for
    child processes."""
    from huggingface_hub import constants

    from pipelines.models import hub

    home = tmp_path / "hf-home"
    monkeypatch.setattr(constants, "ENDPOINT", local_hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", local_hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    hub.forget_reachability()
    local_hub.log.clear()
    yield {**os.environ, "HF_ENDPOINT": local_hub.url, "HF_HOME": str(home)}
    hub.forget_reachability()


@pytest.fixture(scope="session")
def tiny_transformer_files(tiny_root, tmp_path_factory):
    """Tiny transformers as single files, as people share fine-tunes: the Dev one in bf16, in fp8 (e4m3), in fp8
    with per-row scales, under ComfyUI's prefix, and as GGUF (Q8_0); and the Fill one in bf16.

    Their tensor names are diffusers' own: diffusers converts BFL's names only at FLUX.1's real width (3072)."""
    import torch
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("transformer-files")

    def state(tool):
        module = FluxTransformer2DModel.from_pretrained(tiny_root / tool, subfolder="transformer", dtype=torch.bfloat16)
        return {name: tensor.contiguous() for name, tensor in module.state_dict().items()}

    dev, fill = state("dev"), state("fill")
    files = {"bf16": folder / "dev-bf16.safetensors", "fp8": folder / "dev-fp8.safetensors",
             "fp8_scaled": folder / "dev-fp8-scaled.safetensors", "prefixed": folder / "dev-comfy.safetensors",
             "fill": folder / "fill-bf16.safetensors", "gguf": folder / "dev-Q8_0.gguf"}
    save_file(dev, files["bf16"])
    save_file({k: v.to(torch.float8_e4m3fn) if v.dim() == 2 else v for k, v in dev.items()}, files["fp8"])
    scaled = {}
    for name, tensor in dev.items():
        if tensor.dim() == 2 and name.endswith(".weight"):
            scale = tensor.float().abs().amax(dim=1).clamp(min=1e-8) / 448.0  # e4m3's largest value
            scaled[name] = (tensor.float() / scale[:, None]).to(torch.float8_e4m3fn)
            scaled[name[: -len(".weight")] + ".weight_scale"] = scale
        else:
            scaled[name] = tensor
    save_file(scaled, files["fp8_scaled"])
    save_file({f"model.diffusion_model.{k}": v for k, v in dev.items()}, files["prefixed"])
    save_file(fill, files["fill"])
    module = FluxTransformer2DModel.from_pretrained(tiny_root / "dev", subfolder="transformer", dtype=torch.bfloat16)
    write_gguf(module, files["gguf"])
    return files


@pytest.fixture(scope="session")
def tiny_klein_files(tiny_root, tmp_path_factory):
    """The tiny klein transformer as BFL's single files (tests.klein_files): bf16, fp8r, and nvfp4 under ComfyUI's
    prefix."""
    from tests.klein_files import write_klein_files

    return write_klein_files(tiny_root, tmp_path_factory.mktemp("klein-files"))
