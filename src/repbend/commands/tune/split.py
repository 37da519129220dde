"""The tuning split of `repbend tune`: seeded samples of the built data's dev split
(harmful, benign and everyday, over-refusal prompts) that every trial is scored on."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ...atomic import write_text
from ...cache import file_digest
from ...config import Config
from ...data.benchmarks import load_benchmark, sample_rows
from ...data.splits import TRAIN_FILE, eval_record, split_file
from ...errors import ConfigError
from ...files import jsonl_text

HARMFUL_LABEL, BENIGN_LABEL, OVERREFUSAL_LABEL = "tune_harmful", "tune_benign", "tune_overrefusal"


@dataclass
class TuneSplit:
    files: dict  # label (and "train") -> path
    counts: dict
    digest: str


def _dev_sample(data_dir: Path, names: tuple, n: int, seed: int, what: str) -> list:
    """``n`` seeded rows of the build's dev files ``dev_<name>.jsonl``."""
    rows = [row for name in names for row in load_benchmark("generic", data_dir / split_file("dev", name))]
    if n > len(rows):
        raise ConfigError(f"tune.{what}_prompts={n}, but the build's dev split holds {len(rows)} such prompts "
                          f"({', '.join(split_file('dev', name) for name in names)})")
    return sample_rows(rows, n, seed)


def dev_split(config: Config, data_dir: Path, folder: Path) -> TuneSplit:
    """Write the tuning sets to ``folder``: seeded samples of the build's dev split (harmful,
    benign and everyday, over-refusal prompts). Trials train on the whole training file;
    the test split is never read."""
    t = config.tune
    sets = {
        HARMFUL_LABEL: _dev_sample(data_dir, ("harmful",), t.harmful_prompts, t.seed, "harmful"),
        BENIGN_LABEL: _dev_sample(data_dir, ("benign", "everyday"), t.benign_prompts, t.seed, "benign"),
        OVERREFUSAL_LABEL: _dev_sample(data_dir, ("over_refusal",), t.overrefusal_prompts, t.seed, "overrefusal"),
    }
    texts = {label: jsonl_text(map(eval_record, rows)) for label, rows in sets.items()}
    files = {label: write_text(folder / f"{label}.jsonl", text) for label, text in texts.items()}
    files["train"] = data_dir / TRAIN_FILE
    counts = {label: len(rows) for label, rows in sets.items()}
    digest = hashlib.sha256(json.dumps({**texts, "train": file_digest(files["train"])}, sort_keys=True)
                            .encode()).hexdigest()[:16]
    return TuneSplit(files, counts, digest)
