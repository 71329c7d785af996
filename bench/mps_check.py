"""`python app.py bench mps-check`: on a Mac (Apple MPS), seconds-long checks of what the studio assumes about MPS,
measured; one table. --narrow runs the same checks on the CPU, for a try without a Mac.

  memory model        Metal's recommended maximum, what the driver holds, the RAM available, and the one free
                      figure Auto, placement and the estimate read (pipelines.memory.device.unified_free)
  <backend format>    each quantized config of the 4-bit and 8-bit MPS chains on a stack of 3072-wide Linear layers:
                      refused (and why), or quantized on the device (seconds), its step time against bf16, and how
                      many int4 weights were unpacked (never, when quantized on the device it runs on)
  tiny run, <quant>   the tiny family end to end at auto and 4bit: the backend each component got, fallbacks,
                      placement, peak memory (MPS: the Metal driver's allocations)
  attention limit     the largest square size whose attention MPS can hold in one call, and the refusal of
                      2048x2048 (computed, never run: past the limit the process aborts)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import Check, bench_args, finish_checks, logger

log = logger("bench mps-check")
WIDTH = 3072  # FLUX.1's transformer width: the layers measured are its shape
NARROW_WIDTH = 1024  # on the CPU (--narrow), where bf16 may be emulated and slow
LAYERS = 4
TOKENS = 256
REPEATS = 5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py bench mps-check", description=__doc__.splitlines()[0])
    parser.add_argument("--narrow", action="store_true", help="everything on the CPU (no Mac needed)")
    parser.add_argument("--no-runs", action="store_true", help="skip the tiny end-to-end runs")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = parser.parse_args(bench_args(argv))
    if args.narrow:
        device = torch.device("cpu")
    elif torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        print("error: no Apple MPS device here; run `bench mps-check --narrow` to try the checks on the CPU.",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    checks = []

    def run(name, fn, *fn_args):
        check = Check(name)
        began = time.perf_counter()
        log(f"{name} ...")
        try:
            check.ok, check.measured = fn(device, *fn_args)
        except Exception as error:  # noqa: BLE001  a check that fails says how, the others still run
            check.ok, check.measured = False, f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"
        check.seconds = time.perf_counter() - began
        checks.append(check)

    run("memory model", memory_model)
    width = NARROW_WIDTH if args.narrow else WIDTH
    reference: dict = {}
    for config in mps_configs():
        run(config.label, backend_step, config, width, reference)
    if not args.no_runs:
        import os

        with tempfile.TemporaryDirectory(prefix="fluxforge-mps-check-") as tmp:
            os.environ["FLUXFORGE_QUANT_CACHE_DIR"] = str(Path(tmp) / "quantized")
            from pipelines.models.tiny import ensure_tiny_family
            from pipelines.tools import all_tools

            ensure_tiny_family(all_tools())
            for quant in ("auto", "4bit"):
                run(f"tiny run, {quant}", tiny_run, quant)
    run("attention limit", attention_limit)
    return finish_checks("mps-check", checks, device, time.perf_counter() - start, args.out)


def mps_configs() -> tuple:
    """The quantized configs of MPS's 4-bit and 8-bit chains, once each."""
    from quantization.policy import candidates

    configs = [c for quant in ("4bit", "8bit") for c in candidates(quant, "mps") if c.bits < 16]
    return tuple(dict.fromkeys(configs))


# ---- the checks --------------------------------------------------------------------------------------------------
def memory_model(device):
    import psutil

    from pipelines.memory.device import device_memory, free_memory

    free, panel = free_memory(device), device_memory(device)
    if device.type == "mps":
        recommended = int(torch.mps.recommended_max_memory())
        held = int(torch.mps.driver_allocated_memory())
        seen = (f"Metal recommended max {recommended / 2**30:.1f} GiB, driver holds {held / 2**30:.2f} GiB, RAM "
                f"available {psutil.virtual_memory().available / 2**30:.1f} GiB")
    else:
        seen = f"RAM available {psutil.virtual_memory().available / 2**30:.1f} GiB (the CPU's pool)"
    same = free == panel.free_bytes or abs(free - panel.free_bytes) < 64 * 2**20  # read a moment apart
    return same, f"{seen}; Auto/placement {free / 2**30:.1f} GiB, estimate {panel.free_bytes / 2**30:.1f} GiB free"


def _stack(dtype: torch.dtype, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(LAYERS)]).to(dtype).eval()


def _sync(device: torch.device) -> None:
    if device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_s(module, x: torch.Tensor) -> float:
    with torch.no_grad():
        module(x)
        _sync(x.device)
        began = time.perf_counter()
        for _ in range(REPEATS):
            module(x)
        _sync(x.device)
    return (time.perf_counter() - began) / REPEATS


def backend_step(device, config, width: int = WIDTH, reference: dict | None = None):
    from optimum.quanto.tensor.weights.tinygemm.packed import TinyGemmPackedTensor

    from quantization.registry import backend_for, check_backend

    refusal = check_backend(config, device)
    if refusal:
        return None, f"refused here: {refusal}"
    dtype = torch.bfloat16
    x = torch.randn(TOKENS, width, dtype=dtype, device=device)
    reference = {} if reference is None else reference
    if width not in reference:  # the bf16 step, measured once for every backend
        reference[width] = _step_s(_stack(dtype, width).to(device), x)
    full = reference[width]
    calls, unpack = [], TinyGemmPackedTensor.unpack
    TinyGemmPackedTensor.unpack = lambda self: calls.append(1) or unpack(self)
    try:
        began = time.perf_counter()
        module = backend_for(config).quantize(_stack(dtype, width), config, device, dtype).eval()
        _sync(device)
        quantize_s = time.perf_counter() - began
        step = _step_s(module, x)
    finally:
        TinyGemmPackedTensor.unpack = unpack
    weight = type(module[0].weight).__name__
    return not calls, (f"quantized on {device.type} in {quantize_s:.2f} s ({weight}); {LAYERS} x {width}x{width} "
                       f"step {step * 1e3:.1f} ms = {step / full:.2f}x bf16 ({full * 1e3:.1f} ms); int4 unpacked "
                       f"{len(calls)} times")


def tiny_run(device, quant):
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager
    from pipelines.request import GenerationRequest

    from .e2e import dev_tool_name

    engine = Engine(ModelManager(device=device))
    result = engine.generate(GenerationRequest(tool=dev_tool_name(), prompt="a fox", model="tiny", quant=quant,
                                               seed=1, steps=4))
    report = result.report
    parts = [f"{name} {c['backend']} {c['format']}" for name, c in report["quantization"]["components"].items()
             if name in ("transformer", "text_encoder_2")]
    fallbacks = [f"{f['backend']} {f['format']}: {f['reason']}" for f in report["quantization"]["fallbacks"]]
    placement = report.get("placement", {})
    return True, (f"{'; '.join(parts)}; placement {placement.get('name')}; peak "
                  f"{report['memory']['peak_bytes'] / 2**20:.0f} MiB; denoise {report['timings']['denoise_s']:.2f} s"
                  + (f"; fallbacks: {'; '.join(fallbacks)[:200]}" if fallbacks else ""))


def attention_limit(device):
    from pipelines.memory.attention import largest_square, mps_attention_refusal

    side, kontext = largest_square(512, 24), largest_square(512, 24, 1.0)
    refused = mps_attention_refusal(2048, 2048, 512, 24) is not None
    return refused, (f"FLUX.1 (24 heads, 512 text tokens): up to {side}x{side}, {kontext}x{kontext} with a "
                     f"same-size input image (Kontext); 2048x2048 refused: {refused} (computed, not run)")


if __name__ == "__main__":
    sys.exit(main())
