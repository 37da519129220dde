"""The search space of `repbend tune`: ``tune.space`` parsed into dimensions (numeric
ranges or choices) over training settings, checked like a config file, and the points
tried first (``tune.enqueue``, then with ``tune.sampler: grid`` every combination)."""
from __future__ import annotations

import itertools
import json
import typing
from dataclasses import dataclass
from typing import Any, Optional

from ...config import (ALIASES, Config, TuneConfig, all_keys, current_keys, field_annotation, from_dict, set_value,
                       to_dict, unknown_key)
from ...errors import ConfigError

# Keys a trial may change: training settings only (the data build, model and evaluation
# are fixed for a study, so every trial is scored on the same prompts).
TUNABLE_SECTIONS = ("lora", "data", "loss", "train")
TUNABLE = tuple(f"{section}." for section in TUNABLE_SECTIONS)
FIXED = ("data.sources",)
SPEC_KEYS = {"low", "high", "log", "step", "choices", "factors"}


@dataclass(frozen=True)
class Dimension:
    """One searched key: a numeric range or a list of choices."""

    key: str
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    integer: bool = False
    choices: Optional[tuple] = None

    def labels(self) -> list:
        # Optuna's categorical values are scalars: lists (a layer band) travel as JSON text.
        return [c if c is None or isinstance(c, (bool, int, float, str)) else json.dumps(c) for c in self.choices]

    def label(self, value):
        """Optuna's parameter value for a config value."""
        return self.labels()[self.choices.index(value)] if self.choices is not None else value

    def value(self, label):
        """The config value for Optuna's parameter value."""
        return self.choices[self.labels().index(label)] if self.choices is not None else label

    def knows(self, label) -> bool:
        return self.choices is None or label in self.labels()

    def contains(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def suggest(self, trial):
        if self.choices is not None:
            return self.value(trial.suggest_categorical(self.key, self.labels()))
        if self.integer:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


def with_values(config: Config, values: dict) -> Config:
    """``config`` with dotted keys set to values, type-checked like a config file."""
    data = to_dict(config)
    for key, value in values.items():
        set_value(data, key, value)
    return from_dict(data)


def _numeric_type(key: str):
    """int or float when the config field at ``key`` holds a number (None allowed), else None."""
    annotation = field_annotation(key)
    options = typing.get_args(annotation) or (annotation,)
    return float if float in options else int if int in options else None


def parse_space(space: dict, config: Config) -> list:
    """The dimensions of ``tune.space``; unknown or untunable keys and malformed specs are
    errors that name the key."""
    valid = all_keys(Config)
    dimensions = []
    for raw, spec in space.items():
        key = ALIASES.get(raw, raw)
        where = f"tune.space.{key}"
        if any(target not in valid for target in current_keys(key)):  # a renamed key: its new keys
            raise ConfigError("tune.space: " + unknown_key(key, valid + list(ALIASES)))
        if not key.startswith(TUNABLE) or key in FIXED:
            raise ConfigError(f"{where}: not tunable; a study searches lora., data. (but not data.sources), "
                              "loss. and train. keys")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected {{low, high[, log | step]}}, {{choices: [...]}} or "
                              f"{{factors: [...]}}, got {spec!r}")
        unknown = sorted(set(spec) - SPEC_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown spec key(s) {', '.join(unknown)}; use low, high, log, step, "
                              "choices or factors")
        if "factors" in spec:
            dimensions.append(_choices(key, {"choices": _scaled(key, spec, config)}, config))
        elif "choices" in spec:
            dimensions.append(_choices(key, spec, config))
        else:
            dimensions.append(_range(key, spec, config))
    return dimensions


def _choices(key: str, spec: dict, config: Config) -> Dimension:
    where = f"tune.space.{key}"
    choices = spec["choices"]
    if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choices must be a non-empty list, alone")
    for choice in choices:
        with_values(config, {key: choice})  # a wrong type fails here, naming the key
    dimension = Dimension(key, choices=tuple(choices))
    if len(set(map(str, dimension.labels()))) < len(choices):
        raise ConfigError(f"{where}: choices repeat")
    return dimension


def _scaled(key: str, spec: dict, config: Config) -> list:
    """``{factors: [...]}``: the config's value at ``key`` times each factor (one grid, e.g.
    lr / 3, lr, lr x 3, for every method's own lr)."""
    where = f"tune.space.{key}"
    factors = spec["factors"]
    if set(spec) != {"factors"} or not isinstance(factors, list) or not factors:
        raise ConfigError(f"{where}: factors must be a non-empty list, alone")
    if any(isinstance(f, bool) or not isinstance(f, (int, float)) or f <= 0 for f in factors):
        raise ConfigError(f"{where}: factors must be positive numbers, got {factors!r}")
    value = to_dict(config)
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if _numeric_type(key) is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: factors scale a numeric setting the config sets, got {value!r}")
    if _numeric_type(key) is int:
        return [round(value * factor) for factor in factors]
    # Six significant digits drop float noise (1e-4 * 3 = 0.00030000000000000003) from the labels.
    return [float(f"{value * factor:.6g}") for factor in factors]


def _range(key: str, spec: dict, config: Config) -> Dimension:
    where = f"tune.space.{key}"
    kind = _numeric_type(key)
    if kind is None:
        raise ConfigError(f"{where}: not a numeric setting; give {{choices: [...]}}")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs low and high")
    numbers = {name: spec[name] for name in ("low", "high", "step") if spec.get(name) is not None}
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ConfigError(f"{where}: {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    low, high, step, use_log = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log", False))
    if not low < high:
        raise ConfigError(f"{where}: low must be below high, got {low} and {high}")
    if step is not None and (step <= 0 or use_log):
        raise ConfigError(f"{where}: step must be positive and cannot go with log")
    if use_log and low <= 0:
        raise ConfigError(f"{where}: log needs low > 0")
    with_values(config, {key: kind(low)})
    return Dimension(key, kind(low), kind(high), kind(step) if step is not None else None, use_log, kind is int)


def check_tune(tune: TuneConfig) -> None:
    """Settings a study cannot run with."""
    for name in ("trials", "n_jobs", "startup_trials", "harmful_prompts", "benign_prompts", "overrefusal_prompts",
                 "max_new_tokens"):
        if getattr(tune, name) < 1:
            raise ConfigError(f"tune.{name} must be at least 1, got {getattr(tune, name)}")
    if not tune.space:
        raise ConfigError("tune.space is empty: name at least one key to search")
    for name in ("min_helpful_ratio", "min_overrefusal_ratio", "max_benign_degenerate", "max_harmful_degenerate"):
        value = getattr(tune, name)
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"tune.{name} must be in [0, 1] or null, got {value}")
    if tune.intermediate_check_step is not None:
        if tune.intermediate_check_step < 1:
            raise ConfigError(f"tune.intermediate_check_step must be at least 1, got {tune.intermediate_check_step}")
        if tune.max_benign_degenerate is None:
            raise ConfigError("tune.intermediate_check_step needs tune.max_benign_degenerate (its bound)")


def grid_points(tune: TuneConfig, dimensions: list) -> list:
    """``tune.sampler: grid``: every combination of the dimensions' choices as Optuna
    parameters (none for the other samplers). Each is enqueued once, so a resumed study
    runs only the missing ones."""
    if tune.sampler != "grid":
        return []
    ranges = [d.key for d in dimensions if d.choices is None]
    if ranges:
        raise ConfigError(f"tune.sampler=grid needs choices or factors for every key; {', '.join(ranges)} "
                          "is a range")
    points = [dict(zip((d.key for d in dimensions), labels))
              for labels in itertools.product(*(d.labels() for d in dimensions))]
    if tune.trials != len(points):
        raise ConfigError(f"tune.sampler=grid: the space has {len(points)} points; set tune.trials={len(points)}")
    return points


def enqueued_points(tune: TuneConfig, dimensions: list) -> list:
    """``tune.enqueue`` as Optuna parameters, each value checked against its dimension."""
    by_key = {d.key: d for d in dimensions}
    points = []
    for index, point in enumerate(tune.enqueue):
        if not isinstance(point, dict):
            raise ConfigError(f"tune.enqueue[{index}]: expected a mapping of space keys to values, got {point!r}")
        params = {}
        for raw, value in point.items():
            key = ALIASES.get(raw, raw)
            if key not in by_key:
                raise ConfigError(f"tune.enqueue[{index}]: {key!r} is not in tune.space")
            if not by_key[key].contains(value):
                raise ConfigError(f"tune.enqueue[{index}]: {key}={value!r} lies outside tune.space.{key}")
            params[key] = by_key[key].label(value)
        points.append(params)
    return points
