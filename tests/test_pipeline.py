"""`repbend run` on the tiny model: every artifact, report = results.json, cached re-run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import repbend.commands.run as run_command
from repbend.commands import stages
from repbend.commands.run import run, summary_lines, target_checks
from repbend.config import load_config
from repbend.data import splits
from repbend.errors import RepbendError
from repbend.files import read_jsonl
from repbend.eval.report import render_markdown
from repbend.eval.results import CapabilityScore, EvalResults, EvaluatedModel, MetricEntry, Rate
from conftest import SMALL, bag_of_words


ROOT = Path(__file__).resolve().parents[1]


def tiny_run_config(folder: Path, *overrides: str):
    return load_config(ROOT / "configs" / "tiny-test.yaml", [
        f"output_dir={folder}", *SMALL, "steps=2",
        "eval.benchmarks=[{name: generic, label: harmful, path: '{data_dir}/test_harmful.jsonl', "
        "attacks: [direct, prefill]}, {name: generic, label: benign, path: '{data_dir}/test_benign.jsonl'}]",
        "eval.judge=keywords", "eval.max_new_tokens=6", *overrides,
    ])


def test_run_writes_every_artifact_and_reuses_finished_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(splits, "embed", bag_of_words)
    config = tiny_run_config(tmp_path / "run")
    result = run(config, progress=False)
    out = result.output_dir
    for name in ("report.md", "results.json", "training_curves.png", "asr_by_attack.png", "metrics.jsonl",
                 "config.yaml", "adapter/adapter_model.safetensors", "data/train.jsonl", "data/manifest.json",
                 "eval/results.json", "eval/generations.jsonl", "analysis/analysis.json",
                 "analysis/geometry_by_layer.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["base", "run/adapter"]
    assert result.results.to_json() == results
    report = (out / "report.md").read_text()
    assert render_markdown(EvalResults.from_json(results)) in report  # the report's figures are results.json's
    assert {e["benchmark"] for e in results["metrics"]} == {"harmful", "benign"}
    assert any("harmful / prefill" in line for line in summary_lines(result))
    assert "## Representation analysis" in report and "analysis/geometry_by_layer.png" in report
    assert "## Targets" in report and any(check.name == "peak memory (GB)" for check in result.checks)
    assert any(line.startswith("targets: ") for line in summary_lines(result))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished training run was trained again")

    monkeypatch.setattr(run_command, "train", no_training)
    again = run(config, progress=False)
    assert again.results.to_json()["metrics"] == results["metrics"]


def test_the_same_seed_gives_the_same_results_twice(tmp_path, monkeypatch):
    """Data build, training and evaluation are deterministic for one seed on one machine."""
    monkeypatch.setattr(splits, "embed", bag_of_words)
    first, second = (run(tiny_run_config(tmp_path / name / "run"), progress=False) for name in ("a", "b"))
    assert first.results.metrics == second.results.metrics
    assert first.results.capability == second.results.capability
    assert first.results.summary == second.results.summary
    assert ((first.output_dir / "data" / "train.jsonl").read_bytes()
            == (second.output_dir / "data" / "train.jsonl").read_bytes())
    assert ((first.output_dir / "adapter" / "adapter_model.safetensors").read_bytes()
            == (second.output_dir / "adapter" / "adapter_model.safetensors").read_bytes())


def test_stages_in_fresh_processes_give_the_same_results(tmp_path, monkeypatch):
    """With run.isolate_stages the training and the evaluation run in processes of their
    own; the results are those of one process, and the peak counts the children."""
    monkeypatch.setattr(splits, "embed", bag_of_words)  # the data build stays here: cached below
    together = run(tiny_run_config(tmp_path / "together" / "run"), progress=False)
    # Its own generation cache: the shared one would answer every prompt from the first run.
    apart = tiny_run_config(tmp_path / "apart" / "run", f"build.output_dir={together.output_dir / 'data'}",
                            f"eval.generation_cache={tmp_path / 'apart' / 'answers.jsonl'}", "run.isolate_stages=true")
    before = stages.peak_memory_gb()
    result = run(apart, progress=False)
    assert result.results.metrics == together.results.metrics
    assert ((result.output_dir / "adapter" / "adapter_model.safetensors").read_bytes()
            == (together.output_dir / "adapter" / "adapter_model.safetensors").read_bytes())
    assert (result.output_dir / "analysis" / "analysis.json").is_file()
    assert result.peak_memory_gb >= before > 0
    assert len(read_jsonl(tmp_path / "apart" / "answers.jsonl")) == len(read_jsonl(together.output_dir / "eval" / "generations.jsonl"))


def test_runs_on_one_build_share_the_evaluation_answers(tmp_path, monkeypatch):
    """The evaluation's answers are cached beside the build, keyed by weights, prompt and
    settings: a second run on the same build generates only what changed (its adapter)."""
    monkeypatch.setattr(splits, "embed", bag_of_words)
    first = run(tiny_run_config(tmp_path / "first"), progress=False)
    cache = first.output_dir / "data" / "cache" / run_command.EVALUATION_CACHE
    answers = len(read_jsonl(cache))
    assert answers == len(read_jsonl(first.output_dir / "eval" / "generations.jsonl"))
    second = run(tiny_run_config(tmp_path / "second", f"build.output_dir={first.output_dir / 'data'}", "train.lr=0.5"),
                 progress=False)
    per_model = answers // 2
    assert len(read_jsonl(cache)) == answers + per_model  # the base model's answers came from the cache
    base = lambda result: [m for m in result.results.metrics if m.model == "base"]  # noqa: E731
    assert base(first) == base(second)


def test_a_stage_whose_process_dies_is_a_clear_error():
    with pytest.raises(RepbendError, match="the training process died"):
        stages.in_fresh_process("training", os._exit, 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_a_killed_command_takes_its_stage_process_with_it(tmp_path):
    # The parent runs a one-minute stage in a fresh process and is killed without a chance
    # to clean up: the stage must not go on writing into the run folder.
    (tmp_path / "slow_stage.py").write_text(
        "import os, pathlib, time\n"
        "def stage(marker):\n"
        "    pathlib.Path(marker).write_text(str(os.getpid()))\n"
        "    time.sleep(60)\n")
    marker = tmp_path / "stage.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", "from repbend.commands import stages; import slow_stage; "
                               f"stages.in_fresh_process('evaluation', slow_stage.stage, {str(marker)!r})"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    try:
        for _ in range(600):
            if marker.exists() and marker.read_text():
                break
            time.sleep(0.1)
        else:
            pytest.fail("the stage never started")
        stage = int(marker.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        for _ in range(100):
            try:
                if Path(f"/proc/{stage}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break  # dead, not yet reaped
            except FileNotFoundError:
                break
            time.sleep(0.1)
        else:
            os.kill(stage, signal.SIGKILL)
            pytest.fail("the stage process outlived its killed parent")
    finally:
        parent.kill()


def test_run_refuses_to_mix_runs_with_other_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(splits, "embed", bag_of_words)
    config = tiny_run_config(tmp_path / "run")
    run(config, progress=False)
    changed = load_config(ROOT / "configs" / "tiny-test.yaml", [f"output_dir={tmp_path / 'run'}", *SMALL,
                                                                 "steps=2", "train.lr=0.5"])
    with pytest.raises(Exception, match="other train settings"):
        run(changed, progress=False)


def _rate(value):
    return Rate(value=value, low=None, high=None, n=10)


def _entry(model, benchmark, attack, value, degenerate=0.0):
    expected = "harmful" if benchmark == "harmful" else "benign"
    main = {"asr" if expected == "harmful" else "compliance": _rate(value)}
    return MetricEntry(model=model, benchmark=benchmark, attack=attack, expected=expected, n=10,
                       degenerate=_rate(degenerate), refused=_rate(0.0), **main)


def test_target_checks_compare_with_the_base_model():
    models = {name: EvaluatedModel(model="tiny", adapter=None) for name in ("base", "run/adapter")}
    results = EvalResults(models=models, judge="keywords", metrics=[
        _entry("base", "harmful", "direct", 0.8), _entry("run/adapter", "harmful", "direct", 0.08),
        _entry("base", "harmful", "prefill", 0.5), _entry("run/adapter", "harmful", "prefill", 0.2),
        _entry("base", "benign", "direct", 1.0), _entry("run/adapter", "benign", "direct", 0.95, degenerate=0.05),
        _entry("base", "xstest", "direct", 0.8), _entry("run/adapter", "xstest", "direct", 0.7),
        _entry("base", "harmful", "template", 0.0), _entry("run/adapter", "harmful", "template", 0.0),
    ], capability={model: {"facts": CapabilityScore(metric="acc", value=value)}
                   for model, value in (("base", 0.60), ("run/adapter", 0.59))})
    checks = {c.name: c for c in target_checks(results, "run/adapter", {"xstest"}, peak_gb=4.5)}
    assert checks["ASR vs base, harmful / direct"].passed  # 0.08 / 0.8 = 0.10
    assert not checks["ASR vs base, harmful / prefill"].passed  # 0.4 > 0.2
    assert checks["compliance vs base, benign / direct"].passed
    assert not checks["degenerate, benign / direct"].passed
    assert checks["compliance vs base, xstest / direct"].passed  # 0.875 >= 0.85 (over-refusal goal)
    assert checks["capability drop, facts"].passed
    assert checks["ASR vs base, harmful / template"].passed  # nothing to cut
    assert not checks["peak memory (GB)"].passed


@pytest.mark.slow
def test_embedded_main_job_end_to_end(tmp_path):
    """`repbend run` with the shipped default on the embedded model, data built from
    nothing (about 25 minutes on 2 cores): every artifact, the report's figures are
    results.json's, and the trained model refuses more without degenerating on benign
    prompts more than the base model does."""
    from repbend.commands.run import DEFAULT_CONFIG

    result = run(load_config(DEFAULT_CONFIG, [f"output_dir={tmp_path / 'main'}"]), progress=False)
    assert render_markdown(result.results) in result.report.read_text()
    base = result.results.entry("base", "harmful", "direct").asr.value
    trained = result.results.entry("main/adapter", "harmful", "direct").asr.value
    assert trained < 0.5 * base
    # At the evaluated length the base model itself loops on some benign prompts: the trained
    # model must not loop more often than it does.
    degenerate = {model: result.results.entry(model, "benign", "direct").degenerate.value
                  for model in ("base", "main/adapter")}
    assert degenerate["main/adapter"] <= degenerate["base"] + 0.03
    assert (result.output_dir / "analysis" / "analysis.json").is_file()
