"""The built wheel works outside the checkout: installed into a fresh virtual environment
(its dependencies borrowed from this one), `repbend` starts and trains a shipped config,
named without a path, from a folder that holds no configs/ and no examples/."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# What the wheel is built from (a copy: the build writes build/ and *.egg-info beside it).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "src", "configs", "examples")


def _run(command: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_wheel_installs_and_trains_a_shipped_config_outside_the_checkout(tmp_path, tiny_model_folder):
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", REPBEND_CACHE=str(tmp_path / "cache"))

    tree = tmp_path / "tree"
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(source, tree / name)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-w", dist, tree], tmp_path, env)
    (wheel,) = dist.glob("repbend-*.whl")

    # A fresh environment whose site-packages ends with this one's (a path in a .pth file:
    # the .pth files there, among them the editable install's, are not read).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        tmp_path, env).stdout.strip())
    borrowed = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (purelib / "_repbend_test_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", wheel], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"  # no configs/, no examples/ here
    elsewhere.mkdir()
    where = _run([python, "-c", "import repbend; print(repbend.__file__)"], elsewhere, env).stdout.strip()
    assert Path(where).is_relative_to(venv), f"repbend imported from {where}, not the installed wheel"

    repbend = venv / "bin" / "repbend"
    assert "usage: repbend run" in _run([repbend, "run", "--help"], elsewhere, env).stdout
    out = tmp_path / "run"
    _run([repbend, "train", "tiny-test", f"output_dir={out}", f"model={tiny_model_folder}", "model.random_init=null",
          "model.tokenizer=null", "steps=2", "-q"], elsewhere, env)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (out / "adapter" / name).is_file(), name
    # The tiny config's examples/data/sample_train.jsonl was the wheel's copy.
    saved = yaml.safe_load((out / "config.yaml").read_text())
    data = Path(saved["data"]["sources"][0]["path"])
    assert data.is_relative_to(purelib / "repbend" / "_root") and data.name == "sample_train.jsonl"
    assert saved["model"]["name_or_path"] == str(tiny_model_folder)
