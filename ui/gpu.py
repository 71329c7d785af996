"""ZeroGPU support: on a Hugging Face Space with the `spaces` package, device work runs under spaces.GPU.

ZeroGPU checks a visitor's quota against the duration a call asks for, and stops a call that runs past it; the
longest one call may ask for is MAX_DURATION_S (times the card's duration factor: 1.5 on the Blackwell cards).
So each call asks for what its own work needs (job_seconds: tool, steps, pixels, count, quantization), and on a
Space a batch is cut to the images that fit the longest call (batch_cap), with a warning saying so.

The seconds below are estimates for ZeroGPU's slice (an H200 MIG 3g.71gb, about 3/7 of an H200), from FLUX.1's
published H100 step times scaled by the slice's share of the card; they are not measured here (no Space can be
reached from this project's machines). `python app.py bench gpu-check` on a Space measures the real step time.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

from .settings import on_space

MAX_DURATION_S = 300  # the longest duration one ZeroGPU call may ask for (stated by ZeroGPU's maintainers)
MIN_DURATION_S = 20  # a short call still pays the worker's start
START_S = 25.0  # a worker's start: forking, moving the preloaded weights to the GPU (not measured)
STEP_S = 0.55  # one FLUX.1 transformer step at 1024x1024 (4096 image tokens) on the slice (estimated)
ATTENTION_SHARE = 0.3  # of that step, the part that grows with the square of the tokens (the rest: linear)
IMAGE_S = 2.0  # per image at 1024x1024: text encoders, the VAE decode, the PNG (estimated)
MARGIN = 1.25  # asked for beyond the estimate, so a slower call is not stopped
TOKEN_PIXELS = 16 * 16  # FLUX: one transformer token per 16x16 pixels
REFERENCE_TOKENS = 4096
# A quantized step against a full-precision one on an NVIDIA GPU (bitsandbytes dequantizes in every matmul);
# not measured on the slice: `bench gpu-check` measures them on the GPU it runs on.
QUANT_STEP = {"auto": 1.0, "none": 1.0, "8bit": 1.6, "4bit": 1.4, "fp8": 1.0}


def step_seconds(pixels: int, condition_pixels: int = 0, quant: str = "none") -> float:
    """One denoising step's estimated seconds at ``pixels`` (plus ``condition_pixels`` of a conditioning image that
    joins the sequence, e.g. Kontext's input) with ``quant``."""
    if pixels <= 0 or condition_pixels < 0:
        raise ValueError(f"step_seconds: pixels={pixels} must be positive and condition_pixels={condition_pixels} "
                         "not negative.")
    tokens = (pixels + condition_pixels) / TOKEN_PIXELS / REFERENCE_TOKENS
    shape = (1 - ATTENTION_SHARE) * tokens + ATTENTION_SHARE * tokens ** 2
    return STEP_S * shape * QUANT_STEP.get(quant, max(QUANT_STEP.values()))


def job_seconds(steps: int, pixels: int, count: int = 1, condition_pixels: int = 0, quant: str = "none") -> float:
    """Estimated seconds of one call making ``count`` images of ``steps`` steps at ``pixels`` (no margin)."""
    if steps < 1 or count < 1:
        raise ValueError(f"job_seconds: steps={steps} and count={count} must be at least 1.")
    per_image = steps * step_seconds(pixels, condition_pixels, quant) + IMAGE_S * pixels / (1024 * 1024)
    return START_S + count * per_image


def duration(steps: int, pixels: int, count: int = 1, condition_pixels: int = 0, quant: str = "none",
             factor: float = 1.0) -> int:
    """Seconds to ask ZeroGPU for: the estimate with its margin, in whole 5 s, between MIN_DURATION_S and the
    longest allowed (MAX_DURATION_S / ``factor``, the card's duration factor)."""
    wanted = math.ceil(job_seconds(steps, pixels, count, condition_pixels, quant) * MARGIN / 5) * 5
    return int(max(MIN_DURATION_S, min(wanted, longest(factor))))


def longest(factor: float = 1.0) -> int:
    """The longest duration a call may ask for on a card whose requests count ``factor`` times."""
    return int(MAX_DURATION_S // factor)


def batch_cap(steps: int, pixels: int, count: int, condition_pixels: int = 0, quant: str = "none",
              factor: float = 1.0) -> int:
    """The images of a ``count`` batch that fit the longest call (at least one: a single image that does not fit
    still runs, and may be stopped; batch_notice says so)."""
    fits = [n for n in range(1, count + 1)
            if job_seconds(steps, pixels, n, condition_pixels, quant) * MARGIN <= longest(factor)]
    return max(fits, default=1)


def batch_notice(steps: int, pixels: int, count: int, condition_pixels: int = 0, quant: str = "none",
                 factor: float = 1.0) -> str | None:
    """What the user is told when a batch is cut, or when even one image may run past the longest call."""
    cap = batch_cap(steps, pixels, count, condition_pixels, quant, factor)
    limit = longest(factor)
    one = job_seconds(steps, pixels, 1, condition_pixels, quant) * MARGIN
    if one > limit:
        return (f"One image at these settings needs ~{one:.0f} s of GPU time, more than the {limit} s ZeroGPU "
                "grants a call: it may be stopped; use fewer steps or a smaller size.")
    if cap < count:
        return (f"ZeroGPU grants a call at most {limit} s: this run makes {cap} of the {count} images asked for "
                f"(~{job_seconds(steps, pixels, cap, condition_pixels, quant) * MARGIN:.0f} s); click again for "
                "more.")
    return None


@functools.cache
def duration_factor() -> float:
    """The GPU's duration factor on ZeroGPU (spaces' own table: 1.5 on the Blackwell cards), 1.0 elsewhere."""
    try:
        from spaces.zero.config import get_config

        return float(get_config()["duration_factor"])
    except Exception:  # noqa: BLE001  (spaces absent, or it cannot read the driver): the H200's
        return 1.0


class JobDuration:
    """The duration callable spaces.GPU calls with a job's own arguments, and the batch cap applied before it.

    It reads a run function's arguments by name: ``tool`` (else the tab's ``tool``), steps, width, height (None:
    the size follows the input image, at most the tool's default area), count and quant."""

    def __init__(self, fn: Callable, tool: str | None = None):
        try:
            self.signature = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin without one: not a generation
            self.signature = None
        self.tool = tool

    def settings(self, args: tuple, kwargs: dict) -> dict | None:
        """(steps, pixels, count, condition_pixels, quant) of one call, or None when the call is not a generation
        (a control-map preview) or its values are not yet checked numbers."""
        from pipelines.tools import get_tool

        if self.signature is None:
            return None
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:
            return None
        values = {**{k: p.default for k, p in self.signature.parameters.items()}, **bound.arguments}
        if "steps" not in values:
            return None
        try:
            tool = get_tool(values.get("tool") or self.tool)
            d = tool.defaults(values.get("model"))
            width, height = values.get("width"), values.get("height")
            if values.get("match") or not (width and height):
                width, height = d.width, d.height
            width, height = int(width), int(height)
            return dict(steps=int(values["steps"]), pixels=width * height, count=int(values.get("count") or 1),
                        condition_pixels=tool.condition_pixels(width, height), quant=str(values.get("quant")))
        except Exception:  # noqa: BLE001  (the run itself refuses bad values, with their message)
            return None

    def __call__(self, *args, **kwargs) -> int:
        found = self.settings(args, kwargs)
        if found is None:
            return MIN_DURATION_S * 2
        return duration(**found, factor=duration_factor())

    def capped(self, args: tuple, kwargs: dict) -> tuple[tuple, dict, str | None]:
        """The call's arguments with its count cut to batch_cap, and the notice to show (None: nothing cut)."""
        found = self.settings(args, kwargs)
        if found is None:
            return args, kwargs, None
        notice = batch_notice(**found, factor=duration_factor())
        cap = batch_cap(**found, factor=duration_factor())
        if cap >= found["count"]:
            return args, kwargs, notice
        bound = self.signature.bind(*args, **kwargs)
        bound.arguments["count"] = cap
        return bound.args, bound.kwargs, notice


# What a ZeroGPU Space offers: a chosen 8-bit or 4-bit would be probed in a child process (which the GPU may not be
# lent to) and quantized from the full-precision weights inside the GPU call, onto an ephemeral disk; Auto sees the
# slice's ~70 GB and keeps full precision, which fits. So a Space offers Auto and full precision only.
ZERO_GPU_QUANTS = ("auto", "none")
PRELOAD_ENV = "FLUXFORGE_PRELOAD"  # tools whose models a ZeroGPU Space loads at start (comma-separated; "" for none)
AOT_ENV = "FLUXFORGE_AOT"  # "1": a ZeroGPU Space compiles its preloaded transformers' blocks ahead of time at start
AOT_DURATION_S = 900  # the start-up GPU call that compiles them (AOTInductor: minutes per block kind)


def zero_gpu() -> bool:
    """True on a ZeroGPU Space: `spaces` runs each GPU call in a worker process forked from this one."""
    if not on_space():
        return False
    try:
        from spaces.config import Config
    except ImportError:
        return False
    return bool(Config.zero_gpu)


def zero_gpu_quants(quants: tuple) -> tuple:
    """The quant choices a ZeroGPU Space offers, of ``quants`` (see ZERO_GPU_QUANTS)."""
    return tuple(q for q in quants if q in ZERO_GPU_QUANTS)


def preload_tools(default: str, env: str | None = None) -> list[str]:
    """The tools whose models load at start on ZeroGPU: FLUXFORGE_PRELOAD's (``env``), else ``default``."""
    import os

    value = os.environ.get(PRELOAD_ENV) if env is None else env
    if value is None:
        return [default]
    return [name.strip() for name in value.split(",") if name.strip()]


def aot_at_start(env: str | None = None) -> bool:
    """True when FLUXFORGE_AOT (``env``) asks a ZeroGPU Space to compile its transformer blocks ahead of time."""
    import os

    value = os.environ.get(AOT_ENV, "") if env is None else env
    return value.strip().lower() in ("1", "true", "yes", "on")


def compile_ahead(runner, tools: list[str]) -> list[str]:
    """ZeroGPU's form of compile: each preloaded tool's transformer blocks are compiled ahead of time in one GPU call
    at start (pipelines.aot), and every forked worker inherits them. One line per tool; a failure is said so, and
    that tool's runs go uncompiled."""
    import spaces

    on_device = lambda fn: spaces.GPU(duration=AOT_DURATION_S)(fn)()  # noqa: E731
    lines = []
    for tool in tools:
        try:
            lines.append(runner.compile_ahead(tool, spaces, on_device))
        except Exception as error:  # noqa: BLE001  (start-up goes on: the tool runs uncompiled)
            first = (str(error).splitlines() or [type(error).__name__])[0]
            lines.append(f"not compiled ahead of time ({tool}): {first}; its runs go uncompiled")
    return lines


def gpu_decorator() -> Callable[..., Callable]:
    """spaces.GPU with a duration from each call's own settings, on a Space where `spaces` is importable;
    otherwise the identity. The decorator takes the job function and the tool it runs (``tool``: for a tab whose
    run function has no ``tool`` argument)."""
    if not on_space():
        return _identity
    try:
        import spaces
    except ImportError:
        return _identity
    return functools.partial(on_zero_gpu, spaces.GPU)


def on_zero_gpu(gpu: Callable, fn: Callable, tool: str | None = None) -> Callable:
    """``fn`` under ``gpu`` (spaces.GPU) with a JobDuration; its batch cut to the longest call, visibly."""
    import gradio as gr

    timing = JobDuration(fn, tool)
    wrapped = gpu(duration=timing)(fn)
    if not inspect.isgeneratorfunction(fn):
        return wrapped

    @functools.wraps(fn)
    def run(*args, **kwargs):
        args, kwargs, notice = timing.capped(args, kwargs)
        if notice:
            gr.Warning(notice)
        yield from wrapped(*args, **kwargs)

    run.job_duration = timing
    return run


def _identity(fn: Callable, tool: str | None = None) -> Callable:
    return fn
