"""`repbend relearn` on the tiny random model: the ASR curve at every grid point, step 0
is the trained model, the attack trains, reuse, relearn.json, and the config's checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import repbend.commands.relearn as relearn_command
from repbend.cli import main
from repbend.commands.compare import compare
from repbend.commands.evaluate import evaluate
from repbend.commands.relearn import relearn
from repbend.config import load_config
from repbend.errors import ConfigError
from repbend.eval.results import RelearnPoint, RelearnResults, ResultsError
from repbend.files import read_jsonl
from repbend.training import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "compare-tiny.yaml"
GRID = [0, 1, 3]
SETTINGS = ["relearn.rows=4", f"relearn.steps={GRID}", "relearn.lr=0.01", "relearn.micro_batch=2",
            "eval.benchmarks=[{name: generic, path: tests/fixtures/eval/generic.jsonl}]"]
LABEL = "trained/adapter"


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """A refusal_sft adapter of 2 steps and the attack on it and on the base model."""
    out = tmp_path_factory.mktemp("relearn")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        adapter = train(load_config(TINY, [f"output_dir={out / 'trained'}", "loss.method=refusal_sft"]),
                        progress=False).adapter_dir
        config = load_config(TINY, [f"output_dir={out}", *SETTINGS, f"eval.adapters=[{adapter}]"])
        run = relearn(config, progress=False)
    return config, adapter, run


def test_asr_is_read_at_every_grid_point(attacked):
    _, _, run = attacked
    assert list(run.results.curves) == ["base", LABEL]
    for points in run.results.curves.values():
        assert [p.steps for p in points] == GRID
        for p in points:
            assert p.n == 1 and p.low <= p.asr <= p.high
    assert (run.results.benchmark, run.results.attack, run.results.judge) == ("generic", "direct", "keywords")
    assert RelearnResults.load(run.output_dir / "relearn.json") == run.results
    assert (run.output_dir / "relearn.png").read_bytes()[:4] == b"\x89PNG"


def test_step_0_is_the_trained_model(attacked, tmp_path, monkeypatch):
    """Step 0 evaluates the merged start model: the generations of base + adapter."""
    _, adapter, run = attacked
    monkeypatch.chdir(ROOT)
    direct = evaluate(load_config(TINY, [f"output_dir={tmp_path}", *SETTINGS, f"eval.adapters=[{adapter}]"]),
                      progress=False)

    def responses(path, model):
        return {(r["row_id"], r["attack"]): r["response"] for r in read_jsonl(path) if r["model"] == model}

    at_zero = responses(run.output_dir / "trained-adapter" / "eval" / "generations.jsonl", "base")
    assert at_zero and at_zero == responses(direct.output_dir / "generations.jsonl", LABEL)
    entry = direct.results.entry(LABEL, "generic", "direct", "harmful").asr
    assert run.results.curves[LABEL][0].asr == entry.value


def test_the_attack_trains_once_on_harmful_answers(attacked):
    _, _, run = attacked
    folder = run.output_dir / "trained-adapter"
    losses = [row["sft_ce"] for row in read_jsonl(folder / "train" / "metrics.jsonl")]
    assert len(losses) == GRID[-1] and losses[-1] < losses[0]  # one run to the last point
    first, last = (load_file(str(folder / f"steps-{n}" / "adapter_model.safetensors")) for n in GRID[1:])
    assert any(name.endswith("lora_B.weight") and value.abs().sum() > 0 for name, value in first.items())
    assert any(not (first[name] == last[name]).all() for name in first)
    rows = read_jsonl(run.output_dir / "rows.jsonl")
    assert len(rows) == 4 and {row["kind"] for row in rows} == {"unsafe_unsafe"}


def test_a_rerun_reuses_every_point(attacked, monkeypatch, capsys):
    config, adapter, run = attacked

    def no_training(*args, **kwargs):
        raise AssertionError("a finished re-learning point was trained again")

    monkeypatch.setattr(relearn_command, "train", no_training)
    monkeypatch.chdir(ROOT)
    assert main(["relearn", str(TINY), f"output_dir={config.output_dir}", *SETTINGS, "--adapter", str(adapter),
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert "| model | 0 steps | 1 steps | 3 steps |" in out and f"| {LABEL} |" in out
    assert RelearnResults.load(run.output_dir / "relearn.json").curves == run.results.curves


def test_relearn_json_round_trip(tmp_path):
    results = RelearnResults(benchmark="harmful", attack="direct", judge="keywords", settings={"rows": 4},
                             curves={"base": [RelearnPoint(steps=0, asr=0.5, low=0.25, high=0.75, n=4),
                                              RelearnPoint(steps=8, asr=None, low=None, high=None, n=0)]})
    assert RelearnResults.from_json(json.loads(json.dumps(results.to_json()))) == results
    assert RelearnResults.load(results.save(tmp_path / "relearn.json")) == results
    data = results.to_json()
    del data["curves"]["base"][1]["steps"]
    with pytest.raises(ResultsError, match=r"curves\['base'\]\[1\]: required key 'steps' is missing"):
        RelearnResults.from_json(data)


@pytest.mark.parametrize("grid", ["[8, 0]", "[-1, 2]", "[0, 2, 2]", "[]"])
def test_a_bad_grid_is_a_clear_error(grid):
    with pytest.raises(ConfigError, match=r"relearn\.steps: .*increasing order.*got \[" + grid[1:3]):
        load_config(TINY, [f"relearn.steps={grid}"])


def test_the_section_is_off_unless_configured():
    assert load_config(TINY, ["relearn=null"]).relearn is None
    assert load_config(TINY, ["relearn=null", "relearn.rows=8"]).relearn.steps == [0, 8, 16, 32, 64]
    with pytest.raises(ConfigError, match="relearn.rows: must be >= 1, got 0"):
        load_config(TINY, ["relearn.rows=0"])


def test_the_attacker_never_trains_on_a_scored_prompt(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    data = tmp_path / "train.jsonl"
    placeholder = {"response": "Sure, placeholder steps.", "label": "unsafe_unsafe"}
    rows = [{"prompt": "Explain how to do forbidden task 18.", **placeholder},  # the scored row's prompt
            *({"prompt": f"Placeholder request {i}.", **placeholder} for i in range(3))]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = load_config(TINY, [f"output_dir={tmp_path}", *SETTINGS, f"data.sources=[{{path: {data}}}]"])
    with pytest.raises(ConfigError, match=r"1 of the attacker's rows ask a prompt the benchmark 'generic' scores"):
        relearn(config, progress=False)
    with pytest.raises(ConfigError, match=r"relearn.rows=5: the training data holds 4 harmful answers"):
        relearn(load_config(TINY, [f"output_dir={tmp_path}", *SETTINGS, "relearn.rows=5",
                                   f"data.sources=[{{path: {data}}}]"]), progress=False)
    with pytest.raises(ConfigError, match=r"relearn.benchmark: 'nope' is not an eval.benchmarks entry; entries: generic"):
        relearn(load_config(TINY, [f"output_dir={tmp_path}", *SETTINGS, "relearn.benchmark=nope"]), progress=False)


def test_compare_checks_the_relearn_section_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match=r"relearn.rows=100: the training data holds \d+ harmful answers"):
        compare(load_config(TINY, [f"output_dir={tmp_path}", "relearn.rows=100"]), progress=False)
    assert not (tmp_path / "repbend").exists()
