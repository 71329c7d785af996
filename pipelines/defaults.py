"""Single source of truth for tools, model ids, step counts, guidance and size limits.

The CLI, the studio and the tests read these values; nothing else hard-codes them.
"""

from __future__ import annotations

from dataclasses import dataclass

TOOLS = ("schnell", "dev", "fill", "kontext", "depth", "canny", "redux")
QUANT_MODES = ("auto", "none", "8bit", "4bit")

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

DEPTH_ESTIMATOR_ID = "depth-anything/Depth-Anything-V2-Small-hf"
REDUX_PRIOR_ID = "black-forest-labs/FLUX.1-Redux-dev"


@dataclass(frozen=True)
class ToolDefaults:
    model_id: str
    steps: int
    guidance: float
    width: int = 1024
    height: int = 1024
    max_sequence_length: int = 512
    needs_image: bool = False
    needs_prompt: bool = True


TOOL_DEFAULTS: dict[str, ToolDefaults] = {
    "schnell": ToolDefaults("black-forest-labs/FLUX.1-schnell", steps=4, guidance=0.0, max_sequence_length=256),
    "dev": ToolDefaults("black-forest-labs/FLUX.1-dev", steps=28, guidance=3.5),
    "fill": ToolDefaults("black-forest-labs/FLUX.1-Fill-dev", steps=28, guidance=30.0, needs_image=True),
    "kontext": ToolDefaults("black-forest-labs/FLUX.1-Kontext-dev", steps=28, guidance=2.5, needs_image=True),
    "depth": ToolDefaults("black-forest-labs/FLUX.1-Depth-dev", steps=28, guidance=10.0, needs_image=True),
    "canny": ToolDefaults("black-forest-labs/FLUX.1-Canny-dev", steps=28, guidance=30.0, needs_image=True),
    # Redux runs the Redux prior, then FLUX.1-dev with the image embeddings; the prompt is optional.
    "redux": ToolDefaults("black-forest-labs/FLUX.1-dev", steps=28, guidance=2.5, needs_image=True, needs_prompt=False),
}

# The offline `tiny` family: same tools, small random weights, so defaults are scaled down.
TINY_MODEL = "tiny"
TINY_SIZE = 128
TINY_MAX_SEQUENCE_LENGTH = 32
TINY_STEPS = {"schnell": 4, "dev": 8, "fill": 8, "kontext": 8, "depth": 8, "canny": 8, "redux": 8}


def tool_defaults(tool: str, model: str | None = None) -> ToolDefaults:
    """Defaults for ``tool``; the tiny family gets small sizes and few steps."""
    if tool not in TOOL_DEFAULTS:
        raise ValueError(f"tool={tool!r} is unknown; choose one of {', '.join(TOOLS)}.")
    base = TOOL_DEFAULTS[tool]
    if model != TINY_MODEL:
        return base
    return ToolDefaults(
        model_id=TINY_MODEL,
        steps=TINY_STEPS[tool],
        guidance=base.guidance,
        width=TINY_SIZE,
        height=TINY_SIZE,
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
        needs_image=base.needs_image,
        needs_prompt=base.needs_prompt,
    )
