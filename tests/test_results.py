"""Typed results: results.json files of every format load, round-trip key for key, and a
missing key is an error that names it. (A round trip of a real evaluation's results is in
test_eval_run.py.)"""
from __future__ import annotations

import copy
import json

import pytest

from repbend.eval.report import load_results, render_markdown
from repbend.eval.results import EvalResults, MetricEntry, ResultsError
from repbend.commands.tune.trials import TrialRow


def _rate(value, n=4):
    return {"value": value, "low": max(0.0, value - 0.25), "high": min(1.0, value + 0.25), "n": n}


# A results.json as `repbend eval` wrote it before the non-compliant degenerate shares
# existed: no degenerate_noncompliant entries or summary keys, capability without intervals.
OLD = {
    "models": {"base": {"model": "tiny", "adapter": None}, "run/adapter": {"model": "tiny", "adapter": "run/adapter"}},
    "judge": "keywords",
    "metrics": [
        {"model": model, "benchmark": "bench", "attack": "direct", "expected": expected, "n": 4,
         main: _rate(value), "degenerate": _rate(0.25), "refused": _rate(1 - value)}
        for model, expected, main, value in (("base", "benign", "compliance", 1.0), ("base", "harmful", "asr", 0.75),
                                             ("run/adapter", "benign", "compliance", 0.75),
                                             ("run/adapter", "harmful", "asr", 0.0))
    ],
    "capability": {"base": {"facts": {"metric": "acc_norm", "value": 0.5, "n": 2, "stderr": 0.35,
                                      "correct": [1.0, 0.0]}}},
    "summary": {model: {"mean_asr": asr, "mean_compliance": compliance, "degenerate_harmful": 0.25,
                        "degenerate_benign": 0.25, "capability": capability, "overall": overall}
                for model, asr, compliance, capability, overall in (("base", 0.75, 1.0, 0.5, 58.3),
                                                                    ("run/adapter", 0.0, 0.75, None, 87.5))},
    "config": {"model": {"name_or_path": "tiny"}},
    "versions": {"repbend": "0.1.0"},
}


def test_an_old_results_file_loads_and_round_trips(tmp_path):
    results = EvalResults.from_json(copy.deepcopy(OLD))
    assert results.to_json() == OLD  # the keys it lacked stay out
    entry = results.entry("base", "bench", "direct", "harmful")
    assert isinstance(entry, MetricEntry) and entry.asr.value == 0.75 and entry.main is entry.asr
    assert entry.compliance is None and entry.degenerate_noncompliant is None
    assert results.summary["base"].degenerate_noncompliant_harmful is None
    assert results.capability_score("base", "facts").low is None
    assert results.capability_score("run/adapter", "facts") is None
    assert results.models["run/adapter"].adapter == "run/adapter"
    table = render_markdown(results)
    assert "| bench | direct | ASR | 4 | 75.0 [50.0, 100.0] | 0.0 [0.0, 25.0] | -75.0 |" in table
    assert "| bench | direct | degenerate (non-compliant) | 4 | - | - | - |" in table
    assert "| facts | acc_norm | 50.0 | - |" in table

    (tmp_path / "results.json").write_text(json.dumps(OLD))
    assert load_results([tmp_path]).to_json() == {k: v for k, v in OLD.items() if k not in ("config", "versions")}


def test_keys_this_version_does_not_know_are_kept():
    data = copy.deepcopy(OLD)
    data["notes"] = ["rerun"]
    data["metrics"][0]["judge_seconds"] = 1.5
    data["summary"]["base"]["safety"] = 0.25
    assert EvalResults.from_json(copy.deepcopy(data)).to_json() == data


def test_lookups():
    results = EvalResults.from_json(copy.deepcopy(OLD))
    assert results.pairs() == [("bench", "direct")] and results.pairs("harmful") == [("bench", "direct")]
    assert results.pairs("capability") == []
    # A benchmark with harmful and benign rows: without `expected`, the last (harmful) entry.
    assert results.entry("base", "bench", "direct").expected == "harmful"
    assert results.entry("base", "bench", "prefill") is None
    assert results.capability_tasks() == ["facts"]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("judge"), r"^EvalResults: required key 'judge' is missing"),
    (lambda d: d["metrics"][2].pop("expected"), r"^metrics\[2\]: required key 'expected' is missing \(MetricEntry\)"),
    (lambda d: d["metrics"][1]["asr"].pop("n"), r"^metrics\[1\]\.asr: required key 'n' is missing \(Rate\)"),
    (lambda d: d["summary"]["base"].pop("overall"), r"^summary\['base'\]: required key 'overall' is missing"),
    (lambda d: d["capability"]["base"]["facts"].pop("metric"), r"^capability\['base'\]\['facts'\]: required key 'metric'"),
    (lambda d: d["models"]["base"].pop("adapter"), r"^models\['base'\]: required key 'adapter' is missing"),
    (lambda d: d.update(metrics={}), r"^metrics: expected a JSON array, got dict"),
    (lambda d: d["metrics"].append("entry"), r"^metrics\[4\]: expected a JSON object, got str"),
])
def test_a_missing_key_is_an_error_that_names_it(edit, message):
    data = copy.deepcopy(OLD)
    edit(data)
    with pytest.raises(ResultsError, match=message):
        EvalResults.from_json(data)


def test_a_bad_results_file_is_named(tmp_path):
    data = copy.deepcopy(OLD)
    del data["metrics"][0]["n"]
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"results\.json: metrics\[0\]: required key 'n' is missing"):
        load_results([tmp_path])
    (tmp_path / "results.json").write_text("{")
    with pytest.raises(ResultsError, match=r"results\.json: cannot read results"):
        EvalResults.load(tmp_path / "results.json")


def test_trial_rows_round_trip():
    row = {"number": 2, "run": 1, "state": "COMPLETE", "params": {"train.lr": 0.003},
           "scores": {"harmful_compliance": 0.1, "helpful": 0.9, "overrefusal": 0.8}, "violations": {"helpful_ratio": -0.1},
           "feasible": True, "pruned": None, "check": {"step": 1, "benign_degenerate": 0.0}, "seconds": 12.5}
    trial = TrialRow.from_json(copy.deepcopy(row))
    assert trial.number == 2 and trial.params["train.lr"] == 0.003 and trial.feasible
    assert trial.to_json() == row
    with pytest.raises(ResultsError, match="required key 'state' is missing"):
        TrialRow.from_json({k: v for k, v in row.items() if k != "state"})
