"""FLUX.1 Redux: image variation (FluxPriorReduxPipeline, then FluxPipeline with the FLUX.1-dev weights).

The prompt is optional. The prior also steers Fill when it is given a reference image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..models.sources import resolve_aux
from .base import Prepared, RunContext, Tool
from .dev import TOOL as DEV

PRIOR_ID = "black-forest-labs/FLUX.1-Redux-dev"
TINY_PRIOR = "redux-prior"
VISION_DIM = 64  # tiny SigLIP hidden size == the tiny prior's redux_dim


def redux_embeddings(ctx: RunContext, image: Image.Image, prompt: str) -> dict:
    """prompt_embeds and pooled_prompt_embeds from the Redux prior, using the loaded text encoders."""
    from diffusers import FluxPriorReduxPipeline

    manager, pipe = ctx.manager, ctx.pipe
    path = resolve_aux(ctx.source, PRIOR_ID, TINY_PRIOR, ctx.progress)
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


def build_tiny_prior(path: Path) -> None:
    from diffusers import FluxPriorReduxPipeline
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from ..models.tiny import TEXT_DIM, seeded

    seeded(20)
    image_encoder = SiglipVisionModel(
        SiglipVisionConfig(hidden_size=VISION_DIM, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16)
    )
    seeded(21)
    embedder = ReduxImageEncoder(redux_dim=VISION_DIM, txt_in_features=TEXT_DIM)
    processor = SiglipImageProcessor(size={"height": 64, "width": 64})
    FluxPriorReduxPipeline(image_encoder=image_encoder, feature_extractor=processor,
                           image_embedder=embedder).save_pretrained(path)


@dataclass(frozen=True)
class Redux(Tool):
    def uses_text_encoders(self, request) -> bool:
        return True

    def prepare(self, request, ctx: RunContext) -> Prepared:
        width, height = self.output_size(request, request.image)
        return Prepared(redux_embeddings(ctx, request.image, request.prompt), width, height)

    def tiny_folders(self) -> tuple[str, ...]:
        return (self.tiny.folder, TINY_PRIOR)

    def build_tiny(self, root: Path, shared: dict) -> None:
        super().build_tiny(root, shared)
        build_tiny_prior(root / TINY_PRIOR)


# The Redux prior feeds FLUX.1-dev: same pipeline class, model and tiny model as dev.
TOOL = Redux(name="redux", title="FLUX.1 Redux", pipeline_class=DEV.pipeline_class, model_id=DEV.model_id, steps=28,
             guidance=2.5, tiny_steps=8, order=6, needs_prompt=False, inputs=frozenset({"image"}), needs_image=True,
             tiny=DEV.tiny, aux_models=(PRIOR_ID,))
