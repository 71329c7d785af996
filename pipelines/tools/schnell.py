"""FLUX.1 [schnell]: text to image in a few steps, no guidance."""

from .base import TinyVariant
from .text_to_image import TextToImage

TOOL = TextToImage(name="schnell", title="FLUX.1 [schnell]", model_id="black-forest-labs/FLUX.1-schnell", steps=4,
                   guidance=0.0, max_sequence_length=256, tiny_steps=4, order=0,
                   tiny=TinyVariant("schnell", seed=10, guidance=False))
