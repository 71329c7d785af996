"""The benchmark harness at tiny widths, and the CPU policy ordered from a measured table."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from bench.measure import paired_ratio
from quantization.config import BitsAndBytesConfig, QuantoConfig, TorchAoConfig
from quantization.policy import RATIO, cpu_order

FIELDS = ("component", "backend", "format", "auto", "weight_bytes", "ref_weight_bytes", "weight_ratio", "step_s",
          "ref_step_s", "step_ratio", "quantize_s", "load_s", "peak_bytes", "rel_error", "device", "machine")
ONLY = "quanto:int8,bitsandbytes:nf4,torchao:int8_dynamic"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from bench.run import main

    out = tmp_path_factory.mktemp("bench")
    path = out / "cpu-tiny.json"
    code = main(["--tiny", "--no-isolate", "--device", "cpu", "--only", ONLY, "--cache", str(out / "cache"),
                 "--json", str(path)])
    assert code == 0
    return path, json.loads(path.read_text())


def test_records_have_the_fields_and_honest_ratios(tiny_run):
    _, result = tiny_run
    records = result["records"]
    assert not result["failed"]
    measured = {(r["backend"], r["format"]) for r in records}
    assert measured == {("none", "bf16"), ("quanto", "int8"), ("bitsandbytes", "nf4"), ("torchao", "int8_dynamic")}
    assert {r["component"] for r in records} == {"transformer", "text_encoder_2"}
    for r in records:
        assert all(field in r for field in FIELDS), set(FIELDS) - set(r)
        assert r["weight_ratio"] == r["weight_bytes"] / r["ref_weight_bytes"]
        assert r["step_ratio"] == paired_ratio(r["step_times"], r["ref_step_times"])
        assert r["step_s"] == statistics.median(r["step_times"])
        assert r["step_s"] > 0 and r["ref_step_s"] > 0 and r["peak_bytes"] > 0
        assert r["machine"]["cores"] >= 1 and r["machine"]["versions"]["torch"]
        assert r["device"] == "cpu" and isinstance(r["auto"], bool) and math.isfinite(r["rel_error"])
        if r["backend"] == "none":
            assert r["weight_ratio"] == 1.0 and r["rel_error"] == 0.0
        else:
            assert r["weight_bytes"] < r["ref_weight_bytes"] and r["rel_error"] > 0
    transformer = {r["backend"]: r for r in records if r["component"] == "transformer"}
    assert transformer["quanto"]["weight_ratio"] < 0.52 and transformer["bitsandbytes"]["weight_ratio"] < 0.3
    assert transformer["quanto"]["psnr"] > 20  # decoded images are compared


def test_auto_flags_follow_the_policy(tiny_run):
    from quantization.policy import candidates

    _, result = tiny_run
    firsts = {(candidates(q, "cpu")[0].backend, candidates(q, "cpu")[0].format) for q in ("8bit", "4bit")}
    for r in result["records"]:
        assert r["auto"] == ((r["backend"], r["format"]) in firsts)
        assert r["auto"] == (r["auto_for"] is not None)


def test_markdown_and_png_are_written(tiny_run):
    path, result = tiny_run
    text = path.with_suffix(".md").read_text()
    assert "| transformer | quanto | int8 |" in text and "## Targets" in text
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["targets"] and all("met" in t for t in result["targets"])


def test_full_refuses_on_a_cpu_unless_forced(capsys):
    from bench.run import main

    assert main(["--full", "--device", "cpu"]) == 2
    assert "--force" in capsys.readouterr().err


def test_update_policy_refuses_tiny_widths(capsys):
    from bench.run import main

    assert main(["--tiny", "--device", "cpu", "--update-policy"]) == 2
    assert "--quick" in capsys.readouterr().err


Q8, Q4 = QuantoConfig("int8"), QuantoConfig("int4")
BNB8, NF4 = BitsAndBytesConfig("int8"), BitsAndBytesConfig("nf4")
AO_DYN, AO_WO = TorchAoConfig("int8_dynamic"), TorchAoConfig("int8_weight_only")


def names(*configs):
    return {(c.backend, c.format) for c in configs}


@pytest.mark.parametrize(
    "quant, steps, weights, expected",
    [
        # fastest first among options meeting the weight target
        ("8bit", {("torchao", "int8_dynamic"): 1.5, ("quanto", "int8"): 3.2, ("bitsandbytes", "int8"): 1.6,
                  ("torchao", "int8_weight_only"): 2.9},
         dict.fromkeys(names(AO_DYN, Q8, BNB8, AO_WO), 0.50), (AO_DYN, BNB8, AO_WO, Q8)),
        # an option over the weight target goes after those meeting it, however fast
        ("8bit", {("torchao", "int8_dynamic"): 1.0, ("quanto", "int8"): 3.0, ("bitsandbytes", "int8"): 4.0,
                  ("torchao", "int8_weight_only"): 5.0},
         {("torchao", "int8_dynamic"): 0.60, ("quanto", "int8"): 0.50, ("bitsandbytes", "int8"): 0.50,
          ("torchao", "int8_weight_only"): 0.50}, (Q8, BNB8, AO_WO, AO_DYN)),
        ("4bit", {("bitsandbytes", "nf4"): 6.2, ("quanto", "int4"): 5.8},
         {("bitsandbytes", "nf4"): 0.258, ("quanto", "int4"): 0.266}, (Q4, NF4)),
        ("4bit", {("bitsandbytes", "nf4"): 1.0, ("quanto", "int4"): 3.4},
         {("bitsandbytes", "nf4"): 0.258, ("quanto", "int4"): 0.266}, (NF4, Q4)),
        # unmeasured options keep their listed order, after the measured ones
        ("4bit", {("quanto", "int4"): 9.0}, {("quanto", "int4"): 0.27}, (Q4, NF4)),
        ("8bit", {}, {}, (AO_DYN, Q8, BNB8, AO_WO)),
    ],
)
def test_cpu_order_from_a_measured_table(quant, steps, weights, expected):
    assert cpu_order(quant, steps, weights) == expected


def test_weight_target_is_the_policy_ratio():
    at, over = RATIO["4bit"], RATIO["4bit"] + 0.01
    steps = {("bitsandbytes", "nf4"): 1.0, ("quanto", "int4"): 2.0}
    assert cpu_order("4bit", steps, {("bitsandbytes", "nf4"): at, ("quanto", "int4"): at})[0] == NF4
    assert cpu_order("4bit", steps, {("bitsandbytes", "nf4"): over, ("quanto", "int4"): at})[0] == Q4


def test_written_table_round_trips_into_the_policy(tiny_run, tmp_path):
    from bench.report import measured_tables, write_measured
    from quantization.policy import read_measured

    _, result = tiny_run
    path = tmp_path / "measured.json"
    steps, weights = write_measured(result["records"], result, path, cpu="emulated-bf16")
    table = read_measured(path)
    assert table["step"] == {"emulated-bf16": steps} and table["weight"] == weights
    write_measured(result["records"], result, path, cpu="native-bf16")  # another class: both tables kept
    table = read_measured(path)
    assert table["step"] == {"emulated-bf16": steps, "native-bf16": steps}
    assert set(table["machines"]) == {"emulated-bf16", "native-bf16"}
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n"  # sorted: diffs stay small
    assert (steps, weights) == measured_tables(result["records"])
    assert ("none", "bf16") not in steps and ("quanto", "int8") in steps
    assert "cores" in path.read_text() and cpu_order("8bit", steps, weights)


@pytest.fixture(scope="module")
def klein_run(tmp_path_factory):
    """The quick benchmark's klein rows at tiny widths: klein's transformer and its Qwen3 text encoder."""
    from bench.run import main

    out = tmp_path_factory.mktemp("bench-klein")
    path = out / "cpu-tiny-klein-4b.json"
    code = main(["--tiny", "--model", "klein-4b", "--no-isolate", "--device", "cpu", "--only",
                 "quanto:int8,bitsandbytes:nf4", "--cache", str(out / "cache"), "--json", str(path)])
    assert code == 0
    return path, json.loads(path.read_text())


def test_klein_shapes_take_the_published_widths():
    from bench.shapes import shape_for
    from pipelines.models.official import KLEIN_CONFIGS

    for model, size in (("klein-4b", "4B"), ("klein-9b", "9B")):
        config = KLEIN_CONFIGS[size]
        quick, full = shape_for("quick", model), shape_for("full", model)
        for shape in (quick, full):
            assert shape.family == "flux2" and shape.text_component == "text_encoder"
            assert (shape.hidden, shape.qwen_hidden, shape.qwen_intermediate, shape.joint_attention_dim) == (
                config.hidden, config.text_width, config.text_intermediate, 3 * config.text_width)
            assert (shape.full_double, shape.full_single, shape.full_text_layers) == (config.double, config.single, 36)
        assert (quick.double_blocks, quick.single_blocks, quick.qwen_layers) == (1, 2, 2)
        assert (full.double_blocks, full.single_blocks, full.qwen_layers, full.steps) == (config.double,
                                                                                          config.single, 36, 4)
    assert shape_for("quick", "klein-4b").hidden == 3072 and shape_for("quick", "klein-9b").hidden == 4096


def test_klein_rows_measure_its_transformer_and_qwen3_text_encoder(klein_run):
    path, result = klein_run
    assert result["family"] == "flux2" and result["preset"] == "tiny klein-4b"
    rows = {(r["component"], r["backend"], r["format"]): r for r in result["records"]}
    assert set(rows) == {(c, b, f) for c in ("transformer", "text_encoder")
                         for b, f in (("none", "bf16"), ("quanto", "int8"), ("bitsandbytes", "nf4"))}
    for (component, backend, fmt), r in rows.items():
        assert r["step_s"] > 0 and r["weight_bytes"] > 0
        if backend != "none":
            assert r["quantized_layers"] > 0 and r["weight_ratio"] < 0.8 and 0 < r["rel_error"] < 0.5
    assert rows[("text_encoder", "none", "bf16")]["step_kind"] == "Qwen3 encode"
    assert rows[("transformer", "quanto", "int8")]["psnr"] > 20
    text = path.with_suffix(".md").read_text()
    assert "Qwen3 1 layers" in text and "FLUX.2 [klein]" in text and "| text_encoder | quanto | int8 |" in text


def test_klein_rows_write_the_flux2_table_and_the_policy_orders_flux2_by_it(klein_run, tmp_path, monkeypatch):
    """A klein run with --update-policy writes FLUX.2's table beside FLUX.1's (kept); the policy orders a FLUX.2
    model's CPU chain by it, and a FLUX.1 model's by FLUX.1's."""
    import quantization.policy as policy
    from bench.report import write_measured

    _, result = klein_run
    path = tmp_path / "measured.json"
    path.write_text(policy.MEASURED.read_text())
    before = policy.read_measured(path)
    flux2_steps = {("quanto", "int8"): 2.0, ("bitsandbytes", "nf4"): 0.2}
    records = [dict(r, step_ratio=flux2_steps.get((r["backend"], r["format"]), 1.0)) for r in result["records"]]
    steps, _ = write_measured(records, result, path, cpu="emulated-bf16", family="flux2")
    after = policy.read_measured(path)
    assert after["step"] == before["step"] and after["weight"] == before["weight"]  # FLUX.1's kept
    assert after["families"]["flux2"]["step"]["emulated-bf16"] == steps == flux2_steps
    assert "cores" in after["families"]["flux2"]["machines"]["emulated-bf16"]
    monkeypatch.setattr(policy, "MEASURED", path)
    policy.forget_measured()
    try:
        merged = {**before["step"]["emulated-bf16"], **flux2_steps}  # FLUX.1's where klein was not measured
        assert policy.cpu_step_ratios("emulated-bf16", "flux2") == merged
        assert policy.cpu_step_ratios("emulated-bf16") == before["step"]["emulated-bf16"]
        assert policy.cpu_step_ratios("native-bf16", "flux2") == before["step"]["native-bf16"]  # unmeasured: FLUX.1's
        assert policy.cpu_chain("4bit", "emulated-bf16", "flux2") == cpu_order("4bit", merged, before["weight"])
        assert policy.cpu_chain("4bit", "emulated-bf16", "flux2")[0] == BitsAndBytesConfig("nf4")
        assert policy.cpu_chain("4bit", "emulated-bf16") == cpu_order("4bit", before["step"]["emulated-bf16"],
                                                                     before["weight"])
    finally:
        policy.forget_measured()


def test_the_committed_flux2_table_is_klein_4bs_quick_rows():
    """The FLUX.2 table in quantization/measured.json is the transformer rows of the committed klein 4B quick run."""
    from pathlib import Path

    from bench.report import measured_tables
    from quantization.policy import MEASURED, read_measured

    results = Path(MEASURED).parents[1] / "bench" / "results" / "cpu-2core-emulated-bf16-quick-klein-4b.json"
    run = json.loads(results.read_text())
    assert run["family"] == "flux2" and run["shape"]["hidden"] == 3072 and run["shape"]["qwen_hidden"] == 2560
    steps, _ = measured_tables(run["records"])
    assert read_measured(MEASURED)["families"]["flux2"]["step"]["emulated-bf16"] == steps
    assert {r["component"] for r in run["records"]} == {"transformer", "text_encoder"}


def test_the_policy_reads_the_committed_table_of_this_class_of_cpu():
    from quantization.policy import MEASURED, candidates, cpu_chain, cpu_class, read_measured

    measured = read_measured(MEASURED)
    assert cpu_class() in ("native-bf16", "emulated-bf16")
    assert set(measured["step"]) == set(measured["machines"]) == {"native-bf16", "emulated-bf16"}
    for quant in ("8bit", "4bit"):
        table = measured["step"][cpu_class()]
        assert candidates(quant, "cpu")[:-1] == cpu_order(quant, table, measured["weight"])
        for cpu, table in measured["step"].items():
            assert cpu_chain(quant, cpu) == cpu_order(quant, table, measured["weight"])
    assert cpu_chain("8bit", "an-unmeasured-cpu") == cpu_order("8bit", {}, measured["weight"])


def test_cache_benchmark_times_cold_and_cached_loads_in_fresh_processes(tmp_path):
    from bench.cache_load import main

    path = tmp_path / "cache.json"
    main(["--preset", "tiny", "--only", "quanto:int8", "--components", "text_encoder_2", "--repeat", "1",
          "--quiet-wait", "0", "--weights", str(tmp_path / "weights"), "--json", str(path)])
    (record,) = json.loads(path.read_text())["records"]
    cold, cached = record["cold"], record["cached"]
    assert record["identical"] and cold["output_sha256"] == cached["output_sha256"]
    assert cold["quantize_s"] > 0 and cold["entry_bytes"] > 0 and cached["total_s"] > 0
    assert record["speedup"] == pytest.approx(cold["total_s"] / cached["total_s"])
    assert "cached load" in path.with_suffix(".md").read_text()


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory):
    """`bench e2e --narrow`: none and 4bit for real, an unknown quant forced in, an option set generate lacks."""
    from bench import e2e

    out = tmp_path_factory.mktemp("e2e")
    path, work = out / "e2e-narrow.json", out / "runs"
    flags = e2e.generate_flags()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(e2e, "allowed_quants", lambda: ["none", "4bit", "bogus"])
        patch.setattr(e2e, "generate_flags", lambda: flags - {"--compile"})
        code = e2e.main(["--narrow", "--device", "cpu", "--quant", "4bit,bogus", "--options", "compile",
                         "--cache", str(out / "cache"), "--work", str(work), "--json", str(path)])
    return code, path, work, json.loads(path.read_text())


def test_e2e_klein_4b_preset_builds_at_the_official_size_on_the_meta_device():
    """`bench e2e --model klein-4b`'s full preset builds klein 4B's components with the official table's parameter
    counts (the tokenizer and scheduler hold no weights)."""
    import torch

    from bench.e2e import components, preset_for
    from pipelines.memory.sizes import official_sizes

    preset = preset_for("full", "klein-4b")
    assert (preset.family, preset.width, preset.height, preset.steps) == ("flux2", 1024, 1024, 4)
    builders, index = components(preset)
    assert index == {"_class_name": "Flux2KleinPipeline", "is_distilled": True}
    official = {c.name: c.params for c in official_sizes("black-forest-labs/FLUX.2-klein-4B").components}
    with torch.device("meta"):
        built = {name: build() for name, build in builders.items()}
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in built.items()
              if isinstance(part, torch.nn.Module)}
    assert counts == official and sum(counts.values()) == 7_982_058_787
    assert type(built["text_encoder"]).__name__ == "Qwen3ForCausalLM"
    assert built["text_encoder"].config.num_hidden_layers == 36 and built["transformer"].config.num_layers == 5
    assert max(built["tokenizer"].get_vocab().values()) < built["text_encoder"].config.vocab_size
    assert preset_for("full").slug() != preset.slug() and preset.slug().startswith("klein-4b-full-")


def test_e2e_klein_4b_narrow_runs_the_klein_tool_end_to_end(tmp_path):
    from bench import e2e

    path = tmp_path / "e2e-klein.json"
    code = e2e.main(["--narrow", "--model", "klein-4b", "--device", "cpu", "--quant", "4bit", "--budget", "3000",
                     "--cache", str(tmp_path / "cache"), "--json", str(path)])
    result = json.loads(path.read_text())
    assert code == 0 and result["family"] == "flux2" and result["tool"] == e2e.dev_tool_name("flux2")
    ok = {r["quant"]: r for r in result["records"] if r["status"] == "ok"}
    assert set(ok) == {"none", "4bit"}
    assert ok["none"]["components"]["transformer"]["backend"] == "none"
    assert ok["4bit"]["components"]["transformer"]["backend"] != "none" and "text_encoder" in ok["4bit"]["components"]
    assert "FLUX.2 [klein] 4B at 256x256, 4 steps" in path.with_suffix(".md").read_text()


def test_e2e_plans_bf16_once_then_each_mode_cold_and_cached_then_the_option_sets():
    from bench.e2e import plan_runs

    runs = plan_runs(["none", "8bit", "4bit"], [("compile", ["--compile"], None)])
    assert [(r["quant"], r["options"], r["phase"]) for r in runs] == [
        ("none", "", "cached"), ("8bit", "", "cold"), ("8bit", "", "cached"), ("4bit", "", "cold"),
        ("4bit", "", "cached"), ("8bit", "compile", "cached"), ("4bit", "compile", "cached"),
        ("none", "compile", "cached")]


def test_e2e_budget_expects_the_longest_run_of_a_kind_and_refuses_what_does_not_fit():
    import time

    from bench.e2e import PRIORS, Budget

    budget = Budget(100, "narrow", time.perf_counter())
    assert budget.expected("cold") == PRIORS["narrow"]["cold"] and budget.refusal("cold") is None
    budget.record("cold", 70.0)
    budget.record("cold", 40.0)
    assert budget.expected("cold") == 70.0
    budget.start -= 50  # 50 s have gone
    assert "over the --budget of 100 s: about 70 s needed, 50 s left" == budget.refusal("cold")
    assert budget.refusal("cached") is None


def test_e2e_within_a_tiny_budget_lists_every_run_as_skipped(e2e_run, tmp_path):
    from bench import e2e

    _, path, _, _ = e2e_run
    out = tmp_path / "budget.json"
    code = e2e.main(["--narrow", "--device", "cpu", "--quant", "4bit", "--budget", "0.001",
                     "--cache", str(path.parent / "cache"), "--json", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["budget_s"] == 0.001
    assert [(r["quant"], r["status"]) for r in result["records"]] == [("none", "skipped"), ("4bit", "skipped")]
    assert all("over the --budget of 0 s" in r["reason"] and not r["runs"] for r in result["records"])


def test_e2e_disk_check_counts_the_model_and_one_quantized_mode(tmp_path, monkeypatch):
    from bench.e2e import FULL_MODEL_BYTES, PRESETS, disk_shortage

    free = {"bytes": int(FULL_MODEL_BYTES * 1.3)}
    monkeypatch.setattr("bench.e2e.shutil.disk_usage", lambda path: type("U", (), {"free": free["bytes"]})())
    assert disk_shortage(PRESETS["full"], tmp_path, ["none"]) is None
    short = disk_shortage(PRESETS["full"], tmp_path, ["none", "8bit", "4bit"])
    assert short and "one quantized mode's weights at a time" in short and "\n" not in short
    free["bytes"] = int(FULL_MODEL_BYTES * 1.6)
    assert disk_shortage(PRESETS["full"], tmp_path, ["none", "8bit", "4bit"]) is None
    assert disk_shortage(PRESETS["narrow"], tmp_path, ["8bit"]) is None


def test_e2e_records_say_what_each_run_reported(e2e_run):
    code, _, work, result = e2e_run
    assert code == 1  # a mode failed
    by = {(r["quant"], r["options"]): r for r in result["records"]}
    # in the order the runs tell most: bf16, each mode cold then cached, then the option sets
    assert list(by) == [("none", ""), ("4bit", ""), ("bogus", ""), ("4bit", "compile"), ("bogus", "compile"),
                        ("none", "compile")]
    reports = {}
    for quant in ("none", "4bit"):
        record = by[(quant, "")]
        assert record["status"] == "ok" and set(record["runs"]) == ({"cached"} if quant == "none" else
                                                                      {"cold", "cached"})
        for phase, run in record["runs"].items():
            report = json.loads((work / run["report_file"]).read_text())
            reports[quant, phase] = report
            assert run["exit_code"] == 0 and report["quantization"]["requested"] == quant
            assert run["timings"] == report["timings"]
            assert run["peak_bytes"] == report["memory"]["peak_bytes"] > 0
            assert run["peak_reserved_bytes"] == report["memory"].get("peak_reserved_bytes")
            assert run["placement"] == report.get("placement")
            assert run["components"] == {name: {"backend": c["backend"], "format": c["format"],
                                                "from_cache": c.get("from_cache")}
                                         for name, c in report["quantization"]["components"].items()}
        cached = reports[quant, "cached"]
        if quant != "none":
            cold = reports[quant, "cold"]
            assert record["load_cold_s"] == cold["timings"]["load_s"]
            assert record["quantize_cold_s"] == cold["timings"]["quantize_s"]
        assert record["load_cached_s"] == cached["timings"]["load_s"]
        assert record["denoise_s"] == cached["timings"]["denoise_s"] > 0
        timings = cached["timings"]
        assert record["steady_denoise_s"] == pytest.approx(
            timings["denoise_s"] - max(0.0, timings["first_step_s"] - timings["step_s"]))
        assert record["peak_bytes"] == cached["memory"]["peak_bytes"]
        assert record["timings"] == cached["timings"]
    # cold quantized and wrote the quantized weights; cached read them back
    assert not reports["4bit", "cold"]["quantization"]["components"]["transformer"]["from_cache"]
    assert reports["4bit", "cached"]["quantization"]["components"]["transformer"]["from_cache"]
    assert by[("4bit", "")]["components"]["transformer"]["backend"] != "none"
    # the ratio is against the bf16 run of this same invocation, both warm (no first-step extra: no compiling in it)
    assert by[("none", "")]["denoise_ratio"] == 1.0
    assert by[("4bit", "")]["denoise_ratio"] == pytest.approx(by[("4bit", "")]["steady_denoise_s"]
                                                              / by[("none", "")]["steady_denoise_s"])


def test_e2e_failed_and_skipped_runs_are_recorded(e2e_run):
    _, _, _, result = e2e_run
    by = {(r["quant"], r["options"]): r for r in result["records"]}
    failed = by[("bogus", "")]
    assert failed["status"] == "failed" and failed["exit_code"] == 2 and set(failed["runs"]) == {"cold"}
    assert "bogus" in failed["error"] and failed["stderr_tail"]
    assert failed["skipped"] == {"cached": "its cold run failed"}
    assert failed.get("denoise_ratio") is None
    for quant in ("none", "4bit", "bogus"):
        skipped = by[(quant, "compile")]
        assert skipped["status"] == "skipped" and "--compile" in skipped["reason"] and not skipped["runs"]


def test_e2e_writes_markdown_and_png_and_judges_only_the_full_preset(e2e_run):
    _, path, _, result = e2e_run
    text = path.with_suffix(".md").read_text()
    assert "| 4bit |  | ok |" in text and "## Failed" in text and "bogus" in text
    assert "not judged (narrow preset)" in text
    assert not result["judged"] and result["targets"] and all(t["met"] is None for t in result["targets"])
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["preset"] == "narrow" and (result["width"], result["height"], result["steps"]) == (256, 256, 4)


def test_e2e_targets_are_judged_on_the_full_preset():
    from bench.e2e import targets

    def record(quant, options, peak_gib, denoise, load_cold, load_cached, fmt):
        return {"quant": quant, "options": options, "status": "ok", "peak_bytes": peak_gib * 2**30,
                "denoise_s": denoise, "denoise_ratio": denoise / 10.0, "load_cold_s": load_cold,
                "load_cached_s": load_cached, "components": {"transformer": {"backend": "x", "format": fmt}}}

    records = [record("none", "", 30, 10.0, 20.0, 20.0, "bf16"), record("8bit", "", 12, 5.0, 30.0, 10.0, "int8"),
               record("4bit", "", 9, 9.0, 30.0, 10.0, "nf4"), record("4bit", "compile", 9, 3.0, None, 9.0, "nf4")]
    met = {t["target"].split(":")[0].split(" <=")[0]: t["met"] for t in targets(records, judged=True)}
    assert met == {"4bit": False, "8bit": True, "NF4 denoise": True, "fastest 8-bit": True,
                   "fastest combination": True, "cached 4-bit load": True, "cold 4-bit start": True}
    assert all(t["met"] is None for t in targets(records, judged=False))


def test_e2e_refuses_the_real_size_on_a_cpu_unless_forced(capsys, tmp_path):
    from bench.e2e import main

    assert main(["--device", "cpu", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bench-e2e").exists()
    assert main(["--narrow", "--device", "cpu", "--quant", "none,fp16"]) == 2
    assert "fp16" in capsys.readouterr().err


def test_e2e_step_cache_effect_is_reported_apart(e2e_run):
    from bench.e2e import NOT_QUALITY, add_ratios, markdown

    _, _, _, result = e2e_run

    def record(quant, options, denoise):
        return {"quant": quant, "options": options, "status": "ok", "denoise_s": denoise, "peak_bytes": 2**30,
                "timings": {"denoise_s": denoise, "total_s": denoise + 1}, "components": {}}

    records = [record("none", "", 8.0), record("4bit", "", 6.0), record("4bit", "step-cache", 3.0),
               record("4bit", "compile", 4.0), record("4bit", "compile+step-cache", 1.0)]
    add_ratios(records)
    assert [r["denoise_ratio"] for r in records] == [1.0, 0.75, 0.375, 0.5, 0.125]
    assert records[2]["step_cache_effect"] == 0.5 and records[4]["step_cache_effect"] == 0.25
    assert "step_cache_effect" not in records[1]
    text = markdown(dict(result, records=records, targets=[]))
    assert f"## Step cache ({NOT_QUALITY})" in text and "- 4bit + compile+step-cache: 0.25x" in text


# ---- bench lora: a step with and without a LoRA, per backend ------------------------------------------------------
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from bench.lora import main

    out = tmp_path_factory.mktemp("bench-lora")
    path = out / "lora-tiny.json"
    code = main(["--tiny", "--no-isolate", "--device", "cpu", "--rounds", "2", "--steps", "1",
                 "--cache", str(out / "cache"), "--json", str(path)])
    assert code == 0
    return path, json.loads(path.read_text())


def test_lora_bench_measures_every_backend_it_offers_with_and_without_the_lora(lora_run):
    import torch

    from bench.lora import TARGET, options
    from quantization.registry import check_backend

    _, result = lora_run
    offered = {(c.backend, c.format) for c in options(None) if check_backend(c, torch.device("cpu")) is None}
    assert {("quanto", "int8"), ("quanto", "int4"), ("bitsandbytes", "nf4"), ("bitsandbytes", "int8"),
            ("torchao", "int8_weight_only"), ("torchao", "int8_dynamic"), ("none", "bf16")} <= offered
    assert not result["failed"] and [(r["backend"], r["format"]) for r in result["rows"]][0] == ("none", "bf16")
    assert {(r["backend"], r["format"]) for r in result["rows"]} == offered
    assert {(s["backend"], s["format"]) for s in result["skipped"]} == \
        {(c.backend, c.format) for c in options(None)} - offered
    assert all(s["reason"] for s in result["skipped"])
    for r in result["rows"]:
        assert r["rank"] == 16 and len(r["round_ratios"]) == 2 == len(r["step_times"]) == len(r["lora_step_times"])
        rounds = [statistics.median(w) / statistics.median(b) for b, w in zip(r["step_times"], r["lora_step_times"])]
        assert r["round_ratios"] == rounds and r["ratio"] == statistics.median(rounds)
        assert r["step_s"] == statistics.median(t for times in r["step_times"] for t in times) > 0
        assert r["met"] == (r["ratio"] <= TARGET) and r["target_ratio"] == TARGET
        assert r["wrapped_base_layers"] > 0 and r["lora_change"] > 0 and r["lora_bytes"] > 0
        # after removal: the same modules, types and bytes, and the output of the model before the LoRA
        assert r["layers_kept"] and r["weight_bytes_after"] == r["weight_bytes"] and r["output_restored"]
        assert not r["adapters_left"]
        if r["bits"] < 16:
            assert all(kind != "Linear" or weight != "Parameter" for kind, weight in r["types_after"])
    assert result["load_average_1min"] and result["machine"]["cores"] >= 1


def test_lora_bench_writes_json_and_markdown(lora_run):
    path, result = lora_run
    text = path.with_suffix(".md").read_text()
    assert text.startswith("# LoRA step time: tiny on cpu-")
    assert "| quanto | int4 |" in text and "| bitsandbytes | nf4 |" in text and "target <= 1.15" in text
    assert "skipped (" in text or not result["skipped"]
    for row in result["rows"]:
        assert f"| {row['ratio']:.3f} | {'yes' if row['met'] else 'NO'} |" in text


def test_lora_bench_from_the_command_line(tmp_path, capsys):
    import cli

    path = tmp_path / "lora.json"
    assert cli.main(["bench", "lora", "--tiny", "--no-isolate", "--device", "cpu", "--only", "quanto:int8",
                     "--rounds", "1", "--steps", "1", "--cache", str(tmp_path / "cache"), "--json", str(path)]) == 0
    assert [r["label"] for r in json.loads(path.read_text())["rows"]] == ["full precision", "quanto int8"]
    assert "| quanto | int8 |" in capsys.readouterr().out
    assert cli.main(["bench", "lora", "--tiny", "--rank", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --rank=0 must be a whole number >= 1."


# ---- bench gpu-check: each option checked on a card (here: --narrow, on the CPU) -----------------------------------
@pytest.mark.slow
def test_gpu_check_narrow_runs_every_check_and_prints_one_table(tmp_path, capsys):
    from bench.gpu_check import CHECKS, main

    out = tmp_path / "gpu-check.md"
    code = main(["--narrow", "--no-e2e", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    assert [row.split(" | ")[0][2:] for row in rows] == [name for name, _ in CHECKS]
    assert all(" | ok | " in row for row in rows)
    assert out.read_text().strip() == text.strip()


def test_gpu_check_without_a_card_points_to_narrow(capsys):
    from bench.gpu_check import main

    assert main(["--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--narrow" in err and len(err.strip().splitlines()) == 1


# ---- bench mps-check: what the studio assumes about Apple MPS (here: --narrow, on the CPU) ------------------------
def test_mps_check_narrow_measures_every_mps_backend_and_prints_one_table(tmp_path, capsys):
    from bench.mps_check import main, mps_configs

    out = tmp_path / "mps-check.md"
    code = main(["--narrow", "--no-runs", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    names = [row.split(" | ")[0][2:] for row in rows]
    assert names == ["memory model", *[c.label for c in mps_configs()], "attention limit"]
    assert [c.label for c in mps_configs()] == ["quanto int4", "bitsandbytes nf4", "quanto int8"]
    assert all(" | ok | " in row for row in rows)
    assert all("int4 unpacked 0 times" in row for row in rows if "quantized on cpu" in row)
    assert out.read_text().strip() == text.strip()


def test_mps_check_without_a_mac_points_to_narrow(capsys):
    from bench.mps_check import main

    assert main([]) == 2
    err = capsys.readouterr().err
    assert "--narrow" in err and len(err.strip().splitlines()) == 1


def test_mps_check_is_a_bench_of_the_cli():
    from cli import BENCHES

    assert BENCHES["mps-check"] == "bench.mps_check"
