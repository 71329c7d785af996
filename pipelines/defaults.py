"""Single source of truth for limits and the tiny family's scale; each tool's own defaults live in its module.

The CLI, the studio and the tests read these values; nothing else hard-codes them.
"""

from __future__ import annotations

from quantization.policy import QUANTS  # noqa: F401  (auto, none, 8bit, 4bit)

SIZE_STEP = 16
SIZE_MIN = 64
SIZE_MAX = 2048
STEPS_MIN = 1
STEPS_MAX = 100
GUIDANCE_MIN = 0.0
GUIDANCE_MAX = 100.0
SEED_MAX = 2**32 - 1
PROMPT_MAX_CHARS = 2000
EXPAND_MAX = 1024
CANNY_LOW = 100
CANNY_HIGH = 200
STRENGTH = 0.6  # image-to-image: how much of the input image is repainted (1: all of it), when not given
HIRES_STRENGTH = 0.35  # hires fix: the second pass's strength, when not given
CONTROL_FORMS = ("model", "lora")  # Depth and Canny: their own model, or a control LoRA on Dev
KONTEXT_MAX_IMAGES = 4  # Kontext: the image to edit and up to three reference images
KLEIN_MAX_IMAGES = 4  # FLUX.2 [klein]: up to four reference images, each taken natively
BATCH_MAX = 8  # images per click in the studio (each with the next seed); the CLI's --count has no cap
PREVIEW_EVERY = 2  # the studio's live previews: the latents as a picture every this many denoising steps
PREVIEW_MAX_SIDE = 512  # the studio sends previews at most this large (each is a file the browser fetches)

# The offline `tiny` family: the same tools with small random weights, so sizes and lengths are scaled down.
TINY_MODEL = "tiny"
TINY_SIZE = 128
TINY_MAX_SEQUENCE_LENGTH = 32
# Which components are quantized is the model family's to say (pipelines.families).
