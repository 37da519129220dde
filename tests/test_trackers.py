"""train.report_to: metrics.jsonl's numbers also go to accelerate's trackers (TensorBoard offline here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from repbend.config import load_config, save_config
from repbend.errors import ConfigError
from repbend.training import check_resume_settings, train
from conftest import interrupted

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-test.yaml"
LOGGED = ("total", "safe_distance", "unsafe_distance", "cosine", "kl", "grad_norm", "lr", "tokens", "tokens_per_s")


def tiny(tmp_path, *overrides):
    return load_config(TINY, [f"output_dir={tmp_path / 'run'}", *overrides])


def metrics(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def scalars(folder: Path) -> dict:
    """tag -> [(step, value)] from the TensorBoard event files in ``folder``."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_same_numbers(run: Path) -> None:
    rows = metrics(run)
    logged = scalars(run / "trackers" / "repbend")
    for key in LOGGED:
        assert [step for step, _ in logged[key]] == [row["step"] for row in rows], key
        # TensorBoard stores float32.
        assert [value for _, value in logged[key]] == pytest.approx([row[key] for row in rows], rel=1e-6, abs=1e-9), key


def test_tensorboard_gets_the_numbers_of_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    result = train(tiny(tmp_path, "train.steps=2", "train.report_to=[tensorboard]"), progress=False)
    folder = result.output_dir / "trackers" / "repbend"
    assert list(folder.glob("events.out.tfevents.*"))
    assert_same_numbers(result.output_dir)
    # The resolved config goes along as hyperparameters.
    assert list(folder.glob("*/hparams.yml"))


def test_no_tracker_by_default(tmp_path):
    config = tiny(tmp_path, "train.steps=1")
    assert config.train.report_to == "none"
    result = train(config, progress=False)
    assert not (result.output_dir / "trackers").exists()


def test_a_resumed_run_logs_one_uninterrupted_run(tmp_path, monkeypatch):
    # Steps 1-3 are logged, the checkpoint is step 2: TensorBoard drops the old step 3 as
    # metrics.jsonl does, and the interrupted run's event files were flushed.
    pytest.importorskip("tensorboard")
    config = tiny(tmp_path, "train.steps=4", "train.save_every=2", "train.report_to=tensorboard")
    interrupted(config, monkeypatch, at_step=4)
    assert [step for step, _ in scalars(Path(config.output_dir) / "trackers" / "repbend")["total"]] == [1, 2, 3]
    resumed = train(config, resume=True, progress=False)
    assert [row["step"] for row in metrics(resumed.output_dir)] == [1, 2, 3, 4]
    assert_same_numbers(resumed.output_dir)


def test_report_to_may_change_on_resume(tmp_path):
    saved = tmp_path / "config.yaml"
    save_config(tiny(tmp_path), saved)
    check_resume_settings(saved, tiny(tmp_path, "train.report_to=[tensorboard, wandb]"), set())
    with pytest.raises(ConfigError, match="train.lr"):
        check_resume_settings(saved, tiny(tmp_path, "train.lr=5e-3"), set())


@pytest.mark.parametrize("value", ["none", "[]", "null", "tensorboard", "[tensorboard, mlflow]", "[wandb, wandb]"])
def test_report_to_takes_none_one_or_a_list(tmp_path, value):
    tiny(tmp_path, f"train.report_to={value}")


@pytest.mark.parametrize("value", ["tensorbord", "[tensorboard, nope]", "[none, tensorboard]", "all", "3"])
def test_unknown_tracker_is_a_config_error_at_load(tmp_path, value):
    with pytest.raises(ConfigError) as caught:
        tiny(tmp_path, f"train.report_to={value}")
    message = str(caught.value)
    assert "train.report_to" in message
    assert "tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive" in message


def test_missing_tracker_package_is_named_before_training(tmp_path, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    config = tiny(tmp_path, "train.report_to=[tensorboard, wandb]")
    with pytest.raises(ConfigError, match=r"train.report_to: wandb needs its package.*pip install wandb"):
        train(config, progress=False)
    assert not Path(config.output_dir).exists()
