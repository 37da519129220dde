"""Every experiment config under experiments/ loads (its includes resolve, its keys are
known), and the studies that inform a choice of default read the dev split only."""

from pathlib import Path

import pytest

from repbend.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEV_STUDIES = {"default-selection", "loss-terms"}
EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.yaml"))


def test_there_are_experiments():
    assert EXPERIMENTS


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_experiment_config_loads(path):
    config = load_config(path)
    if DEV_STUDIES & set(path.parts):
        assert config.eval.capability_split == "dev"
        assert all(Path(spec.path).name.startswith("dev_") for spec in config.eval.benchmarks)
