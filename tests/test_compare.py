"""`repbend compare` on the tiny config: every artifact, table = compare.json, reuse,
the method overlays, and the interval arithmetic."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from repbend.cli import main
from repbend.commands.compare import compare, method_config, model_scores, pareto_front
from repbend.config import load_config
from repbend.data import splits
from repbend.errors import ConfigError
from repbend.eval.results import CapabilityScore
import repbend.commands.relearn as relearn_command
import repbend.commands.task_arithmetic as task_arithmetic_command
from conftest import SMALL, bag_of_words


ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "compare-tiny.yaml"
METHODS = ["repbend", "circuit_breaker", "rmu", "npo", "refusal_sft", "dpo", "task_arithmetic"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One comparison of all seven methods (relative paths in the config: from the root)."""
    out = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        config = load_config(TINY, [f"output_dir={out}"])
        result = compare(config, progress=False)
    return config, result


def test_compare_writes_every_artifact(compared):
    config, result = compared
    out = result.output_dir
    for name in ("compare.md", "compare.json", "safety_usability.png", "eval/results.json", "eval/generations.jsonl",
                 "task_arithmetic/merged/model.safetensors", "task_arithmetic/safe/adapter/adapter_model.safetensors",
                 "task_arithmetic/unsafe/adapter/adapter_model.safetensors"):
        assert (out / name).is_file(), name
    for method in METHODS[:-1]:
        assert (out / method / "adapter" / "adapter_model.safetensors").is_file(), method
        saved = load_config(out / method / "config.yaml")
        assert (saved.train.steps, saved.train.seed, saved.data) == (config.train.steps, config.train.seed, config.data)
    assert (out / "safety_usability.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "compare.json").read_text())
    assert data["models"] == ["base", *METHODS]
    assert data["folders"]["task_arithmetic"].endswith("task_arithmetic/merged")


def test_every_method_gets_white_box_rows_with_their_results_saved(compared):
    _, result = compared
    data = json.loads((result.output_dir / "compare.json").read_text())
    white_box = ["generic / gcg", "generic / input_embedding", "generic / steering"]
    assert set(white_box) <= set(data["harmful"])
    assert all(data["scores"][model]["asr"][key]["value"] is not None for model in data["models"] for key in white_box)
    table = (result.output_dir / "compare.md").read_text()
    assert all(f"| ASR {key} |" in table for key in white_box)
    records = [json.loads(line) for line in (result.output_dir / "eval" / "generations.jsonl").read_text().splitlines()]
    for attack, field in (("gcg", "result_file"), ("input_embedding", "result_file"), ("steering", "direction_file")):
        files = {(r["model"], r["row_id"]): r["attack_meta"][field] for r in records if r["attack"] == attack}
        assert {model for model, _ in files} == set(data["labels"].values()), attack
        assert all(Path(path).is_file() for path in files.values()), attack
        # A result per model and row; the steering direction is the base model's, one for all.
        assert len(set(files.values())) == (1 if attack == "steering" else len(files)), attack


def test_compare_has_the_relearning_curve_of_every_model(compared):
    config, result = compared
    data = json.loads((result.output_dir / "compare.json").read_text())
    relearn = data["relearn"]
    assert list(relearn["curves"]) == data["models"]
    for model, points in relearn["curves"].items():
        assert [point["steps"] for point in points] == config.relearn.steps
        # Step 0 is the model the main evaluation scored (the first benchmark, direct requests).
        assert points[0]["asr"] == data["scores"][model]["asr"][f"{relearn['benchmark']} / direct"]["value"]
    assert (result.output_dir / relearn["plot"]).read_bytes()[:4] == b"\x89PNG"
    section = (result.output_dir / "compare.md").read_text().split("## Re-learning attack")[1]
    assert all(f"| {model} |" in section for model in data["models"]) and relearn["plot"] in section


def cell_numbers(cell: str) -> list:
    return [float(x) for x in re.findall(r"-?\d+\.\d", cell)]


def test_the_table_shows_compare_json(compared):
    _, result = compared
    data = json.loads((result.output_dir / "compare.json").read_text())
    text = (result.output_dir / "compare.md").read_text().split("## Re-learning attack")[0]  # the main table
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {cells[0]: dict(zip(header, cells)) for cells in
            ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:])}
    assert list(rows) == data["models"]
    fixed = {"mean ASR": "mean_asr", "degenerate (harmful)": "degenerate_harmful", "mean compliance": "mean_compliance",
             "degenerate (benign)": "degenerate_benign", "capability": "capability", "overall": "overall"}
    assert set(fixed) <= set(header)
    checked = 0
    for model, cells in rows.items():
        scores = data["scores"][model]
        for column, cell in cells.items():
            if column == "method":
                continue
            if column in fixed:
                rate = scores[fixed[column]]
            elif column.startswith("ASR "):
                rate = scores["asr"][column[4:]]
            elif column.startswith("compliance "):
                rate = scores["compliance"][column[11:]]
            else:
                rate = scores["capability_tasks"][column]
            expected = [] if rate["value"] is None else [rate["value"], rate["low"], rate["high"]]
            assert cell_numbers(cell) == pytest.approx([100 * v for v in expected], abs=0.051), (model, column)
            checked += 1
    assert checked == len(rows) * (len(header) - 1)


def test_means_are_the_evaluations_summary(compared):
    _, result = compared
    data = json.loads((result.output_dir / "compare.json").read_text())
    summary = json.loads((result.output_dir / "eval" / "results.json").read_text())["summary"]
    for model, label in data["labels"].items():
        scores = data["scores"][model]
        assert scores["mean_asr"]["value"] == pytest.approx(summary[label]["mean_asr"])
        assert scores["mean_compliance"]["value"] == pytest.approx(summary[label]["mean_compliance"])
        assert 100 * scores["overall"]["value"] == pytest.approx(summary[label]["overall"])
        assert scores["overall"]["low"] <= scores["overall"]["value"] <= scores["overall"]["high"]


def test_a_second_compare_reuses_every_run(compared, monkeypatch, capsys):
    config, result = compared
    before = json.loads((result.output_dir / "compare.json").read_text())

    def no_training(*args, **kwargs):
        raise AssertionError("a finished training run was trained again")

    monkeypatch.setattr(task_arithmetic_command, "train", no_training)
    monkeypatch.setattr(relearn_command, "train", no_training)
    monkeypatch.chdir(ROOT)
    assert main(["compare", str(TINY), f"output_dir={config.output_dir}", "-q"]) == 0
    assert "| task_arithmetic |" in capsys.readouterr().out
    assert json.loads((result.output_dir / "compare.json").read_text())["scores"] == before["scores"]


def test_compare_trains_on_the_built_data_of_the_main_job(tmp_path, monkeypatch):
    monkeypatch.setattr(splits, "embed", bag_of_words)
    config = load_config(TINY, [
        f"output_dir={tmp_path / 'compare'}", f"build.output_dir={tmp_path / 'main' / 'data'}", *SMALL,
        "compare.build_data=true", "compare.methods=[dpo]",
        "eval.benchmarks=[{name: generic, label: harmful, path: '{data_dir}/test_harmful.jsonl'}]",
    ])
    result = compare(config, progress=False)
    built = str(tmp_path / "main" / "data" / "train.jsonl")
    # dpo reads the P_us/P_uu pairs (shared pair_id) that the build makes.
    assert load_config(result.output_dir / "dpo" / "config.yaml").data.sources[0].path == built
    assert result.data["models"] == ["base", "dpo"] and result.data["harmful"] == ["harmful / direct"]


# ---------------------------------------------------------------- overlays


def test_overlays_set_each_methods_settings(tmp_path):
    base = load_config(TINY, [f"output_dir={tmp_path}", "loss.repbend.kl_coef=0.7",
                              "compare.overrides={npo: [loss.npo.beta=0.2]}"])
    repbend = method_config(base, "repbend")
    assert repbend.loss.settings.kl_coef == 0.7 and repbend.loss.settings.target_layers == [2, 3]  # the config's own
    npo = method_config(base, "npo")
    assert (npo.loss.method, npo.loss.settings.beta, npo.loss.retain_coef) == ("npo", 0.2, 1.0)
    assert list(npo.loss.sections) == ["npo"]  # another method's loss starts from the defaults
    rmu = method_config(base, "rmu")
    assert rmu.lora.target_modules == ["gate_proj", "up_proj", "down_proj"] and rmu.lora.r == base.lora.r
    assert (rmu.loss.settings.layer, rmu.loss.settings.steering_coef, rmu.loss.settings.retain_coef) == ("auto", 120.0, 1200.0)
    assert method_config(base, "circuit_breaker").loss.settings.alpha == 10.0
    assert method_config(base, "task_arithmetic").loss.settings.unsafe_weight == 0.1
    assert Path(npo.output_dir) == tmp_path / "npo"


def test_overlays_and_overrides_with_the_flat_loss_keys_still_work(tmp_path, monkeypatch):
    from repbend import config as config_module

    monkeypatch.setattr(config_module, "_WARNED", set())
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "circuit_breaker.yaml").write_text("loss:\n  method: circuit_breaker\n  cb_alpha: 5.0\n")
    (folder / "rmu.yaml").write_text("loss:\n  method: rmu\n  rmu_seed: 3\n")
    base = load_config(TINY, [f"output_dir={tmp_path}", f"compare.method_dir={folder}",
                              "compare.overrides={rmu: [loss.rmu_steering_coef=120]}"])
    with pytest.warns(FutureWarning, match="config key loss.(cb_alpha|rmu_seed|rmu_steering_coef) is deprecated"):
        breaker, rmu = method_config(base, "circuit_breaker"), method_config(base, "rmu")
    assert breaker.loss.settings.alpha == 5.0
    assert (rmu.loss.settings.seed, rmu.loss.settings.steering_coef) == (3, 120.0)


def test_overlay_errors_are_clear(tmp_path):
    base = load_config(TINY, [f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="'nope' has no overlay.*found: circuit_breaker"):
        method_config(base, "nope")
    changed = load_config(TINY, [f"output_dir={tmp_path}", "compare.overrides={dpo: [steps=9]}"])
    with pytest.raises(ConfigError, match="dpo.*train.steps.*same data, seed and step budget"):
        method_config(changed, "dpo")
    (tmp_path / "odd.yaml").write_text("eval: {judge: keywords}\n")
    with pytest.raises(ConfigError, match="only the sections loss, lora, train"):
        method_config(load_config(TINY, [f"compare.method_dir={tmp_path}"]), "odd")


# ---------------------------------------------------------------- numbers


def test_model_scores_means_and_intervals():
    flags = {"a": [1, 1, 0, 0], "b": [1, 0, 0, 0, 0, 0, 0, 0]}
    groups = {("asr", key): (float(np.mean(f)), f) for key, f in flags.items()}
    groups[("compliance", "c")] = (0.75, [1, 1, 1, 0])
    capability = {"task": CapabilityScore(metric="acc", value=0.5, correct=[1.0, 0.0])}
    scores = model_scores(groups, capability, seed=0)
    assert scores["mean_asr"]["value"] == pytest.approx((0.5 + 0.125) / 2)
    assert scores["usability"]["value"] == pytest.approx((0.75 + 0.5) / 2)
    assert scores["overall"]["value"] == pytest.approx((1 - 0.3125 + 0.75 + 0.5) / 3)
    for rate in scores.values():
        if rate["value"] is not None:
            assert rate["low"] <= rate["value"] <= rate["high"]
    assert scores["degenerate_harmful"]["value"] is None
    assert model_scores(groups, capability, seed=0) == scores  # seeded


def test_pareto_front_keeps_the_undominated():
    points = [(90, 10), (50, 50), (40, 40), (10, 95), (50, 50)]
    assert pareto_front(points) == [0, 1, 3, 4]
