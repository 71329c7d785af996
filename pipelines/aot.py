"""Ahead-of-time compiled transformer blocks: the ZeroGPU form of ``compile``.

On ZeroGPU every GPU call runs in a freshly forked worker, so torch.compile's just-in-time graphs would be compiled
again inside the GPU time of every call. Instead, at start-up (where a Space has the time), each kind of repeated
transformer block (FLUX.1: the double and the single stream block; FLUX.2 the same) is traced once with
``torch.export`` on example inputs, with every dimension left dynamic, and compiled by AOTInductor into a package
(`spaces.aoti_compile_and_save`). `spaces.aoti_load_from_package_dir` then gives every block of that kind the one
compiled package with its own weights, in the main process, so every forked worker inherits compiled blocks.

The functions take ``aoti``: the namespace holding `aoti_capture`, `aoti_compile_and_save` and
`aoti_load_from_package_dir` (the `spaces` package on a Space). Compiled blocks run with the weights they were given
when they were loaded: a run that changes what a block computes (LoRA layers, the step cache's hooks, offload hooks)
sets them aside for that run, visibly (`refusal`), and the blocks run eagerly.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path

import torch

AOT_ATTRIBUTE = "_fluxforge_aot"  # on a block: its compiled forward, kept while it is set aside
EXAMPLE_TEXT_TOKENS = 32  # the example call's sizes: any will do, every dimension is traced as dynamic
EXAMPLE_IMAGE_TOKENS = 64


def block_lists(transformer) -> dict[str, torch.nn.ModuleList]:
    """The transformer's lists of repeated blocks (diffusers' ``_repeated_blocks``), by attribute name."""
    kinds = set(getattr(transformer, "_repeated_blocks", None) or ())
    return {name: child for name, child in transformer.named_children()
            if isinstance(child, torch.nn.ModuleList) and len(child) and type(child[0]).__name__ in kinds}


def _dynamic(value):
    """Every dimension of every tensor in ``value`` dynamic (torch.export.Dim.AUTO), in ``value``'s structure."""
    if torch.is_tensor(value):
        return {dim: torch.export.Dim.AUTO for dim in range(value.ndim)}
    if isinstance(value, (tuple, list)):
        return type(value)(_dynamic(item) for item in value)
    if isinstance(value, dict):
        return {key: _dynamic(item) for key, item in value.items()}
    return None


def compile_blocks(transformer, family, package_dir: Path, aoti) -> dict[str, float]:
    """Trace one block of each kind in a call on ``family``'s example inputs, compile it ahead of time and save its
    package under ``package_dir`` (one subfolder per block list); the seconds each took. Runs where the blocks will
    run (on ZeroGPU: inside a GPU call)."""
    example = family.transformer_example(transformer, EXAMPLE_IMAGE_TOKENS, EXAMPLE_TEXT_TOKENS)
    seconds = {}
    for name, blocks in block_lists(transformer).items():
        start = time.perf_counter()
        with torch.no_grad():
            with aoti.aoti_capture(blocks[0]) as call:
                transformer(**example)
            # by name, so that every input's dimensions can be marked dynamic
            inputs = inspect.signature(type(blocks[0]).forward).bind(blocks[0], *call.args, **call.kwargs).arguments
            inputs.pop("self")
            exported = torch.export.export(blocks[0], args=(), kwargs=dict(inputs), dynamic_shapes=_dynamic(inputs))
        aoti.aoti_compile_and_save(package_dir, exported, submodule=name)
        seconds[name] = time.perf_counter() - start
    return seconds


def load_blocks(transformer, package_dir: Path, aoti) -> int:
    """Give every repeated block its kind's compiled package (with the block's own weights); how many blocks."""
    aoti.aoti_load_from_package_dir(transformer, package_dir)
    count = 0
    for blocks in block_lists(transformer).values():
        for block in blocks:
            compiled = block.__dict__.get("forward")
            if compiled is None:
                raise RuntimeError(f"the compiled package left {type(block).__name__} uncompiled")
            setattr(block, AOT_ATTRIBUTE, compiled)
            count += 1
    return count


def _aot_blocks(transformer) -> list:
    return [block for blocks in block_lists(transformer).values() for block in blocks
            if getattr(block, AOT_ATTRIBUTE, None) is not None]


def has_aot(transformer) -> bool:
    """True when ``transformer``'s blocks have compiled packages (in use or set aside)."""
    return bool(_aot_blocks(transformer))


def in_use(transformer) -> bool:
    """True when ``transformer``'s blocks run their compiled packages."""
    return any(block.__dict__.get("forward") is getattr(block, AOT_ATTRIBUTE) for block in _aot_blocks(transformer))


def set_aside(transformer) -> None:
    """Run the blocks eagerly (their compiled packages kept for later runs)."""
    for block in _aot_blocks(transformer):
        if block.__dict__.get("forward") is getattr(block, AOT_ATTRIBUTE):
            del block.forward


def resume(transformer) -> None:
    """Run the blocks' compiled packages again."""
    for block in _aot_blocks(transformer):
        if "forward" not in block.__dict__:
            block.forward = getattr(block, AOT_ATTRIBUTE)


def drop(transformer) -> None:
    """Forget the compiled packages (after they failed): the blocks run eagerly from now on."""
    set_aside(transformer)
    for block in _aot_blocks(transformer):
        delattr(block, AOT_ATTRIBUTE)


def refusal(transformer, step_cache: bool, offload: str) -> str | None:
    """Why a run cannot use the compiled blocks (None when it can): they hold the weights they were loaded with and
    are called in place of the blocks' own forward, so LoRA layers, the step cache's hooks and offload hooks would be
    passed over."""
    if any(hasattr(module, "base_layer") for blocks in block_lists(transformer).values() for module in blocks.modules()):
        return "the transformer carries LoRA layers"
    if step_cache:
        return "the step cache is on"
    if offload != "none":
        return f"{offload} offload is on"
    return None


def compile_ahead(transformer, family, package_dir: Path, aoti,
                  on_device: Callable[[Callable[[], dict]], dict] = lambda fn: fn()) -> str:
    """Compile ``transformer``'s blocks ahead of time (``on_device`` runs the compilation where the blocks will run:
    spaces.GPU on ZeroGPU) and give them to its blocks here; one line saying what was done."""
    package_dir = Path(package_dir)
    package_dir.mkdir(parents=True, exist_ok=True)
    seconds = on_device(lambda: compile_blocks(transformer, family, package_dir, aoti))
    count = load_blocks(transformer, package_dir, aoti)
    kinds = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    return f"compiled {count} transformer blocks ahead of time ({kinds})"
