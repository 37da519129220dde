"""`repbend tune` on the tiny random Llama: space parsing, a resumed study, pruning, outputs."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

import repbend.commands.run as run_command
import repbend.commands.tune.trials as trials
from repbend.commands.data import build_data
from repbend.commands.tune import parse_space, tune
from repbend.config import load_config, to_dict
from repbend.data import splits
from repbend.data.benchmarks import normalise_text
from repbend.errors import ConfigError
from repbend.eval import judging
from conftest import bag_of_words


ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tune-tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One data build for the module (studies point build.output_dir at it)."""
    folder = tmp_path_factory.mktemp("build")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(splits, "embed", bag_of_words)
        build_data(load_config(TINY, [f"output_dir={folder}"]), progress=False)
    return folder / "data"


def tiny(folder: Path, built: Path, *overrides):
    return load_config(TINY, [f"output_dir={folder}", f"build.output_dir={built}", *overrides])


def prompts(path: Path) -> set:
    return {normalise_text(json.loads(line)["prompt"]) for line in path.read_text().splitlines() if line.strip()}


def test_space_parses_and_rejects_unknown_keys():
    config = load_config(TINY)
    dimensions = {d.key: d for d in parse_space(config.tune.space, config)}
    assert dimensions["train.lr"].log and not dimensions["train.lr"].integer
    assert dimensions["train.steps"].integer
    assert dimensions["loss.repbend.target_layers"].labels() == ["[2, 3]", "[3]"]
    assert dimensions["loss.repbend.target_layers"].value("[3]") == [3]
    with pytest.raises(ConfigError, match=r"'train\.lrr'.*train\.lr"):
        parse_space({"train.lrr": {"low": 0.1, "high": 1.0}}, config)
    bad = [
        ({"train.lr": {"low": 0.1, "hi": 1.0}}, "unknown spec key"),
        ({"eval.max_new_tokens": {"low": 1, "high": 8}}, "not tunable"),
        ({"data.sources": {"choices": [[]]}}, "not tunable"),
        ({"train.steps": {"low": 1.5, "high": 4}}, "integer"),
        ({"train.lr": {"low": 1.0, "high": 0.1}}, "below"),
        ({"train.lr": {"low": 0.0, "high": 1.0, "log": True}}, "log"),
        ({"loss.repbend.loss_mode": {"low": 0, "high": 1}}, "choices"),
        ({"loss.repbend.safe_includes_refusals": {"choices": [True, "maybe"]}}, "true/false"),
        ({"loss.repbend.norm": {"choices": ["l2", "l3"]}}, "loss.repbend.norm: must be one of l2, squared"),
    ]
    for space, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_space(space, config)


def test_embedded_study_config_is_the_main_jobs(tmp_path):
    """Only the tune section and the output folders differ, so best.yaml is the main job's config."""
    main, study = (to_dict(load_config(ROOT / "configs" / name)) for name in ("smollm2-cpu.yaml", "tune-smollm2-cpu.yaml"))
    for data in (main, study):
        del data["tune"], data["output_dir"], data["build"]["output_dir"]
    assert main == study
    config = load_config(ROOT / "configs" / "tune-smollm2-cpu.yaml")
    assert len(parse_space(config.tune.space, config)) == len(config.tune.space)


def test_study_resumes_after_an_interrupt_and_writes_front_and_config(tmp_path, built, monkeypatch):
    trained, evaluate = [], trials.evaluate

    def counting_train(config, resume=False, progress=True, **options):
        trained.append(Path(config.output_dir).name)
        return real_train(config, resume=resume, progress=progress, **options)

    def interrupted_evaluate(config, progress=True):
        if str(config.eval.output_dir).endswith("trial-001/eval") and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return evaluate(config, progress)

    real_train, interrupted = trials.train, []
    # The trials train and evaluate through repbend.commands.tune.trials, the final run
    # (best.yaml) through repbend.commands.run.
    monkeypatch.setattr(trials, "train", counting_train)
    monkeypatch.setattr(run_command, "train", counting_train)
    monkeypatch.setattr(trials, "evaluate", interrupted_evaluate)
    out = tmp_path / "study"
    with pytest.raises(KeyboardInterrupt):
        tune(tiny(out, built, "tune.trials=2", "tune.final=false"), progress=False)
    assert trained == ["trial-000", "trial-001"]

    trained.clear()
    result = tune(tiny(out, built, "tune.trials=3"), progress=False)
    # The finished trial is not run again; the cut-off one resumes in its folder; one new trial.
    assert trained == ["trial-001", "trial-003", "final"]
    study = optuna.load_study(study_name="repbend", storage=result.storage)
    states = [(t.number, t.state.name, t.user_attrs["run"]) for t in study.trials]
    assert states == [(0, "COMPLETE", 0), (1, "FAIL", 1), (2, "COMPLETE", 1), (3, "COMPLETE", 3)]
    assert study.trials[2].params == study.trials[1].params
    assert result.counts == {"complete": 3, "fail": 1}

    folder = out / "tune"
    for name in ("front.md", "front.json", "front.png", "best.yaml", "study.db", "final/report.md"):
        assert (folder / name).is_file(), name
    front = json.loads((folder / "front.json").read_text())
    assert {row["number"] for row in front["front"]} <= {0, 2, 3} and front["best"]["number"] in {0, 2, 3}
    assert set(front["best"]["scores"]) >= {"harmful_compliance", "helpful", "overrefusal", "benign_degenerate"}
    best = load_config(folder / "best.yaml")  # a ready config: `repbend run` read it for final/
    assert best.train.lr == front["best"]["params"]["train.lr"]
    assert best.output_dir == str(folder / "final") and best.build.output_dir == str(built)
    assert "Final evaluation" in (folder / "front.md").read_text()

    # The tuning sets are samples of the build's dev split, disjoint from its test split.
    dev = set().union(*(prompts(built / f"dev_{name}.jsonl") for name in ("harmful", "benign", "everyday", "over_refusal")))
    test = set().union(*(prompts(built / f"test_{name}.jsonl") for name in ("harmful", "benign", "everyday", "over_refusal")))
    for label in ("tune_harmful", "tune_benign", "tune_overrefusal"):
        tuning = prompts(folder / f"{label}.jsonl")
        assert tuning and tuning <= dev and not tuning & test, label


def test_a_grid_study_of_a_compare_method_tries_each_value_once(tmp_path, built):
    """tune.method trains the method as `repbend compare` does (its overlay's loss and lr)
    in OUTPUT_DIR/<method>; tune.sampler=grid runs each scaled lr once, and a re-run none."""
    overrides = ("tune.method=npo", "tune.sampler=grid", "tune.enqueue=[]", "tune.final=false",
                 "tune.space={train.lr: {factors: [0.5, 1, 2]}}")
    result = tune(tiny(tmp_path, built, *overrides), progress=False)
    assert result.folder == tmp_path / "npo" / "tune" and result.counts == {"complete": 3}
    study = optuna.load_study(study_name="repbend", storage=result.storage)
    assert sorted(t.params["train.lr"] for t in study.trials) == [5e-4, 1e-3, 2e-3]  # npo's overlay: 1e-3
    trained = load_config(result.folder / "trial-000" / "config.yaml")
    assert trained.loss.method == "npo" and trained.train.lr in (5e-4, 1e-3, 2e-3)
    again = tune(tiny(tmp_path, built, *overrides), progress=False)
    assert again.counts == {"complete": 3}


def test_trials_are_pruned_on_divergence_and_at_the_check(tmp_path, built, monkeypatch):
    space = "tune.space={train.lr: {low: 0.001, high: 0.01}}"
    diverged = tune(tiny(tmp_path / "a", built, space, "tune.trials=1", "steps=2", "train.max_unsafe_distance=1e-9"),
                    progress=False)
    assert diverged.counts == {"pruned": 1} and diverged.best is None
    front = json.loads((tmp_path / "a" / "tune" / "front.json").read_text())
    assert "diverged at step 2" in front["trials"][0]["pruned"]
    assert not (tmp_path / "a" / "tune" / "best.yaml").exists()

    monkeypatch.setattr(judging, "degeneration", lambda text: "forced")  # every answer degenerate
    checked = tune(tiny(tmp_path / "b", built, space, "tune.trials=1", "steps=3", "tune.intermediate_check_step=1",
                        "tune.max_benign_degenerate=0.5"), progress=False)
    assert checked.counts == {"pruned": 1}
    row = json.loads((tmp_path / "b" / "tune" / "front.json").read_text())["trials"][0]
    assert row["check"] == {"step": 1, "benign_degenerate": 1.0} and "at step 1" in row["pruned"]
    saved = yaml.safe_load((tmp_path / "b" / "tune" / "trial-000" / "config.yaml").read_text())
    assert saved["train"]["steps"] == 1  # stopped at the check: never trained to 3 steps


def test_a_trial_that_passes_the_check_trains_on_to_its_steps(tmp_path, built):
    space = "tune.space={train.lr: {low: 0.001, high: 0.01}}"
    result = tune(tiny(tmp_path, built, space, "tune.trials=1", "steps=3", "tune.intermediate_check_step=1",
                       "tune.max_benign_degenerate=1.0"), progress=False)
    assert result.counts == {"complete": 1}
    row = json.loads((tmp_path / "tune" / "front.json").read_text())["trials"][0]
    assert row["check"]["step"] == 1 and not row.get("pruned")
    saved = yaml.safe_load((tmp_path / "tune" / "trial-000" / "config.yaml").read_text())
    assert saved["train"]["steps"] == 3
    assert len((tmp_path / "tune" / "trial-000" / "metrics.jsonl").read_text().splitlines()) == 3


def test_space_keys_renamed_since_still_search_their_setting(monkeypatch):
    from repbend import config as config_module

    monkeypatch.setattr(config_module, "_WARNED", set())
    from repbend.commands.tune.space import with_values

    config = load_config(TINY)
    with pytest.warns(FutureWarning, match="config key loss.kl_coef is deprecated; use loss.repbend.kl_coef"):
        (dimension,) = parse_space({"loss.kl_coef": {"low": 0.1, "high": 2.0}}, config)
    assert (dimension.key, dimension.low, dimension.integer) == ("loss.kl_coef", 0.1, False)
    assert with_values(config, {"loss.kl_coef": 1.5}).loss.settings.kl_coef == 1.5
    assert with_values(config, {"loss.rmu.seed": 4}).loss.section("rmu").seed == 4  # a section not there yet
