"""FLUX.1 [dev]: text to image, guidance-distilled."""

from .base import TinyVariant
from .text_to_image import TextToImage

TOOL = TextToImage(name="dev", title="FLUX.1 [dev]", model_id="black-forest-labs/FLUX.1-dev", steps=28, guidance=3.5,
                   tiny_steps=8, order=1, tiny=TinyVariant("dev", seed=11))
