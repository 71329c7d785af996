"""Model families: what differs between FLUX.1 and FLUX.2 pipelines, kept in one place and keyed by family.

A family says which components the quant choice applies to (the big ones, whose repeated blocks are also what block
offload moves one by one), which components encode the prompt and how, how the denoised latents become what the VAE
decodes, and how a live preview is drawn. Tools, the manager, the engine and the estimates ask the family of the
pipeline they handle (by its diffusers pipeline class) rather than naming components themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .preview import flux2_packed_preview, packed_preview


@dataclass(frozen=True)
class Family:
    name: str  # "flux1" or "flux2"
    title: str
    pipelines: frozenset  # diffusers pipeline classes of this family
    quantized: tuple[str, ...]  # the big components: the quant choice and block offload apply to them
    text_encoders: tuple[str, ...]  # what encodes the prompt (their weights identify cached embeddings)
    text_width: tuple[str, str]  # (component, config key) of the text encoder's width (its working memory)

    def encode_prompt(self, pipe, prompt: str, device: torch.device, max_sequence_length: int) -> dict:
        """The pipeline's prompt arguments (tensors) for ``prompt``."""
        raise NotImplementedError

    def decodable(self, pipe, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """The pipeline's ``output_type="latent"`` output as the VAE decodes it."""
        raise NotImplementedError

    def preview(self, pipe, latents: torch.Tensor, width: int, height: int):
        """A picture of the denoising latents (as the step callback gets them), ``width`` x ``height``."""
        raise NotImplementedError

    def transformer_example(self, transformer, image_tokens: int, text_tokens: int) -> dict:
        """Keyword arguments of one transformer call with ``image_tokens`` and ``text_tokens`` (random values, on the
        transformer's device and dtype): what ahead-of-time compilation traces its blocks with (pipelines.aot)."""
        config, param = transformer.config, next(transformer.parameters())
        id_axes = len(config.axes_dims_rope)  # position ids: one column per rotary axis
        device, dtype = param.device, param.dtype
        example = {"hidden_states": torch.randn(1, image_tokens, config.in_channels, device=device, dtype=dtype),
                   "encoder_hidden_states": torch.randn(1, text_tokens, config.joint_attention_dim, device=device,
                                                        dtype=dtype),
                   "timestep": torch.ones(1, device=device, dtype=dtype),
                   "img_ids": torch.zeros(image_tokens, id_axes, device=device, dtype=dtype),
                   "txt_ids": torch.zeros(text_tokens, id_axes, device=device, dtype=dtype),
                   "return_dict": False}
        if config.guidance_embeds:
            example["guidance"] = torch.full((1,), 3.5, device=device, dtype=dtype)
        return example


@dataclass(frozen=True)
class Flux1(Family):
    def encode_prompt(self, pipe, prompt, device, max_sequence_length):
        prompt_embeds, pooled, _ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device,
                                                         num_images_per_prompt=1,
                                                         max_sequence_length=max_sequence_length)
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}

    def decodable(self, pipe, latents, width, height):
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        return latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor

    def preview(self, pipe, latents, width, height):
        return packed_preview(pipe, latents, width, height)

    def transformer_example(self, transformer, image_tokens, text_tokens):
        example = super().transformer_example(transformer, image_tokens, text_tokens)
        param = example["hidden_states"]
        example["pooled_projections"] = torch.randn(1, transformer.config.pooled_projection_dim, device=param.device,
                                                    dtype=param.dtype)
        return example


@dataclass(frozen=True)
class Flux2(Family):
    def encode_prompt(self, pipe, prompt, device, max_sequence_length):
        # Flux2KleinPipeline.encode_prompt returns (prompt_embeds, text_ids): no pooled embeddings; the pipeline
        # makes the text ids again from the embeddings it is given.
        prompt_embeds, _text_ids = pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1,
                                                      max_sequence_length=max_sequence_length)
        return {"prompt_embeds": prompt_embeds}

    def decodable(self, pipe, latents, width, height):
        return latents  # the FLUX.2 pipelines un-normalise and unpatchify before returning latents

    def preview(self, pipe, latents, width, height):
        return flux2_packed_preview(latents, width, height)


FLUX1 = Flux1("flux1", "FLUX.1",
              frozenset({"FluxPipeline", "FluxFillPipeline", "FluxKontextPipeline", "FluxControlPipeline",
                         "FluxImg2ImgPipeline", "FluxInpaintPipeline"}),
              quantized=("transformer", "text_encoder_2"),  # CLIP and the VAE stay in full precision
              text_encoders=("text_encoder", "text_encoder_2"), text_width=("text_encoder_2", "d_model"))
FLUX2 = Flux2("flux2", "FLUX.2",
              frozenset({"Flux2KleinPipeline", "Flux2KleinInpaintPipeline"}),
              quantized=("transformer", "text_encoder"),  # the Qwen3 text encoder; the VAE stays in full precision
              text_encoders=("text_encoder",), text_width=("text_encoder", "hidden_size"))
FAMILIES = {family.name: family for family in (FLUX1, FLUX2)}


def family_of(pipeline_class: str) -> Family:
    """The family of a diffusers pipeline class (FLUX.1 for one no family names)."""
    return next((f for f in FAMILIES.values() if pipeline_class in f.pipelines), FLUX1)


def family_in(root: Path) -> Family:
    """The family of the diffusers directory ``root`` (by its model_index.json's pipeline class)."""
    try:
        class_name = json.loads((Path(root) / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        class_name = ""
    return family_of(class_name)
