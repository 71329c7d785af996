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

@dataclass(frozen=True)
class ModelSizes:
    """A pipeline's components, and the widths the working memory depends on."""

    model: str
    components: tuple[ComponentSize, ...]
    hidden: int  # the transformer's width (heads x head dim)
    text_dim: int  # T5's width
    vae_width: int  # the VAE's first block width (its decoder's widest activations at full size)
    source: str  # "headers" (read from the files) or "known" (the official model's published sizes)

    def __post_init__(self):
        if not self.components or min(self.hidden, self.text_dim, self.vae_width) <= 0:
            raise ValueError(f"ModelSizes {self.model}: needs components and positive widths (hidden={self.hidden}, "
                             f"text_dim={self.text_dim}, vae_width={self.vae_width}).")
        if self.source not in ("headers", "known"):
            raise ValueError(f"ModelSizes {self.model}: source={self.source!r} must be 'headers' or 'known'.")

    def params(self) -> dict[str, int]:
        return {c.name: c.params for c in self.components}

    def get(self, name: str) -> ComponentSize | None:
        return next((c for c in self.components if c.name == name), None)


# The official FLUX.1 models, counted from their configs (the same numbers as their safetensors headers; all stored
# in bf16). CLIP, T5 and the VAE are the same in every one; the transformers differ in their input layer (Fill
# takes 384 channels, Depth and Canny 128) and Schnell has no guidance embedder.
# Blocks: T5-XXL's 24 encoder blocks (192,948,224 parameters each, 2,048 more in the first: its position bias), and
# FLUX.1's 19 double blocks (339,831,296 each) and 38 single blocks (141,591,808 each).
_CLIP = ComponentSize("text_encoder", 123_060_480, 37_945_344, 246_120_960)
_T5 = ComponentSize("text_encoder_2", 4_762_310_656, 131_596_288, 9_524_621_312, 192_950_272, 4_630_710_272)
_VAE = ComponentSize("vae", 83_819_683, 2_359_296, 167_639_366)
_DOUBLE, _BLOCKS = 339_831_296, 11_837_283_328


def _flux(transformer_params: int) -> tuple[ComponentSize, ...]:
    return (ComponentSize("transformer", transformer_params, 56_623_104, 2 * transformer_params, _DOUBLE, _BLOCKS),
            _T5, _CLIP, _VAE)


OFFICIAL: dict[str, tuple[ComponentSize, ...]] = {
    "black-forest-labs/FLUX.1-schnell": _flux(11_891_178_560),
    "black-forest-labs/FLUX.1-dev": _flux(11_901_408_320),
    "black-forest-labs/FLUX.1-Kontext-dev": _flux(11_901_408_320),
    "black-forest-labs/FLUX.1-Fill-dev": _flux(11_902_391_360),
    "black-forest-labs/FLUX.1-Depth-dev": _flux(11_901_604_928),
    "black-forest-labs/FLUX.1-Canny-dev": _flux(11_901_604_928),
    # The Redux prior: SigLIP so400m (its vision tower) and the Redux image embedder, beside FLUX.1-dev.
    "black-forest-labs/FLUX.1-Redux-dev": (ComponentSize("image_encoder", 428_225_600, 4_958_208, 856_451_200),
                                           ComponentSize("image_embedder", 64_503_808, 50_331_648, 129_007_616)),
}
OFFICIAL_WIDTHS = {"hidden": 3072, "text_dim": 4096, "vae_width": 128}


def official_sizes(hub_id: str) -> ModelSizes | None:
    components = OFFICIAL.get(hub_id)
    return None if components is None else ModelSizes(hub_id, components, source="known", **OFFICIAL_WIDTHS)


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
    transformer, t5, vae = _config(folder / "transformer"), _config(folder / "text_encoder_2"), _config(folder / "vae")
    hidden = transformer.get("num_attention_heads", 24) * transformer.get("attention_head_dim", 128)
    widths = vae.get("block_out_channels") or [OFFICIAL_WIDTHS["vae_width"]]
    return ModelSizes(name, components, hidden, t5.get("d_model", OFFICIAL_WIDTHS["text_dim"]), widths[0], "headers")


def model_sizes(tool, model: str) -> ModelSizes:
    """The sizes of ``model`` (tiny, a hub id or a local directory) for ``tool`` (a pipelines.tools.Tool).

    An official hub id uses its known sizes (no download); another hub id must be in the local cache."""
    model = (model or "").strip()
    sizes = _model_sizes(tool, model)
    extra = [c for hub_id in getattr(tool, "aux_models", ()) if sizes.source == "known"
             for c in OFFICIAL.get(hub_id, ())]  # the official auxiliary models (the Redux prior) of official models
    return replace(sizes, components=sizes.components + tuple(extra)) if extra else sizes


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
