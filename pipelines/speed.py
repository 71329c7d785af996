"""Speed options of a run: torch.compile of the transformer's repeated blocks, and First-Block Cache."""

from __future__ import annotations

import contextlib
import os
import shutil

import torch

from . import aot
from .paths import cache_root

# Compiled variants a transformer block may need: with and without the step cache (its first block and the others
# differ, and each follows whether the step is computed or cached), per set of LoRA shapes, per image size. torch's
# default of 8 per compiled function would leave the rest of them running uncompiled, silently.
RECOMPILE_LIMIT = 64


def compile_refusal(device: torch.device) -> str | None:
    """Why regional compilation is not offered on ``device`` (None when it is): NVIDIA GPUs and CPUs with a C++
    compiler (inductor writes C++ there)."""
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if not any(shutil.which(name) for name in ("c++", "g++", "clang++")):
            return "torch.compile on a CPU needs a C++ compiler (g++ or clang++), and none is installed"
        return None
    return f"torch.compile is offered on NVIDIA GPUs and CPUs; this run is on {device.type}"


def compile_transformer(transformer) -> None:
    """Compile the repeated transformer blocks (diffusers' regional compilation); kernels go to a cache folder under
    the studio cache, so later runs and restarts reuse them.

    Not ``fullgraph``: the step cache's hooks decide, outside the graph, whether a step computes (diffusers marks
    that function ``torch.compiler.disable``), so a block with the step cache is two graphs around that decision."""
    import torch._dynamo

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "compile"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    transformer.compile_repeated_blocks(fullgraph=False)


def compiled_blocks(transformer) -> list:
    """The transformer's blocks that run compiled (just in time by torch.compile)."""
    return [m for m in transformer.modules() if getattr(m, "_compiled_call_impl", None) is not None]


def is_compiled(transformer) -> bool:
    """True when the transformer's blocks run compiled, just in time or ahead of time (pipelines.aot)."""
    return bool(compiled_blocks(transformer)) or aot.in_use(transformer)


def uncompile(transformer) -> None:
    """Run the transformer's blocks eagerly again (after compiling failed on them)."""
    for block in compiled_blocks(transformer):
        block._compiled_call_impl = None
    aot.drop(transformer)


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far (how often it compiled)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@contextlib.contextmanager
def step_cache(transformer, threshold: float):
    """First-Block Cache for the duration of a run (``threshold`` 0: off). Yields a function giving the number of
    steps that ran every block so far (None when it cannot be told), so the report can say how many the cache
    skipped."""
    if threshold <= 0:
        yield None
        return
    from diffusers.hooks import FirstBlockCacheConfig

    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    counter = _count_decisions(transformer)
    try:
        # FluxPipeline names its own cache context per step; the Fill, Kontext and Control pipelines do not, and
        # the cache needs one: this outer context serves them (an inner one takes over where a pipeline sets it).
        with transformer.cache_context("cond"):
            yield lambda: counter[0] if counter else None
    finally:
        transformer.disable_cache()


def _count_decisions(transformer) -> list[int]:
    """Count the steps the cache computes in full: its first block's hook decides each step, outside any compiled
    graph (diffusers runs that decision eagerly), so the count holds with compile too. Empty when the hook is not
    found (the count is then unknown, not guessed)."""
    counter: list[int] = []
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook("fbc_leader_block_hook") if registry is not None else None
        if hook is None or not hasattr(hook, "_should_compute_remaining_blocks"):
            continue
        decide = hook._should_compute_remaining_blocks
        counter.append(0)

        @torch.compiler.disable
        def counted(*args, **kwargs):
            computed = decide(*args, **kwargs)
            counter[0] += bool(computed)
            return computed

        hook._should_compute_remaining_blocks = counted
        break
    return counter
