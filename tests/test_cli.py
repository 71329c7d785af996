"""The headless CLI: a PNG with metadata and a JSON report; bad input is one line, exit 2, nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import cli
from pipelines.images import read_metadata
from quantization.policy import candidates

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_generate_writes_png_and_report(tmp_path, image_files, tiny_root):
    out, report = tmp_path / "fill.png", tmp_path / "fill.json"
    proc = run_cli("generate", "--tool", "fill", "--prompt", "a cat on a sofa", "--model", "tiny", "--quant", "4bit",
                   "--image", str(image_files["photo"]), "--mask", str(image_files["mask"]), "--seed", "5",
                   "--out", str(out), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"wrote {out}" in proc.stdout
    data = json.loads(report.read_text())
    assert data["tool"] == "fill" and data["seed"] == 5 and data["model"] == "tiny"
    assert data["quantization"]["requested"] == "4bit"
    assert data["quantization"]["components"]["transformer"]["backend"] == candidates("4bit", "cpu")[0].backend
    assert {"load_s", "quantize_s", "denoise_s", "total_s"} <= set(data["timings"])
    meta = read_metadata(out)
    assert meta["prompt"] == "a cat on a sofa" and meta["quantization"]["resolved"] == "4bit"
    assert "Running the demo model 'tiny'" in proc.stderr  # the tiny model always says what it is


def test_memory_options_from_the_command_line(tmp_path, tiny_root, capsys):
    """The flags the out-of-memory hint names exist: --offload and --vae-tiling (as in the System tab)."""
    out = tmp_path / "x.png"
    code = cli.main(["generate", "--tool", "dev", "--prompt", "x", "--model", "tiny", "--quant", "none", "--seed", "1",
                     "--offload", "model", "--vae-tiling", "--out", str(out)])
    assert code == 0 and out.exists()
    assert "Model CPU offload saves no memory on the CPU" in capsys.readouterr().err


def test_forced_fallback_shows_on_the_terminal_and_in_the_report(tmp_path, tiny_root):
    from quantization.policy import candidates

    first, second = candidates("8bit", "cpu")[:2]
    out, report = tmp_path / "x.png", tmp_path / "x.json"
    proc = run_cli("generate", "--tool", "schnell", "--prompt", "x", "--model", "tiny", "--quant", "8bit",
                   "--out", str(out), "--report", str(report), env={"FLUXFORGE_DISABLE_BACKENDS": first.backend})
    assert proc.returncode == 0, proc.stderr
    assert f"Fallback: transformer could not use {first.backend} {first.format}" in proc.stderr
    data = json.loads(report.read_text())
    assert data["quantization"]["components"]["transformer"]["backend"] == second.backend


def test_doctor_lists_backends_and_versions():
    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["device"] == "cpu" and report["libraries"]["torch"]
    assert {(b["backend"], b["format"]) for b in report["backends"]} >= {("quanto", "int8"), ("bitsandbytes", "nf4"),
                                                                        ("torchao", "int8_dynamic")}
    assert report["cpu_class"] in ("native-bf16", "emulated-bf16") and report["cpu_measured_on"]
    proc = run_cli("doctor", env={"FLUXFORGE_DISABLE_BACKENDS": "quanto"})
    assert "quanto        int8                unusable: quanto is disabled by FLUXFORGE_DISABLE_BACKENDS" in proc.stdout
    assert f"CPU class: {report['cpu_class']} (policy measured on " in proc.stdout


def bad_cases(files):
    photo, mask = str(files["photo"]), str(files["mask"])
    return {
        "missing image file": (["--tool", "kontext", "--prompt", "x", "--image", "/nonexistent.png"], "no such file"),
        "empty image file": (["--tool", "kontext", "--prompt", "x", "--image", str(files["empty"])], "empty file"),
        "truncated png": (["--tool", "kontext", "--prompt", "x", "--image", str(files["truncated"])], "readable"),
        "text file as image": (["--tool", "canny", "--prompt", "x", "--image", str(files["text"])], "readable"),
        "mask size differs": (["--tool", "fill", "--prompt", "x", "--image", photo, "--mask",
                               str(files["small_mask"])], "same size"),
        "fill without image": (["--tool", "fill", "--prompt", "x", "--mask", mask], "needs an input image"),
        "fill without mask": (["--tool", "fill", "--prompt", "x", "--image", photo], "needs a mask"),
        "kontext without image": (["--tool", "kontext", "--prompt", "x"], "needs an input image"),
        "redux without image": (["--tool", "redux"], "needs an input image"),
        "empty prompt": (["--tool", "dev", "--prompt", "  "], "prompt is empty"),
        "unknown tool": (["--tool", "sdxl", "--prompt", "x"], "--tool='sdxl' is unknown"),
        "unknown mode": (["--tool", "dev", "--prompt", "x", "--quant", "2bit"], "quant='2bit' is unknown"),
        "unknown model": (["--tool", "dev", "--prompt", "x", "--model", "not a model"], "neither"),
        "not a diffusers dir": (["--tool", "dev", "--prompt", "x", "--model", str(files["photo"].parent)],
                                "not a diffusers FLUX directory"),
        "offline hub model": (["--tool", "dev", "--prompt", "x", "--model", "someone/flux-finetune"],
                              "the Hugging Face hub cannot be reached; connect, or pass a local directory, or use the "
                              "demo model 'tiny'"),
        "steps zero": (["--tool", "dev", "--prompt", "x", "--steps", "0"], "steps=0 is out of range"),
        "steps huge": (["--tool", "dev", "--prompt", "x", "--steps", "100000"], "out of range"),
        "steps not a number": (["--tool", "dev", "--prompt", "x", "--steps", "ten"], "not a whole number"),
        "guidance nan": (["--tool", "dev", "--prompt", "x", "--guidance", "nan"], "guidance=nan is out of range"),
        "guidance inf": (["--tool", "dev", "--prompt", "x", "--guidance", "inf"], "out of range"),
        "guidance negative": (["--tool", "dev", "--prompt", "x", "--guidance", "-1"], "out of range"),
        "width too large": (["--tool", "dev", "--prompt", "x", "--width", "8192"], "width=8192 is out of range"),
        "width zero": (["--tool", "dev", "--prompt", "x", "--width", "0"], "width=0 is out of range; use 64..2048"),
        "height negative": (["--tool", "dev", "--prompt", "x", "--height", "-16"], "height"),
        "seed negative": (["--tool", "dev", "--prompt", "x", "--seed", "-1"], "seed=-1 is out of range"),
        "seed too large": (["--tool", "dev", "--prompt", "x", "--seed", str(2**64)], "out of range"),
        "malformed expand": (["--tool", "fill", "--prompt", "x", "--image", photo, "--expand", "10,20"],
                             "four whole numbers"),
        "negative expand": (["--tool", "fill", "--prompt", "x", "--image", photo, "--expand", "0,0,-5,0"],
                            "four whole numbers"),
        "expand and mask": (["--tool", "fill", "--prompt", "x", "--image", photo, "--mask", mask, "--expand",
                             "0,0,64,0"], "not both"),
        "mask on a non-fill tool": (["--tool", "dev", "--prompt", "x", "--mask", mask], "only used by the fill"),
        "prompt too long": (["--tool", "dev", "--prompt", "x" * 5000], "limit"),
        "control characters": (["--tool", "dev", "--prompt", "a\x07b"], "control characters"),
        "unknown offload": (["--tool", "dev", "--prompt", "x", "--offload", "disk"], "offload='disk' is unknown"),
        "canny thresholds reversed": (["--tool", "canny", "--prompt", "x", "--image", photo, "--canny-low", "200",
                                       "--canny-high", "100"], "swap"),
        "count zero": (["--tool", "dev", "--prompt", "x", "--count", "0"], "--count=0 must be 1 or more"),
        "count not a number": (["--tool", "dev", "--prompt", "x", "--count", "two"], "--count='two' is not a whole"),
        "preview every negative": (["--tool", "dev", "--prompt", "x", "--preview-every", "-2"],
                                   "--preview-every=-2 must be 0 or more"),
        "prompts file missing": (["--tool", "dev", "--prompts", "/nonexistent.txt"], "--prompts='/nonexistent.txt': "
                                                                                      "no such file"),
    }


def test_bad_inputs_give_one_line_and_write_nothing(tmp_path, image_files, capsys, tiny_root):
    for name, (args, expected) in bad_cases(image_files).items():
        out = tmp_path / "out.png"
        code = cli.main(["generate", "--model", "tiny", "--out", str(out), *args]
                        if "--model" not in args else ["generate", "--out", str(out), *args])
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        assert code == 2, name
        assert len(errors) == 1 and expected in errors[0], (name, captured.err)
        assert "Traceback" not in captured.err, name
        assert not out.exists(), name


@pytest.mark.parametrize("out", ["/nonexistent-dir/x.png", "picture.jpg"])
def test_bad_output_paths_are_refused(out, capsys):
    assert cli.main(["generate", "--tool", "dev", "--prompt", "x", "--model", "tiny", "--out", out]) == 2
    assert capsys.readouterr().err.startswith("error: --out=")


def test_bad_input_exits_non_zero_without_traceback_in_a_real_process(tmp_path):
    out = tmp_path / "never.png"
    proc = run_cli("generate", "--tool", "dev", "--prompt", "x", "--model", "tiny", "--width", "nan", "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: width=")
    assert "Traceback" not in proc.stderr and not out.exists()


def test_sizes_off_the_step_are_snapped_with_a_notice(tmp_path, capsys, tiny_root):
    out = tmp_path / "snap.png"
    code = cli.main(["generate", "--tool", "schnell", "--prompt", "x", "--model", "tiny", "--width", "100",
                     "--height", "90", "--out", str(out), "--quant", "none"])
    assert code == 0
    assert "width 100 snapped to 96" in capsys.readouterr().err
    assert Image.open(out).size == (96, 96)


def test_no_model_no_local_weights_and_no_hub_runs_the_demo_model_and_says_why(tmp_path, capsys, tiny_root):
    out = tmp_path / "default.png"
    assert cli.main(["generate", "--tool", "schnell", "--prompt", "x", "--out", str(out), "--quant", "none"]) == 0
    err = capsys.readouterr().err
    assert "schnell: the official weights are not in the local cache and the Hugging Face hub cannot be reached, so " \
           "the demo model 'tiny' runs" in err
    assert read_metadata(out)["model"] == "tiny"
    code = cli.main(["generate", "--tool", "schnell", "--prompt", "", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "prompt is empty" in err  # a refusal comes alone, before notices


def test_doctor_shows_probe_results_and_can_reprobe(tmp_path):
    env = {"FLUXFORGE_CACHE_DIR": str(tmp_path), "FLUXFORGE_DISABLE_BACKENDS": "quanto,bitsandbytes"}
    proc = run_cli("doctor", env=env)
    assert "none yet" in proc.stdout
    proc = run_cli("doctor", "--reprobe", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    probes = json.loads(proc.stdout)["probes"]
    assert {(p["backend"], p["format"], p["ok"]) for p in probes} == {("torchao", "int8_dynamic", True),
                                                                    ("torchao", "int8_weight_only", True),
                                                                    ("torchao", "float8_weight_only", True)}


def test_bench_takes_its_own_options_after_the_command(capsys):
    # `app.py bench --full` on a CPU is refused by the benchmark itself (so its options reached it).
    assert cli.main(["bench", "--full", "--json", "unused.json"]) == 2
    assert "--full" in capsys.readouterr().err and not Path("unused.json").exists()
    # after studio options it would lose them, so it says how to call it instead of starting the studio
    assert cli.main(["--device", "cpu", "bench", "--quick"]) == 2
    assert "put `bench` first" in capsys.readouterr().err


def test_an_unforeseen_failure_is_one_line_without_traceback(monkeypatch, tmp_path, capsys, tiny_root):
    from pipelines.engine import Engine

    def broken(self, request, progress=None):
        raise RuntimeError("kernel exploded\nat 0xdeadbeef")

    monkeypatch.setattr(Engine, "generate", broken)
    out = tmp_path / "x.png"
    assert cli.main(["generate", "--tool", "dev", "--prompt", "x", "--model", "tiny", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error: generate failed (RuntimeError: kernel exploded)" in err and "0xdeadbeef" not in err
    assert "Traceback" not in err and not out.exists()


# ---- plan: estimates before loading -------------------------------------------------------------------------------

def test_plan_lists_every_choice_with_its_peak_and_fit_offline(capsys, monkeypatch):
    import torch

    from quantization.policy import offered

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the official models' sizes are known: nothing is downloaded
    assert cli.main(["plan", "--tool", "dev", "--size", "1024x1024"]) == 0
    out = capsys.readouterr().out
    assert "dev on black-forest-labs/FLUX.1-dev (known sizes), 1024x1024, 512 text tokens" in out
    assert "Auto picks " in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in
            {"none", "8bit", "4bit", "fp8"} | {f"auto>{q}" for q in ("none", "8bit", "4bit")}]
    quants = offered(torch.device("cpu"))
    assert [r[0].split(">")[0] for r in rows] == list(quants)  # offload has no effect on the CPU: one row each
    assert all(r[-1] in ("yes", "NO") for r in rows)
    full = next(r for r in rows if r[0] == "none")
    assert full[4:6] == ["31.4", "GiB"]  # Dev's weights at bf16: 16.87 billion parameters


def test_plan_json_has_each_choice_and_offload_with_its_bytes(capsys):
    assert cli.main(["plan", "--tool", "fill", "--model", "tiny", "--size", "512x768", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["tool"], data["model"], data["width"], data["height"]) == ("fill", "tiny", 512, 768)
    assert data["sizes_from"] == "headers" and set(data["components"]) == {"transformer", "text_encoder_2",
                                                                           "text_encoder", "vae"}
    pairs = {(e["quant"], e["offload"]) for e in data["estimates"]}
    assert pairs == {(q, o) for q in ("auto", "none", "8bit", "4bit") for o in ("none", "model", "block", "sequential")}
    for row in data["estimates"]:
        assert isinstance(row["peak_bytes"], int) and row["peak_bytes"] >= 0 and isinstance(row["fits"], bool)
    auto = next(e for e in data["estimates"] if e["quant"] == "auto")
    assert auto["resolved"] == data["auto"]["quant"] and data["auto"]["reason"] in auto["reason"]


@pytest.mark.parametrize("args, message", [
    (["--tool", "dev", "--size", "1000"], "--size='1000' must be WIDTHxHEIGHT"),
    (["--tool", "dev", "--size", "5000x1000"], "--size='5000x1000': width=5000 is out of range; use 64..2048"),
    (["--tool", "dev", "--size", "1024x32"], "--size='1024x32': height=32 is out of range; use 64..2048"),
    (["--tool", "painter"], "--tool='painter' is unknown"),
    (["--tool", "dev", "--hires-scale", "9"], "hires_scale=9 is out of range; use 1.01..4"),
    (["--tool", "dev", "--hires-upscaler", "x.pth"], "--hires-upscaler is for the hires fix: give --hires-scale too"),
    (["--tool", "fill", "--hires-scale", "2"], "--hires-scale is for text to image; the fill tool has no hires fix"),
    (["--tool", "dev", "--model", "someone/not-cached"], "not known offline and it is not in the local cache"),
    (["--tool", "dev", "--model", "./no/such/dir"], "no such directory"),
    pytest.param(["--tool", "dev", "--device", "cuda"], "is not available here",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")),
])
def test_plan_bad_input_is_one_line_exit_2(args, message):
    proc = run_cli("plan", *args, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""


# ---- batches and previews ------------------------------------------------------------------------------------

def count_loads(monkeypatch) -> list:
    """Every pipeline the model manager loads (a batch loads its model once)."""
    from pipelines.manager import ModelManager

    loads, original = [], ModelManager._load_pipeline

    def counted(self, *args, **kwargs):
        loads.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ModelManager, "_load_pipeline", counted)
    return loads


def test_count_makes_numbered_images_with_the_next_seeds_and_loads_the_model_once(tmp_path, capsys, tiny_root,
                                                                                   monkeypatch):
    loads = count_loads(monkeypatch)
    out, report = tmp_path / "fox.png", tmp_path / "fox.json"
    code = cli.main(["generate", "--tool", "dev", "--prompt", "a fox", "--model", "tiny", "--quant", "none", "--seed",
                     str(2**32 - 1), "--count", "2", "--steps", "2", "--out", str(out), "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.glob("*.png")) == ["fox-1.png", "fox-2.png"]
    seeds = [read_metadata(tmp_path / f"fox-{k}.png")["seed"] for k in (1, 2)]
    assert seeds == [2**32 - 1, 0]  # the next seed, wrapping past the largest
    data = json.loads(report.read_text())
    assert data["count"] == 2 and [item["seed"] for item in data["images"]] == seeds
    assert [item["out"] for item in data["images"]] == [str(tmp_path / "fox-1.png"), str(tmp_path / "fox-2.png")]
    assert len(loads) == 1
    stdout = capsys.readouterr().out
    assert f"wrote {tmp_path / 'fox-1.png'}" in stdout and f"seed {2**32 - 1}" in stdout and "seed 0," in stdout


def test_prompts_file_runs_each_prompt_count_times(tmp_path, capsys, tiny_root, monkeypatch):
    loads = count_loads(monkeypatch)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\n\na red fox\n   \n  # indented comment\n  a blue bird  \n")
    out = tmp_path / "set.png"
    code = cli.main(["generate", "--tool", "schnell", "--prompts", str(prompts), "--count", "2", "--seed", "7",
                     "--model", "tiny", "--quant", "none", "--steps", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    made = [read_metadata(tmp_path / f"set-{k}.png") for k in range(1, 5)]
    assert [(m["prompt"], m["seed"]) for m in made] == [("a red fox", 7), ("a red fox", 8), ("a blue bird", 9),
                                                        ("a blue bird", 10)]
    assert len(loads) == 1


def test_one_prompt_in_a_file_keeps_the_single_name(tmp_path, tiny_root):
    prompts = tmp_path / "one.txt"
    prompts.write_text("a lighthouse\n")
    out = tmp_path / "one.png"
    assert cli.main(["generate", "--tool", "schnell", "--prompts", str(prompts), "--model", "tiny", "--quant", "none",
                     "--steps", "1", "--out", str(out)]) == 0
    assert read_metadata(out)["prompt"] == "a lighthouse" and not (tmp_path / "one-1.png").exists()


@pytest.mark.parametrize("text, args, expected", [
    ("# nothing\n\n", [], "has no prompts"),
    ("a fox\n", ["--prompt", "a cat"], "--prompt and --prompts both given"),
    ("a fox\n" + "x" * 3000 + "\n", [], "prompt is 3000 characters"),
])
def test_bad_prompt_files_give_one_line_and_write_nothing(tmp_path, capsys, tiny_root, text, args, expected):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(text)
    code = cli.main(["generate", "--tool", "dev", "--model", "tiny", "--prompts", str(prompts), *args,
                     "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not list(tmp_path.glob("*.png"))  # checked before any image is made


def test_preview_every_writes_step_previews_next_to_the_output(tmp_path, tiny_root):
    out = tmp_path / "fox.png"
    assert cli.main(["generate", "--tool", "dev", "--prompt", "a fox", "--model", "tiny", "--quant", "none", "--seed",
                     "3", "--steps", "5", "--preview-every", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["fox-step2.png", "fox-step4.png", "fox.png"]
    final = Image.open(out)
    assert all(Image.open(tmp_path / f"fox-step{k}.png").size == final.size for k in (2, 4))
    plain = tmp_path / "plain.png"  # previews do not change the image
    assert cli.main(["generate", "--tool", "dev", "--prompt", "a fox", "--model", "tiny", "--quant", "none", "--seed",
                     "3", "--steps", "5", "--out", str(plain)]) == 0
    assert Image.open(plain).tobytes() == final.tobytes()
    assert sorted(p.name for p in tmp_path.glob("plain*.png")) == ["plain.png"]  # off unless asked


def test_previews_of_a_batch_are_named_after_each_image(tmp_path, tiny_root):
    out = tmp_path / "b.png"
    assert cli.main(["generate", "--tool", "schnell", "--prompt", "x", "--model", "tiny", "--quant", "none",
                     "--steps", "2", "--count", "2", "--preview-every", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["b-1-step2.png", "b-1.png", "b-2-step2.png", "b-2.png"]


# ---- messages: one line, one rule, the mistake named -----------------------------------------------------------

def test_bad_input_is_one_line_before_any_notice(tmp_path, image_files, capsys, tiny_root):
    """Without --model the tool's default model is looked for (here: not found, so the tiny demo, with a notice);
    bad input is still exactly one line: notices wait until every input is checked."""
    out = tmp_path / "never.png"
    code = cli.main(["generate", "--tool", "fill", "--prompt", "x", "--image", str(image_files["photo"]), "--mask",
                     str(image_files["small_mask"]), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: mask is 64x64 but image is 128x96"), err
    assert not out.exists()


def test_plan_snaps_a_size_as_generate_does(capsys, tiny_root):
    assert cli.main(["plan", "--tool", "dev", "--model", "tiny", "--size", "1000x1000"]) == 0
    captured = capsys.readouterr()
    assert "dev on tiny (read from its files), 992x992" in captured.out
    assert captured.err.splitlines() == ["notice: width 1000 snapped to 992 (a multiple of 16).",
                                         "notice: height 1000 snapped to 992 (a multiple of 16)."]


def test_generate_and_plan_take_the_same_sizes(tmp_path, capsys, tiny_root):
    """One rule: what generate snaps, plan snaps the same way; what one refuses, so does the other."""
    for size, expected in (("1000", "992"), ("70", "64"), ("2048", "2048")):
        assert cli.main(["plan", "--tool", "dev", "--model", "tiny", "--size", f"{size}x{size}", "--json"]) == 0
        planned = json.loads(capsys.readouterr().out)
        assert (planned["width"], planned["height"]) == (int(expected),) * 2
    for size in ("5000", "0", "48"):
        code = cli.main(["generate", "--tool", "dev", "--prompt", "x", "--model", "tiny", "--width", size,
                         "--out", str(tmp_path / "x.png")])
        generate_error = capsys.readouterr().err.strip()
        code_plan = cli.main(["plan", "--tool", "dev", "--model", "tiny", "--size", f"{size}x128"])
        plan_error = capsys.readouterr().err.strip()
        assert code == 2 and generate_error.startswith("error: width=")
        assert code_plan == 2 and generate_error.split("error: ")[1] in plan_error, (generate_error, plan_error)


@pytest.mark.parametrize("argv, option, command", [
    (["--tool", "schnell", "--prompt", "a fox", "--out", "fox.png"], "--tool", "`generate`, `models` or `plan`"),
    (["--prompt", "a fox"], "--prompt", "`generate`"),
    (["--size", "512x512"], "--size", "`plan`"),
    (["--probe"], "--probe", "`doctor`"),
])
def test_forgetting_the_command_names_the_mistake(argv, option, command):
    proc = run_cli(*argv)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option} is an option of the {command} command"), lines
    assert "invalid choice" not in proc.stderr and "python app.py " in lines[0]


def test_help_says_no_command_starts_the_studio_and_every_option_has_a_line():
    import argparse

    parser = cli.build_parser()
    assert "With no command, app.py starts the studio" in " ".join(parser.format_help().split())  # as wrapped
    for name, sub in parser.commands.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or name == "bench":
                continue
            assert action.help and action.help.strip(), (name, action.option_strings or action.dest)
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            assert action.help, action.option_strings
