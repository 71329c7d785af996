"""Model sources: tiny, local diffusers directories (any FLUX one), hub ids with readable errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch

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
    with pytest.raises(UserError, match=r"is a FluxPipeline \(64-channel, guidance-distilled\) model; the fill tool "
                                        r"needs a FluxFillPipeline \(384"):
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


def test_offline_hub_says_what_to_do():
    with pytest.raises(UserError, match="not in the local cache and the Hugging Face hub cannot be reached; connect, "
                                        "or pass a local directory, or use the demo model 'tiny'"):
        resolve_model("black-forest-labs/FLUX.1-schnell", get_tool("schnell"))


def test_a_directory_of_the_right_class_but_another_transformer_is_refused(tiny_root):
    with pytest.raises(UserError, match=r"is a FluxPipeline \(64-channel, no guidance embedder\) model; the dev tool "
                                        r"needs a FluxPipeline \(64-channel, guidance-distilled\) model"):
        resolve_model(str(tiny_root / "schnell"), get_tool("dev"))


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
                          cwd=str(Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert not (tmp_path / "cache").exists()  # no model was built or downloaded
