"""Will it fit, before loading: the peak memory and relative speed of each quantization choice and offload option.

The estimate is pure: component parameter counts (pipelines.memory.sizes), the bytes per parameter of each format and
its measured speed (quantization.policy and measured.json), the image and text sizes, and the device's memory. The
peak is the weights on the device in the busiest phase of a run (the placement the engine would plan) plus that
phase's working memory (pipelines.memory.placement.working_memory and the VAE decode); it is the memory a run adds to the
process, the allocator's slack (placement.HEADROOM) aside, which `fits` adds before comparing with free memory.
One-time load work (quantizing on the first load) is not part of it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from quantization.policy import RATIO, AutoChoice, choose_auto
from quantization.units import size_text

from .sizes import ModelSizes
from .attention import HEAD_DIM, MPS_SCORE_LIMIT, attention_scores
from .offload import OFFLOADS
from .placement import (HEADROOM, ONE_POOL, PHASES, TILE_PIXELS, decode_bytes_per_pixel, phase_bytes, plan,
                        working_memory)

VAE_WIDTH = 128  # the FLUX VAE's first block width, which placement.decode_bytes_per_pixel is for


@dataclass(frozen=True)
class DeviceMemory:
    """What a device has for a run: ``free_bytes`` (CUDA: free memory; MPS: Metal's recommended maximum less what
    is allocated; CPU: available RAM), of ``total_bytes``."""

    type: str  # cuda, mps or cpu
    total_bytes: int
    free_bytes: int
    what: str  # how free memory is measured, as the user reads it

    def __post_init__(self):
        if self.type not in ("cuda", "mps", "cpu"):
            raise ValueError(f"DeviceMemory: type={self.type!r} must be cuda, mps or cpu.")
        if not 0 <= self.free_bytes <= self.total_bytes:
            raise ValueError(f"DeviceMemory: free_bytes={self.free_bytes} must be in 0..total_bytes="
                             f"{self.total_bytes}.")


@dataclass(frozen=True)
class Format:
    """How one quant choice stores the quantized components: its first backend on the device, the bytes of a
    weight relative to bf16, and the step time relative to full precision (None: not measured on this device)."""

    quant: str
    label: str
    weight_ratio: float
    speed: float | None

    def __post_init__(self):
        if self.quant not in RATIO:
            raise ValueError(f"Format: quant={self.quant!r} must be one of {', '.join(RATIO)}.")
        if not 0 < self.weight_ratio <= 1 or (self.speed is not None and self.speed <= 0):
            raise ValueError(f"Format {self.quant}: weight_ratio={self.weight_ratio} must be in (0, 1] and "
                             f"speed={self.speed} positive.")


@dataclass(frozen=True)
class Estimate:
    """One choice: quant (auto resolved to ``resolved``) with one offload option."""

    quant: str
    offload: str
    resolved: str
    label: str  # the format's backend and mode
    weight_bytes: int  # every component at this format
    peak_bytes: int  # on the device, in the busiest phase of a run
    speed: float | None  # step time relative to full precision; None: not measured here
    fits: bool
    reason: str

    def to_dict(self) -> dict:
        return {"quant": self.quant, "offload": self.offload, "resolved": self.resolved, "format": self.label,
                "weight_bytes": self.weight_bytes, "peak_bytes": self.peak_bytes, "speed": self.speed,
                "fits": self.fits, "reason": self.reason}


def component_bytes(sizes: ModelSizes, fmt: Format, dtype_bytes: int) -> dict[str, int]:
    """Bytes of each component at ``fmt`` (the quantized ones) or the run's dtype (the rest); a pre-quantized
    single file's (``held_bytes``) whatever ``fmt``."""
    quantized = sizes.quantized
    return {c.name: c.held_bytes or round(c.params * dtype_bytes * (fmt.weight_ratio if c.name in quantized else 1.0))
            for c in sizes.components}


def decode_bytes(sizes: ModelSizes, pixels: int, tiled: bool, device_type: str = "cuda") -> int:
    """The VAE decode's working memory on ``device_type``: the whole image, or one tile; none without a VAE."""
    if sizes.get("vae") is None:
        return 0
    held = min(pixels, TILE_PIXELS) if tiled else pixels
    return held * decode_bytes_per_pixel(device_type) * sizes.vae_width // VAE_WIDTH


def run_peak(sizes: ModelSizes, weights: dict[str, int], pixels: int, text_tokens: int, memory: DeviceMemory,
             offload: str, placement: str = "auto", condition_pixels: int = 0) -> tuple[int, str]:
    """(peak bytes on the device, how the run is laid out) for one format's ``weights`` and one offload option."""
    work = working_memory(pixels, text_tokens, sizes.hidden, sizes.text_dim, condition_pixels)
    placed = frozenset().union(*PHASES.values())
    always = frozenset(weights) - placed  # auxiliary models (the Redux prior) stay where they are
    if memory.type in ONE_POOL or offload == "none":  # offload moves weights within the one pool: nothing freed
        layout = plan(weights, memory.free_bytes, work, pixels, memory.type, placement)
        resident, tiled = layout.resident, layout.tiled_decode
        how = f"placement {layout.name}" + (", the image decoded in tiles" if tiled else "")
    elif offload == "model":  # one model on the device at a time
        resident, tiled, how = always, False, "model CPU offload"
    elif offload == "block":  # the big ones block by block (one computing, the next copied in); the rest resident
        held = dict(weights)
        for name in sizes.quantized:  # the family's big components
            size = sizes.get(name)
            if name in held and size is not None and size.block:
                ratio = weights[name] / max(1, size.params)
                held[name] = round((size.params - size.in_blocks + 2 * size.block) * ratio)
        resident = frozenset(weights) - frozenset(sizes.quantized)
        peak = max(phase_bytes(held, resident, phase, work, decode_bytes(sizes, pixels, False)) for phase in PHASES)
        return peak, "block CPU offload"
    else:  # sequential: one layer at a time; the largest tensor of a phase stands for its layer
        ratio = {name: weights[name] / max(1, sizes.get(name).params) for name in weights}
        largest = {name: round(sizes.get(name).largest * ratio[name]) for name in weights}
        peak = max(phase_bytes({**largest, **{n: weights[n] for n in always}}, always, phase, work,
                               decode_bytes(sizes, pixels, False, memory.type)) for phase in PHASES)
        return peak, "sequential CPU offload"
    peak = max(phase_bytes(weights, resident, phase, work, decode_bytes(sizes, pixels, tiled, memory.type))
               for phase in PHASES)
    return peak, how


def estimate(sizes: ModelSizes, fmt: Format, offload: str, pixels: int, text_tokens: int, memory: DeviceMemory,
             dtype_bytes: int = 2, placement: str = "auto", quant: str | None = None, why: str = "",
             condition_pixels: int = 0, extra_bytes: int = 0) -> Estimate:
    """The estimate of one quant choice (``quant``: as chosen, default ``fmt.quant``) with ``offload``;
    ``extra_bytes``: held on the device beside the run (a hires fix's upscaler)."""
    if offload not in OFFLOADS:
        raise ValueError(f"offload={offload!r} is unknown; choose one of {', '.join(OFFLOADS)}.")
    if pixels <= 0 or text_tokens < 0 or dtype_bytes not in (2, 4):
        raise ValueError(f"estimate: pixels={pixels} must be positive, text_tokens={text_tokens} not negative and "
                         f"dtype_bytes={dtype_bytes} 2 or 4.")
    weights = component_bytes(sizes, fmt, dtype_bytes)
    peak, how = run_peak(sizes, weights, pixels, text_tokens, memory, offload, placement, condition_pixels)
    peak += extra_bytes
    fits = peak * HEADROOM <= memory.free_bytes
    speed = fmt.speed
    notes = [why] if why else []
    scores = attention_scores(pixels, text_tokens, sizes.hidden // HEAD_DIM, condition_pixels)
    if memory.type == "mps" and scores > MPS_SCORE_LIMIT:
        fits = False
        notes.append(f"{scores / 1e9:.1f}e9 attention scores, past the 2^32 Apple MPS holds in one call: a smaller "
                     "size is needed whatever the memory")
    if offload != "none" and memory.type in ONE_POOL:
        notes.append("offload has no effect on the CPU" if memory.type == "cpu" else
                     "offload frees nothing in Apple's unified memory (one pool for the CPU and the GPU)")
    elif offload != "none":
        speed = None  # weights cross to the device on every run: slower, by how much is not measured
        notes.append(f"{how}: slower (not measured)")
    elif memory.type != "cpu":
        notes.append(how)
    verdict = "fits" if fits else "does not fit"
    notes.append(f"{verdict}: ~{size_text(peak * HEADROOM)} with slack, {size_text(memory.free_bytes)} {memory.what}")
    return Estimate(quant or fmt.quant, offload, fmt.quant, fmt.label, sum(weights.values()), int(peak), speed, fits,
                    "; ".join(notes))


def auto_choice(sizes: ModelSizes, memory: DeviceMemory, dtype_bytes: int = 2,
                step_ratios: dict | None = None) -> AutoChoice:
    """What Auto picks for this model on this device (quantization.policy.choose_auto; ``step_ratios``: the step
    times measured on this class of device, which can make it pick fp8)."""
    held = {c.name: c.held_bytes for c in sizes.components if c.held_bytes}  # a pre-quantized file: as it is
    params = {name: n for name, n in sizes.params().items() if name not in held}
    quantizable = sum(n for name, n in params.items() if name in sizes.quantized) * dtype_bytes
    other = sum(n for name, n in params.items() if name not in sizes.quantized) * dtype_bytes + sum(held.values())
    return choose_auto(quantizable, other, memory.free_bytes, step_ratios, memory.type)


def estimate_all(sizes: ModelSizes, formats: dict[str, Format], pixels: int, text_tokens: int, memory: DeviceMemory,
                 dtype_bytes: int = 2, placement: str = "auto", offloads: tuple = OFFLOADS,
                 condition_pixels: int = 0, step_ratios: dict | None = None,
                 extra_bytes: int = 0) -> tuple[Estimate, ...]:
    """Every quant choice (auto first, then ``formats`` in order) with every offload option."""
    choice = auto_choice(sizes, memory, dtype_bytes, step_ratios if "fp8" in formats else None)
    if choice.quant not in formats:
        raise ValueError(f"estimate_all: Auto picks {choice.quant!r}, which formats does not describe.")
    rows = []
    for offload in offloads:
        rows.append(estimate(sizes, formats[choice.quant], offload, pixels, text_tokens, memory, dtype_bytes,
                             placement, quant="auto", why=f"Auto picks {choice.quant}: {choice.reason}",
                             condition_pixels=condition_pixels, extra_bytes=extra_bytes))
        rows += [estimate(sizes, fmt, offload, pixels, text_tokens, memory, dtype_bytes, placement,
                          condition_pixels=condition_pixels, extra_bytes=extra_bytes) for fmt in formats.values()]
    return tuple(rows)


def formats_for(device_type: str, quants: tuple[str, ...], cpu: str | None = None,
                gpu: str | None = None, family: str = "flux1") -> dict[str, Format]:
    """The Format of each quant choice in ``quants`` on ``device_type`` (``cpu``: the CPU class for the measured
    step ratios, None: this machine's; ``gpu``: a CUDA device's GPU class): the first backend of its chain, its
    measured weight ratio where measured (else the policy's target ratio), and its measured step ratio on a device of
    that class, as measured on ``family``'s components (FLUX.1's where that family is not measured)."""
    from quantization.policy import candidates, cpu_chain, cpu_step_ratios, cpu_weight_ratios, gpu_step_ratios

    measured_weight = cpu_weight_ratios()
    measured_step = (cpu_step_ratios(cpu, family) if device_type == "cpu"
                     else (gpu_step_ratios(gpu, family) if gpu else {}))
    out = {}
    for quant in quants:
        if quant == "auto":
            continue
        if quant == "none":
            out[quant] = Format("none", "full precision", 1.0, 1.0)
            continue
        chain = cpu_chain(quant, cpu, family) if device_type == "cpu" else candidates(quant, device_type, family)
        head = chain[0]
        key = (head.backend, head.format)
        out[quant] = Format(quant, f"{head.backend} {head.format}", measured_weight.get(key, RATIO[quant]),
                            measured_step.get(key))
    return out


@dataclass(frozen=True)
class Plan:
    """The estimates for one tool, model, size and device."""

    tool: str
    model: str
    width: int
    height: int
    text_tokens: int
    sizes: ModelSizes
    memory: DeviceMemory
    auto: AutoChoice
    estimates: tuple[Estimate, ...]
    hires: dict | None = None  # a hires fix: {"width", "height" (the second pass's), "upscaler_bytes"}
    transformer: str | None = None  # the name of a single-file transformer that replaces the model's own

    def row(self, quant: str, offload: str) -> Estimate | None:
        return next((e for e in self.estimates if e.quant == quant and e.offload == offload), None)

    def to_dict(self) -> dict:
        file = {"transformer": self.transformer} if self.transformer else {}
        return {"tool": self.tool, "model": self.model, **file, "width": self.width, "height": self.height,
                "text_tokens": self.text_tokens, "sizes_from": self.sizes.source,
                "components": {c.name: c.params for c in self.sizes.components},
                "device": {"type": self.memory.type, "free_bytes": self.memory.free_bytes,
                           "total_bytes": self.memory.total_bytes, "free_is": self.memory.what},
                "auto": {"quant": self.auto.quant, "reason": self.auto.reason},
                **({"hires": self.hires} if self.hires else {}),
                "estimates": [e.to_dict() for e in self.estimates]}


def plan_run(tool, model: str, width: int, height: int, memory: DeviceMemory, quants: tuple[str, ...],
             dtype_bytes: int = 2, placement: str = "auto", cpu: str | None = None, gpu: str | None = None,
             hires: tuple[int, int] | None = None, upscaler_bytes: int = 0, transformer: str | None = None) -> Plan:
    """The estimates of ``tool`` (a pipelines.tools.Tool) on ``model`` at ``width`` x ``height`` (``gpu``: the GPU
    class of a CUDA device, default this machine's first GPU's). ``hires``: a hires fix's second pass size; the run
    is then both passes, each row the larger of the two plus the upscaler's weights (``upscaler_bytes``).
    ``transformer``: a single-file transformer that replaces the model's own (a pre-quantized one holds its bytes)."""
    from quantization.policy import cpu_step_ratios, gpu_class, gpu_step_ratios

    from ..models.single_file import inspect
    from .sizes import model_sizes, with_transformer_file

    if memory.type == "cuda" and gpu is None:
        import torch

        gpu = gpu_class(torch.device("cuda"))
    sizes = model_sizes(tool, model)
    file = inspect(transformer) if transformer else None
    if file is not None:
        sizes = with_transformer_file(sizes, file)
    text_tokens = tool.defaults(model).max_sequence_length
    formats = formats_for(memory.type, quants, cpu, gpu, sizes.family)
    ratios = (gpu_step_ratios(gpu, sizes.family) if gpu
              else (cpu_step_ratios(cpu, sizes.family) if memory.type == "cpu" else {}))

    def rows_at(w: int, h: int, extra: int) -> tuple[Estimate, ...]:
        return estimate_all(sizes, formats, w * h, text_tokens, memory, dtype_bytes, placement,
                            condition_pixels=tool.condition_pixels(w, h), step_ratios=ratios, extra_bytes=extra)

    rows = rows_at(width, height, 0)
    extra = None
    if hires:
        rows = hires_rows(rows, rows_at(hires[0], hires[1], upscaler_bytes), (width, height), hires, upscaler_bytes)
        extra = {"width": hires[0], "height": hires[1], "upscaler_bytes": upscaler_bytes}
    auto = auto_choice(sizes, memory, dtype_bytes, ratios if "fp8" in formats else None)
    return Plan(tool.name, model, width, height, text_tokens, sizes, memory, auto, rows, extra,
                file.name if file is not None else None)


def hires_rows(first: tuple[Estimate, ...], second: tuple[Estimate, ...], size: tuple[int, int],
               larger: tuple[int, int], upscaler_bytes: int) -> tuple[Estimate, ...]:
    """A hires fix's rows: for each choice the pass with the larger peak (the second's, upscaler weights included),
    fitting only when both passes fit."""
    rows = []
    for a, b in zip(first, second):
        top = b if b.peak_bytes >= a.peak_bytes else a
        held = f" with the upscaler's {size_text(upscaler_bytes)}" if upscaler_bytes else ""
        note = (f"hires fix: {size[0]}x{size[1]}, then {larger[0]}x{larger[1]}{held}; the peak is the "
                f"{'second' if top is b else 'first'} pass's")
        rows.append(replace(top, fits=a.fits and b.fits, reason=f"{note}; {top.reason}"))
    return tuple(rows)


@dataclass(frozen=True)
class SideBySide:
    """What the model manager's memory budget holds with several models loaded at once, at one quant choice."""

    quant: str
    fmt: str  # the backend and format the quant choice runs with
    per_model: dict[str, int]  # model -> the bytes it adds (its components not already held for an earlier model)
    shared: int  # bytes held once though more than one of the models uses them
    total: int

    def fits(self, budget_bytes: int) -> bool:
        """Whether all the models stay loaded together under ``budget_bytes`` (ModelManager(budget_bytes=...));
        otherwise loading the last one unloads the least recently used pipeline first."""
        return self.total <= budget_bytes


def side_by_side(models: list[ModelSizes], fmt: Format, dtype_bytes: int = 2) -> SideBySide:
    """The weight bytes the manager holds for ``models`` loaded together at ``fmt``: each component once. The manager
    shares a component between pipelines when its weights are the same files; among official models those are the
    text encoders and VAEs with the same published size (FLUX.1's CLIP, T5 and VAE across the FLUX.1 tools; klein's
    Qwen3 and VAE between a klein model and its base model); each model's transformer is its own. FLUX.1 and FLUX.2
    [klein] share none: their text encoders (T5 and CLIP; Qwen3) and VAEs (16 and 32 latent channels) differ."""
    held: dict[tuple, int] = {}
    per_model, shared = {}, 0
    for sizes in models:
        added = 0
        for name, value in component_bytes(sizes, fmt, dtype_bytes).items():
            key = (name, sizes.get(name), name in sizes.quantized) + ((sizes.model,) if name == "transformer" else ())
            if key in held:
                shared += value
                continue
            held[key] = value
            added += value
        per_model[sizes.model] = added
    return SideBySide(fmt.quant, fmt.label, per_model, shared, sum(held.values()))
