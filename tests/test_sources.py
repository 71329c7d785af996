"""Model sources: tiny, local diffusers directories (any FLUX one), hub ids with readable errors."""

import json
import shutil

import pytest
import torch

from pipelines.models import sources
from pipelines.errors import UserError
from pipelines.models.sources import resolve_model
from pipelines.tools import get_tool


def test_tiny_resolves_per_tool(tiny_root):
    assert resolve_model("tiny", get_tool("fill")).root == tiny_root / "fill"
    assert resolve_model("tiny", get_tool("redux")).root == tiny_root / "dev"  # Redux runs the dev pipeline
    assert resolve_model("tiny", get_tool("canny")).is_tiny


def test_any_local_flux_directory_works(tiny_root, tmp_path, studio):
    from pipelines.request import GenerationRequest

    copy = tmp_path / "my-flux"
    shutil.copytree(tiny_root / "schnell", copy)
    source = resolve_model(str(copy), get_tool("schnell"))
    assert source.kind == "path" and source.root == copy
    result = studio.generate(GenerationRequest(tool="schnell", prompt="x", model=str(copy), quant="none", seed=1))
    assert result.report["model"] == str(copy)


def test_directory_of_the_wrong_pipeline_names_the_one_needed(tiny_root):
    with pytest.raises(UserError, match="is a FluxPipeline directory; the fill tool needs a FluxFillPipeline"):
        resolve_model(str(tiny_root / "dev"), get_tool("fill"))


def test_directory_without_model_index(tmp_path):
    with pytest.raises(UserError, match="not a diffusers FLUX directory"):
        resolve_model(str(tmp_path), get_tool("dev"))


def test_unreadable_model_index(tmp_path):
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        resolve_model(str(tmp_path), get_tool("dev"))


def test_missing_directory():
    with pytest.raises(UserError, match="no such directory"):
        resolve_model("./does/not/exist", get_tool("dev"))


def _raise(error):
    def fake(*args, **kwargs):
        raise error

    return fake


def test_gated_model_says_how_to_get_access(monkeypatch):
    from huggingface_hub.errors import GatedRepoError
    import huggingface_hub

    import httpx

    response = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _raise(GatedRepoError("gated", response=response)))
    with pytest.raises(UserError, match=r"gated: accept its licence .* log in .* --model tiny"):
        resolve_model("black-forest-labs/FLUX.1-dev", get_tool("dev"))


def test_offline_hub_says_what_to_do():
    with pytest.raises(UserError, match="cannot be reached.*local directory.*--model tiny"):
        resolve_model("black-forest-labs/FLUX.1-schnell", get_tool("schnell"))


def test_default_model_is_tiny_with_a_notice_when_no_weights_are_cached():
    model, notice = sources.default_model(get_tool("dev"))
    assert model == "tiny" and "offline demo model" in notice


def test_default_model_is_official_when_cached(monkeypatch):
    monkeypatch.setattr(sources, "is_cached", lambda repo: True)
    assert sources.default_model(get_tool("kontext")) == ("black-forest-labs/FLUX.1-Kontext-dev", None)


def test_tiny_family_is_deterministic_and_safe_for_int8_kernels(tiny_root, tmp_path):
    from quantization.load import fingerprint
    from pipelines.models.tiny import ensure_tiny_family
    from pipelines.tools import all_tools

    again = ensure_tiny_family(all_tools(), tmp_path / "again")
    for tool in ("dev", "fill", "canny"):
        for component in ("transformer", "text_encoder_2", "vae"):
            assert fingerprint(tiny_root / tool / component) == fingerprint(again / tool / component)
    index = json.loads((tiny_root / "fill" / "model_index.json").read_text())
    assert index["_class_name"] == "FluxFillPipeline"
    from diffusers import FluxTransformer2DModel
    from transformers import T5EncoderModel

    for model in (FluxTransformer2DModel.from_pretrained(tiny_root / "fill", subfolder="transformer"),
                  T5EncoderModel.from_pretrained(tiny_root / "dev", subfolder="text_encoder_2")):
        assert min(m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)) >= 16


def test_importing_the_project_does_no_work(tmp_path):
    import subprocess
    import sys

    code = ("import app, cli, pipelines.engine, pipelines.manager, quantization.policy, ui.studio, sys; "
            "import torch; print(torch.cuda.is_initialized())")
    env = {"FLUXFORGE_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=str(sources.Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert not (tmp_path / "cache").exists()  # no model was built or downloaded
