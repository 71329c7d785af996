"""FLUX.1- and FLUX.2 [klein]-shaped components with deterministic random weights, their inputs, and fidelity
measures."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .shapes import Shape

VAE_SCALE = 8


def _seeded(seed: int, dtype: torch.dtype):
    """Build under a fixed seed with ``dtype`` as the default (no float32 copy of the weights)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    return previous


def build_transformer(shape: Shape, dtype: torch.dtype = torch.bfloat16):
    from diffusers import Flux2Transformer2DModel, FluxTransformer2DModel

    previous = _seeded(shape.seed + 1, dtype)
    try:
        if shape.family == "flux2":  # klein: no guidance embedder, 4 rope axes, 128 latent channels
            return Flux2Transformer2DModel(
                patch_size=1, in_channels=shape.in_channels, num_layers=shape.double_blocks,
                num_single_layers=shape.single_blocks, attention_head_dim=shape.head_dim,
                num_attention_heads=shape.heads, joint_attention_dim=shape.joint_attention_dim,
                axes_dims_rope=shape.axes_dims_rope, guidance_embeds=False)
        return FluxTransformer2DModel(
            patch_size=1, in_channels=shape.in_channels, out_channels=shape.in_channels,
            num_layers=shape.double_blocks, num_single_layers=shape.single_blocks, attention_head_dim=shape.head_dim,
            num_attention_heads=shape.heads, joint_attention_dim=shape.joint_attention_dim,
            pooled_projection_dim=shape.pooled_dim, guidance_embeds=True, axes_dims_rope=shape.axes_dims_rope,
        )
    finally:
        torch.set_default_dtype(previous)


def build_text_encoder(shape: Shape, dtype: torch.dtype = torch.bfloat16):
    """The text encoder the quant choice applies to: T5-XXL (FLUX.1) or Qwen3 (FLUX.2 [klein], as its pipeline
    loads it: Qwen3ForCausalLM)."""
    if shape.family == "flux1":
        return build_t5(shape, dtype)
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=shape.qwen_vocab, hidden_size=shape.qwen_hidden,
                         intermediate_size=shape.qwen_intermediate, num_hidden_layers=shape.qwen_layers,
                         num_attention_heads=shape.qwen_heads, num_key_value_heads=shape.qwen_kv_heads,
                         head_dim=shape.qwen_head_dim, tie_word_embeddings=shape.qwen_tied)
    previous = _seeded(shape.seed + 2, dtype)
    try:
        return Qwen3ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)


def build_t5(shape: Shape, dtype: torch.dtype = torch.bfloat16):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=shape.t5_vocab, d_model=shape.joint_attention_dim, d_ff=shape.t5_d_ff,
                      d_kv=shape.t5_d_kv, num_heads=shape.t5_heads, num_layers=shape.t5_layers,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, dropout_rate=0.0)
    previous = _seeded(shape.seed + 2, dtype)
    try:
        return T5EncoderModel(config).eval()
    finally:
        torch.set_default_dtype(previous)


def build_vae(shape: Shape):
    """FLUX.1's (or FLUX.2's: 32 latent channels) VAE layout (float32, random weights): only its decoder is used."""
    from diffusers import AutoencoderKL, AutoencoderKLFlux2

    torch.manual_seed(shape.seed + 3)
    n = len(shape.vae_channels)
    if shape.family == "flux2":
        return AutoencoderKLFlux2(
            in_channels=3, out_channels=3, latent_channels=32, down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=shape.vae_channels,
            layers_per_block=shape.vae_layers_per_block, norm_num_groups=shape.vae_groups,
        ).eval()
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=shape.vae_channels,
        layers_per_block=shape.vae_layers_per_block, norm_num_groups=shape.vae_groups, use_quant_conv=False,
        use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
    ).eval()


def weights_dir(cache: Path, shape: Shape) -> Path:
    """Build both components once per shape and save them in diffusers/transformers format."""
    keys = ("heads", "head_dim", "joint_attention_dim", "pooled_dim", "in_channels", "axes_dims_rope",
            "double_blocks", "single_blocks", "t5_d_ff", "t5_heads", "t5_d_kv", "t5_layers", "t5_vocab", "seed")
    if shape.family != "flux1":  # FLUX.1's folders keep their names
        keys += ("family", "qwen_hidden", "qwen_intermediate", "qwen_layers", "qwen_heads", "qwen_kv_heads",
                 "qwen_head_dim", "qwen_vocab", "qwen_tied")
    spec = json.dumps({key: getattr(shape, key) for key in keys})
    root = Path(cache) / "bench-weights" / hashlib.sha1(spec.encode()).hexdigest()[:12]

    def write(tmp: Path) -> None:
        build_text_encoder(shape).save_pretrained(tmp / shape.text_component)
        build_transformer(shape).save_pretrained(tmp / "transformer")
        (tmp / "spec.json").write_text(spec)

    return build_once(root, write)


def build_once(root: Path, write) -> Path:
    """``root``, written by ``write(folder)`` into a temporary folder renamed into place (a complete folder, or
    none), unless it is already there."""
    if (root / ".complete").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root.parent))
    try:
        write(tmp)
        (tmp / ".complete").write_text("ok")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def load(component: str, root: Path, dtype: torch.dtype):
    """Load a saved component on the CPU, as the studio does (FLUX.2's text encoder is "text_encoder")."""
    flux2 = (root / "text_encoder").is_dir()
    if component == "transformer":
        from diffusers import Flux2Transformer2DModel, FluxTransformer2DModel

        model_class = Flux2Transformer2DModel if flux2 else FluxTransformer2DModel
        return model_class.from_pretrained(root / component, dtype=dtype).eval()
    if flux2:
        from transformers import Qwen3ForCausalLM

        return Qwen3ForCausalLM.from_pretrained(root / component, dtype=dtype).eval()
    from transformers import T5EncoderModel

    return T5EncoderModel.from_pretrained(root / component, dtype=dtype).eval()


class Inputs:
    """Pinned inputs: noise, text embeddings, token ids and the sigma schedule of FLUX.1-dev (FLUX.2 [klein]'s for a
    FLUX.2 shape)."""

    def __init__(self, shape: Shape, device: torch.device, dtype: torch.dtype):
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift
        from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline, compute_empirical_mu

        gen = torch.Generator("cpu").manual_seed(shape.seed)
        tokens, grid = shape.image_tokens, shape.image_size // 16
        self.device, self.dtype, self.shape = device, dtype, shape
        self.flux2 = shape.family == "flux2"
        self.noise = torch.randn(1, tokens, shape.in_channels, generator=gen)
        self.text = torch.randn(1, shape.text_tokens, shape.joint_attention_dim, generator=gen).to(device, dtype)
        self.pooled = torch.randn(1, max(shape.pooled_dim, 1), generator=gen).to(device, dtype)
        vocab = shape.qwen_vocab if self.flux2 else shape.t5_vocab
        self.token_ids = torch.randint(2, vocab, (1, shape.text_tokens), generator=gen).to(device)
        if self.flux2:  # 4-axis position ids (time, height, width, layer), as Flux2KleinPipeline makes them
            self.img_ids = Flux2KleinPipeline._prepare_latent_ids(torch.zeros(1, 1, grid, grid)).to(device)
            self.txt_ids = Flux2KleinPipeline._prepare_text_ids(self.text).to(device)
        else:
            self.img_ids = FluxPipeline._prepare_latent_image_ids(1, grid, grid, device, dtype)
            self.txt_ids = torch.zeros(shape.text_tokens, 3, device=device, dtype=dtype)
        self.guidance = torch.full((1,), shape.guidance, device=device, dtype=torch.float32)
        scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                    max_shift=1.15, shift=3.0, use_dynamic_shifting=True)
        sigmas = np.linspace(1.0, 1 / shape.steps, shape.steps)  # as FluxPipeline and Flux2KleinPipeline
        mu = compute_empirical_mu(tokens, shape.steps) if self.flux2 else calculate_shift(tokens)
        scheduler.set_timesteps(sigmas=sigmas, mu=mu)
        self.sigmas = [float(s) for s in scheduler.sigmas]  # steps + 1 values, ending at 0

    def forward(self, transformer, latents: torch.Tensor, sigma: float, dtype: torch.dtype | None = None):
        """One transformer step (float32 result); ``dtype`` overrides the input dtype."""
        dtype = dtype or self.dtype
        timestep = torch.full((1,), sigma, device=self.device, dtype=dtype)
        if self.flux2:
            with torch.no_grad():
                out = transformer(hidden_states=latents.to(self.device, dtype), timestep=timestep, guidance=None,
                                  encoder_hidden_states=self.text.to(dtype), txt_ids=self.txt_ids,
                                  img_ids=self.img_ids, return_dict=False)[0]
            return out.float()
        with torch.no_grad():
            out = transformer(hidden_states=latents.to(self.device, dtype), timestep=timestep,
                              guidance=self.guidance, pooled_projections=self.pooled.to(dtype),
                              encoder_hidden_states=self.text.to(dtype), txt_ids=self.txt_ids.to(dtype),
                              img_ids=self.img_ids.to(dtype), return_dict=False)[0]
        return out.float()

    def encode(self, text_encoder) -> torch.Tensor:
        """T5's last hidden state; Qwen3's last hidden state from the call Flux2KleinPipeline makes (all hidden
        states, no cache: the pipeline reads layers 9, 18 and 27, which a slice has not got)."""
        with torch.no_grad():
            if self.flux2:
                out = text_encoder(input_ids=self.token_ids, attention_mask=torch.ones_like(self.token_ids),
                                   output_hidden_states=True, use_cache=False)
                return out.hidden_states[-1].float()
            return text_encoder(input_ids=self.token_ids).last_hidden_state.float()


def decode(vae, latents: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Packed latents -> image in [0, 1] (1, 3, H, W), float32 on the CPU."""
    from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    device = next(vae.parameters()).device
    if shape.family == "flux2":  # as Flux2KleinPipeline ends: place the tokens, undo the batch norm, unpatchify
        grid = shape.image_size // 16
        ids = Flux2KleinPipeline._prepare_latent_ids(torch.zeros(1, 1, grid, grid))
        latents = Flux2KleinPipeline._unpack_latents_with_ids(latents.float(), ids, grid, grid)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).float()
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).float()
        latents = Flux2KleinPipeline._unpatchify_latents(latents * std.cpu() + mean.cpu())
    else:
        latents = FluxPipeline._unpack_latents(latents.float(), shape.image_size, shape.image_size, VAE_SCALE)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    with torch.no_grad():
        image = vae.decode(latents.to(device), return_dict=False)[0]
    return (image.float().cpu() / 2 + 0.5).clamp(0, 1)


def rel_error(value: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float().cpu()
    return float(torch.linalg.vector_norm(value.float().cpu() - ref) / torch.linalg.vector_norm(ref))


def psnr(image: torch.Tensor, ref: torch.Tensor) -> float | None:
    """PSNR in dB of images in [0, 1]; None when identical."""
    mse = float(torch.mean((image.float() - ref.float()) ** 2))
    return None if mse == 0 else 10 * math.log10(1.0 / mse)
