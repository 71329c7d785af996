"""Where a model comes from: the built-in tiny family, a Hugging Face hub id, or a local directory."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import defaults
from ..errors import UserError
from . import hub, tiny

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
INSTEAD = "pass a local directory, or use the demo model 'tiny'"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``name`` as the user gave it, ``root`` a local diffusers-format directory."""

    name: str
    root: Path
    kind: str  # "tiny", "hub" or "path"

    @property
    def is_tiny(self) -> bool:
        return self.kind == "tiny"


@dataclass(frozen=True)
class ModelKind:
    """What a model directory holds, as a tool checks it: its pipeline class, and its transformer's input channels and
    guidance embedder (Schnell has none; Fill takes 384 channels, Depth and Canny 128)."""

    pipeline_class: str
    in_channels: int | None = None
    guidance: bool | None = None

    def describe(self) -> str:
        parts = [f"{self.in_channels}-channel"] if self.in_channels else []
        if self.guidance is not None:
            parts.append("guidance-distilled" if self.guidance else "no guidance embedder")
        return self.pipeline_class + (f" ({', '.join(parts)})" if parts else "")


def is_path(model: str) -> bool:
    """True when ``model`` names a local path rather than a hub id (it exists, or is written like a path)."""
    return Path(model).expanduser().exists() or (not HUB_ID.match(model) and (model.startswith((".", "~", "/"))
                                                                              or os.sep in model))


def resolve_model(model: str, tool, progress=None) -> ModelSource:
    """Resolve ``model`` for ``tool`` (a pipelines.tools.Tool) to a local directory, or raise a UserError.

    A hub id is read from the local cache when it is complete there, else downloaded (``progress`` gets
    ("download", bytes done, bytes to fetch))."""
    if not model or not model.strip():
        raise UserError("model is empty; pass tiny, a Hugging Face hub id or a local diffusers directory.")
    model = model.strip()
    if model == defaults.TINY_MODEL:
        return ModelSource(model, tiny.ensure_tiny_family([tool]) / tool.tiny.folder, "tiny")
    if is_path(model):
        return ModelSource(model, check_pipeline_dir(Path(model).expanduser(), tool, name=model), "path")
    if HUB_ID.match(model):
        root = hub.download(model, progress)
        check_pipeline_dir(root, tool, name=model)
        return ModelSource(model, root, "hub")
    raise UserError(f"model={model!r} is neither 'tiny', a hub id (org/name) nor an existing directory.")


def resolve_aux(tool_source: ModelSource, hub_id: str, tiny_dir: str, progress=None) -> Path:
    """An auxiliary model (Redux prior, depth estimator): tiny's own (built with its tool) when the tool runs tiny."""
    if tool_source.is_tiny:
        return tiny.tiny_root() / tiny_dir
    path = Path(hub_id).expanduser()
    return path if path.is_dir() else hub.download(hub_id, progress)


def read_kind(path: Path, name: str | None = None) -> ModelKind:
    """The kind of the diffusers directory ``path``; a UserError when it is not one."""
    name = name or str(path)
    if not path.is_dir():
        raise UserError(f"model={name!r}: no such directory; pass a diffusers FLUX directory, a hub id or 'tiny'.")
    index = path / "model_index.json"
    if not index.is_file():
        raise UserError(f"model={name!r} is not a diffusers FLUX directory (no model_index.json).")
    try:
        class_name = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError) as error:
        raise UserError(f"model={name!r}: model_index.json is unreadable ({error}).") from None
    try:
        config = json.loads((path / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    config = config if isinstance(config, dict) else {}
    guidance = config.get("guidance_embeds")
    return ModelKind(class_name or "non-FLUX", config.get("in_channels"),
                     bool(guidance) if guidance is not None else None)


def check_pipeline_dir(path: Path, tool, name: str | None = None) -> Path:
    """``path`` when it is a diffusers directory of the kind ``tool`` runs; else a UserError naming what it needs."""
    name = name or str(path)
    kind = read_kind(path, name)
    if not tool.accepts(kind):
        raise UserError(f"model={name!r} is a {kind.describe()} model; the {tool.name} tool needs a "
                        f"{tool.kind().describe()} model such as {tool.model_id}.")
    return path
