"""How big a model's components are, without loading a weight: safetensors headers and configs of a model directory,
or the known sizes of the official FLUX.1 models (so estimates work offline, before anything is downloaded)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path

from .. import defaults
from ..errors import UserError
from ..models.layout import ComponentSize, folder_size, read_index
from ..families import FAMILIES, family_in
from ..models.official import OFFICIAL_REPOS

@dataclass(frozen=True)
class ModelSizes:
    """A pipeline's components, and the widths the working memory depends on."""

    model: str
    components: tuple[ComponentSize, ...]
    hidden: int  # the transformer's width (heads x head dim)
    text_dim: int  # T5's width
    vae_width: int  # the VAE's first block width (its decoder's widest activations at full size)
    source: str  # "headers" (read from the files) or "known" (the official model's published sizes)
    family: str = "flux1"  # pipelines.families: which components are quantized, what the text width is

    def __post_init__(self):
        if not self.components or min(self.hidden, self.text_dim, self.vae_width) <= 0:
            raise ValueError(f"ModelSizes {self.model}: needs components and positive widths (hidden={self.hidden}, "
                             f"text_dim={self.text_dim}, vae_width={self.vae_width}).")
        if self.source not in ("headers", "known"):
            raise ValueError(f"ModelSizes {self.model}: source={self.source!r} must be 'headers' or 'known'.")

    @property
    def quantized(self) -> tuple[str, ...]:
        """The components the quant choice applies to (the family's big ones)."""
        return FAMILIES[self.family].quantized

    def params(self) -> dict[str, int]:
        return {c.name: c.params for c in self.components}

    def get(self, name: str) -> ComponentSize | None:
        return next((c for c in self.components if c.name == name), None)


OFFICIAL: dict[str, tuple[ComponentSize, ...]] = {repo.id: repo.components for repo in OFFICIAL_REPOS.values()}
OFFICIAL_WIDTHS = {"hidden": 3072, "text_dim": 4096, "vae_width": 128}  # FLUX.1's; a FLUX.2 repository has its own


def official_sizes(hub_id: str) -> ModelSizes | None:
    repo = OFFICIAL_REPOS.get(hub_id)
    if repo is None:
        return None
    widths = dict(OFFICIAL_WIDTHS, **(repo.widths or {}))
    return ModelSizes(hub_id, repo.components, source="known", family=repo.family, **widths)


def _config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def read_model_dir(root: Path, name: str | None = None) -> ModelSizes:
    """The sizes of the pipeline in ``root`` (a diffusers directory); cached per directory and index time."""
    root = Path(root)
    index = root / "model_index.json"
    try:
        stamp = index.stat().st_mtime_ns
    except OSError:
        raise UserError(f"model={name or str(root)!r} is not a diffusers FLUX directory (no model_index.json)."
                        ) from None
    return _read_model_dir(str(root), stamp, name or str(root))


@functools.lru_cache(maxsize=32)
def _read_model_dir(root: str, stamp: int, name: str) -> ModelSizes:
    folder = Path(root)
    components = tuple(folder_size(folder / part, part) for part in read_index(folder)
                       if any((folder / part).glob("*.safetensors")))
    family = family_in(folder)
    text_part, text_key = family.text_width
    transformer, text, vae = _config(folder / "transformer"), _config(folder / text_part), _config(folder / "vae")
    hidden = transformer.get("num_attention_heads", 24) * transformer.get("attention_head_dim", 128)
    widths = vae.get("block_out_channels") or [OFFICIAL_WIDTHS["vae_width"]]
    return ModelSizes(name, components, hidden, text.get(text_key, OFFICIAL_WIDTHS["text_dim"]), widths[0], "headers",
                      family.name)


def model_sizes(tool, model: str) -> ModelSizes:
    """The sizes of ``model`` (tiny, a hub id or a local directory) for ``tool`` (a pipelines.tools.Tool).

    An official hub id uses its known sizes (no download); another hub id must be in the local cache."""
    model = (model or "").strip()
    sizes = _model_sizes(tool, model)
    extra = [c for hub_id in getattr(tool, "aux_models", ()) if sizes.source == "known"
             for c in OFFICIAL.get(hub_id, ())]  # the official auxiliary models (the Redux prior) of official models
    return replace(sizes, components=sizes.components + tuple(extra)) if extra else sizes


def with_transformer_file(sizes: ModelSizes, file) -> ModelSizes:
    """``sizes`` with its transformer from the single file ``file`` (pipelines.models.single_file.TransformerFile): a
    pre-quantized file (GGUF, BFL's nvfp4) holds its own bytes whatever the quant choice; a plain one (bf16, fp8
    upcast as it loads) is the size of the model's own transformer."""
    if file.prequantized is None:
        return sizes
    held = file.path.stat().st_size
    return replace(sizes, components=tuple(replace(c, held_bytes=held) if c.name == "transformer" else c
                                           for c in sizes.components))


def _model_sizes(tool, model: str) -> ModelSizes:
    from ..models.sources import HUB_ID, check_pipeline_dir, resolve_model

    known = official_sizes(model)
    if known is not None:
        return known
    path = Path(model).expanduser()
    if model and not path.exists() and HUB_ID.match(model) and model != defaults.TINY_MODEL:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "model_index.json")
        if not isinstance(found, str):
            raise UserError(f"model={model!r}: its sizes are not known offline and it is not in the local cache; "
                            "download it first, or pass a local directory.")
        root = Path(found).parent
        return read_model_dir(check_pipeline_dir(root, tool, name=model), model)
    source = resolve_model(model, tool)
    return read_model_dir(source.root, source.name)
