"""Where a model comes from: the built-in tiny family, a Hugging Face hub id, or a local directory."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import defaults
from ..errors import UserError
from . import tiny

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Single-file checkpoints that sit beside the diffusers folders in official repos.
HUB_IGNORE = ["*.gguf", "flux1-*.safetensors", "ae.safetensors", "*.md", "*.png", "*.jpg"]


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``name`` as the user gave it, ``root`` a local diffusers-format directory."""

    name: str
    root: Path
    kind: str  # "tiny", "hub" or "path"

    @property
    def is_tiny(self) -> bool:
        return self.kind == "tiny"


def resolve_model(model: str, tool) -> ModelSource:
    """Resolve ``model`` for ``tool`` (a pipelines.tools.Tool) to a local directory, or raise a UserError."""
    if not model or not model.strip():
        raise UserError("model is empty; pass tiny, a Hugging Face hub id or a local diffusers directory.")
    model = model.strip()
    if model == defaults.TINY_MODEL:
        return ModelSource(model, tiny.ensure_tiny_family([tool]) / tool.tiny.folder, "tiny")
    path = Path(model).expanduser()
    if path.exists() or (not HUB_ID.match(model) and (model.startswith((".", "~")) or os.sep in model)):
        return ModelSource(model, check_pipeline_dir(path, tool), "path")
    if HUB_ID.match(model):
        root = download(model)
        check_pipeline_dir(root, tool, name=model)
        return ModelSource(model, root, "hub")
    raise UserError(f"model={model!r} is neither 'tiny', a hub id (org/name) nor an existing directory.")


def resolve_aux(tool_source: ModelSource, hub_id: str, tiny_dir: str) -> Path:
    """An auxiliary model (Redux prior, depth estimator): tiny's own (built with its tool) when the tool runs tiny."""
    if tool_source.is_tiny:
        return tiny.tiny_root() / tiny_dir
    path = Path(hub_id).expanduser()
    return path if path.is_dir() else download(hub_id)


def check_pipeline_dir(path: Path, tool, name: str | None = None) -> Path:
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
    wanted = tool.pipeline_class
    if class_name != wanted:
        hint = tool.model_id
        raise UserError(f"model={name!r} is a {class_name or 'non-FLUX'} directory; the {tool.name} tool needs a "
                        f"{wanted} model such as {hint}.")
    return path


def download(repo_id: str) -> Path:
    """Fetch a hub repo's diffusers folders (or find them in the local cache)."""
    from huggingface_hub import snapshot_download

    return from_hub(lambda: Path(snapshot_download(repo_id, ignore_patterns=HUB_IGNORE)), f"model={repo_id!r}",
                     "pass a local directory, or use --model tiny", repo_id)


def from_hub(fetch, what: str, instead: str, repo_id: str) -> Path:
    """``fetch()``, with the hub's failures as one line each: ``what`` failed, do ``instead``."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    page = f"huggingface.co/{repo_id}"
    try:
        return fetch()
    except GatedRepoError:
        raise UserError(f"{what} is gated: accept its licence on {page}, then log in (`hf auth login` or HF_TOKEN); "
                        f"or {instead}.") from None
    except RepositoryNotFoundError:
        raise UserError(f"{what} was not found on the Hugging Face hub (private repos need a login); check the id, "
                        f"or {instead}.") from None
    except (LocalEntryNotFoundError, OSError) as error:
        raise UserError(f"{what} is not in the local cache and the Hugging Face hub cannot be reached "
                        f"({type(error).__name__}); connect, or {instead}.") from None


def is_cached(repo_id: str) -> bool:
    """True when the hub repo's pipeline index is already in the local cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json")
    return isinstance(found, str)


def default_model(tool) -> tuple[str, str | None]:
    """The model to use when none is named, and a notice when it is the offline demo model."""
    official = tool.model_id
    if is_cached(official):
        return official, None
    return defaults.TINY_MODEL, (f"FLUX.1 weights ({official}) are not available locally: running the offline demo "
                                 "model 'tiny' (random weights, noise-like images). Pass --model to use real weights.")
