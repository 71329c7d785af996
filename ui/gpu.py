"""ZeroGPU support: on a Hugging Face Space with the `spaces` package, device work runs under spaces.GPU."""

from __future__ import annotations

from collections.abc import Callable

from .settings import on_space

GPU_DURATION_S = 120  # upper bound for one job (model load + denoise) on a ZeroGPU slice


def gpu_decorator() -> Callable[[Callable], Callable]:
    """spaces.GPU on a Space where `spaces` is importable; otherwise the identity."""
    if not on_space():
        return _identity
    try:
        import spaces
    except ImportError:
        return _identity
    return spaces.GPU(duration=GPU_DURATION_S)


def _identity(fn: Callable) -> Callable:
    return fn
