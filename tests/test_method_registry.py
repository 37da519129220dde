"""A new training method is one module: its settings dataclass and its loss, registered
together. The config reads its section, checks it, saves it, and the one training loop
trains it, with no edit of repbend.config."""
from __future__ import annotations

import importlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import repbend.config
from repbend.config import MethodSettings, load_config
from repbend.errors import ConfigError
from repbend.methods import METHODS, Method, register_method
from repbend.training import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-test.yaml"

# The whole method, as a user would write it in a module of their own.
TOY_MODULE = '''
"""A toy method: cross-entropy on the answers of one data stream, weighted."""
from dataclasses import dataclass
from typing import ClassVar, Literal

from repbend.config import above
from repbend.methods import LossOutput, Method, MethodSettings, register_method
from repbend.methods.likelihood import response_cross_entropy


@dataclass
class ToySettings(MethodSettings):
    weight: float = 1.0
    stream: Literal["safe", "unsafe"] = "safe"

    rules: ClassVar[dict] = {"weight": above(0)}


@register_method("toy", settings=ToySettings)
class Toy(Method):
    def __init__(self, config, num_blocks):
        super().__init__(config, num_blocks)
        self.streams = (self.settings.stream,)

    def loss(self, runner, batches):
        answers = response_cross_entropy(runner, batches[self.settings.stream])
        return LossOutput(self.settings.weight * answers, {"toy_ce": float(answers.detach())})
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy module imported from a folder of its own; unregistered afterwards."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "toy_method.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("toy_method")
    yield module
    METHODS.pop("toy")
    sys.modules.pop("toy_method")


def test_a_method_registered_from_its_own_module_loads_checks_and_trains(tmp_path, toy):
    out = tmp_path / "run"
    config = load_config(TINY, [f"output_dir={out}", "loss.method=toy", "loss.toy.weight=2", "loss.toy.stream=unsafe",
                                "train.steps=2", "train.grad_accum=1", "train.save_every=2"])
    assert config.loss.settings == toy.ToySettings(weight=2.0, stream="unsafe")
    assert "loss.toy.weight" in repbend.config.all_keys(repbend.config.Config)

    result = train(config, progress=False)
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    assert all(math.isfinite(row["toy_ce"]) and row["toy_ce"] > 0 for row in rows)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    # The saved config holds its section and reads back as the same config.
    assert load_config(out / "config.yaml") == config

    for override, named in [("loss.toy.weight=0", "loss.toy.weight: must be > 0, got 0.0"),
                            ("loss.toy.stream=retain", "loss.toy.stream: must be one of safe, unsafe, got 'retain'")]:
        with pytest.raises(ConfigError) as caught:
            load_config(TINY, ["loss.method=toy", override])
        assert str(caught.value) == f"{TINY}: {named}"
    with pytest.raises(ConfigError, match="unknown config key 'loss.toy.weigth'; did you mean loss.toy.weight"):
        load_config(TINY, ["loss.toy.weigth=1"])
    assert "toy" not in Path(repbend.config.__file__).read_text()


def test_registering_checks_the_name_and_the_settings_class():
    @dataclass
    class Plain:  # not a MethodSettings
        alpha: float = 1.0

    with pytest.raises(TypeError, match="subclassing MethodSettings"):
        register_method("plain", settings=Plain)
    with pytest.raises(ValueError, match="'retain_coef' is a loss setting's name"):
        register_method("retain_coef")
    with pytest.raises(ValueError, match="'repbend' is registered twice"):
        register_method("repbend")(type("Again", (Method,), {}))
    assert METHODS["repbend"].__name__ == "RepBend" and "plain" not in METHODS

    @dataclass
    class Empty(MethodSettings):
        pass

    assert Empty().section == ""  # unregistered: its messages name the class
