"""The Python API: the command line's ``train``, ``eval`` and ``run`` as functions.

Each function takes a :class:`~repbend.config.Config` (from :func:`load_config`) or what
the command line takes (a config file, or a shipped config by name such as
``"tiny-test"``) with ``key=value`` overrides, calls the command's entry point and returns
its result. ``examples/python_api.py`` trains and evaluates the tiny shipped config::

    import repbend

    config = repbend.load_config("tiny-test", ["output_dir=runs/api", "steps=2"])
    trained = repbend.train(config)           # TrainResult: adapter_dir, steps, last_metrics
    scores = repbend.evaluate(config, adapters=[trained.adapter_dir])   # EvalResult

These run in this process; training on several GPUs goes through
``repbend train CONFIG --num-processes N`` (``accelerate launch``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from .commands.evaluate import EvalResult
from .commands.evaluate import evaluate as _evaluate
from .commands.run import DEFAULT_CONFIG, RunResult
from .commands.run import run as _run
from .config import Config, apply_overrides, from_dict, load_config, to_dict
from .eval.results import EvalResults, MetricEntry, ModelSummary, Rate
from .training import TrainResult
from .training import train as _train

__all__ = ["load_config", "train", "evaluate", "run", "Config", "TrainResult", "EvalResult", "RunResult",
           "EvalResults", "MetricEntry", "ModelSummary", "Rate"]

ConfigLike = Union[Config, str, Path]


def _config(config: ConfigLike, overrides: Sequence[str]) -> Config:
    """``config`` with ``overrides`` applied; a path or name is read with :func:`load_config`."""
    if not isinstance(config, Config):
        return load_config(config, overrides)
    if not overrides:
        return config
    return from_dict(apply_overrides(to_dict(config), list(overrides)))


def train(config: ConfigLike, overrides: Sequence[str] = (), *, resume: bool = False, progress: bool = True,
          allow_changes: Iterable[str] = ()) -> TrainResult:
    """Train a LoRA adapter with the config's method (``repbend train``).

    Writes ``adapter/``, ``config.yaml`` and ``metrics.jsonl`` to the config's
    ``output_dir``. ``resume`` continues from the last checkpoint there (refused when a
    training setting changed, except the keys in ``allow_changes``: only ``train.steps``).
    """
    return _train(_config(config, overrides), resume=resume, progress=progress, allow_changes=frozenset(allow_changes))


def evaluate(config: ConfigLike, overrides: Sequence[str] = (), *, adapters: Optional[Iterable] = None,
             progress: bool = True) -> EvalResult:
    """Evaluate the base model and adapters under attacks (``repbend eval``).

    ``adapters`` (adapter or merged model folders), when given, replaces ``eval.adapters``.
    Writes ``results.json``, ``generations.jsonl`` and ``results.md`` to
    ``eval.output_dir`` (default ``OUTPUT_DIR/eval``); the result holds the same numbers.
    """
    config = _config(config, overrides)
    if adapters is not None:
        config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, adapters=[str(a) for a in adapters]))
    return _evaluate(config, progress=progress)


def run(config: Optional[ConfigLike] = None, overrides: Sequence[str] = (), *, progress: bool = True) -> RunResult:
    """The main job (``repbend run``): build the data, train, evaluate base vs trained and
    write ``report.md`` to ``output_dir``, each step reused when already done. Without
    ``config``: the shipped ``smollm2-cpu`` config (the embedded model on 2 CPU cores)."""
    return _run(_config(DEFAULT_CONFIG if config is None else config, overrides), progress=progress)
