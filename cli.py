"""Command line: `python app.py [studio options]`, `python app.py generate ...`, `python app.py doctor`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipelines import defaults
from pipelines.tools import get_tool, tool_names
from pipelines.logs import quiet_libraries


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app.py", description="FluxForge Studio: FLUX.1 tools in one studio. With no command, app.py starts the "
                                   "studio in the browser (the options below); a command runs headless.",
        epilog="Run `python app.py COMMAND --help` for a command's options, e.g. python app.py generate --help.")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--model", action="append", default=[], dest="models", metavar="MODEL|TOOL=MODEL",
                        help="the model of every tool it fits (tiny, a hub id, a local diffusers directory, or a "
                             ".safetensors/.gguf transformer file), or TOOL=MODEL for one tool; repeatable "
                             "(default: FLUXFORGE_MODELS, else each tool's official model)")
    parser.add_argument("--share", action="store_true", help="create a public share link")
    parser.add_argument("--api", action="store_true", help="open the HTTP API")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    parser.commands = sub.choices  # main() names the command a stray option belongs to

    gen = sub.add_parser("generate", help="run one tool headless and write a PNG")
    gen.add_argument("--tool", required=True, help=", ".join(tool_names()))
    gen.add_argument("--prompt", default=None, help="what the image should show (fill, depth, canny, kontext: "
                                                    "what to paint, follow or change; redux: optional)")
    gen.add_argument("--prompts", default=None, metavar="FILE",
                     help="one prompt per line (blank lines and lines starting with # are skipped); each makes "
                          "--count images")
    gen.add_argument("--count", default="1", metavar="N",
                     help="images per prompt, each with the next seed (default 1); several are written as "
                          "OUT-1.png, OUT-2.png, ...")
    gen.add_argument("--preview-every", default="0", metavar="N",
                     help="write a quick preview of the image in progress every N denoising steps, as "
                          "OUT-step<k>.png (default 0: none)")
    gen.add_argument("--out", required=True, metavar="FILE.png", help="output PNG path (its folder must exist)")
    gen.add_argument("--model", default=None, help="tiny | HUB_ID | PATH (default: official weights if "
                                                   "present locally, else tiny)")
    gen.add_argument("--quant", default="auto", help="auto, none, 8bit, 4bit or fp8 (NVIDIA, compute capability 8.9+)")
    gen.add_argument("--image", action="append", metavar="FILE",
                     help="the input image; schnell, dev: image to image (see --strength); kontext: repeat to add "
                          f"reference images (the first is edited, up to {defaults.KONTEXT_MAX_IMAGES} in all)")
    gen.add_argument("--mask", metavar="FILE", help="fill: the inpaint mask, the image's size (white repaints, black "
                                                    "keeps; on a transparent layer, the painted pixels repaint)")
    gen.add_argument("--reference", metavar="FILE", help="fill: a reference image that steers the fill (Redux)")
    gen.add_argument("--control-image", metavar="FILE", help="depth, canny: a ready-made depth or edge map instead "
                                                             "of computing one from --image")
    gen.add_argument("--expand", metavar="L,T,R,B", help="fill: outpaint, pixels to grow on each side")
    gen.add_argument("--width", help=f"output width ({defaults.SIZE_MIN}..{defaults.SIZE_MAX}; snapped to a multiple "
                                     f"of {defaults.SIZE_STEP}, with a notice; default: the tool's, or the input "
                                     "image's)")
    gen.add_argument("--height", help="output height (as --width)")
    gen.add_argument("--steps", help=f"denoising steps ({defaults.STEPS_MIN}..{defaults.STEPS_MAX}; default: the "
                                     "tool's)")
    gen.add_argument("--guidance", help="guidance scale (default: the tool's; schnell ignores it)")
    gen.add_argument("--hires-scale", default=None, metavar="X",
                     help="hires fix (text to image): generate at the size, upscale X times (--hires-upscaler), "
                          "then refine by image to image at the larger size")
    gen.add_argument("--hires-strength", default=None, help=f"hires fix: the refining pass's strength, 0.01..1 "
                                                            f"(default {defaults.HIRES_STRENGTH})")
    gen.add_argument("--hires-steps", default=None, help="hires fix: the refining pass's steps (default: --steps)")
    gen.add_argument("--hires-upscaler", default=None, metavar="NAME",
                     help="hires fix: Lanczos (default) or a super-resolution model file in FLUXFORGE_UPSCALER_DIR, "
                          "by its name there (ESRGAN-family .pth/.safetensors; needs `pip install spandrel`)")
    gen.add_argument("--strength", default=None, help=f"with --image on a text-to-image tool: image to image, how much "
                                                      f"of the image is repainted, 0.01..1 (default {defaults.STRENGTH})")
    gen.add_argument("--seed", help=f"0..{defaults.SEED_MAX} (default: a random one, written in the PNG)")
    gen.add_argument("--canny-low", default=defaults.CANNY_LOW, help=f"canny: the low edge threshold, 0..255 "
                                                                      f"(default {defaults.CANNY_LOW})")
    gen.add_argument("--canny-high", default=defaults.CANNY_HIGH, help=f"canny: the high edge threshold, 0..255 "
                                                                        f"(default {defaults.CANNY_HIGH})")
    gen.add_argument("--report", metavar="FILE.json", help="write the JSON report here")
    gen.add_argument("--transformer", default=None, metavar="FILE",
                     help="a single-file FLUX.1 or FLUX.2 transformer that replaces the model's own: .safetensors "
                          "(bf16 or fp8, quantized as --quant says; BFL's nvfp4, used as it is) or .gguf (used as it "
                          "is, whatever --quant says)")
    gen.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                     help="a LoRA .safetensors file of the tool's family (FLUX.1: diffusers/PEFT, kohya, XLabs or BFL "
                          "format; FLUX.2 klein: diffusers/PEFT, BFL/ComfyUI or kohya), strength -4..4 (default 1.0); "
                          "repeat for several")
    gen.add_argument("--control", default=None, choices=("model", "lora"),
                     help="depth and canny: model (their own FLUX.1-Depth/Canny-dev model, the default) or lora (a "
                          "control LoRA on the FLUX.1-dev model: --model names the Dev model)")
    gen.add_argument("--control-lora", default=None, metavar="FILE",
                     help="the control LoRA .safetensors file for --control lora (default: the official "
                          "FLUX.1-Depth-dev-lora / FLUX.1-Canny-dev-lora; tiny's own with --model tiny)")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    gen.add_argument("--offload", default="none", help="none, model (one model on the device at a time), block "
                                                       "(block by block, the next copied in while one computes) or "
                                                       "sequential (layer by layer: least memory, slowest)")
    gen.add_argument("--vae-tiling", action="store_true", help="decode in tiles (less memory for large images)")
    gen.add_argument("--placement", default="auto", help="auto (from free memory), resident (all on the device), "
                                                          "encoders-off (text encoders leave after encoding) or swap "
                                                          "(the transformer, too, waits on the CPU while encoding)")
    gen.add_argument("--compile", action="store_true", help="torch.compile the transformer's repeated blocks "
                                                           "(NVIDIA GPUs and CPUs; the first run compiles)")
    gen.add_argument("--step-cache", default=None, metavar="THRESHOLD",
                     help="First-Block Cache: skip the rest of the transformer on steps whose first block barely "
                          "changed (0.08-0.12 typical; off by default)")

    bench = sub.add_parser("bench", help="memory, speed and fidelity of every backend and mode; `bench cache`: "
                                         "cached against quantize-on-load; `bench control`: control LoRAs on "
                                         "Dev against the full control models; `bench lora`: a step with and "
                                         "without a LoRA on every backend; `bench preview`: what live previews "
                                         "cost a run; `bench estimate`: the memory estimate against measured runs; "
                                         "`bench e2e`: the generate path end to end; `bench gpu-check`: each memory "
                                         "and speed option checked on a card; `bench mps-check`: what the studio "
                                         "assumes about Apple MPS, measured on a Mac", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)  # listed for --help; main() hands them over

    models = sub.add_parser("models", help="every tool's model: size, downloaded or not, gated or not, where it "
                                           "lives; `models download` fetches ahead of time")
    models.add_argument("action", nargs="?", default="list", choices=("list", "download"),
                        help="list (the default): every tool's model; download: fetch ahead of time")
    models.add_argument("repo", nargs="?", default=None, metavar="ID",
                        help="download: this hub model (default: the models of --tool, or of every tool with --all)")
    models.add_argument("--tool", default=None, help="download: this tool's models (" + ", ".join(tool_names()) + ")")
    models.add_argument("--all", action="store_true", help="download: every tool's models")
    models.add_argument("--offline", action="store_true", help="list without asking the hub (known sizes)")
    models.add_argument("--json", action="store_true", help="list as JSON")

    cache = sub.add_parser("cache", help="list or clear the quantized-weights cache")
    cache.add_argument("action", choices=("list", "clear"),
                       help="list: the cached weights and their sizes; clear: delete them")
    cache.add_argument("--json", action="store_true", help="list as JSON")

    est = sub.add_parser("plan", help="estimated peak memory and speed of each quantization and offload choice, "
                                       "before loading anything")
    est.add_argument("--tool", required=True, help=", ".join(tool_names()))
    est.add_argument("--model", default=None, help="tiny | HUB_ID | PATH (default: the tool's official models, "
                                                   "e.g. klein's 4B and 9B)")
    est.add_argument("--transformer", default=None, metavar="FILE",
                     help="a single-file transformer that replaces the model's own, as generate takes it (a "
                          "pre-quantized one, GGUF or BFL's nvfp4, holds its own bytes whatever the quant choice)")
    est.add_argument("--size", default=None, metavar="WIDTHxHEIGHT",
                     help="output size (default: the tool's); snapped as generate snaps --width and --height")
    est.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    est.add_argument("--hires-scale", default=None, metavar="X", help="a hires fix: both passes, the second at X "
                                                                      "times the size")
    est.add_argument("--hires-upscaler", default=None, metavar="NAME",
                     help="the hires fix's upscaler: Lanczos (default) or a file in FLUXFORGE_UPSCALER_DIR")
    est.add_argument("--json", action="store_true", help="print the plan as JSON")

    info = sub.add_parser("info", help="the generation parameters in a PNG (ours, A1111's, Forge's, ComfyUI's or "
                                       "InvokeAI's), and what a tool here takes back from them")
    info.add_argument("file", metavar="FILE.png", help="the image to read")
    info.add_argument("--json", action="store_true", help="print them as JSON")

    doc = sub.add_parser("doctor", help="device, library versions and usable backends")
    doc.add_argument("--json", action="store_true", help="print the report as JSON")
    doc.add_argument("--probe", action="store_true", help="probe every backend now (in child processes)")
    doc.add_argument("--reprobe", action="store_true", help="forget cached probe results and probe again")
    doc.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    return parser


# `python app.py bench NAME ...`: the module whose main() runs that benchmark (`bench` alone: bench.run)
BENCHES = {"cache": "bench.cache_load", "control": "bench.control_lora", "lora": "bench.lora",
           "preview": "bench.preview", "estimate": "bench.estimate", "e2e": "bench.e2e",
           "gpu-check": "bench.gpu_check", "mps-check": "bench.mps_check", "hires": "bench.hires"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the benchmarks parse their own options (argparse's REMAINDER drops leading ones)
        quiet_libraries()
        if argv[1:2] and argv[1] in BENCHES:
            import importlib

            return importlib.import_module(BENCHES[argv[1]]).main(argv[2:])
        from bench.run import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    stray = _missing_command(parser, argv)
    if stray:
        print(f"error: {stray}", file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    quiet_libraries()
    from pipelines.errors import UserError

    try:
        if args.command == "generate":
            return generate(args)
        if args.command == "doctor":
            return doctor(args)
        if args.command == "info":
            return png_info(args)
        if args.command == "cache":
            return cache(args)
        if args.command == "models":
            return models(args)
        if args.command == "plan":
            return plan(args)
        if args.command == "bench":  # studio options before it would be lost: the benchmarks take their own
            raise UserError("put `bench` first: python app.py bench [--quick|--full] [options] (see bench --help).")
        return serve(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a failure we did not foresee: one line, the traceback only when asked for
        print(f"error: {args.command or 'studio'} failed ({type(error).__name__}: {_first_line(error)}); run with "
              "FLUXFORGE_DEBUG=1 for the traceback.", file=sys.stderr)
        if os.environ.get("FLUXFORGE_DEBUG") == "1":
            raise
        return 1


def _missing_command(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The mistake, when ``argv`` names no command but gives an option of one (``python app.py --tool schnell ...``
    for ``python app.py generate --tool schnell ...``): argparse would take the option's value for the command."""
    commands = parser.commands
    if any(token in commands for token in argv):
        return None
    studio = set(parser._option_string_actions)
    for token in argv:
        option = token.split("=", 1)[0]
        if not option.startswith("-") or option in studio:
            continue
        owners = [name for name, sub in commands.items() if option in sub._option_string_actions]
        if not owners:
            return None  # argparse names an unknown option itself
        names = [f"`{name}`" for name in owners]
        which = " or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]
        return (f"{option} is an option of the {which} command, and no command was given: put the command first, "
                f"e.g. python app.py {owners[0]} {' '.join(argv)} (with no command, app.py starts the studio, which "
                "takes --host, --port, --model, --device, --share and --api).")
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else "no message"


def _number(value, kind):
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        return value  # the request names it in its error


def generate(args) -> int:
    from pipelines.memory.device import pick_device
    from pipelines.engine import Engine
    from pipelines.errors import UserError
    from pipelines.loras import parse_lora_arg
    from pipelines.manager import ModelManager
    from pipelines.request import GenerationRequest, batch_seed

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out={args.out!r} must end in .png (the metadata lives in PNG text chunks).")
    if not out.parent.exists():
        raise UserError(f"--out={args.out!r}: folder {str(out.parent)!r} does not exist.")
    try:
        tool = get_tool(args.tool)
    except UserError as error:
        raise UserError(f"--{error}") from None  # as the option is spelled here
    prompts = read_prompts(args.prompts, args.prompt)
    count = _whole(args.count, "--count", 1)
    preview_every = _whole(args.preview_every, "--preview-every", 0)
    model, transformer, early = args.model, args.transformer, []  # notices wait until every input is checked
    if model is None:  # FLUXFORGE_MODELS, else the official model (the demo model only when it cannot be had)
        on_dev = args.control == "lora" or (args.control is None and args.control_lora)
        runs = tool.lora_base() if on_dev and hasattr(tool, "lora_base") else tool
        assignment = studio_models([], [runs])
        model = assignment.model(runs.name)
        transformer = transformer or assignment.transformers.get(runs.name)
        early += assignment.notices + [demo_notice(assignment.demo)] * bool(assignment.demo)
    loras = [parse_lora_arg(item) for item in args.lora]

    def request_for(prompt: str, seed) -> GenerationRequest:
        return GenerationRequest(
            tool=args.tool, prompt=prompt, model=model, quant=args.quant, image=args.image, mask=args.mask,
            reference=args.reference, control_image=args.control_image, expand=args.expand,
            width=_number(args.width, int), height=_number(args.height, int), steps=_number(args.steps, int),
            guidance=_number(args.guidance, float), seed=seed, strength=_number(args.strength, float),
            hires_scale=_number(args.hires_scale, float), hires_strength=_number(args.hires_strength, float),
            hires_steps=_number(args.hires_steps, int), hires_upscaler=args.hires_upscaler,
            canny_low=_number(args.canny_low, int), canny_high=_number(args.canny_high, int),
            transformer=transformer, loras=loras, control=args.control, control_lora=args.control_lora,
        )

    first = request_for(prompts[0], _number(args.seed, int))  # every input is checked before a model loads
    for prompt in prompts[1:]:
        request_for(prompt, first.seed)
    try:
        manager = ModelManager(device=pick_device(args.device))
    except ValueError as error:
        raise UserError(str(error)) from None
    manager.set_options(offload=args.offload, vae_tiling=args.vae_tiling, placement=args.placement,
                        compile=args.compile, step_cache=_number(args.step_cache, float))
    for notice in early:
        print(f"notice: {notice}", file=sys.stderr)
    engine = Engine(manager, show_progress=True)
    progress = TerminalProgress()

    total = len(prompts) * count
    reports, notices = [], []
    for index in range(total):
        prompt = prompts[index // count]
        request = first if index == 0 else request_for(prompt, batch_seed(first.seed, index))
        path = out if total == 1 else out.with_name(f"{out.stem}-{index + 1}.png")

        def preview(image, step, steps, path=path):
            image.save(path.with_name(f"{path.stem}-step{step}.png"))

        if preview_every:
            result = engine.generate(request, progress, preview=preview, preview_every=preview_every)
        else:
            result = engine.generate(request, progress)
        result.save(path)
        reports.append(dict(result.report, out=str(path)) if total > 1 else result.report)
        notices += [notice for notice in result.notices if notice not in notices]
        timings = result.report["timings"]
        print(f"wrote {path} ({result.image.width}x{result.image.height}, seed {request.seed}, "
              f"{timings['total_s']:.1f} s)")
    if args.report:
        report = reports[0] if total == 1 else {"count": count, "prompts": prompts, "images": reports}
        Path(args.report).write_text(json.dumps(report, indent=2))
    for notice in notices:
        print(f"notice: {notice}", file=sys.stderr)
    return 0


class TerminalProgress:
    """A run's progress on stderr: each stage once, and a download as a bar (bytes, speed, time left)."""

    def __init__(self):
        self.bar = None
        self.downloaded: set[str] = set()

    def __call__(self, stage: str, done: int, total: int) -> None:
        from pipelines.models.hub import downloading

        repo = downloading(stage)
        if repo is not None:
            if repo not in self.downloaded:
                self._download(repo, done, total)
        elif stage != "denoise" and done == 0:
            print(f"{stage}...", file=sys.stderr)

    def _download(self, repo: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=f"Downloading {repo}",
                            file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()
            self.bar = None
            self.downloaded.add(repo)


def studio_models(values: list[str], tools=None):
    """Each tool's model (pipelines.models.catalog.Assignment) from --model values, else FLUXFORGE_MODELS."""
    from pipelines.models.catalog import MODELS_ENV, assign, env_specs
    from pipelines.tools import all_tools

    specs, origin = (values, "--model") if values else (env_specs(), MODELS_ENV)
    return assign(tools or all_tools(), specs, origin)


def demo_notice(tools) -> str:
    """Why ``tools`` run the demo model, and how to get real weights."""
    from pipelines.models.hub import offline

    why = "HF_HUB_OFFLINE is set" if offline() else "the Hugging Face hub cannot be reached"
    return (f"{', '.join(tools)}: the official weights are not in the local cache and {why}, so the demo model "
            "'tiny' runs (random weights, noise-like images). Connect and run again (they download on first use), "
            "or pass --model with a local directory.")


def read_prompts(file: str | None, prompt: str | None) -> list[str]:
    """The prompts to run: the lines of ``file`` (blank ones and # comments skipped), else ``prompt``."""
    from pipelines.errors import UserError

    if file is None:
        return [prompt or ""]
    if prompt is not None:
        raise UserError("--prompt and --prompts both given; use one (a file of one line works as --prompt).")
    path = Path(file).expanduser()
    if not path.is_file():
        raise UserError(f"--prompts={file!r}: no such file.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--prompts={file!r}: cannot read it as UTF-8 text ({type(error).__name__}).") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise UserError(f"--prompts={file!r} has no prompts (blank lines and lines starting with # are skipped).")
    return prompts


def _whole(value: str, flag: str, low: int) -> int:
    """A whole number of at least ``low`` given on the command line."""
    from pipelines.errors import UserError

    try:
        number = int(str(value).strip())
    except ValueError:
        raise UserError(f"{flag}={value!r} is not a whole number.") from None
    if number < low:
        raise UserError(f"{flag}={number} must be {low} or more.")
    return number


def png_info(args) -> int:
    from pipelines.pnginfo import read_png_info

    info = read_png_info(args.file)
    print(json.dumps(info.to_dict(), indent=2, ensure_ascii=False) if args.json else "\n".join(info.lines()))
    return 0


def doctor(args) -> int:
    from pipelines.memory.device import pick_device, pick_dtype
    from pipelines.errors import UserError
    from pipelines.models import hub
    from pipelines.paths import quant_caches
    from quantization.doctor import doctor_report, format_doctor

    try:
        device = pick_device(args.device)
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.probe or args.reprobe:
        from quantization.doctor import run_probes

        print("probing backends...", file=sys.stderr)
        run_probes(device, pick_dtype(device), quant_caches().probes, fresh=args.reprobe)
    report = doctor_report(device, pick_dtype(device), quant_caches().probes)
    token = hub.token_state()
    report["hub"] = {"endpoint": hub.endpoint(), "offline": hub.offline(), "token": token.present,
                     "token_from": token.source, "cache": str(hub.cache_dir())}
    text = format_doctor(report) + (f"\nHugging Face hub {hub.endpoint()}: {token.describe()}; downloads go to "
                                    f"{hub.cache_dir()}" + (" (HF_HUB_OFFLINE is set)" if hub.offline() else ""))
    print(json.dumps(report, indent=2) if args.json else text)
    return 0


def plan(args) -> int:
    """`plan`: each quant choice and offload option with its estimated peak memory, speed and whether it fits."""
    from pipelines.errors import UserError
    from pipelines.request import check_transformer_file

    try:
        tool = get_tool(args.tool)
    except UserError as error:
        raise UserError(f"--{error}") from None
    notices: list[str] = []
    # Without --model: the tool's official model, and its other official models (klein's 9B beside its 4B).
    if args.hires_upscaler and not args.hires_scale:
        raise UserError("--hires-upscaler is for the hires fix: give --hires-scale too.")
    hires = dict(scale=args.hires_scale, upscaler=args.hires_upscaler)
    transformer = check_transformer_file(args.transformer, tool)
    results = [_plan(tool, model, args.size, args.device, notices, hires, transformer)
               for model in ([args.model] if args.model else [tool.model_id, *tool.variants])]
    if args.json:
        print(json.dumps(results[0].to_dict() if len(results) == 1 else [r.to_dict() for r in results], indent=2))
    else:
        print("\n\n".join(format_plan(result) for result in results))
    for notice in dict.fromkeys(notices):
        print(f"notice: {notice}", file=sys.stderr)
    return 0


def _plan(tool, model: str, size: str | None, device_name: str | None, notices: list[str] | None = None,
          hires: dict | None = None, transformer: str | None = None):
    import re

    from pipelines.errors import UserError
    from pipelines.hires import planned
    from pipelines.memory.device import device_memory, pick_device, pick_dtype
    from pipelines.memory.estimate import plan_run
    from pipelines.request import checked_size
    from quantization.policy import offered

    notices = [] if notices is None else notices
    d = tool.defaults(model)
    width, height = d.width, d.height
    if size is not None:  # the rule generate's --width and --height follow: in range, snapped with a notice
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)
        if not match:
            raise UserError(f"--size={size!r} must be WIDTHxHEIGHT, e.g. 1024x1024.")
        try:
            width, height = (checked_size(name, int(value), notices) for name, value in
                             (("width", match.group(1)), ("height", match.group(2))))
        except UserError as error:
            raise UserError(f"--size={size!r}: {error}") from None
    try:
        device = pick_device(device_name)
    except (ValueError, RuntimeError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    second = planned(width, height, **(hires or {}))
    if second and not tool.takes_strength:
        raise UserError(f"--hires-scale is for text to image; the {tool.name} tool has no hires fix.")
    return plan_run(tool, model, width, height, device_memory(device), offered(device), pick_dtype(device).itemsize,
                    transformer=transformer, **second)


def format_plan(result) -> str:
    """A plan (pipelines.memory.estimate.Plan) as a table for the terminal: one row per quant choice and offload option."""
    memory = result.memory
    source = "known sizes" if result.sizes.source == "known" else "read from its files"
    hires = result.hires
    then = "" if not hires else f" then {hires['width']}x{hires['height']} (hires fix" + (
        f", upscaler {_size(hires['upscaler_bytes'])}" if hires["upscaler_bytes"] else "") + ")"
    model = result.model + (f" with transformer {result.transformer}" if result.transformer else "")
    lines = [f"{result.tool} on {model} ({source}), {result.width}x{result.height}{then}, {result.text_tokens} "
             f"text tokens; {memory.type}: {_size(memory.free_bytes)} {memory.what} of {_size(memory.total_bytes)}",
             f"Auto picks {result.auto.quant}: {result.auto.reason}",
             f"{'quant':<10} {'offload':<11} {'format':<22} {'weights':>10} {'peak':>10} {'time':>6}  fits"]
    on_cpu = memory.type == "cpu"
    for row in result.estimates:
        if on_cpu and row.offload != "none":
            continue  # offload has no effect on the CPU: the same as none
        quant = f"auto>{row.resolved}" if row.quant == "auto" else row.quant
        speed = f"{row.speed:.2f}x" if row.speed is not None else "?"
        lines.append(f"{quant:<10} {row.offload:<11} {row.label:<22} {_size(row.weight_bytes):>10} "
                     f"{_size(row.peak_bytes):>10} {speed:>6}  {'yes' if row.fits else 'NO'}")
    if on_cpu:
        lines.append("CPU offload has no effect on the CPU: every offload option is the same as none (--json lists "
                     "them).")
    lines.append("peak: weights on the device in the busiest phase plus its working memory (fits: with 10% slack); "
                 "time: step time against full precision (2.00x: twice as long), measured on this class of CPU "
                 "('?': not measured).")
    return "\n".join(lines)


def models(args) -> int:
    """`models`: every tool's model as the studio would run it; `models download`: fetch ahead of time."""
    from pipelines.errors import UserError
    from pipelines.models import catalog, hub
    from pipelines.tools import all_tools

    if args.action == "list":
        if args.repo or args.tool or args.all:
            raise UserError("`models` lists every tool's model; ID, --tool and --all are for `models download`.")
        tools = all_tools()
        assignment = studio_models(args.models, tools)
        rows = catalog.tool_rows(assignment, tools, online=not args.offline and hub.reachable())
        info = {"models": rows, "hub": hub.endpoint(), "reachable": hub.reachable(), "cache": str(hub.cache_dir()),
                "token": hub.token_state().describe(), "model_dir": str(catalog.model_dir())}
        print(json.dumps(info, indent=2) if args.json else format_models(info, assignment))
        return 0
    if sum(map(bool, (args.repo, args.tool, args.all))) != 1:
        raise UserError("models download: name one of ID (a hub model), --tool TOOL or --all.")
    if args.repo:
        repos = [args.repo]
    else:
        tools = all_tools() if args.all else [get_tool(args.tool)]
        assignment = studio_models(args.models, all_tools())
        repos = [m for t in tools for m in (assignment.model(t.name), *t.aux_models)]
        repos = [m for m in dict.fromkeys(repos) if m != defaults.TINY_MODEL and not Path(m).expanduser().exists()]
    if not repos:
        print("nothing to download: these tools run the demo model or local directories")
        return 0
    progress = TerminalProgress()
    for repo in repos:
        path = hub.download(repo, progress)
        print(f"{repo}: {path}")
    return 0


def format_models(info: dict, assignment) -> str:
    """`models` as a table for the terminal."""
    lines = [f"{'tool':<8} {'model':<40} {'size':>9}  {'downloaded':<26} {'gated':<5} where"]
    for row in info["models"]:
        model = row["model"] + (f" + {Path(row['transformer']).name}" if row.get("transformer") else "")
        if row["kind"] == "auxiliary":
            model = "  + " + model
        size = "?" if row["bytes"] is None else _gb(row["bytes"])
        gated = {True: "yes", False: "no", None: "?"}[row["gated"]]
        lines.append(f"{row['tool']:<8} {model:<40} {size:>9}  {row['downloaded']:<26} {gated:<5} {row['where']}")
        if row.get("note"):
            lines.append(f"         {row['note']}")
    state = "reachable" if info["reachable"] else "cannot be reached (sizes are the known official ones)"
    lines.append(f"hub {info['hub']}: {state}; {info['token']}; downloads go to {info['cache']}")
    lines.append(f"your own models: diffusers directories and transformer files in {info['model_dir']} "
                 "(FLUXFORGE_MODEL_DIR)")
    lines += [f"notice: {notice}" for notice in assignment.notices]
    if assignment.demo:
        lines.append(f"notice: {demo_notice(assignment.demo)}")
    return "\n".join(lines)


def _gb(count: int) -> str:
    from quantization.units import size_text

    return size_text(count)


def cache(args) -> int:
    """`cache list`: every quantized-weights entry with its size; `cache clear`: remove them all."""
    from pipelines.paths import quantized_dir
    from quantization import admin

    folder = quantized_dir()
    if args.action == "clear":
        removed = admin.clear(folder)
        print(f"removed {removed['entries']} entries ({removed['bytes'] / 2**20:.1f} MiB) from {folder}")
        return 0
    rows = admin.entries(folder)
    print(json.dumps(rows, indent=2) if args.json else format_entries(rows, folder))
    return 0


def format_entries(rows: list[dict], folder: Path) -> str:
    """The quantized-weights store as a plain table for the terminal."""
    if not rows:
        return f"The quantized-weights cache is empty ({folder})."
    lines = [f"{'size':>9}  {'status':<10} {'component':<15} {'backend':<13} {'format':<17} {'dtype':<9} model"]
    for row in rows:
        lines.append(f"{_size(row['bytes']):>9}  {row['status']:<10} {row['component'] or '?':<15} "
                     f"{row['backend'] or '?':<13} {row['format'] or '?':<17} {row['dtype'] or '?':<9} "
                     f"{row['model'] or row['name']}")
    lines.append(f"{_size(sum(r['bytes'] for r in rows)):>9}  total, {len(rows)} entries in {folder}")
    return "\n".join(lines)


def _size(count: float) -> str:
    from quantization.units import size_text

    return size_text(count)


def serve(args) -> int:
    from ui.studio import launch

    return launch(args)
