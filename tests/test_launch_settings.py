"""The baselines' launch settings (configs/methods/launch.yaml), the rule that scales
them to the embedded model, the overlays and docs table that must follow it, and the
dev-split lr search (configs/tune-baselines-smollm2-cpu.yaml, tune.method and the grid)."""
from __future__ import annotations

import dataclasses

import re
from pathlib import Path

import pytest
import yaml

from repbend.commands.compare import method_config
from repbend.commands.tune.space import grid_points, parse_space
from repbend.commands.tune.study import method_study_config
from repbend.commands.tune.trials import tune_eval
from repbend.commands.tune.split import TuneSplit
from repbend.config import load_config, to_dict
from repbend.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = yaml.safe_load((ROOT / "configs" / "methods" / "launch.yaml").read_text())
COMPARE = ROOT / "configs" / "compare-smollm2-cpu.yaml"
SEARCH = ROOT / "configs" / "tune-baselines-smollm2-cpu.yaml"
TINY = ROOT / "configs" / "compare-tiny.yaml"
BASELINES = [name for name in LAUNCH["methods"] if name != LAUNCH["rule"]["reference"]]
SEARCHED = [name for name in BASELINES if name != "task_arithmetic"]


def scaled_lr(method: str) -> float:
    rule = LAUNCH["rule"]
    return LAUNCH["methods"][method]["lr"] * rule["embedded_lr"] / LAUNCH["methods"][rule["reference"]]["lr"]


def setting(config, key: str):
    value = to_dict(config)
    for part in key.split("."):
        value = value[part]
    return value


def test_the_rules_reference_is_repbends_embedded_lr():
    config = load_config(COMPARE)
    assert LAUNCH["rule"]["embedded_lr"] == config.train.lr == method_config(config, "repbend").train.lr
    assert sorted(LAUNCH["methods"]) == sorted(config.compare.methods)


@pytest.mark.parametrize("method", BASELINES)
def test_each_baseline_trains_at_its_scaled_launch_settings(method):
    """The overlay's lr is the launch lr times the rule's ratio; coefficients are the
    launch values except the norm-relative ones, which are the embedded values listed."""
    launch = LAUNCH["methods"][method]
    compare = load_config(COMPARE)
    config = method_config(dataclasses.replace(compare, compare=dataclasses.replace(compare.compare, overrides={})),
                           method)
    assert config.train.lr == pytest.approx(scaled_lr(method), rel=1e-9)
    # An lr in compare.overrides is a winner of the method's dev-split grid around that value,
    # or of the grid a decade lower where every point of the first diverged (circuit_breaker).
    grid = (1 / 3, 1, 3, 0.01, 1 / 30, 0.1) if method == "circuit_breaker" else (1 / 3, 1, 3)
    compared = method_config(compare, method).train.lr
    assert any(compared == pytest.approx(scaled_lr(method) * factor, rel=1e-4) for factor in grid)
    for key, value in {**launch["coefficients"], **launch.get("embedded", {})}.items():
        assert setting(config, key) == value, key


def test_docs_table_matches_the_launch_file():
    text = (ROOT / "docs" / "baselines.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 6 and cells[0].strip("`") in LAUNCH["methods"]:
            rows[cells[0].strip("`")] = cells
    assert sorted(rows) == sorted(LAUNCH["methods"])
    number = re.compile(r"\d+(?:\.\d+)?e-\d+")
    for method, cells in rows.items():
        launch = LAUNCH["methods"][method]
        assert float(number.search(cells[2]).group()) == launch["lr"], method
        assert float(number.search(cells[4]).group()) == pytest.approx(scaled_lr(method)), method
        shape = f"{launch['steps']} x {launch['batch']}" if launch["steps"] and launch["batch"] else None
        assert shape is None or shape in cells[2], method


def test_overrides_win_over_an_overlays_lr(tmp_path):
    config = load_config(TINY, [f"output_dir={tmp_path}", "compare.overrides={dpo: [train.lr=3.0e-5]}"])
    assert method_config(config, "dpo").train.lr == 3.0e-5
    assert method_config(config, "npo").train.lr == scaled_lr("npo")  # an overlay's train section applies


@pytest.mark.parametrize("method", SEARCHED)
def test_each_lr_search_is_the_grid_around_the_scaled_lr_on_dev(method, tmp_path):
    config = load_config(SEARCH, [f"tune.method={method}"])
    study = method_study_config(config, method)
    assert Path(study.output_dir) == Path(config.output_dir) / method
    assert study.train.steps == load_config(COMPARE).train.steps
    dimensions = parse_space(config.tune.space, study)
    lr = scaled_lr(method)
    grid = [point["train.lr"] for point in grid_points(config.tune, dimensions)]
    assert grid == pytest.approx([lr / 3, lr, lr * 3], rel=1e-5)
    # Every prompt a trial is scored on comes from the tuning split (dev_*.jsonl samples).
    files = {label: tmp_path / f"{label}.jsonl" for label in ("tune_harmful", "tune_benign", "tune_overrefusal")}
    scored = tune_eval(study, TuneSplit(files, {}, ""), tmp_path / "eval", [])
    assert {b.path for b in scored.eval.benchmarks} == {str(f) for f in files.values()}
    assert not scored.eval.capability_tasks


def test_lr_search_scores_and_bounds_like_repbends_study():
    ours, repbends = (to_dict(load_config(ROOT / "configs" / name))["tune"]
                      for name in ("tune-baselines-smollm2-cpu.yaml", "tune-smollm2-cpu.yaml"))
    search = ("method", "sampler", "trials", "space", "enqueue", "final", "timeout_minutes", "startup_trials")
    assert {k: v for k, v in ours.items() if k not in search} == {k: v for k, v in repbends.items() if k not in search}


def test_tune_method_and_grid_errors_are_clear():
    config = load_config(SEARCH)
    with pytest.raises(ConfigError, match="task arithmetic merges two trained runs.*refusal_sft"):
        method_study_config(config, "task_arithmetic")
    with pytest.raises(ConfigError, match="'nope' has no overlay"):
        method_study_config(config, "nope")
    study = method_study_config(config, "dpo")
    with pytest.raises(ConfigError, match="space has 3 points; set tune.trials=3"):
        grid_points(load_config(SEARCH, ["tune.trials=4"]).tune, parse_space(config.tune.space, study))
    ranged = parse_space({"train.lr": {"low": 1e-4, "high": 1e-3}}, study)
    with pytest.raises(ConfigError, match="grid needs choices or factors.*train.lr is a range"):
        grid_points(config.tune, ranged)
    for spec, message in (({"factors": []}, "non-empty list"), ({"factors": [0]}, "positive"),
                          ({"factors": [1], "choices": [1]}, "alone")):
        with pytest.raises(ConfigError, match=message):
            parse_space({"train.lr": spec}, study)
    with pytest.raises(ConfigError, match="numeric setting"):
        parse_space({"loss.method": {"factors": [2]}}, study)
    with pytest.raises(ConfigError, match="choices repeat"):
        parse_space({"train.steps": {"factors": [1, 1.01]}}, study)  # both round to 20 steps


def test_factors_scale_any_numeric_setting_of_the_method():
    study = method_study_config(load_config(SEARCH), "rmu")
    dimensions = parse_space({"loss.rmu.steering_coef": {"factors": [0.5, 1]}, "train.steps": {"factors": [0.5, 1.5]}},
                             study)
    assert [d.choices for d in dimensions] == [(60.0, 120.0), (10, 30)]
