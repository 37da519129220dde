"""Two processes (gloo on CPU, through `repbend train --num-processes 2`) against one
process with the same global batch: the same per-step losses and the same adapter, and
an interrupted two-process run resumes to the same result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from repbend.config import load_config
from repbend.training import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-test.yaml"
# Dropout off: each process draws its own dropout masks, so only a dropout-free run can
# match one process exactly. Global micro-batch 2 leaves one row per process, so the
# cosine term's pairs only exist across processes.
SETTINGS = ["lora.dropout=0", "train.num_threads=1", "train.steps=4", "train.micro_batch=2", "train.grad_accum=2",
            "train.precision=fp32", "train.save_every=1"]
TERMS = ("total", "safe_distance", "unsafe_distance", "cosine", "kl", "grad_norm")

pytestmark = pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")


def launch(output: Path, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "repbend", "train", str(TINY), f"output_dir={output}", *SETTINGS, *extra,
               "--num-processes", "2", "-q"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def metrics(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def adapter(run: Path) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def max_differences(a: Path, b: Path) -> tuple:
    rows_a, rows_b = metrics(a), metrics(b)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == [1, 2, 3, 4]
    # Real tokens, summed over processes; padded ones differ (each process pads its own slice).
    assert [r["tokens"] for r in rows_a] == [r["tokens"] for r in rows_b]
    losses = max(abs(ra[k] - rb[k]) for ra, rb in zip(rows_a, rows_b) for k in TERMS)
    weights_a, weights_b = adapter(a), adapter(b)
    assert weights_a.keys() == weights_b.keys()
    weights = max(float((weights_a[k] - weights_b[k]).abs().max()) for k in weights_a)
    return losses, weights


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    cwd = os.getcwd()
    os.chdir(ROOT)  # the tiny config's data path is relative to the repository
    try:
        train(load_config(TINY, [f"output_dir={root / 'one'}", *SETTINGS]), progress=False)
    finally:
        os.chdir(cwd)
    launch(root / "two")
    return root


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    losses, weights = max_differences(runs / "one", runs / "two")
    print(f"max |loss difference| {losses:.3g}, max |adapter difference| {weights:.3g}")
    assert losses < 1e-5 and weights < 1e-5
    assert any(float(w.abs().max()) > 1e-3 for w in adapter(runs / "two").values())  # it did train


def test_two_process_run_resumes_to_the_uninterrupted_result(runs):
    resumed = runs / "resumed"
    launch(resumed, "train.steps=2")
    assert [r["step"] for r in metrics(resumed)] == [1, 2]
    launch(resumed, "--resume", "--allow-change", "train.steps")
    losses, weights = max_differences(runs / "two", resumed)
    assert losses < 1e-6 and weights < 1e-6
