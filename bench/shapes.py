"""Model shapes and run sizes: FLUX.1 widths by default, presets choose the depth and image size."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

# Depth of the real models, for estimates at full depth.
FULL_DOUBLE, FULL_SINGLE, FULL_T5_LAYERS = 19, 38, 24


@dataclass(frozen=True)
class Shape:
    # transformer (FLUX.1-dev): hidden = heads x head_dim, MLP = 4 x hidden
    heads: int = 24
    head_dim: int = 128
    joint_attention_dim: int = 4096  # == T5 d_model
    pooled_dim: int = 768
    in_channels: int = 64
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    double_blocks: int = FULL_DOUBLE
    single_blocks: int = FULL_SINGLE
    # T5-XXL encoder
    t5_d_ff: int = 10240
    t5_heads: int = 64
    t5_d_kv: int = 64
    t5_layers: int = FULL_T5_LAYERS
    t5_vocab: int = 32128
    # VAE (16 latent channels, 8x downsampling)
    vae_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_layers_per_block: int = 2
    vae_groups: int = 32
    # run
    image_size: int = 1024  # pixels; image tokens = (image_size / 16) ** 2
    text_tokens: int = 512
    steps: int = 28
    guidance: float = 3.5
    encodes: int = 3  # timed T5 encodes after a warm-up
    seed: int = 0

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @property
    def image_tokens(self) -> int:
        return (self.image_size // 16) ** 2

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(hidden=self.hidden, image_tokens=self.image_tokens)
        return out


FULL = Shape()
QUICK = replace(FULL, double_blocks=1, single_blocks=2, t5_layers=2, image_size=256, text_tokens=64, steps=8)
TINY = replace(QUICK, heads=2, joint_attention_dim=256, pooled_dim=64, single_blocks=1, t5_d_ff=512, t5_heads=4,
               t5_layers=1, t5_vocab=512, vae_channels=(32, 32, 32, 32), vae_layers_per_block=1, image_size=64,
               text_tokens=8, steps=2, encodes=1)
PRESETS = {"quick": QUICK, "full": FULL, "tiny": TINY}
