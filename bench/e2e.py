"""`python app.py bench e2e`: the studio's real generation path, end to end, on a FLUX.1-dev-shaped model.

It builds once, under the studio cache (bench-e2e/<preset>-<hash>), a FluxPipeline directory with deterministic
random weights: scheduler, the small locally built tokenizers, CLIP-L, T5-XXL, the FLUX.1-dev transformer and
FLUX's VAE, at the real sizes (--full: 16.9B parameters, about 34 GB in bf16, built directly on the GPU) or scaled
down (--narrow: hidden 128, 1 + 2 blocks, T5 d_model 128 x 2 layers, a small VAE; for CPUs and tests). The
embedding tables keep the real vocabulary sizes; the small tokenizers' ids stay inside them.

Then, for each quant mode and each speed option set, it runs `python app.py generate --tool <FLUX.1 [dev]>` in a
fresh process and reads the run's --report JSON: backend per component, peak memory (allocated and reserved), the
timings, the placement.

  none (bf16)            once: nothing is quantized, so a cold and a cached run would be the same run
  each quantized mode    twice, with its own quantized-weights cache (FLUXFORGE_QUANT_CACHE_DIR): cold (empty:
                         quantize and write) then cached (read it back); the cache is deleted after the mode's runs,
                         so the disk holds the model and one mode's quantized weights at a time
  each --options set     once more per mode, with that mode's cache already written

`none` always runs first: the ratios are against it, in the same invocation. A ratio is a run's denoise time without
its first step's extra (compiling, warming up) over bf16's: the time of its steps as they run once warm. Peak memory
and denoise time of a mode are those of its cached run (the cold run's beside them). Capability probes run as in
the studio (FLUXFORGE_PROBE is left alone): their results are kept in the studio cache, so only the first run on a
machine pays for them, and that run's cold load shows it.

--budget SECONDS (default 540: one 10-minute command with room to spare) bounds the whole invocation, the model
build included: the runs go in order of what they tell (bf16, then each mode cold and cached in --quant's order, then
the option sets), each started only when its expected time (the longest of its kind so far, or a preset's prior)
still fits; the others are listed as skipped, with the time they would have needed. A run is stopped at the end of
the budget (or --timeout). On an H100-class GPU the default plan (none, 8bit, 4bit: five processes, after a build of
about 1-2 minutes that later invocations reuse) takes about 6-8 minutes and needs about 52 GB of disk (the 34 GB
model and one 8-bit cache); --narrow on 2 CPU cores: about 20 s per process.

--model klein-4b builds FLUX.2 [klein] 4B's shape instead (a Flux2KleinPipeline directory, distilled: the
transformer of 5 double and 20 single blocks at hidden 3072, the Qwen3-4B text encoder, FLUX.2's VAE, the small
locally built Qwen tokenizer: 7.98B parameters, about 16 GB in bf16, the official size table's count) and runs the
klein tool at 1024x1024, 4 steps; --narrow scales it down as for FLUX.1 (the Qwen3 keeps the 27 layers whose
hidden states klein reads).

Targets (judged on --full only): 4-bit peak allocated <= 8 GiB; 8-bit <= 13 GiB; NF4 denoise <= 1.0x bf16;
fastest 8-bit <= 0.6x; fastest combination <= 0.4x; cached 4-bit load <= 0.6x the bf16 load; cold 4-bit start
<= 2x the bf16 load. The step cache's effect is reported apart (random weights: not a quality measure).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .common import REPO, bench_args, logger, weights_root, worker_env, write_json
from .shapes import FULL, Shape, klein

log = logger("bench e2e")
RESULTS = REPO / "bench" / "results"
BUILD_VERSION = "v1"
PROMPT = "a red fox in fresh snow, morning light"
SEED = "1"
STEP_CACHE_DEFAULT = "0.12"
NOT_QUALITY = "random weights: not a quality measure"
GIB = 2**30
FULL_MODEL_BYTES = 33_740_000_000  # the full preset on disk in bf16: 16.9B parameters
KLEIN_FULL_MODEL_BYTES = 15_964_117_574  # klein 4B's full preset on disk in bf16: 7.98B parameters
MODELS = ("flux1", "klein-4b")
QUANTIZED_SHARE = 0.51  # the largest mode's quantized weights (8-bit) relative to the model, kept while it runs
BUDGET_S = 540  # one command of at most 10 minutes, with room to spare
# Seconds a run is expected to take before one of its kind has run (full: an H100-class GPU; narrow: 2 CPU cores).
PRIORS = {"full": {"build": 150, "none": 60, "cold": 150, "cached": 60, "option": 150},
          "narrow": {"build": 20, "none": 25, "cold": 30, "cached": 25, "option": 60}}


@dataclass(frozen=True)
class Preset:
    """Model sizes (transformer, T5 and VAE from ``shape``, CLIP here) and the run's defaults."""

    name: str
    shape: Shape
    clip_hidden: int
    clip_layers: int
    clip_heads: int
    clip_intermediate: int
    clip_vocab: int = 49408
    width: int = 1024
    height: int = 1024
    steps: int = 28

    @property
    def family(self) -> str:
        return self.shape.family

    def spec(self) -> dict:
        """What the built directory depends on (run sizes excluded)."""
        shape = asdict(self.shape)
        for key in ("image_size", "text_tokens", "steps", "guidance", "encodes"):
            shape.pop(key)
        if self.family == "flux1":  # FLUX.1's directories keep the names they were built under
            for key in [k for k in shape if k.startswith(("qwen_", "full_")) or k == "family"]:
                shape.pop(key)
        return {"version": BUILD_VERSION, "shape": shape, "clip": [self.clip_hidden, self.clip_layers,
                                                                   self.clip_heads, self.clip_intermediate,
                                                                   self.clip_vocab]}

    def slug(self) -> str:
        digest = hashlib.sha1(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.name}-{digest}" if self.family == "flux1" else f"klein-4b-{self.name}-{digest}"


PRESETS = {
    "full": Preset("full", replace(FULL, image_size=1024, steps=28), clip_hidden=768, clip_layers=12, clip_heads=12,
                   clip_intermediate=3072),
    "narrow": Preset("narrow", replace(FULL, heads=2, head_dim=64, joint_attention_dim=128, pooled_dim=64,
                                       axes_dims_rope=(16, 24, 24), double_blocks=1, single_blocks=2, t5_d_ff=256,
                                       t5_heads=2, t5_layers=2, vae_channels=(32, 32, 32, 32),
                                       vae_layers_per_block=1, image_size=256, steps=4),
                     clip_hidden=64, clip_layers=2, clip_heads=2, clip_intermediate=128, width=256, height=256,
                     steps=4),
}
# FLUX.2 [klein] 4B (no CLIP: the clip fields are unused). Full: klein 4B's published widths and depths
# (bench.shapes.klein, from pipelines.models.official.KLEIN_CONFIGS), 1024x1024, its 4 steps. Narrow: hidden 256
# (2 heads of 128, as klein's rope axes need), 1 + 2 blocks, a Qwen3 of width 128 (the 4-bit backends' group size)
# with the 27 layers klein reads.
KLEIN_PRESETS = {
    "full": Preset("full", replace(klein(FULL, "4B"), image_size=1024, steps=4), clip_hidden=0, clip_layers=0,
                   clip_heads=0, clip_intermediate=0, steps=4),
    "narrow": Preset("narrow", replace(klein(replace(FULL, heads=2, double_blocks=1, single_blocks=2, t5_layers=27,
                                                     vae_channels=(32, 32, 32, 32), vae_layers_per_block=1,
                                                     image_size=256, steps=4), "4B"),
                                       qwen_hidden=128, qwen_intermediate=256, qwen_heads=2, qwen_kv_heads=1,
                                       qwen_head_dim=64, joint_attention_dim=384),
                     clip_hidden=0, clip_layers=0, clip_heads=0, clip_intermediate=0, width=256, height=256,
                     steps=4),
}


def preset_for(name: str, model: str = "flux1") -> Preset:
    """The e2e preset ``name`` ('full', 'narrow') of ``model`` (one of MODELS)."""
    if model not in MODELS:
        raise ValueError(f"--model {model!r}: choose one of {', '.join(MODELS)}")
    return (PRESETS if model == "flux1" else KLEIN_PRESETS)[name]


# ---- the model directory ---------------------------------------------------------------------------------------

def build_clip(preset: Preset, tokenizer, dtype: torch.dtype):
    from transformers import CLIPTextConfig, CLIPTextModel

    from .models import _seeded

    config = CLIPTextConfig(
        vocab_size=preset.clip_vocab, hidden_size=preset.clip_hidden, intermediate_size=preset.clip_intermediate,
        num_hidden_layers=preset.clip_layers, num_attention_heads=preset.clip_heads, max_position_embeddings=77,
        projection_dim=preset.shape.pooled_dim, hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    previous = _seeded(preset.shape.seed + 4, dtype)
    try:
        return CLIPTextModel(config).eval()
    finally:
        torch.set_default_dtype(previous)


def model_dir(preset: Preset, cache: Path, device: torch.device) -> Path:
    """The FluxPipeline directory of ``preset``, built once (in a temporary folder, then renamed into place)."""
    from .models import build_once

    return build_once(Path(cache) / "bench-e2e" / preset.slug(), lambda tmp: write_model(preset, tmp, device))


def components(preset: Preset, dtype: torch.dtype = torch.bfloat16) -> tuple[dict, dict]:
    """(builders by component name, model_index.json's other entries) of ``preset``'s pipeline directory."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from .models import build_text_encoder, build_transformer, build_vae

    shape = preset.shape
    if preset.family == "flux1":
        return _flux1_components(preset, dtype)
    from pipelines.models.tiny import qwen_tokenizer

    tokenizer = qwen_tokenizer()  # a small vocabulary: its ids stay inside Qwen3's 151936 rows
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                max_shift=1.15, shift=3.0, use_dynamic_shifting=True)
    builders = {
        "scheduler": lambda: scheduler,
        "tokenizer": lambda: tokenizer,
        "text_encoder": lambda: build_text_encoder(shape, dtype),  # seeds shape.seed + 2
        "transformer": lambda: build_transformer(shape, dtype),  # shape.seed + 1
        "vae": lambda: build_vae(shape).to(dtype),  # shape.seed + 3
    }
    return builders, {"_class_name": "Flux2KleinPipeline", "is_distilled": True}


def write_model(preset: Preset, folder: Path, device: torch.device) -> None:
    """Every component, one at a time (built on ``device`` in bf16, saved, freed), and model_index.json."""
    import diffusers

    builders, extra = components(preset)
    index = {"_diffusers_version": diffusers.__version__, **extra}
    for name, build in builders.items():
        log(f"  {name} ...")
        with torch.device(device):
            part = build()
        part.save_pretrained(folder / name)
        index[name] = [type(part).__module__.split(".")[0], type(part).__name__]
        del part
        if device.type == "cuda":
            torch.cuda.empty_cache()
    (folder / "model_index.json").write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")


def _flux1_components(preset: Preset, dtype: torch.dtype) -> tuple[dict, dict]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pipelines.models.tiny import clip_tokenizer, t5_tokenizer

    from .models import build_t5, build_transformer, build_vae

    shape = preset.shape
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                max_shift=1.15, shift=3.0, use_dynamic_shifting=True)
    builders = {
        "scheduler": lambda: scheduler,
        "tokenizer": lambda: tokenizer,
        "tokenizer_2": lambda: tokenizer_2,
        "text_encoder": lambda: build_clip(preset, tokenizer, dtype),
        "text_encoder_2": lambda: build_t5(shape, dtype),  # seeds shape.seed + 2
        "transformer": lambda: build_transformer(shape, dtype),  # shape.seed + 1
        "vae": lambda: build_vae(shape).to(dtype),  # shape.seed + 3
    }
    return builders, {"_class_name": "FluxPipeline", "feature_extractor": [None, None], "image_encoder": [None, None]}


# ---- the runs -----------------------------------------------------------------------------------------------------

def allowed_quants() -> list[str]:
    """The quant modes `generate --quant` takes now (auto excluded: the bench names what it measures)."""
    from pipelines.defaults import QUANTS

    return [q for q in QUANTS if q != "auto"]


def dev_tool_name(family: str = "flux1") -> str:
    """The FLUX.1 [dev] tool (FLUX.2 [klein] 4B's text-to-image tool for ``family`` 'flux2'), found by its model
    rather than spelled here."""
    from pipelines.tools import all_tools

    model, pipeline = (("/FLUX.1-dev", "FluxPipeline") if family == "flux1"
                       else ("/FLUX.2-klein-4B", "Flux2KleinPipeline"))
    for tool in all_tools():
        if tool.model_id.endswith(model) and tool.pipeline_class == pipeline:
            return tool.name
    raise RuntimeError(f"no tool runs black-forest-labs{model}")


def generate_flags() -> set[str]:
    """The options `python app.py generate --help` lists now."""
    proc = subprocess.run([sys.executable, str(REPO / "app.py"), "generate", "--help"], cwd=REPO, env=worker_env(),
                          capture_output=True, text=True)
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", proc.stdout))


def parse_option_set(text: str) -> list[tuple[str, str | None]]:
    """'compile+step-cache=0.2+placement=balanced' -> [(compile, None), (step-cache, 0.2), (placement, balanced)]."""
    items = []
    for part in filter(None, (p.strip() for p in text.split("+"))):
        name, _, value = part.partition("=")
        if name not in ("compile", "step-cache", "placement"):
            raise ValueError(f"--options: {name!r} is not one of compile, step-cache[=T], placement=NAME")
        if name == "placement" and not value:
            raise ValueError("--options: placement needs a name (placement=NAME)")
        if name == "compile" and value:
            raise ValueError("--options: compile takes no value")
        items.append((name, value or (STEP_CACHE_DEFAULT if name == "step-cache" else None)))
    return items


def option_flags(items, available: set[str]) -> tuple[list[str], str | None]:
    """The generate flags of an option set, or why it cannot run (a flag generate does not list)."""
    flags = []
    for name, value in items:
        flag = f"--{name}"
        if flag not in available:
            return [], f"`python app.py generate --help` lists no {flag}"
        flags += [flag] + ([value] if value else [])
    return flags, None


def run_generate(model: Path, quant: str, flags: list[str], args, work: Path, name: str, cache_dir: Path,
                 tool: str, width: int, height: int, steps: int, timeout: float | None = None) -> dict:
    """One `python app.py generate` in a fresh process; what its report said, or how it failed."""
    out, report = work / f"{name}.png", work / f"{name}.json"
    report.unlink(missing_ok=True)
    command = [sys.executable, str(REPO / "app.py"), "generate", "--tool", tool, "--model", str(model),
               "--quant", quant, "--prompt", PROMPT, "--width", str(width), "--height", str(height),
               "--steps", str(steps), "--seed", SEED, "--out", str(out), "--report", str(report), *flags]
    if args.device:
        command += ["--device", args.device]
    run = {"command": command[1:], "report_file": report.name}
    env = worker_env(FLUXFORGE_QUANT_CACHE="1", FLUXFORGE_QUANT_CACHE_DIR=str(cache_dir))  # the cache on, this mode's
    timeout = timeout or args.timeout
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        code, stderr = proc.returncode, proc.stderr or ""
    except subprocess.TimeoutExpired as error:
        partial = error.stderr or ""
        code = None
        stderr = (partial.decode(errors="replace") if isinstance(partial, bytes) else partial) + \
            f"\nerror: timed out after {timeout:.0f} s"
    run["wall_s"] = time.perf_counter() - start
    run["exit_code"] = code
    if code != 0 or not report.exists():
        lines = [line.strip() for line in re.split(r"[\r\n]+", stderr) if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        run.update(ok=False, error=errors[-1] if errors else (lines[-1] if lines else f"exit code {code}"),
                   stderr_tail=lines[-6:])
        return run
    run.update(ok=True, **from_report(json.loads(report.read_text())))
    return run


def from_report(report: dict) -> dict:
    """The numbers a run's --report JSON gives, as it gives them."""
    quant, memory = report["quantization"], report["memory"]
    return {
        "resolved": quant.get("resolved"),
        "components": {name: {"backend": c["backend"], "format": c["format"], "from_cache": c.get("from_cache")}
                       for name, c in quant["components"].items()},
        "fallbacks": quant.get("fallbacks", []),
        "peak_bytes": memory["peak_bytes"],
        "peak_reserved_bytes": memory.get("peak_reserved_bytes"),
        "memory_kind": memory.get("kind"),
        "timings": dict(report["timings"]),
        "placement": report.get("placement"),
        "device": report.get("device"),
        "dtype": report.get("dtype"),
    }


def plan_runs(quants: list[str], option_sets: list) -> list[dict]:
    """Every run of an invocation, in the order they are worth running: bf16 once, each quantized mode cold then
    cached (in ``quants``' order), then each option set per mode (quantized modes first)."""
    runs = []
    for quant in quants:
        for phase in (("cached",) if quant == "none" else ("cold", "cached")):
            runs.append({"quant": quant, "options": "", "phase": phase, "kind": "none" if quant == "none" else phase})
    for text, flags, reason in option_sets:
        for quant in [q for q in quants if q != "none"] + ["none"]:
            runs.append({"quant": quant, "options": text, "flags": flags, "reason": reason, "phase": "cached",
                         "kind": "option"})
    return runs


class Budget:
    """The seconds an invocation may take, and how long each kind of run is expected to take."""

    def __init__(self, seconds: float, preset: str, start: float):
        self.seconds, self.start, self.priors, self.seen = seconds, start, PRIORS[preset], {}

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def expected(self, kind: str) -> float:
        return self.seen.get(kind) or self.priors[kind]

    def record(self, kind: str, seconds: float) -> None:
        self.seen[kind] = max(seconds, self.seen.get(kind, 0.0))

    def refusal(self, kind: str) -> str | None:
        need = self.expected(kind)
        if need <= self.left():
            return None
        return (f"over the --budget of {self.seconds:.0f} s: about {need:.0f} s needed, "
                f"{max(0.0, self.left()):.0f} s left")


def measure(runs: list[dict], args, model: Path, work: Path, tool: str, size, budget: Budget) -> list[dict]:
    """Run ``runs`` within ``budget``; one record per (quant, options) with its runs, in plan order. A mode's
    quantized-weights cache is deleted once its last run is done."""
    records: dict[tuple, dict] = {}
    last = {}
    for index, run in enumerate(runs):
        last[run["quant"]] = index
    for index, run in enumerate(runs):
        quant, label = run["quant"], run["options"]
        record = records.setdefault((quant, label), {"quant": quant, "options": label, "flags": run.get("flags", []),
                                                     "runs": {}})
        cache_dir = work / "quant-cache" / quant
        if index == next(i for i, r in enumerate(runs) if r["quant"] == quant):
            shutil.rmtree(cache_dir, ignore_errors=True)
            cache_dir.mkdir(parents=True)
        why = run.get("reason") or record.get("reason") or _blocked(record, run) or budget.refusal(run["kind"])
        if why:
            record.setdefault("skipped", {})[run["phase"]] = why
            log(f"{quant} [{label or 'baseline'}] {run['phase']}: skipped ({why})")
        else:
            name = f"{quant}-{slug(label) or 'baseline'}-{run['phase']}"
            log(f"{quant} [{label or 'baseline'}] {run['phase']} ...")
            timeout = max(1.0, min(args.timeout, budget.left()))
            result = run_generate(model, quant, run.get("flags", []), args, work, name, cache_dir, tool, *size,
                                  timeout=timeout)
            result["phase"] = run["phase"]
            record["runs"][run["phase"]] = result
            budget.record(run["kind"], result["wall_s"])
            if result["ok"]:
                t = result["timings"]
                log(f"  load {t.get('load_s', 0):.1f} s, denoise {t.get('denoise_s', 0):.1f} s, peak "
                    f"{result['peak_bytes'] / GIB:.2f} GiB")
            else:
                log(f"  failed (exit code {result['exit_code']}): {result['error']}")
        if index == last[quant]:
            shutil.rmtree(cache_dir, ignore_errors=True)  # the disk holds one mode's quantized weights at a time
    for record in records.values():
        summarize(record)
    return list(records.values())


def _blocked(record: dict, run: dict) -> str | None:
    """Why ``run`` cannot run after what happened to its record's earlier runs."""
    if run["phase"] == "cached" and "cold" in record.get("skipped", {}):
        return "its cold run (which writes the quantized weights it reads) was skipped"
    failed = next((r for r in record["runs"].values() if not r["ok"]), None)
    return f"its {failed['phase']} run failed" if failed else None


def summarize(record: dict) -> None:
    """A record's headline numbers: those of its cached run (the cold run's load beside them)."""
    runs, skipped = record["runs"], record.get("skipped", {})
    failed = next((run for run in runs.values() if not run["ok"]), None)
    if failed:
        record.update(status="failed", exit_code=failed["exit_code"], error=failed["error"],
                      stderr_tail=failed["stderr_tail"])
        return
    if "cached" not in runs:
        record.update(status="skipped", reason=record.get("reason") or next(iter(skipped.values()), "not run"))
        return
    main_run = runs["cached"]
    timings = main_run["timings"]
    record.update(status="ok", components=main_run["components"], peak_bytes=main_run["peak_bytes"],
                  peak_reserved_bytes=main_run["peak_reserved_bytes"], timings=timings,
                  denoise_s=timings.get("denoise_s"), steady_denoise_s=steady_denoise(timings),
                  placement=main_run["placement"], load_cached_s=timings.get("load_s"))
    if "cold" in runs:
        record.update(load_cold_s=runs["cold"]["timings"].get("load_s"),
                      quantize_cold_s=runs["cold"]["timings"].get("quantize_s"),
                      peak_cold_bytes=runs["cold"]["peak_bytes"])


def steady_denoise(timings: dict) -> float | None:
    """Denoise time without the first step's extra over a typical step (compiling, warming up): the steps as they
    run once warm."""
    denoise = timings.get("denoise_s")
    if denoise is None:
        return None
    first, step = timings.get("first_step_s"), timings.get("step_s")
    return denoise - max(0.0, first - step) if first is not None and step is not None else denoise


def add_ratios(records: list[dict]) -> None:
    """Denoise time once warm (steady_denoise: no compiling in it) against bf16's (`none`, no options) from this same
    invocation; the step cache's own effect."""
    def warm(record: dict):
        return record.get("steady_denoise_s", record.get("denoise_s"))

    by = {(r["quant"], r["options"]): r for r in records}
    base = by.get(("none", ""))
    ref = warm(base) if base and base["status"] == "ok" else None
    for r in records:
        r["denoise_ratio"] = warm(r) / ref if ref and warm(r) is not None else None
        if r["status"] == "ok" and "step-cache" in r["options"]:
            parts = [p for p in r["options"].split("+") if not p.startswith("step-cache")]
            without = by.get((r["quant"], "+".join(parts)))
            if without and without["status"] == "ok":
                r["step_cache_effect"] = warm(r) / warm(without)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


# ---- targets, table, plot -----------------------------------------------------------------------------------------

def targets(records: list[dict], judged: bool) -> list[dict]:
    """Each target with what was measured and whether it was met (None when not ``judged``: the targets are for
    the full preset at Dev's 1024x1024, 28 steps)."""
    ok = [r for r in records if r["status"] == "ok"]
    by = {(r["quant"], r["options"]): r for r in ok}
    base = by.get(("none", ""))
    rows = []

    def add(target, measured, met):
        rows.append({"target": target, "measured": measured,
                     "met": met if judged else None})

    for quant, limit in (("4bit", 8), ("8bit", 13)):
        r = by.get((quant, ""))
        add(f"{quant}: peak allocated <= {limit} GiB (cached run)",
            f"{r['peak_bytes'] / GIB:.2f} GiB" if r else "no run", r is not None and r["peak_bytes"] <= limit * GIB)
    nf4 = [r for r in ok if r.get("denoise_ratio") is not None
           and (r["components"].get("transformer") or {}).get("format") == "nf4"]
    best = min(nf4, key=lambda r: r["denoise_ratio"], default=None)
    add("NF4 denoise <= 1.0x bf16", f"{best['denoise_ratio']:.2f}x ({label(best)})" if best else "no NF4 run",
        best is not None and best["denoise_ratio"] <= 1.0)
    for name, pool, limit in (("fastest 8-bit", [r for r in ok if r["quant"] == "8bit"], 0.6),
                              ("fastest combination", [r for r in ok if r["quant"] != "none" or r["options"]], 0.4)):
        pool = [r for r in pool if r.get("denoise_ratio") is not None]
        best = min(pool, key=lambda r: r["denoise_ratio"], default=None)
        add(f"{name}: denoise <= {limit}x bf16", f"{best['denoise_ratio']:.2f}x ({label(best)})" if best else "no run",
            best is not None and best["denoise_ratio"] <= limit)
    four = by.get(("4bit", ""))
    ref = base.get("load_cached_s") if base else None
    for name, key, limit in (("cached 4-bit load", "load_cached_s", 0.6), ("cold 4-bit start", "load_cold_s", 2.0)):
        value = four.get(key) if four else None
        if value is None or not ref:
            add(f"{name} <= {limit}x the bf16 load", "no run", False)
            continue
        add(f"{name} <= {limit}x the bf16 load", f"{value:.1f} s / {ref:.1f} s = {value / ref:.2f}x",
            value / ref <= limit)
    return rows


def label(record: dict) -> str:
    return record["quant"] + (f" + {record['options']}" if record["options"] else "")


def _gib(value) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def _s(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _placement(placement) -> str:
    """'swap (tiled decode)' from the report's placement record."""
    if not isinstance(placement, dict):
        return str(placement or "")
    return placement.get("name", "?") + (" (tiled decode)" if placement.get("tiled_decode") else "")


def markdown(result: dict) -> str:
    from .report import _bytes, machine_line

    text = "text_encoder" if result.get("family") == "flux2" else "text_encoder_2"
    lines = [
        f"# End-to-end benchmark: {result['preset']} on {result['slug']}",
        "",
        machine_line(result["machine"]),
        f"Date: {result['date']}; total {result['total_s']:.0f} s (model build {result['build_s']:.0f} s); model "
        f"{result['model_bytes'] and _bytes(result['model_bytes'])} in {result['model']}.",
        f"Run: `generate` of {'FLUX.2 [klein] 4B' if result.get('family') == 'flux2' else 'FLUX.1 [dev]'} at "
        f"{result['width']}x{result['height']}, {result['steps']} steps, seed "
        f"{SEED}, each in a fresh process, within a budget of {result.get('budget_s') or 0:.0f} s. Peak and denoise: "
        "the cached run (bf16 runs once); load cold: empty quantized-weights cache (quantize and write), load "
        "cached: reading it. Warm denoise: without the first step's extra (compiling, warming up); ratios: warm "
        "denoise / bf16's (none, no options) in this run.",
        "",
        f"| quant | options | status | transformer | {text} | peak GiB | reserved GiB | cold peak GiB "
        "| load cold s | load cached s | denoise s | warm denoise s | vs bf16 | total s | placement |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["records"]:
        if r["status"] != "ok":
            why = r.get("reason") or f"exit {r.get('exit_code')}: {r.get('error')}"
            lines.append(f"| {r['quant']} | {r['options']} | {r['status']} ({why}) ||||||||||||")
            continue
        comp = r["components"]
        names = [" ".join(filter(None, (comp.get(c, {}).get("backend"), comp.get(c, {}).get("format"))))
                 for c in ("transformer", text)]
        placement = r.get("placement")
        lines.append(
            f"| {r['quant']} | {r['options']} | ok | {names[0]} | {names[1]} | {_gib(r['peak_bytes'])} "
            f"| {_gib(r.get('peak_reserved_bytes'))} | {_gib(r.get('peak_cold_bytes'))} | {_s(r.get('load_cold_s'))} "
            f"| {_s(r.get('load_cached_s'))} | {_s(r['denoise_s'])} | {_s(r.get('steady_denoise_s'))} "
            f"| {'-' if r['denoise_ratio'] is None else format(r['denoise_ratio'], '.2f') + 'x'} "
            f"| {_s(r['timings'].get('total_s'))} | {_placement(placement)} |")
    lines += ["", "## Targets", ""]
    unjudged = "narrow preset" if result["preset"] != "full" else "size or steps changed"
    if not result["judged"]:
        full = "klein 4B, 1024x1024, 4 steps" if result.get("family") == "flux2" else "Dev, 1024x1024, 28 steps"
        lines.append(f"Targets apply to the full preset ({full}); this run is not judged ({unjudged}).")
        lines.append("")
    lines += ["| target | measured | met |", "|---|---|---|"]
    for t in result["targets"]:
        met = f"not judged ({unjudged})" if t["met"] is None else ("yes" if t["met"] else "NO")
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    effects = [r for r in result["records"] if r.get("step_cache_effect") is not None]
    if effects:
        lines += ["", f"## Step cache ({NOT_QUALITY})", "",
                  "Denoise time with the step cache / the same quant and options without it. With random weights "
                  "the skipped steps say nothing about image quality.", ""]
        lines += [f"- {label(r)}: {r['step_cache_effect']:.2f}x" for r in effects]
    partly = [r for r in result["records"] if r["status"] == "ok" and r.get("skipped")]
    if partly:
        lines += ["", "## Runs left out", ""]
        lines += [f"- {label(r)} {phase}: {why}" for r in partly for phase, why in r["skipped"].items()]
    bad = [r for r in result["records"] if r["status"] == "failed"]
    if bad:
        lines += ["", "## Failed", ""]
        for r in bad:
            lines.append(f"- {label(r)}: exit code {r['exit_code']}: {r['error']}")
            lines += [f"    {line}" for line in r["stderr_tail"]]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Peak memory and denoise ratio to bf16, one bar per quant mode and option set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["records"] if r["status"] == "ok"]
    names = [label(r) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    axes[0].bar(names, [r["peak_bytes"] / GIB for r in rows], color="C0")
    axes[0].set_ylabel(f"peak {rows[0]['runs']['cached']['memory_kind'] if rows else ''} GiB (cached run)")
    axes[1].bar(names, [r["denoise_ratio"] or 0 for r in rows], color="C1")
    axes[1].axhline(1.0, color="grey", linewidth=0.8)
    axes[1].set_ylabel("denoise time / bf16")
    for axis in axes:
        axis.tick_params(axis="x", rotation=30)
        axis.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{result['slug']} {result['preset']}: {result['width']}x{result['height']}, {result['steps']} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- command line -------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py bench e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", dest="preset", action="store_const", const="full",
                      help="the real sizes, 1024x1024, 28 steps (default; a CUDA GPU)")
    size.add_argument("--narrow", dest="preset", action="store_const", const="narrow",
                      help="the same layout scaled down, 256x256, 4 steps (CPU, tests)")
    parser.set_defaults(preset="full")
    parser.add_argument("--model", default="flux1", choices=MODELS,
                        help="FLUX.1 [dev]'s shape (default) or FLUX.2 [klein] 4B's (1024x1024, 4 steps)")
    parser.add_argument("--quant", default="none,8bit,4bit", help="comma list of quant modes (none always runs)")
    parser.add_argument("--only", default=None, help="comma list: run only these of --quant's modes (and none)")
    parser.add_argument("--options", default="", help="comma list of option sets, each one or more of compile, "
                                                      "step-cache[=T], placement=NAME joined by + "
                                                      "(e.g. compile,step-cache,compile+step-cache)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--device", default=None, help="passed to generate (default: best available)")
    parser.add_argument("--force", action="store_true", help="build and run the real sizes without a CUDA GPU")
    parser.add_argument("--cache", default=None, help="where the model directory is built (default: the studio "
                                                      "cache, bench-e2e/)")
    parser.add_argument("--work", default=None, help="keep each run's PNG, report JSON and quantized-weights cache "
                                                     "here (default: a temporary folder, removed)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one generate run may take (and at most "
                                                                    "what is left of --budget)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, metavar="SECONDS",
                        help=f"seconds the whole invocation may take, the model build included (default {BUDGET_S}): "
                             "runs that would not fit are listed as skipped")
    parser.add_argument("--json", default=None, help="write the result here and the .md and .png beside it "
                                                     "(default bench/results/e2e-<machine>-<preset>.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(bench_args(argv))
    from pipelines.memory.device import pick_device

    from .report import machine, machine_slug

    try:
        device = pick_device(args.device)
        plan = make_plan(args)
        preset = preset_for(args.preset, args.model)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if preset.name == "full" and preset.family == "flux2" and device.type != "cuda" and not args.force:
        print("error: --full --model klein-4b builds klein 4B at its real size (about 16 GB) and runs 1024x1024 x 4 "
              "steps: it is meant for a CUDA GPU. Use --narrow here, or add --force.", file=sys.stderr)
        return 2
    if preset.name == "full" and device.type != "cuda" and not args.force:
        print("error: --full builds FLUX.1-dev at its real size (about 34 GB, more than 24 GB of RAM to build) and "
              "runs 1024x1024 x 28 steps: it needs a CUDA GPU. Use --narrow here, or add --force.", file=sys.stderr)
        return 2
    cache = weights_root(args.cache)
    short = disk_shortage(preset, cache, plan["quants"])
    if short:
        print(f"error: {short}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    budget = Budget(args.budget, preset.name, start)
    info = machine(device)
    log(f"model directory ({preset.name}) ...")
    build_start = time.perf_counter()
    model = model_dir(preset, cache, device)
    build_s = time.perf_counter() - build_start
    size = (args.width or preset.width, args.height or preset.height, args.steps or preset.steps)
    available = generate_flags()
    option_sets = []
    for text in plan["options"]:
        flags, reason = option_flags(parse_option_set(text), available)
        option_sets.append((text, flags, reason))
    tool = dev_tool_name(preset.family)
    with tempfile.TemporaryDirectory(prefix="fluxforge-e2e-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        records = measure(plan_runs(plan["quants"], option_sets), args, model, work, tool, size, budget)
    add_ratios(records)
    judged = preset.name == "full" and size == (preset.width, preset.height, preset.steps)
    result = {"preset": preset.name, "family": preset.family, "tool": tool, "spec": preset.spec(),
              "model": str(model),
              "model_bytes": sum(f.stat().st_size for f in model.rglob("*") if f.is_file()),
              "width": size[0], "height": size[1], "steps": size[2], "device": str(device),
              "date": datetime.date.today().isoformat(), "machine": info, "slug": machine_slug(info),
              "build_s": build_s, "budget_s": args.budget, "records": records, "judged": judged,
              "targets": targets(records, judged), "total_s": time.perf_counter() - start}
    text = markdown(result)
    print(text)
    name = preset.name if preset.family == "flux1" else f"{args.model}-{preset.name}"
    path = Path(args.json) if args.json else RESULTS / f"e2e-{result['slug']}-{name}.json"
    write_json(result, path)
    path.with_suffix(".md").write_text(text)
    plot(result, path.with_suffix(".png"))
    log(f"wrote {path} and its .md and .png")
    return 0 if all(r["status"] in ("ok", "skipped") and not _failed_runs(r) for r in records) else 1


def _failed_runs(record: dict) -> bool:
    return any(not run["ok"] for run in record["runs"].values())


def disk_shortage(preset: Preset, cache: Path, quants: list[str] = ("none",)) -> str | None:
    """Why the full preset does not fit the disk under ``cache``: its model (unless built already) and the largest
    quantized mode's weights (one mode's are kept at a time). None when it fits."""
    if preset.name != "full":
        return None
    root = Path(cache) / "bench-e2e" / preset.slug()
    full = FULL_MODEL_BYTES if preset.family == "flux1" else KLEIN_FULL_MODEL_BYTES
    model = 0 if (root / ".complete").exists() else full
    quantized = full * QUANTIZED_SHARE if any(q != "none" for q in quants) else 0
    need = (model + quantized) * 1.05
    folder = next((p for p in (root, *root.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(folder).free
    if free >= need:
        return None
    return (f"--full needs about {need / 1e9:.0f} GB of disk under {root.parent} (the {full / 1e9:.0f} "
            f"GB model{', built already' if not model else ''}, and one quantized mode's weights at a time); only "
            f"{free / 1e9:.0f} GB are free there (choose another place with --cache, or fewer --quant modes).")


def make_plan(args) -> dict:
    """The quant modes (none first) and option sets asked for; a ValueError names what is wrong."""
    allowed = allowed_quants()
    quants = [q.strip() for q in args.quant.split(",") if q.strip()]
    unknown = [q for q in quants if q not in allowed]
    if unknown:
        raise ValueError(f"--quant {','.join(unknown)}: generate takes {', '.join(allowed)}")
    if args.only:
        only = {q.strip() for q in args.only.split(",") if q.strip()}
        missing = only - set(quants)
        if missing:
            raise ValueError(f"--only {','.join(sorted(missing))}: not among --quant {args.quant}")
        quants = [q for q in quants if q in only]
    quants = ["none"] + [q for q in quants if q != "none"]
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    for text in options:
        parse_option_set(text)
    return {"quants": quants, "options": options}


if __name__ == "__main__":
    from pipelines.logs import quiet_libraries

    quiet_libraries()
    sys.exit(main())
