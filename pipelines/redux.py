"""FLUX.1 Redux: image variation (FluxPriorReduxPipeline, then FluxPipeline), optional prompt.

The prior is also what steers Fill with a reference image.
"""

from __future__ import annotations

from PIL import Image

from . import defaults, tiny
from .base import RunContext, Tool, input_image, output_size
from .sources import resolve_aux


def redux_embeddings(ctx: RunContext, image: Image.Image, prompt: str) -> dict:
    """prompt_embeds and pooled_prompt_embeds from the Redux prior, using the loaded text encoders."""
    from diffusers import FluxPriorReduxPipeline

    manager, pipe = ctx.manager, ctx.loaded.pipe
    path = resolve_aux(ctx.source, defaults.REDUX_PRIOR_ID, tiny.REDUX_PRIOR_DIR)
    prior = manager.aux(("redux-prior", str(path)),
                        lambda: FluxPriorReduxPipeline.from_pretrained(path, dtype=manager.dtype).to(manager.device))
    prior.text_encoder, prior.tokenizer = pipe.text_encoder, pipe.tokenizer
    prior.text_encoder_2, prior.tokenizer_2 = pipe.text_encoder_2, pipe.tokenizer_2
    prior.set_progress_bar_config(disable=True)
    try:
        output = prior(image=image, prompt=prompt or "")
    finally:
        prior.text_encoder = prior.tokenizer = prior.text_encoder_2 = prior.tokenizer_2 = None
    return {"prompt_embeds": output.prompt_embeds, "pooled_prompt_embeds": output.pooled_prompt_embeds}


class Redux(Tool):
    name = "redux"

    def pipeline_kwargs(self, request, ctx: RunContext) -> dict:
        image = input_image(request)
        request.width, request.height = output_size(request, image)
        return redux_embeddings(ctx, image, request.prompt)
