"""The official models the tools default to: what each repository holds and how it may be fetched.

Component sizes are counted from the official configs (the same numbers as their safetensors headers; all stored in
bf16), so sizes, estimates and download sizes are known offline, before anything is downloaded. ``gated``: the
repository's licence must be accepted on its page, and downloads need a logged-in token (``hf auth login`` or
HF_TOKEN).
"""

from __future__ import annotations

from dataclasses import dataclass

from .layout import ComponentSize


@dataclass(frozen=True)
class OfficialRepo:
    id: str
    components: tuple[ComponentSize, ...]
    gated: bool
    licence: str

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.id}"

    @property
    def stored_bytes(self) -> int:
        """The weights' bytes on disk (what a download fetches, besides small configs and tokenizers)."""
        return sum(c.stored_bytes for c in self.components)


# CLIP, T5 and the VAE are the same in every FLUX.1 model; the transformers differ in their input layer (Fill takes
# 384 channels, Depth and Canny 128) and Schnell has no guidance embedder.
_CLIP = ComponentSize("text_encoder", 123_060_480, 37_945_344, 246_120_960)
# Blocks: T5-XXL's 24 encoder blocks (192,948,224 parameters each, 2,048 more in the first: its position bias), and
# FLUX.1's 19 double blocks (339,831,296 each) and 38 single blocks (141,591,808 each).
_T5 = ComponentSize("text_encoder_2", 4_762_310_656, 131_596_288, 9_524_621_312, 192_950_272, 4_630_710_272)
_VAE = ComponentSize("vae", 83_819_683, 2_359_296, 167_639_366)
_DOUBLE, _BLOCKS = 339_831_296, 11_837_283_328
_DEV_LICENCE = "FLUX.1 [dev] Non-Commercial License"


def _flux(repo_id: str, transformer_params: int, gated: bool = True, licence: str = _DEV_LICENCE) -> OfficialRepo:
    transformer = ComponentSize("transformer", transformer_params, 56_623_104, 2 * transformer_params, _DOUBLE, _BLOCKS)
    return OfficialRepo(repo_id, (transformer, _T5, _CLIP, _VAE), gated, licence)


_REPOS = (
    _flux("black-forest-labs/FLUX.1-schnell", 11_891_178_560, gated=False, licence="Apache-2.0"),
    _flux("black-forest-labs/FLUX.1-dev", 11_901_408_320),
    _flux("black-forest-labs/FLUX.1-Kontext-dev", 11_901_408_320),
    _flux("black-forest-labs/FLUX.1-Fill-dev", 11_902_391_360),
    _flux("black-forest-labs/FLUX.1-Depth-dev", 11_901_604_928),
    _flux("black-forest-labs/FLUX.1-Canny-dev", 11_901_604_928),
    # The Redux prior: SigLIP so400m (its vision tower) and the Redux image embedder, beside FLUX.1-dev.
    OfficialRepo("black-forest-labs/FLUX.1-Redux-dev",
                 (ComponentSize("image_encoder", 428_225_600, 4_958_208, 856_451_200),
                  ComponentSize("image_embedder", 64_503_808, 50_331_648, 129_007_616)), True, _DEV_LICENCE),
)
OFFICIAL_REPOS: dict[str, OfficialRepo] = {repo.id: repo for repo in _REPOS}
