"""Settings that persist: each tool tab keeps its last settings in the browser (gr.BrowserState, the browser's
localStorage) and restores them when the page loads; its "Reset to defaults" button restores the defaults.

What a tab keeps are its controls' values (tool and model choice, prompt, steps, guidance, quantization, size, seed,
strengths, LoRA files and strength, ...), never its images. The page saves them itself whenever one changes (no
round trip to the studio); the studio checks every stored value when it restores them (`restore`): a value that is
no longer valid (a choice no longer offered, a number out of range, the wrong type) gives that field its default, and
keys the tab does not have are ignored. The defaults are what the tab is built with (pipelines.defaults and the
tool's own defaults), and steps, guidance and size follow the tool and model restored, as they do when one is picked.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from pipelines import defaults

STORAGE_KEY = "fluxforge-settings-{tab}"  # localStorage key per tab (fixed, so settings survive a restart)
# Gradio encrypts what it stores with this key. The key is sent to every page that opens the studio, so it keeps
# nothing from anyone who can open it; Gradio's default is a new key each start, which would lose every stored
# setting whenever the studio (or its Space) restarts.
SECRET = "fluxforge-studio-settings"
TOOL_DEPENDENT = ("steps", "guidance", "width", "height")  # their defaults follow the tool and model chosen
HIDDEN = dict(queue=False, api_visibility="private", show_progress="hidden")


# ---- what a stored value may be ------------------------------------------------------------------------------
class Invalid(ValueError):
    """A stored value that the field cannot take."""


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (a radio's or a dropdown's choices)."""

    values: tuple

    def clean(self, value):
        if any(value == v and type(value) is type(v) for v in self.values):
            return value
        raise Invalid(value)


@dataclass(frozen=True)
class Range:
    """A number from ``low`` to ``high``; a whole number when ``integer``."""

    low: float | None
    high: float | None
    integer: bool = False

    def clean(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise Invalid(value)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise Invalid(value)
        if self.integer:
            if value != int(value):
                raise Invalid(value)
            return int(value)
        return value


@dataclass(frozen=True)
class Flag:
    """True or False."""

    def clean(self, value):
        if isinstance(value, bool):
            return value
        raise Invalid(value)


@dataclass(frozen=True)
class Text:
    """A string of at most ``max_chars`` characters."""

    max_chars: int

    def clean(self, value):
        if isinstance(value, str) and len(value) <= self.max_chars:
            return value
        raise Invalid(value)


@dataclass(frozen=True)
class Names:
    """A list of names, kept where ``listed()`` (read when restoring) still lists them (LoRA files in the folder)."""

    listed: Callable[[], list[str]]

    def clean(self, value):
        if not isinstance(value, list):
            raise Invalid(value)
        names = set(self.listed())
        return [name for name in value if isinstance(name, str) and name in names]


@dataclass(frozen=True)
class Accepted:
    """A string that ``accepts`` takes (a Model choice: whatever the run itself would accept)."""

    accepts: Callable[[str], bool]

    def clean(self, value):
        if isinstance(value, str) and value.strip() and self.accepts(value):
            return value
        raise Invalid(value)


@dataclass(frozen=True)
class Field:
    """One stored setting: its key, what it may be and its default (each a value, or a function of the fields
    restored before it: the Model list and the steps follow the tool chosen)."""

    key: str
    rule: Any
    default: Any


def _given(part, restored: dict):
    """A field's rule or default: as it is, or from the fields restored before it."""
    return part(restored) if callable(part) and not hasattr(part, "clean") else part


def restore(stored, fields: list[Field]) -> dict[str, Any]:
    """Each field's stored value where it is valid, else its default; never raises (what is stored was written by
    the page, or by an older version of the studio, or by hand)."""
    stored = stored if isinstance(stored, dict) else {}
    values: dict[str, Any] = {}
    for field in fields:
        default = _given(field.default, values)
        if field.key not in stored:
            values[field.key] = default
            continue
        try:
            values[field.key] = _given(field.rule, values).clean(stored[field.key])
        except Exception:  # noqa: BLE001  (Invalid, or a rule that cannot judge it: the default, never an error)
            values[field.key] = default
    return values


def rule_for(component):
    """What a control may hold, read from the control itself (its choices, its range, its type)."""
    if isinstance(component, gr.Checkbox):
        return Flag()
    if isinstance(component, (gr.Slider, gr.Number)):
        step = getattr(component, "step", None) or 1
        integer = (getattr(component, "precision", None) == 0 or
                   (isinstance(component, gr.Slider) and float(step).is_integer()
                    and float(component.minimum).is_integer()))
        return Range(component.minimum, component.maximum, integer)
    if isinstance(component, (gr.Radio, gr.Dropdown)):
        return Choice(tuple(value for _, value in component.choices))
    if isinstance(component, gr.Textbox):
        return Text(defaults.PROMPT_MAX_CHARS)
    raise TypeError(f"no stored-setting rule for {type(component).__name__}")


def built_value(component):
    """A control's value as the tab is built with it: its default."""
    if isinstance(component, gr.Textbox):
        return component.value or ""
    return component.value


# ---- a tab's settings, saved and restored ----------------------------------------------------------------
@dataclass
class Memory:
    """A tab's stored settings: the BrowserState, its fields and the controls they fill (in the same order)."""

    state: gr.BrowserState
    fields: list[Field]
    components: list
    shown: dict[str, Callable[[Any, dict], Any]]  # key -> the control's update for a value (a list's choices too)

    def values(self, stored) -> tuple:
        """The controls' values, then the state's, for what the browser had stored ({}: the defaults)."""
        restored = restore(stored, self.fields)
        shown = [self.shown[f.key](restored[f.key], restored) if f.key in self.shown else restored[f.key]
                 for f in self.fields]
        return (*shown, restored)

    def on_load(self, stored) -> tuple:
        """What the page shows once loaded: the stored settings; with nothing stored, the controls as they are (so
        that a change made while the page loads stays)."""
        if not stored:
            return tuple(gr.skip() for _ in range(len(self.fields) + 1))
        return self.values(stored)


def remember(ctx, tab: str, controls, tool: str, tool_choice=None, model=None, **others) -> Memory:
    """Keep tab ``tab``'s settings in the browser: ``controls`` (ui.widgets.Controls), the control that picks its
    tool (``tool`` when it has none), its Model list and ``others`` (name -> control). The page restores them when
    it loads; ``controls.reset`` restores the defaults."""
    from pipelines.tools import get_tool

    from .models import dropdown_choices
    from .widgets import lora_choices

    runner = ctx.runner
    named: dict = {}
    if tool_choice is not None:
        named["tool"] = tool_choice
    if model is not None:
        named["model"] = model
    named.update(others)
    named.update(steps=controls.steps, guidance=controls.guidance, quant=controls.quant)
    if controls.match_input is not None:
        named["match"] = controls.match_input
    named.update(width=controls.width, height=controls.height, seed=controls.seed, randomize=controls.randomize)
    if controls.loras is not None:
        named.update(loras=controls.loras.picked, lora_strength=controls.loras.strength)
    if controls.batch is not None:
        named.update(count=controls.batch.count, previews=controls.batch.previews)

    def chosen(values: dict) -> str:
        return values.get("tool", tool)

    def accepts_model(values: dict):
        def accepts(value: str) -> bool:
            runner.model_choice(chosen(values), value)  # refuses a model the tool is not offered
            return True

        return Accepted(accepts)

    def tool_defaults(values: dict):
        name = chosen(values)
        try:
            return get_tool(name).defaults(runner.model_choice(name, values.get("model"))[0])
        except Exception:  # noqa: BLE001  (a model that no longer loads its defaults: the tool's own)
            return ctx.defaults(name)

    fields = []
    for key, component in named.items():
        if key == "model":
            fields.append(Field(key, accepts_model, lambda values: runner.model_for(chosen(values))))
        elif key == "loras":
            fields.append(Field(key, Names(lora_choices), []))
        elif key in TOOL_DEPENDENT:
            fields.append(Field(key, rule_for(component), lambda values, key=key: getattr(tool_defaults(values), key)))
        else:
            fields.append(Field(key, rule_for(component), built_value(component)))
    shown = {"loras": lambda value, values: gr.update(choices=lora_choices(), value=value)}
    if model is not None:
        shown["model"] = lambda value, values: gr.update(choices=dropdown_choices(runner, chosen(values)), value=value)

    # Rendered by the studio outside the tabs (render_states): a tab not shown yet does not start its controls,
    # and a BrowserState reads the browser's storage when it starts.
    state = gr.BrowserState({}, storage_key=STORAGE_KEY.format(tab=tab), secret=SECRET, render=False)
    memory = Memory(state, fields, list(named.values()), shown)
    outputs = [*memory.components, state]
    gr.on([component.change for component in memory.components], None, memory.components, state,
          js=save_js([f.key for f in fields]), **HIDDEN)
    from gradio.context import Context

    if Context.root_block is not None:
        Context.root_block.load(memory.on_load, state, outputs, **HIDDEN)
    controls.reset.click(lambda: memory.values({}), None, outputs, **HIDDEN)
    ctx.memories.append(memory)
    return memory


def render_states(memories: list[Memory]) -> None:
    """Place every tab's BrowserState in the page itself, outside the tabs (the studio calls this once)."""
    for memory in memories:
        memory.state.render()


def save_js(keys: list[str]) -> str:
    """The page's own handler that stores the controls' values (given in ``keys``' order) under their keys."""
    return f"(...values) => [Object.fromEntries({json.dumps(keys)}.map((key, i) => [key, values[i]]))]"
