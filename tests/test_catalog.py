"""Which model each tool runs (a pure function of what was asked, what is cached and whether the hub answers, tested
as a table), and which models a tool is offered."""

from __future__ import annotations

import shutil

import pytest

from pipelines.errors import UserError
from pipelines.models import catalog
from pipelines.tools import all_tools, get_tool

SCHNELL, DEV, FILL = "black-forest-labs/FLUX.1-schnell", "black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-Fill-dev"
OFFICIAL = {tool.name: tool.model_id for tool in all_tools()}


def assign(specs=(), cached=(), reachable=False):
    return catalog.assign(all_tools(), specs, cached=lambda repo: repo in cached, reachable=lambda: reachable)


@pytest.mark.parametrize("cached, reachable, official, demo", [
    ((), True, set(OFFICIAL), set()),  # the hub answers: every official model (downloaded on first use)
    ((), False, set(), set(OFFICIAL)),  # offline, nothing cached: the demo model everywhere
    ((SCHNELL, FILL), False, {"schnell", "fill"}, set(OFFICIAL) - {"schnell", "fill"}),  # offline: what is cached
    ((DEV,), False, {"dev", "redux"}, set(OFFICIAL) - {"dev", "redux"}),  # Redux runs Dev's model
])
def test_each_tool_runs_its_official_model_when_it_can_be_had(cached, reachable, official, demo):
    result = assign(cached=cached, reachable=reachable)
    assert {t for t, m in result.models.items() if m == OFFICIAL[t]} == official
    assert {t for t, m in result.models.items() if m == "tiny"} == demo == set(result.demo)


def test_tiny_for_every_tool_is_asked_for_not_a_demo_fallback():
    result = assign(["tiny"], reachable=True)
    assert set(result.models.values()) == {"tiny"} and result.demo == ()


def test_one_model_for_every_tool_goes_to_the_tools_it_fits(tiny_root):
    result = assign([DEV], reachable=True)
    assert result.models["dev"] == result.models["redux"] == DEV
    assert result.models["schnell"] == SCHNELL and result.models["fill"] == FILL  # not Dev's weights with 4 steps
    assert "dev, redux" in result.notices[0] and "keep their own models" in result.notices[0]
    local = assign([str(tiny_root / "fill")], reachable=False)
    assert local.models["fill"] == str(tiny_root / "fill") and local.models["dev"] == "tiny"


@pytest.mark.parametrize("specs, message", [
    (["nope=tiny"], r"--model 'nope=tiny': there is no tool 'nope'"),
    (["dev="], r"give a model after '='"),
    (["dev=tiny", "dev=tiny"], r"names a model for dev twice"),
    (["tiny", "tiny"], r"for every tool twice"),
    ([f"dev={SCHNELL}"], r"--model dev='black-forest-labs/FLUX.1-schnell' is the official FLUX.1 \[schnell\] model; "
                         r"the dev tool needs a FluxPipeline \(64-channel, guidance-distilled\) model"),
    (["some thing"], r"neither 'tiny', a hub id"),
])
def test_a_model_that_cannot_run_a_tool_is_refused_in_one_line(specs, message):
    with pytest.raises(UserError, match=message) as caught:
        assign(specs, reachable=True)
    assert "\n" not in str(caught.value)


def test_a_local_directory_named_for_the_wrong_tool_says_what_it_is(tiny_root):
    with pytest.raises(UserError, match=r"fill=.* is a FluxPipeline \(64-channel, guidance-distilled\) model; the fill "
                                        r"tool needs a FluxFillPipeline \(384-channel"):
        assign([f"fill={tiny_root / 'dev'}"])
    with pytest.raises(UserError, match=r"is a FluxFillPipeline .* which no tool runs|runs no|which no tool"):
        catalog.assign([get_tool("dev")], [str(tiny_root / "fill")], cached=lambda r: False, reachable=lambda: False)


def test_a_transformer_file_runs_on_its_tools_own_model(tiny_transformer_files):
    result = assign([f"dev={tiny_transformer_files['bf16']}"], reachable=False)
    assert result.transformers == {"dev": str(tiny_transformer_files["bf16"])} and result.models["dev"] == "tiny"
    spread = assign([str(tiny_transformer_files["bf16"])], reachable=True)
    assert set(spread.transformers) == {"dev", "kontext", "redux"}  # the tools with a guidance-distilled 64-channel input


def test_the_environment_names_models_as_the_command_line_does(monkeypatch):
    monkeypatch.setenv(catalog.MODELS_ENV, "dev=tiny, fill=tiny  schnell=tiny")
    assert catalog.env_specs() == ["dev=tiny", "fill=tiny", "schnell=tiny"]
    monkeypatch.setenv(catalog.MODELS_ENV, "nope=tiny")
    with pytest.raises(UserError, match="FLUXFORGE_MODELS 'nope=tiny'"):
        catalog.assign(all_tools(), catalog.env_specs(), catalog.MODELS_ENV)


def test_a_tool_is_offered_the_models_of_its_kind_in_the_model_folder(tiny_root, tiny_transformer_files, tmp_path,
                                                                      monkeypatch):
    folder = tmp_path / "models"
    shutil.copytree(tiny_root / "dev", folder / "my-dev")
    shutil.copytree(tiny_root / "fill", folder / "people" / "their-fill")
    (folder / "loose").mkdir()
    shutil.copy(tiny_transformer_files["bf16"], folder / "loose" / "finetune.safetensors")
    shutil.copy(tiny_transformer_files["fill"], folder / "fill-finetune.safetensors")
    (folder / "notes.safetensors").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("FLUXFORGE_MODEL_DIR", str(folder))
    dev = {c.value: c.label for c in catalog.choices(get_tool("dev"), "tiny", cached=lambda repo: False)}
    assert list(dev)[:2] == ["tiny", DEV] and "official · 31.4 GiB to download · licence and login needed" in dev[DEV]
    assert str(folder / "my-dev") in dev and str(folder / "loose" / "finetune.safetensors") in dev
    assert not any("fill" in value for value in dev)  # other kinds are not offered
    fill = {c.value for c in catalog.choices(get_tool("fill"), "tiny", cached=lambda repo: True)}
    assert {str(folder / "people" / "their-fill"), str(folder / "fill-finetune.safetensors")} <= fill
    assert not any(value.endswith("notes.safetensors") for value in fill)
