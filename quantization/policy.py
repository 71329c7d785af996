"""Which backend runs a quant choice on which device: one table of candidates, pure functions over it."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from .config import FULL_PRECISION, BitsAndBytesConfig, QuantConfig, QuantoConfig, TorchAoConfig

QUANTS = ("auto", "none", "8bit", "4bit", "fp8")
MEASURED = Path(__file__).with_name("measured.json")  # written by `bench --update-policy`

# Candidates per (device type, quant) in order of preference; full precision always ends the chain.
# CUDA: bitsandbytes. CPU: this order where measurements tie or are missing; cpu_chain reorders it from the
# measured table of this class of CPU.
# MPS: quanto int4, then bitsandbytes NF4 (4-bit quantize, dequantize and matmul run on MPS since bitsandbytes
# 0.50), then quanto int8 before full precision: on a 16-32 GB Mac a 4-bit chain that fails must not end at the
# 34 GB of a bf16 FLUX.1; never float8 (quanto's qfloat8 dequantizes on MPS, Metal has no float8).
CANDIDATES: dict[tuple[str, str], tuple[QuantConfig, ...]] = {
    ("cuda", "8bit"): (BitsAndBytesConfig("int8"), TorchAoConfig("int8_weight_only"), QuantoConfig("int8")),
    ("cuda", "4bit"): (BitsAndBytesConfig("nf4"), QuantoConfig("int4")),
    ("mps", "8bit"): (QuantoConfig("int8"),),
    ("mps", "4bit"): (QuantoConfig("int4"), BitsAndBytesConfig("nf4"), QuantoConfig("int8")),
    ("cpu", "8bit"): (TorchAoConfig("int8_dynamic"), QuantoConfig("int8"), BitsAndBytesConfig("int8"),
                      TorchAoConfig("int8_weight_only")),
    ("cpu", "4bit"): (BitsAndBytesConfig("nf4"), QuantoConfig("int4")),
    # float8 runs only on NVIDIA GPUs of compute capability 8.9+; elsewhere the backend refuses it and the
    # chain falls back to full precision, visibly.
    # On a CPU, float8 weight-only stores the weights in float8 and computes in bf16.
    ("cuda", "fp8"): (TorchAoConfig("float8_dynamic"), TorchAoConfig("float8_weight_only")),
    ("mps", "fp8"): (TorchAoConfig("float8_dynamic"),),
    ("cpu", "fp8"): (TorchAoConfig("float8_dynamic"), TorchAoConfig("float8_weight_only")),
}

# Weight bytes relative to bf16: the physical floor of the format plus its scales.
RATIO = {"none": 1.0, "8bit": 0.51, "4bit": 0.28, "fp8": 0.51}
HEADROOM = 1.25  # activations, latents and the allocator's slack

Ratios = dict[tuple[str, str], float]  # (backend, format) -> measured ratio to full precision


def all_configs() -> tuple[QuantConfig, ...]:
    """Every quantized config of the table, once, grouped by backend."""
    unique = dict.fromkeys(config for chain in CANDIDATES.values() for config in chain)
    return tuple(sorted(unique, key=lambda c: (c.backend, -c.bits, c.format)))


FAMILY = "flux1"  # the model family the top-level tables were measured on; others' are under "families"


def read_measured(path: Path) -> dict:
    """A measured table as the policy uses it: {"step": {cpu: Ratios}, "weight": Ratios, "machines": {cpu: text},
    "gpu_step": {gpu: Ratios}, "gpu_machines": {gpu: text}, "families": {family: {"step", "machines", "gpu_step",
    "gpu_machines"}}} (GPU classes: gpu_class()). The top-level tables are FLUX.1's components'; "families" holds
    those measured on another family's components (FLUX.2 [klein]'s transformer and Qwen3 text encoder).

    The file keys each ratio by 'backend format'."""
    raw = json.loads(Path(path).read_text())

    def pairs(table: dict) -> Ratios:
        return {tuple(name.split(" ", 1)): value for name, value in table.items()}

    def tables(raw: dict) -> dict:
        return {"step": {cpu: pairs(table) for cpu, table in raw.get("cpu_step_ratio", {}).items()},
                "machines": dict(raw.get("cpu_machines", {})),
                "gpu_step": {gpu: pairs(table) for gpu, table in raw.get("gpu_step_ratio", {}).items()},
                "gpu_machines": dict(raw.get("gpu_machines", {}))}

    return {**tables(raw), "weight": pairs(raw["cpu_weight_ratio"]),
            "families": {family: tables(table) for family, table in raw.get("families", {}).items()}}


@functools.cache
def _measured() -> dict:
    return read_measured(MEASURED)


def forget_measured() -> None:
    """Read measured.json again on next use (after the benchmark rewrote it)."""
    _measured.cache_clear()


def cpu_order(quant: str, step_ratio: Ratios, weight_ratio: Ratios) -> tuple[QuantConfig, ...]:
    """CPU candidates for ``quant``: options meeting RATIO[quant], fastest measured step first; then the rest."""
    def key(config: QuantConfig) -> tuple:
        name = (config.backend, config.format)
        meets = weight_ratio.get(name, float("inf")) <= RATIO[quant]
        return (not meets, name not in step_ratio, step_ratio.get(name, 0.0))

    return tuple(sorted(CANDIDATES[("cpu", quant)], key=key))


@functools.cache
def cpu_class() -> str:
    """'native-bf16' where the CPU computes bf16 in hardware (AVX512-BF16 or AMX), else 'emulated-bf16'.

    The two rank the backends differently: a bf16 matmul emulated on AVX2 is several times slower than an int8 one.
    """
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own cpuinfo queries
    native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return "native-bf16" if native else "emulated-bf16"


def _family_table(family: str, kind: str, key: str) -> dict:
    """``family``'s measured ``kind`` table for ``key`` (a CPU or GPU class): FLUX.1's ratios, replaced by those
    measured on ``family``'s components where there are any (empty when neither is measured)."""
    measured = _measured()
    own = measured["families"].get(family, {}).get(kind, {}).get(key, {}) if family != FAMILY else {}
    return {**measured[kind].get(key, {}), **own}


def cpu_step_ratios(cpu: str | None = None, family: str = FAMILY) -> Ratios:
    """Measured step-time ratios for ``cpu`` (default: this CPU's class) on ``family``'s components (FLUX.1's for the
    options that family is not measured with on this class); empty when unmeasured."""
    return _family_table(family, "step", cpu or cpu_class())


def cpu_weight_ratios() -> Ratios:
    """Measured weight-byte ratios (the same on every CPU)."""
    return _measured()["weight"]


def cpu_machines(family: str = FAMILY) -> dict[str, str]:
    """Per class of CPU: the machine its table (of ``family``'s components) was measured on."""
    measured = _measured()
    return measured["machines"] if family == FAMILY else measured["families"].get(family, {}).get("machines", {})


def gpu_class(device) -> str:
    """An NVIDIA GPU's class for the measured table: its compute capability, e.g. 'sm_89' (Ada), 'sm_90' (Hopper)."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def gpu_step_ratios(gpu: str, family: str = FAMILY) -> Ratios:
    """Measured step-time ratios on GPUs of class ``gpu`` (gpu_class) on ``family``'s components (else FLUX.1's);
    empty when unmeasured."""
    return _family_table(family, "gpu_step", gpu)


def measured_step_ratios(device, family: str = FAMILY) -> Ratios:
    """The measured step-time ratios that hold on ``device`` (a torch.device): its GPU class's, or its CPU class's."""
    if device.type == "cuda":
        return gpu_step_ratios(gpu_class(device), family)
    return cpu_step_ratios(family=family) if device.type == "cpu" else {}


def cpu_chain(quant: str, cpu: str | None = None, family: str = FAMILY) -> tuple[QuantConfig, ...]:
    """The CPU candidates for ``quant`` on ``cpu`` (default: this CPU's class), from the measured tables of
    ``family``'s components (FLUX.1's where that family is not measured on this class)."""
    return cpu_order(quant, cpu_step_ratios(cpu, family), cpu_weight_ratios())


def candidates(quant: str, device_type: str, family: str = FAMILY) -> tuple[QuantConfig, ...]:
    """The fallback chain for ``quant`` ('none', '8bit', '4bit', 'fp8') on ``device_type`` for a model of ``family``
    ('flux1', 'flux2': on a CPU the order follows that family's measured table)."""
    if quant not in QUANTS or quant == "auto":
        raise ValueError(f"quant={quant!r} has no candidates; resolve 'auto' first, or use one of "
                         f"{', '.join(QUANTS[1:])}.")
    if quant == "none":
        return (FULL_PRECISION,)
    if device_type not in ("cuda", "mps") and quant != "fp8":
        return cpu_chain(quant, family=family) + (FULL_PRECISION,)
    return CANDIDATES[(device_type, quant)] + (FULL_PRECISION,)


def offered(device) -> tuple[str, ...]:
    """The quant choices worth offering on ``device`` (a torch.device): fp8 only where float8 runs."""
    from .backends.torchao_backend import float8_refusal

    return tuple(q for q in QUANTS if q != "fp8" or float8_refusal(device) is None)


@dataclass(frozen=True)
class AutoChoice:
    quant: str
    reason: str


def choose_auto(quantizable_bytes: int, other_bytes: int, free_bytes: int | None,
                step_ratios: Ratios | None = None, device_type: str = "cuda") -> AutoChoice:
    """Full precision when the model fits with headroom, else 8-bit, else 4-bit; fp8 instead of full precision or
    8-bit where it fits and ``step_ratios`` (measured on this class of device: measured_step_ratios) show its first
    backend faster than what it replaces (full precision: 1.0; 8-bit: the 8-bit chain's first backend).

    ``quantizable_bytes``: transformer + T5 at full precision; ``other_bytes``: CLIP, VAE and the rest.
    """
    from .units import size_text

    if free_bytes is None:
        return AutoChoice("none", "free memory unknown: full precision")
    for quant in ("none", "8bit", "4bit"):
        need = (quantizable_bytes * RATIO[quant] + other_bytes) * HEADROOM
        if need <= free_bytes:
            why = f"needs ~{size_text(need)} of {size_text(free_bytes)} free"
            faster = _fp8_faster(quant, step_ratios or {}, device_type)
            return AutoChoice("fp8", f"{why}; {faster}") if faster else AutoChoice(quant, why)
    need = (quantizable_bytes * RATIO["4bit"] + other_bytes) * HEADROOM
    # On a Mac the CPU and the GPU share one pool of memory: offloading to the CPU frees nothing there.
    advice = "use a smaller image or close other apps" if device_type == "mps" else "consider model CPU offload"
    return AutoChoice("4bit", f"even 4-bit needs ~{size_text(need)} of {size_text(free_bytes)} free: {advice}")


def _fp8_faster(quant: str, ratios: Ratios, device_type: str) -> str | None:
    """Why fp8 beats ``quant`` by the measured ``ratios`` (None when it does not, or is not measured)."""
    if quant not in ("none", "8bit") or (device_type, "fp8") not in CANDIDATES:
        return None
    head = CANDIDATES[(device_type, "fp8")][0]
    fp8 = ratios.get((head.backend, head.format))
    if fp8 is None:
        return None
    if quant == "none":
        return f"fp8 ({head.label}) measured {fp8:.2f}x a full-precision step here" if fp8 < 1.0 else None
    eight = candidates("8bit", device_type)[0]
    other = ratios.get((eight.backend, eight.format))
    if other is None or fp8 >= other:
        return None
    return f"fp8 ({head.label}) measured {fp8:.2f}x a full-precision step here, 8-bit ({eight.label}) {other:.2f}x"
