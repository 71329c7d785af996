"""The official models the tools default to (FLUX.1 and FLUX.2 [klein]): what each repository holds and how it may be fetched.

Component sizes are counted from the official configs (the same numbers as their safetensors headers; all stored in
bf16), so sizes, estimates and download sizes are known offline, before anything is downloaded. ``gated``: the
repository's licence must be accepted on its page, and downloads need a logged-in token (``hf auth login`` or
HF_TOKEN).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .layout import ComponentSize


@dataclass(frozen=True)
class OfficialRepo:
    id: str
    components: tuple[ComponentSize, ...]
    gated: bool
    licence: str
    family: str = "flux1"  # pipelines.families
    widths: dict = field(default_factory=dict)  # hidden, text_dim, vae_width where they are not FLUX.1's

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

# FLUX.2 [klein]: a Flux2Transformer2DModel (128 input channels, no guidance embedder), a Qwen3ForCausalLM text
# encoder (the pipeline stacks its hidden states 9, 18 and 27: joint_attention_dim is 3 x its width) and the FLUX.2
# VAE (AutoencoderKLFlux2 at diffusers' defaults: 32 latent channels). Counted by building each on the meta device
# from the published configs' key numbers: 4B: 24 heads x 128, 5 double and 20 single blocks, joint_attention_dim
# 7680, over Qwen3-4B (hidden 2560, 36 layers, intermediate 9728, 32/8 heads of 128, vocab 151936, tied embeddings);
# 9B: 32 heads x 128, 8 double and 24 single blocks, joint_attention_dim 12288, over Qwen3-8B (hidden 4096, 36
# layers, intermediate 12288, 32/8 heads of 128, vocab 151936, untied). The base models (for inpainting and
# fine-tuning, not step-distilled) have the same architecture. Blocks: the largest transformer block (a double one)
# and all blocks together; Qwen3's decoder layers.
_FLUX2_VAE = ComponentSize("vae", 84_046_115, 2_359_296, 168_092_230)
_KLEIN_LICENCE = "FLUX Non-Commercial License"


def _klein(repo_id: str, size: str, gated: bool, licence: str) -> OfficialRepo:
    transformer, text_encoder, widths = {
        "4B": ((3_875_544_576, 84_934_656, 245_367_296, 3_680_509_440),
               (4_022_468_096, 388_956_160, 100_930_816, 3_633_509_376),
               {"hidden": 3072, "text_dim": 2560, "vae_width": 128}),
        "9B": ((9_078_581_248, 150_994_944, 436_208_128, 8_724_162_560),
               (8_190_735_360, 622_329_856, 192_946_432, 6_946_071_552),
               {"hidden": 4096, "text_dim": 4096, "vae_width": 128}),
    }[size]
    parts = (ComponentSize("transformer", transformer[0], transformer[1], 2 * transformer[0], *transformer[2:]),
             ComponentSize("text_encoder", text_encoder[0], text_encoder[1], 2 * text_encoder[0], *text_encoder[2:]),
             _FLUX2_VAE)
    return OfficialRepo(repo_id, parts, gated, licence, family="flux2", widths=widths)


_REPOS += (
    _klein("black-forest-labs/FLUX.2-klein-4B", "4B", gated=False, licence="Apache-2.0"),
    _klein("black-forest-labs/FLUX.2-klein-9B", "9B", gated=True, licence=_KLEIN_LICENCE),
    _klein("black-forest-labs/FLUX.2-klein-base-4B", "4B", gated=False, licence="Apache-2.0"),
    _klein("black-forest-labs/FLUX.2-klein-base-9B", "9B", gated=True, licence=_KLEIN_LICENCE),
)
OFFICIAL_REPOS: dict[str, OfficialRepo] = {repo.id: repo for repo in _REPOS}
