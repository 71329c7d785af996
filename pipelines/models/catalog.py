"""Which model each tool runs, and which models a tool can be offered.

Each tool runs its official model unless told otherwise: ``--model ID_OR_PATH`` (every tool it fits),
``--model TOOL=ID_OR_PATH`` (one tool), or the same in ``FLUXFORGE_MODELS`` (entries separated by commas or spaces,
for Spaces and services). A model that does not fit a tool is never given to it: named for one tool it is refused in
one line, named for all it goes to the tools it fits. An official model is used from the local cache, else downloaded
on first use when the Hugging Face hub can be reached; only when it cannot does a tool fall back to the demo model
`tiny`, and says so. A ``.safetensors`` or ``.gguf`` file is a single-file transformer on the tool's own model.

The models a tool is offered (the studio's Model dropdown): its official model, the demo model, and what
``FLUXFORGE_MODEL_DIR`` holds: diffusers directories of the tool's kind and single-file transformers that fit it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from quantization.units import size_text

from .. import defaults
from ..errors import UserError
from ..paths import model_dir
from . import hub, single_file
from .official import OFFICIAL_REPOS
from .sources import HUB_ID, ModelKind, is_path, read_kind

MODELS_ENV = "FLUXFORGE_MODELS"
SCAN_DEPTH = 2  # folders below FLUXFORGE_MODEL_DIR searched for models


# ---- what a model is ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Named:
    """A model as a user named it, and what it turned out to be."""

    value: str
    fits: Callable[[object], bool]  # tool -> runs it
    what: str  # how a refusal describes it
    transformer: bool = False  # a single-file transformer (runs on the tool's own model)


def identify(value: str, tools: Iterable, reachable: Callable[[], bool] = hub.reachable) -> Named:
    """What ``value`` (tiny, a hub id, a diffusers directory or a transformer file) is; a UserError when it cannot be
    told (a hub id neither official, cached nor reachable) or is nothing we load."""
    value = value.strip()
    if value == defaults.TINY_MODEL:
        return Named(value, lambda tool: True, "the demo model")
    if single_file.is_transformer_file(value):
        file = single_file.inspect(value)
        return Named(value, lambda tool: tool.accepts_transformer(file), file.describe(), transformer=True)
    official = [tool for tool in tools if tool.model_id == value]
    if official:
        return Named(value, lambda tool: tool.model_id == value, f"the official {official[0].title} model")
    if is_path(value):
        kind = read_kind(Path(value).expanduser(), value)
    elif HUB_ID.match(value):
        kind = hub_kind(value, reachable)
    else:
        raise UserError(f"model={value!r} is neither 'tiny', a hub id (org/name), a directory nor a transformer file.")
    return Named(value, lambda tool: tool.accepts(kind), f"a {kind.describe()} model")


def hub_kind(repo_id: str, reachable: Callable[[], bool] = hub.reachable) -> ModelKind:
    """The kind of a hub repo from its model_index.json and transformer config (the local cache, else the hub)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    def read(name: str) -> dict:
        found = try_to_load_from_cache(repo_id, name)
        if not isinstance(found, str):
            if not reachable():
                raise hub.hub_error(ConnectionError(), f"model={repo_id!r}", "pass a local directory", repo_id)
            found = hub.from_hub(lambda: hf_hub_download(repo_id, name, endpoint=hub.endpoint()),
                                 f"model={repo_id!r}", "check the id", repo_id)
        try:
            data = json.loads(Path(found).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    index = read("model_index.json")
    if not index.get("_class_name"):
        raise UserError(f"model={repo_id!r} is not a diffusers pipeline (no model_index.json with a class).")
    try:
        config = read("transformer/config.json")
    except UserError:
        config = {}
    guidance = config.get("guidance_embeds")
    return ModelKind(index["_class_name"], config.get("in_channels"), bool(guidance) if guidance is not None else None)


# ---- which model each tool runs ------------------------------------------------------------------------------------
def parse_specs(values: Iterable[str], tool_names: Iterable[str], origin: str = "--model") -> tuple[str | None, dict]:
    """``--model`` values: (the model for every tool, {tool: model}). ``origin`` names where they came from."""
    names = set(tool_names)
    everyone, per_tool = None, {}
    for raw in values:
        value = str(raw).strip()
        if not value:
            continue
        head, sep, tail = value.partition("=")
        if sep and re.fullmatch(r"[a-z][a-z0-9_]*", head):
            if head not in names:
                raise UserError(f"{origin} {value!r}: there is no tool {head!r}; tools are {', '.join(sorted(names))}.")
            if not tail.strip():
                raise UserError(f"{origin} {value!r}: give a model after '=' (tiny, a hub id or a path).")
            if head in per_tool:
                raise UserError(f"{origin} names a model for {head} twice ({per_tool[head]!r} and {tail!r}); give "
                                "one.")
            per_tool[head] = tail.strip()
        elif everyone is not None:
            raise UserError(f"{origin} names a model for every tool twice ({everyone!r} and {value!r}); give one, "
                            "or TOOL=MODEL for one tool.")
        else:
            everyone = value
    return everyone, per_tool


def env_specs() -> list[str]:
    """FLUXFORGE_MODELS as a list of --model values (commas or spaces between entries)."""
    return [item for item in re.split(r"[,\s]+", os.environ.get(MODELS_ENV, "")) if item]


@dataclass
class Assignment:
    """The model of each tool, and what a user should know about it."""

    models: dict[str, str]  # tool -> tiny, a hub id or a directory
    transformers: dict[str, str] = field(default_factory=dict)  # tool -> a single-file transformer on that model
    demo: tuple[str, ...] = ()  # tools on the demo model because their official weights cannot be had here
    notices: list[str] = field(default_factory=list)

    def model(self, tool: str) -> str:
        return self.models[tool]


def official_default(tool, cached: Callable[[str], bool], reachable: Callable[[], bool]) -> str:
    """The official model when it can be had (in the local cache, or from a reachable hub), else the demo model."""
    return tool.model_id if cached(tool.model_id) or reachable() else defaults.TINY_MODEL


def assign(tools, specs: Iterable[str] = (), origin: str = "--model", *,
           cached: Callable[[str], bool] = hub.is_cached, reachable: Callable[[], bool] = hub.reachable,
           identify_fn: Callable = identify) -> Assignment:
    """The model of each of ``tools`` from ``specs`` (--model values), else each tool's official default."""
    tools = tuple(tools)
    everyone, per_tool = parse_specs(specs, [t.name for t in tools], origin)
    found = {value: identify_fn(value, tools) for value in {everyone, *per_tool.values()} if value}
    if everyone is not None and not any(found[everyone].fits(tool) for tool in tools):
        raise UserError(f"{origin} {everyone!r} is {found[everyone].what}, which no tool runs.")
    result = Assignment({})
    skipped = []
    for tool in tools:
        value = per_tool.get(tool.name)
        if value is not None and not found[value].fits(tool):
            raise UserError(f"{origin} {tool.name}={value!r} is {found[value].what}; the {tool.name} tool needs a "
                            f"{tool.kind().describe()} model such as {tool.model_id}.")
        if value is None and everyone is not None:
            if found[everyone].fits(tool):
                value = everyone
            else:
                skipped.append(tool.name)
        if value is not None and found[value].transformer:
            result.transformers[tool.name] = value
            value = None
        if value is None:
            value = official_default(tool, cached, reachable)
            if value == defaults.TINY_MODEL:
                result.demo += (tool.name,)
        result.models[tool.name] = value
    if skipped:
        result.notices.append(f"{everyone} is {found[everyone].what}: it runs "
                              f"{', '.join(t.name for t in tools if t.name not in skipped)}; "
                              f"{', '.join(skipped)} keep their own models.")
    return result


# ---- what a tool can be offered ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    label: str
    value: str  # what a request names: tiny, a hub id, a directory, or a transformer file


def local_models(folder: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(diffusers directories, single-file transformers) under FLUXFORGE_MODEL_DIR, sorted by name."""
    root = Path(folder) if folder else model_dir()
    if not root.is_dir():
        return [], []
    dirs, files = [], []
    for path in sorted(root.rglob("*"), key=lambda p: str(p).lower()):
        depth = len(path.relative_to(root).parts)
        if depth > SCAN_DEPTH + 1 or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.name == "model_index.json" and path.is_file():
            dirs.append(path.parent)
        elif path.is_file() and single_file.is_transformer_file(path) and not _inside(path, dirs):
            files.append(path)
    return dirs, files


def _inside(path: Path, dirs: list[Path]) -> bool:
    return any(folder in path.parents for folder in dirs)


def choices(tool, current: str | None = None, folder: Path | None = None,
            cached: Callable[[str], bool] = hub.is_cached) -> list[Choice]:
    """The models ``tool`` can run, ``current`` (the studio's model for it) first."""
    root = Path(folder) if folder else model_dir()
    out: list[Choice] = []

    def add(label: str, value: str) -> None:
        if all(c.value != value for c in out):
            out.append(Choice(label, value))

    repo = OFFICIAL_REPOS.get(tool.model_id)
    official = f"{tool.title} (official"
    if repo is not None:
        state = "downloaded" if cached(repo.id) else f"{size_text(repo.stored_bytes)} to download"
        official += f" · {state}" + (" · licence and login needed" if repo.gated and not cached(repo.id) else "")
    official += ")"
    labels = {tool.model_id: official, defaults.TINY_MODEL: "Demo model 'tiny' (random weights: noise-like images)"}
    dirs, files = local_models(root)
    for path in dirs:
        try:
            if tool.accepts(read_kind(path)):
                labels[str(path)] = f"{path.relative_to(root)} (in {root.name}/)"
        except UserError:
            continue
    for path in files:
        try:
            file = single_file.inspect(path)
        except UserError:
            continue
        if tool.accepts_transformer(file):
            labels[str(path)] = f"{path.relative_to(root)} (transformer file, {file.weights})"
    if current:
        add(labels.get(current, _label(current)), current)
    for value, label in labels.items():
        add(label, value)
    return out


def _label(value: str) -> str:
    if single_file.is_transformer_file(value):
        return f"{Path(value).name} (transformer file)"
    return value if HUB_ID.match(value) or value == defaults.TINY_MODEL else f"{Path(value).name} ({value})"


# ---- what each tool's model is, and where it lives -------------------------------------------------------------------
def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def model_row(tool_name: str, model: str, online: bool, transformer: str | None = None) -> dict:
    """One model a tool runs: what it is, its size, whether it is downloaded, gated, and where it lives.

    ``online``: ask the hub for the repo's file list and gating (sizes are otherwise the known official ones)."""
    from .tiny import tiny_root

    row = {"tool": tool_name, "model": model, "transformer": transformer, "kind": "", "bytes": None,
           "downloaded": "", "gated": None, "where": ""}
    if model == defaults.TINY_MODEL:
        root = tiny_root()
        return dict(row, kind="demo", bytes=folder_bytes(root) if root.is_dir() else None,
                    downloaded="built locally" if root.is_dir() else "built on first use", gated=False,
                    where=str(root))
    if is_path(model):
        path = Path(model).expanduser()
        return dict(row, kind="local", bytes=folder_bytes(path) if path.is_dir() else None, downloaded="local",
                    gated=False, where=str(path))
    repo = OFFICIAL_REPOS.get(model)
    snapshot = hub.local_snapshot(model)
    row.update(kind="official" if repo else "hub", bytes=repo.stored_bytes if repo else None,
               gated=repo.gated if repo else None, where=str(snapshot or hub.cache_dir()),
               downloaded="yes" if snapshot else ("partly" if hub.cached_bytes(model) else "no"))
    if online and snapshot is None:
        try:
            plan = hub.plan_download(model)
            row.update(bytes=plan.total_bytes, to_fetch=plan.fetch_bytes)
        except Exception as error:  # noqa: BLE001  (a gated repo without a token cannot be listed file by file)
            mapped = hub.hub_error(error, f"model={model!r}", "list it after logging in", model)
            row["note"] = str(mapped) if mapped else f"{type(error).__name__}"
        try:
            from huggingface_hub import HfApi

            row["gated"] = bool(HfApi(endpoint=hub.endpoint()).model_info(model).gated)
        except Exception:  # noqa: BLE001  (what the hub would not say stays as known)
            pass
    return row


def tool_rows(assignment: Assignment, tools, online: bool) -> list[dict]:
    """Every tool's model (and the auxiliary models it loads) as model_row describes them. A tool on the demo model
    because its official one cannot be had here lists the official one, saying that the demo model runs instead."""
    rows = []
    for tool in tools:
        model = assignment.model(tool.name)
        if tool.name in assignment.demo:
            row = model_row(tool.name, tool.model_id, online)
            rows.append(dict(row, downloaded=f"{row['downloaded']} (the demo model runs)", runs=model))
            continue
        rows.append(dict(model_row(tool.name, model, online, assignment.transformers.get(tool.name)), runs=model))
        if model != defaults.TINY_MODEL:
            rows += [dict(model_row(tool.name, aux, online), kind="auxiliary", runs=aux) for aux in tool.aux_models]
    return rows
