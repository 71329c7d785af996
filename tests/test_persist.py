"""Settings that persist (ui.persist): what the browser stored is checked field by field on restore, and every tool
tab keeps its settings under its own fixed key, its defaults the values it is built with."""

from __future__ import annotations

import math

import gradio as gr
import pytest

from pipelines import defaults
from pipelines.errors import UserError
from ui import persist
from ui.persist import Accepted, Choice, Field, Flag, Names, Range, Text, restore

STEPS = {"schnell": 4, "dev": 28}
MODELS = {"schnell": {"tiny", "black-forest-labs/FLUX.1-schnell"}, "dev": {"tiny", "black-forest-labs/FLUX.1-dev"}}


def model_rule(values):
    def accepts(value):
        if value not in MODELS[values["tool"]]:
            raise UserError(f"model={value!r} is not one of the tool's models")  # as Runner.model_choice refuses
        return True

    return Accepted(accepts)


FIELDS = [
    Field("tool", Choice(("schnell", "dev")), "schnell"),
    Field("model", model_rule, "tiny"),
    Field("prompt", Text(defaults.PROMPT_MAX_CHARS), ""),
    Field("steps", Range(defaults.STEPS_MIN, defaults.STEPS_MAX, integer=True), lambda values: STEPS[values["tool"]]),
    Field("guidance", Range(0.0, 50.0), 3.5),
    Field("quant", Choice(("auto", "none", "8bit", "4bit")), "auto"),
    Field("seed", Range(0, defaults.SEED_MAX, integer=True), 0),
    Field("randomize", Flag(), True),
    Field("loras", Names(lambda: ["film.safetensors", "styles/ink.safetensors"]), []),
]
DEFAULTS = {"tool": "schnell", "model": "tiny", "prompt": "", "steps": 4, "guidance": 3.5, "quant": "auto", "seed": 0,
            "randomize": True, "loras": []}
VALID = {"tool": "dev", "model": "black-forest-labs/FLUX.1-dev", "prompt": "a lighthouse", "steps": 12,
         "guidance": 4.5, "quant": "8bit", "seed": 777, "randomize": False, "loras": ["styles/ink.safetensors"]}

CASES = {
    # name: (stored, what comes back where it differs from the defaults)
    "nothing stored": (None, {}),
    "an empty store": ({}, {}),
    "not an object": ("garbage", {}),
    "a list": ([1, 2, 3], {}),
    "a number": (42, {}),
    "every field valid": (VALID, VALID),
    "one field, the rest missing": ({"steps": 10}, {"steps": 10}),
    "a quantization no longer offered": ({"quant": "fp8"}, {}),
    "a tool no longer offered": ({"tool": "klein-old", "steps": 6}, {"steps": 6}),
    "a model the tool no longer offers": ({"tool": "dev", "model": "/gone/model"}, {"tool": "dev", "steps": 28}),
    "a model of the other tool": ({"model": "black-forest-labs/FLUX.1-dev"}, {}),
    "an empty model": ({"model": "  "}, {}),
    "steps above the range": ({"steps": 101}, {}),
    "steps below the range": ({"steps": 0}, {}),
    "steps out of range take the restored tool's default": ({"tool": "dev", "steps": 500}, {"tool": "dev",
                                                                                            "steps": 28}),
    "steps as text": ({"steps": "12"}, {}),
    "steps as a boolean": ({"steps": True}, {}),
    "steps not whole": ({"steps": 12.5}, {}),
    "steps whole as a float": ({"steps": 12.0}, {"steps": 12}),
    "guidance not a number": ({"guidance": math.nan}, {}),
    "guidance infinite": ({"guidance": math.inf}, {}),
    "guidance above the range": ({"guidance": 51}, {}),
    "a negative seed": ({"seed": -1}, {}),
    "a seed past the largest": ({"seed": defaults.SEED_MAX + 1}, {}),
    "the largest seed": ({"seed": defaults.SEED_MAX}, {"seed": defaults.SEED_MAX}),
    "a seed as null": ({"seed": None}, {}),
    "randomize as a number": ({"randomize": 0}, {}),
    "randomize as text": ({"randomize": "false"}, {}),
    "a prompt not text": ({"prompt": 5}, {}),
    "a prompt past the limit": ({"prompt": "x" * (defaults.PROMPT_MAX_CHARS + 1)}, {}),
    "LoRA files no longer in the folder are dropped": ({"loras": ["film.safetensors", "gone.safetensors", 3]},
                                                       {"loras": ["film.safetensors"]}),
    "LoRA files not a list": ({"loras": "film.safetensors"}, {}),
    "keys of an older version are ignored": ({"hires": True, "sampler": "euler", "steps": 9}, {"steps": 9}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_restore(name):
    stored, changed = CASES[name]
    assert restore(stored, FIELDS) == {**DEFAULTS, **changed}


@pytest.mark.parametrize("component, rule", [
    (gr.Slider(1, 100, value=4, step=1, render=False), Range(1, 100, integer=True)),
    (gr.Slider(0, 50, value=3.5, step=0.5, render=False), Range(0, 50)),
    (gr.Slider(0.01, 1.0, value=0.6, step=0.01, render=False), Range(0.01, 1.0)),
    (gr.Number(0, precision=0, minimum=0, maximum=1024, render=False), Range(0, 1024, integer=True)),
    (gr.Checkbox(True, render=False), Flag()),
    (gr.Radio([("Inpaint", "inpaint"), ("Outpaint", "outpaint")], value="inpaint", render=False),
     Choice(("inpaint", "outpaint"))),
    (gr.Dropdown([("Auto", "auto"), ("8-bit", "8bit")], value="auto", render=False), Choice(("auto", "8bit"))),
    (gr.Textbox(render=False), Text(defaults.PROMPT_MAX_CHARS)),
])
def test_a_controls_rule_is_read_from_the_control(component, rule):
    assert persist.rule_for(component) == rule


# ---- the studio's tabs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def memories(tmp_path_factory):
    from app import create_demo

    demo = create_demo(model="tiny", output_dir=tmp_path_factory.mktemp("outputs"))
    found = {}
    for fn in demo.fns.values():
        if fn.fn is not None and getattr(fn.fn, "__name__", "") == "on_load":
            memory = fn.fn.__self__
            found[memory.state.storage_key] = memory
    return demo, found


def test_every_tool_tab_keeps_its_settings_under_its_own_fixed_key(memories):
    from ui.tabs import TOOL_TABS

    demo, found = memories
    tabs = [tab.__name__.rpartition(".")[2] for tab in TOOL_TABS]
    assert sorted(found) == sorted(f"fluxforge-settings-{tab}" for tab in tabs)
    root_children = {child._id for child in demo.children}
    for memory in found.values():
        assert memory.state.secret == persist.SECRET  # stored values can be read after a restart
        assert memory.state._id in root_children  # outside the tabs: it starts with the page


def test_reset_gives_each_control_the_value_it_was_built_with(memories):
    _, found = memories
    for key, memory in found.items():
        values = memory.values({})
        for field, component, value in zip(memory.fields, memory.components, values):
            shown = value["value"] if isinstance(value, dict) else value
            built = component.value if not isinstance(component, gr.Textbox) else component.value or ""
            assert shown == built, (key, field.key)
        assert values[-1] == {f.key: (v["value"] if isinstance(v, dict) else v)
                              for f, v in zip(memory.fields, values)}


def test_a_tab_restores_what_is_valid_and_never_raises(memories):
    _, found = memories
    generate = found["fluxforge-settings-generate"]
    keys = [f.key for f in generate.fields]
    assert all(isinstance(v, type(gr.skip())) for v in generate.on_load({}))  # nothing stored: nothing changes
    values = dict(zip(keys, generate.on_load({"tool": "dev", "steps": 500, "quant": "fp8", "seed": 12.0,
                                              "model": "/no/such/model", "loras": ["gone.safetensors"],
                                              "prompt": "kept", "old": 1})[:-1]))
    assert values["tool"] == "dev" and values["prompt"] == "kept" and values["seed"] == 12
    assert values["quant"] == "auto" and values["steps"] == 8  # dev's steps on the tiny model
    assert values["model"]["value"] == "tiny" and values["loras"]["value"] == []
    for stored in ("garbage", [1], {"tool": None, "count": 99, "previews": "yes", "width": 4096}):
        for memory in found.values():
            assert len(memory.on_load(stored)) == len(memory.fields) + 1
