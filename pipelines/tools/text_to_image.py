"""Text to image with diffusers' FluxPipeline (what schnell and dev share), and image to image with an input image:
diffusers' FluxImg2ImgPipeline built on the loaded pipeline's own components (the same transformer, encoders and VAE
objects; nothing is loaded or copied). Not from_pipe: it casts every module to its dtype argument (float32 when none
is given), which would change the shared, possibly quantized, modules."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Prepared, RunContext, Tool


@dataclass(frozen=True)
class TextToImage(Tool):
    pipeline_class: str = "FluxPipeline"
    inputs: frozenset = field(default_factory=lambda: frozenset({"image"}))
    takes_strength: bool = True

    def prepare(self, request, ctx: RunContext) -> Prepared:
        width, height = self.output_size(request, request.image)
        if request.image is None:
            return Prepared({"prompt": request.prompt}, width, height)
        from diffusers import FluxImg2ImgPipeline

        pipe = FluxImg2ImgPipeline(**ctx.pipe.components)
        steps_run = steps_at_strength(request.steps, request.strength)
        latents = encode_image(pipe, request.image.convert("RGB"), width, height)
        return Prepared({"prompt": request.prompt, "image": latents, "strength": request.strength}, width, height,
                        pipe=pipe, steps_run=steps_run,
                        details={"image_to_image": {"strength": request.strength, "steps_run": steps_run}})


def encode_image(pipe, image, width: int, height: int):
    """``image`` at the output size as the VAE's latents (its distribution's mode; scaled and shifted as FLUX's
    transformer takes them), encoded where the VAE is, in its own dtype (it may be kept in float32 while the
    transformer runs in bf16); the pipeline takes latents as they are."""
    import torch

    weight = next(pipe.vae.parameters())
    pixels = pipe.image_processor.preprocess(image, height=height, width=width).to(weight.device, weight.dtype)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mode()
    return (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


def steps_at_strength(steps: int, strength: float) -> int:
    """The denoising steps FluxImg2ImgPipeline runs of ``steps`` at ``strength`` (its get_timesteps rule)."""
    return steps - int(max(steps - min(steps * strength, steps), 0))
