"""repbend: Representation Bending for LLM safety.

The Python API, the command line's ``train``, ``eval`` and ``run`` as functions (see
:mod:`repbend.api` and ``examples/python_api.py``)::

    import repbend

    config = repbend.load_config("tiny-test", ["output_dir=runs/api", "steps=2"])
    trained = repbend.train(config)           # TrainResult: adapter_dir, steps, last_metrics
    scores = repbend.evaluate(config, adapters=[trained.adapter_dir])   # EvalResult

``import repbend`` stays light: the functions and result types that need torch and
transformers are loaded at first use.
"""
from __future__ import annotations

import importlib

from .config import Config, load_config
from .errors import ConfigError, DataError, RepbendError, TrainingDiverged

__version__ = "0.1.0"

# Attributes loaded from repbend.api at first use (importing it takes seconds: torch).
_LAZY = ("train", "evaluate", "run", "TrainResult", "EvalResult", "RunResult", "EvalResults", "MetricEntry",
         "ModelSummary", "Rate")

__all__ = [
    "load_config", "train", "evaluate", "run",
    "Config", "TrainResult", "EvalResult", "RunResult", "EvalResults", "MetricEntry", "ModelSummary", "Rate",
    "RepbendError", "ConfigError", "DataError", "TrainingDiverged",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    api = importlib.import_module(f"{__name__}.api")
    globals().update({lazy: getattr(api, lazy) for lazy in _LAZY})
    return globals()[name]


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
