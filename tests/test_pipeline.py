"""`repbend run` on the tiny model: every artifact, report = results.json, cached re-run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from repbend import train as train_module
from repbend.config import load_config
from repbend.data import packaged
from repbend.eval.report import render_markdown
from repbend.pipeline import run, summary_lines
from conftest import SMALL, bag_of_words

ROOT = Path(__file__).resolve().parents[1]


def tiny_run_config(folder: Path):
    return load_config(ROOT / "configs" / "tiny-test.yaml", [
        f"output_dir={folder}", *SMALL, "steps=2",
        "eval.benchmarks=[{name: generic, label: heldout_harmful, path: '{data_dir}/heldout_harmful.jsonl', "
        "attacks: [direct, prefill]}, {name: generic, label: heldout_benign, path: '{data_dir}/heldout_benign.jsonl'}]",
        "eval.judge=keywords", "eval.max_new_tokens=6",
    ])


def test_run_writes_every_artifact_and_reuses_finished_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(packaged, "embed", bag_of_words)
    config = tiny_run_config(tmp_path / "run")
    result = run(config, progress=False)
    out = result.output_dir
    for name in ("report.md", "results.json", "training_curves.png", "asr_by_attack.png", "metrics.jsonl",
                 "config.yaml", "adapter/adapter_model.safetensors", "data/train.jsonl", "data/manifest.json",
                 "eval/results.json", "eval/generations.jsonl"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["base", "run/adapter"]
    report = (out / "report.md").read_text()
    assert render_markdown(results) in report  # the report's figures are results.json's
    assert {e["benchmark"] for e in results["metrics"]} == {"heldout_harmful", "heldout_benign"}
    assert any("heldout_harmful / prefill" in line for line in summary_lines(result))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished training run was trained again")

    monkeypatch.setattr(train_module, "train", no_training)
    again = run(config, progress=False)
    assert again.results["metrics"] == results["metrics"]


def test_run_refuses_to_mix_runs_with_other_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(packaged, "embed", bag_of_words)
    config = tiny_run_config(tmp_path / "run")
    run(config, progress=False)
    changed = load_config(ROOT / "configs" / "tiny-test.yaml", [f"output_dir={tmp_path / 'run'}", *SMALL,
                                                                 "steps=2", "train.lr=0.5"])
    with pytest.raises(Exception, match="other train settings"):
        run(changed, progress=False)
