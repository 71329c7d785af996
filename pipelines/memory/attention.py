"""The attention score matrix's size, and Apple MPS's limit on it: pure functions.

MPS attention builds the whole (heads x tokens x tokens) score matrix of a call; past 2**32 elements the process
aborts (pytorch issue 149261) rather than raising. FLUX's transformer attends over the text tokens and the image
tokens (one per 16x16 pixels) together, plus a conditioning image's tokens where one joins the sequence (Kontext):
at 2048x2048 that is 24 heads x 16,896^2 = 6.9e9 scores. Such a run is refused before it starts, with the largest
size that passes.
"""

from __future__ import annotations

import math

MPS_SCORE_LIMIT = 2**32  # elements of one attention call's score matrix past which MPS aborts
TOKEN_PIXELS = 16 * 16  # FLUX: the VAE's 8x downscale, then 2x2 patches
HEAD_DIM = 128  # FLUX.1's attention head width: heads = hidden / HEAD_DIM


def sequence_tokens(pixels: int, text_tokens: int, condition_pixels: int = 0) -> int:
    """Tokens in the transformer's joint attention: text, image and conditioning image."""
    return text_tokens + (pixels + condition_pixels) // TOKEN_PIXELS


def attention_scores(pixels: int, text_tokens: int, heads: int, condition_pixels: int = 0) -> int:
    """Elements of one image's attention score matrix (heads x tokens x tokens)."""
    tokens = sequence_tokens(pixels, text_tokens, condition_pixels)
    return heads * tokens * tokens


def largest_square(text_tokens: int, heads: int, condition_ratio: float = 0.0, limit: int = MPS_SCORE_LIMIT,
                   step: int = 16) -> int:
    """The largest side (a multiple of ``step``) of a square image whose scores stay within ``limit``
    (``condition_ratio``: conditioning pixels per output pixel, 1 for Kontext's one input image)."""
    tokens = math.isqrt(limit // heads)
    side = math.isqrt(int(max(0, tokens - text_tokens) * TOKEN_PIXELS / (1 + condition_ratio))) // step * step
    while side > step and attention_scores(side * side, text_tokens, heads, round(side * side * condition_ratio)) \
            > limit:
        side -= step
    return side


def mps_attention_refusal(width: int, height: int, text_tokens: int, heads: int,
                          condition_pixels: int = 0) -> str | None:
    """Why a ``width`` x ``height`` run cannot run its attention on Apple MPS (None: it can)."""
    scores = attention_scores(width * height, text_tokens, heads, condition_pixels)
    if scores <= MPS_SCORE_LIMIT:
        return None
    side = largest_square(text_tokens, heads, condition_pixels / (width * height))
    tokens = sequence_tokens(width * height, text_tokens, condition_pixels)
    return (f"width={width}, height={height} needs {heads} heads x {tokens:,}^2 = {scores / 1e9:.1f}e9 attention "
            f"scores, past the 2^32 that Apple MPS can hold in one attention call (it would abort); use at most "
            f"about {side}x{side} (or the same area) on a Mac")
