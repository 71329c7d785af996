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

# FLUX.2 [klein]: a Flux2Transformer2DModel (128 input channels, no guidance embedder, rope axes 32 x 4, head dim
# 128), a Qwen3ForCausalLM text encoder (the pipeline stacks its hidden states 9, 18 and 27: joint_attention_dim is 3 x
# its width) and the FLUX.2 VAE (AutoencoderKLFlux2 at diffusers' defaults: 32 latent channels).
@dataclass(frozen=True)
class KleinConfig:
    """The key numbers of a klein model's published configs (what differs from diffusers' and transformers' defaults:
    Flux2Transformer2DModel's defaults are FLUX.2 [dev]'s 8 double and 48 single blocks of 48 heads over a 15360-wide
    Mistral embedding; Qwen3Config's are not any released Qwen3)."""
    heads: int  # transformer: num_attention_heads (x attention_head_dim 128 = its hidden width)
    double: int  # num_layers (double-stream blocks)
    single: int  # num_single_layers
    text_width: int  # Qwen3 hidden_size
    text_intermediate: int  # Qwen3 intermediate_size
    tied: bool  # Qwen3 tie_word_embeddings
    text_layers: int = 36  # num_hidden_layers
    text_heads: int = 32  # num_attention_heads (num_key_value_heads 8, head_dim 128)
    text_kv_heads: int = 8
    head_dim: int = 128
    vocab: int = 151936

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @property
    def joint_attention_dim(self) -> int:
        return 3 * self.text_width


# Where each number comes from: the transformer/config.json of black-forest-labs/FLUX.2-klein-4B and -9B (the base
# models' are the same): 4B: num_attention_heads 24 (hidden 3072), num_layers 5, num_single_layers 20,
# joint_attention_dim 7680; 9B: num_attention_heads 32 (hidden 4096), num_layers 8, num_single_layers 24,
# joint_attention_dim 12288. The 9B has 8 double blocks, not 6: with 6 its transformer would hold 8.2B parameters,
# not the 9.08B of the published 9B (tests/test_klein.py builds both). Their text encoders are Qwen3-4B and Qwen3-8B
# (Qwen/Qwen3-4B and Qwen/Qwen3-8B config.json): hidden_size 2560 and 4096, intermediate_size 9728 and 12288,
# 36 layers, 32 query / 8 key-value heads of 128, vocab_size 151936, tie_word_embeddings true (4B) and false (8B).
KLEIN_CONFIGS = {
    "4B": KleinConfig(heads=24, double=5, single=20, text_width=2560, text_intermediate=9728, tied=True),
    "9B": KleinConfig(heads=32, double=8, single=24, text_width=4096, text_intermediate=12288, tied=False),
}

# Counted by building each on the meta device from KLEIN_CONFIGS (tests/test_klein.py checks it). Blocks: the largest
# transformer block (a double one) and all blocks together; Qwen3's largest decoder layer and all of them.
_FLUX2_VAE = ComponentSize("vae", 84_046_115, 2_359_296, 168_092_230)
_KLEIN_LICENCE = "FLUX Non-Commercial License"
_KLEIN_COUNTS = {
    "4B": ((3_875_544_576, 84_934_656, 245_367_296, 3_680_509_440),
           (4_022_468_096, 388_956_160, 100_930_816, 3_633_509_376)),
    "9B": ((9_078_581_248, 150_994_944, 436_208_128, 8_724_162_560),
           (8_190_735_360, 622_329_856, 192_946_432, 6_946_071_552)),
}


def _klein(repo_id: str, size: str, gated: bool, licence: str) -> OfficialRepo:
    transformer, text_encoder = _KLEIN_COUNTS[size]
    config = KLEIN_CONFIGS[size]
    widths = {"hidden": config.hidden, "text_dim": config.text_width, "vae_width": 128}
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
