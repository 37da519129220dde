"""The Python API (`import repbend`): its names, light import, shipped configs by name, and
examples/python_api.py run as it is on the tiny config."""
from __future__ import annotations

import importlib
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import repbend
from repbend import api, resources
from repbend.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "python_api.py"


def test_every_public_name_resolves():
    for name in repbend.__all__:
        assert getattr(repbend, name) is not None, name
    assert set(repbend.__all__) <= set(dir(repbend))
    assert repbend.Config is repbend.config.Config
    assert (repbend.train, repbend.evaluate, repbend.run) == (api.train, api.evaluate, api.run)
    assert repbend.TrainResult is importlib.import_module("repbend.training").TrainResult
    with pytest.raises(AttributeError, match="no_such_name"):
        repbend.no_such_name


def test_import_is_light_and_train_is_the_function_whatever_was_imported_first():
    # A fresh interpreter: `import repbend` leaves torch alone; importing the training
    # module first (as the CLI does) leaves repbend.train the API function.
    code = ("import sys, repbend; assert 'torch' not in sys.modules, 'torch imported';"
            "import repbend.training; from repbend.training import TrainResult;"
            "assert callable(repbend.train) and repbend.train.__module__ == 'repbend.api', repbend.train;"
            "from repbend import train; assert train is repbend.train")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_shipped_configs_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = repbend.load_config(ROOT / "configs" / "tiny-test.yaml")
    for name in ("tiny-test", "tiny-test.yaml", "configs/tiny-test.yaml"):
        config = repbend.load_config(name)
        assert config.output_dir == expected.output_dir
        # The sample data is found among the shipped files, not in the working folder.
        assert Path(config.data.sources[0].path) == resources.ROOT / "examples" / "data" / "sample_train.jsonl"
    assert "tiny-test" in resources.shipped_configs()
    with pytest.raises(ConfigError, match=r"no-such-config does not exist .*tiny-test"):
        repbend.load_config("no-such-config")
    # A file here wins over the shipped one of that name.
    (tmp_path / "tiny-test.yaml").write_text("output_dir: runs/mine\n")
    assert repbend.load_config("tiny-test.yaml").output_dir == "runs/mine"


def test_functions_pass_config_and_overrides_to_the_entry_points(monkeypatch):
    seen = {}
    monkeypatch.setattr(api, "_run", lambda config, progress: seen.setdefault("run", (config, progress)))
    monkeypatch.setattr(api, "_evaluate", lambda config, progress: seen.setdefault("eval", config))
    repbend.run(overrides=["output_dir=runs/x"], progress=False)
    config, progress = seen["run"]
    assert (config.output_dir, config.model.name_or_path, progress) == ("runs/x", "smollm2-135m", False)
    base = repbend.load_config("tiny-test")
    repbend.evaluate(base, ["steps=3"], adapters=[Path("a/adapter")])
    assert (seen["eval"].train.steps, seen["eval"].eval.adapters) == (3, ["a/adapter"])
    assert base.train.steps == 4  # the caller's config is left as it was


def test_the_python_example_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = tmp_path / "runs" / "python-api"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / "adapter" / name).is_file(), name
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # one line per step
    results = json.loads((out / "eval" / "results.json").read_text())
    models = {entry["model"] for entry in results["metrics"]}
    assert models == {"base", "python-api/adapter"}
    benchmarks = {(entry["benchmark"], entry["attack"]) for entry in results["metrics"]}
    assert benchmarks == {("harmbench_pkg", "direct"), ("harmbench_pkg", "prefill"), ("xstest_like_pkg", "direct")}
    assert (out / "eval" / "results.md").is_file()
    assert "python-api/adapter" in capsys.readouterr().out


def test_the_readme_shows_the_example_as_it_is():
    example = EXAMPLE.read_text()
    code = example[example.index("import repbend"):].strip()
    readme = (ROOT / "README.md").read_text()
    assert f"```python\n{code}\n```" in readme
