"""Model shapes and run sizes: FLUX.1 widths by default, FLUX.2 [klein] 4B and 9B widths by --model; presets choose
the depth and image size."""

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
    # FLUX.1 or FLUX.2 (klein: a Flux2Transformer2DModel over a Qwen3 text encoder, the FLUX.2 VAE)
    family: str = "flux1"
    full_double: int = FULL_DOUBLE  # the real model's depth, for the full-depth extrapolation
    full_single: int = FULL_SINGLE
    # T5-XXL encoder
    t5_d_ff: int = 10240
    t5_heads: int = 64
    t5_d_kv: int = 64
    t5_layers: int = FULL_T5_LAYERS
    t5_vocab: int = 32128
    full_text_layers: int = FULL_T5_LAYERS
    # Qwen3 text encoder (FLUX.2 only; the T5 fields above are FLUX.1's): hidden width, layers and its heads
    qwen_hidden: int = 0
    qwen_intermediate: int = 0
    qwen_layers: int = 0
    qwen_heads: int = 32
    qwen_kv_heads: int = 8
    qwen_head_dim: int = 128
    qwen_vocab: int = 151936
    qwen_tied: bool = True
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
    def text_component(self) -> str:
        """The text encoder the quant choice applies to: T5 (FLUX.1) or Qwen3 (FLUX.2)."""
        return "text_encoder_2" if self.family == "flux1" else "text_encoder"

    @property
    def text_layers(self) -> int:
        return self.t5_layers if self.family == "flux1" else self.qwen_layers

    @property
    def text_width(self) -> int:
        """The text encoder's width (T5's d_model, Qwen3's hidden size)."""
        return self.joint_attention_dim if self.family == "flux1" else self.qwen_hidden

    @property
    def image_tokens(self) -> int:
        return (self.image_size // 16) ** 2

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(hidden=self.hidden, image_tokens=self.image_tokens, text_layers=self.text_layers,
                   text_width=self.text_width)
        return out


FULL = Shape()
QUICK = replace(FULL, double_blocks=1, single_blocks=2, t5_layers=2, image_size=256, text_tokens=64, steps=8)
TINY = replace(QUICK, heads=2, joint_attention_dim=256, pooled_dim=64, single_blocks=1, t5_d_ff=512, t5_heads=4,
               t5_layers=1, t5_vocab=512, vae_channels=(32, 32, 32, 32), vae_layers_per_block=1, image_size=64,
               text_tokens=8, steps=2, encodes=1)
PRESETS = {"quick": QUICK, "full": FULL, "tiny": TINY}
MODELS = ("flux1", "klein-4b", "klein-9b")


def klein(preset: Shape, size: str) -> Shape:
    """``preset``'s depth and run size at FLUX.2 [klein] ``size``'s ("4B" or "9B") real widths.

    The widths are the published configs' (pipelines.models.official.KLEIN_CONFIGS, which cites them): 4B: hidden
    3072 (24 heads x 128) over Qwen3-4B (hidden 2560, intermediate 9728, tied embeddings); 9B: hidden 4096 (32 x 128)
    over Qwen3-8B (hidden 4096, intermediate 12288). The text embedding is 3 Qwen3 hidden states side by side
    (joint_attention_dim 3 x the Qwen3 width), the latents 128 channels (32 VAE channels, 2 x 2 patches), 4 steps.
    A preset at FULL depth takes klein's (5 + 20 or 8 + 24 blocks, 36 Qwen3 layers); a slice keeps its own.
    """
    from pipelines.models.official import KLEIN_CONFIGS

    config = KLEIN_CONFIGS[size.upper()]
    full = preset.double_blocks == FULL_DOUBLE and preset.single_blocks == FULL_SINGLE
    tiny = preset.heads < 24
    heads = 2 if tiny else config.heads
    qwen = dict(qwen_hidden=64, qwen_intermediate=128, qwen_heads=2, qwen_kv_heads=1, qwen_head_dim=32,
             qwen_vocab=512) if tiny else \
        dict(qwen_hidden=config.text_width, qwen_intermediate=config.text_intermediate, qwen_heads=config.text_heads,
             qwen_kv_heads=config.text_kv_heads, qwen_vocab=config.vocab)
    return replace(
        preset, family="flux2", heads=heads, head_dim=config.head_dim, in_channels=128, axes_dims_rope=(32, 32, 32, 32),
        joint_attention_dim=3 * qwen["qwen_hidden"], pooled_dim=0, full_double=config.double,
        full_single=config.single, full_text_layers=config.text_layers,
        double_blocks=config.double if full else preset.double_blocks,
        single_blocks=config.single if full else preset.single_blocks,
        qwen_layers=config.text_layers if full else max(preset.t5_layers, 1), qwen_tied=config.tied,
        steps=4 if full else min(preset.steps, 4), guidance=1.0, **qwen)


def shape_for(preset: str, model: str = "flux1") -> Shape:
    """The shape of ``preset`` ('quick', 'full', 'tiny') for ``model`` (one of MODELS)."""
    if model not in MODELS:
        raise ValueError(f"--model {model!r}: choose one of {', '.join(MODELS)}")
    base = PRESETS[preset]
    return base if model == "flux1" else klein(base, model.split("-", 1)[1])
