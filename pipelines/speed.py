"""Speed options of a run: torch.compile of the transformer's repeated blocks, and First-Block Cache."""

from __future__ import annotations

import contextlib
import os

import torch

from .paths import cache_root


def compile_refusal(device: torch.device) -> str | None:
    """Why regional compilation is not offered on ``device`` (None when it is)."""
    if device.type != "cuda":
        return (f"torch.compile is offered on NVIDIA GPUs (it compiles for minutes and pays off there); "
                f"this run is on {device.type}")
    return None


def compile_transformer(transformer) -> None:
    """Compile the repeated transformer block once (diffusers' regional compilation); kernels go to a cache
    folder under the studio cache, so later runs and restarts reuse them."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "compile"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    transformer.compile_repeated_blocks(fullgraph=True)


@contextlib.contextmanager
def step_cache(transformer, threshold: float):
    """First-Block Cache for the duration of a run (``threshold`` 0: off). Yields a counter of the steps that ran
    every block, so the report can say how many the cache skipped."""
    counter = {"full": 0}
    if threshold <= 0:
        yield None
        return
    from diffusers.hooks import FirstBlockCacheConfig

    last = transformer.single_transformer_blocks[-1] if len(transformer.single_transformer_blocks) else \
        transformer.transformer_blocks[-1]
    inner = getattr(last, "proj_out", None) or getattr(last, "ff")  # runs only when the block is computed
    handle = inner.register_forward_hook(lambda *args: counter.__setitem__("full", counter["full"] + 1))
    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    try:
        # FluxPipeline names its own cache context per step; the Fill, Kontext and Control pipelines do not, and
        # the cache needs one: this outer context serves them (an inner one takes over where a pipeline sets it).
        with transformer.cache_context("cond"):
            yield counter
    finally:
        transformer.disable_cache()
        handle.remove()
