"""Running lm-evaluation-harness on an in-memory model, offline: the tasks of
:mod:`.tasks`, scored per document for bootstrap intervals."""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

from ...config import check_capability_split
from ...errors import ConfigError
from .tasks import METRICS, STANDARD_METRICS, STANDARD_TASKS, capability_tasks_dir


@contextlib.contextmanager
def _attribute(owner, name: str, value) -> Iterator[None]:
    """``owner.name`` set to ``value`` for the duration, then restored."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Environment variables set for the duration, then restored (or removed again)."""
    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hub and datasets offline mode for the duration. The libraries read the environment
    once at import, so their module flags are set as well as the variables (the hub's
    maintainers' advice: it offers no switch of its own)."""
    import datasets.config
    import huggingface_hub.constants

    with (_environment(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"),
          _attribute(huggingface_hub.constants, "HF_HUB_OFFLINE", True),
          _attribute(datasets.config, "HF_HUB_OFFLINE", True),
          _attribute(datasets.config, "HF_DATASETS_OFFLINE", True)):
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
    check_capability_split(split)
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
