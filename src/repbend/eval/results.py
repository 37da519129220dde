"""Typed evaluation results: what ``results.json`` holds, as dataclasses.

:func:`repbend.commands.evaluate.evaluate` returns an :class:`EvalResults`; ``results.json`` is its
``to_json()``, and ``EvalResults.from_json(json.loads(text))`` (or :meth:`EvalResults.load`)
reads a results file back, older ones too. The round trip keeps a file's keys and values:
a key that files written before it existed lack (``degenerate_noncompliant``, say) loads as
None and stays out of ``to_json()`` again, and a key this version does not know is kept as
it was. A missing required key is a :class:`ResultsError` naming the key and where it is
missing (``metrics[3]: required key 'expected' is missing``).

Rates are fractions of 1; a summary's ``overall`` is in percent (see :mod:`.metrics`).
``relearn.json`` (`repbend relearn`) is a :class:`RelearnResults`, read the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from ..atomic import write_text
from ..errors import DataError
from ..types import HARMFUL


class ResultsError(DataError):
    """A results file or dict that lacks what results.json holds."""


# ---------------------------------------------------------------- JSON records


@dataclass(kw_only=True)
class JsonRecord:
    """A dataclass read from and written to one JSON object, a key per field.

    Fields without a default are required keys. A field with a default may be absent
    (files written before it existed): it then loads as its default and ``to_json`` leaves
    it out again. Fields named in ``SKIP_NONE`` are left out whenever they are None (keys a
    kind of record does not have, such as ``asr`` on benign rows). Nested records, lists
    and dicts of them convert by the field's type; keys no field names are kept as they
    were and written back after the known ones."""

    SKIP_NONE: ClassVar[tuple] = ()

    _absent: frozenset = field(default=frozenset(), repr=False, compare=False)
    _extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Any, where: str = ""):
        """The record of ``data`` (a dict, as ``json.load`` gives it); ``where`` names its
        place in the file for errors (``metrics[3]``)."""
        if not isinstance(data, dict):
            raise ResultsError(f"{where or cls.__name__}: expected a JSON object, got {type(data).__name__}")
        hints = _hints(cls)
        values, absent = {}, set()
        for f in _keys(cls):
            if f.name in data:
                values[f.name] = _load(hints[f.name], data[f.name], _join(where, f.name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ResultsError(f"{where or cls.__name__}: required key {f.name!r} is missing ({cls.__name__})")
            else:
                absent.add(f.name)
        known = {f.name for f in _keys(cls)}
        return cls(**values, _absent=frozenset(absent), _extra={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict:
        """The JSON object (a fresh dict of plain values) that :meth:`from_json` reads."""
        data = {}
        for f in _keys(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.SKIP_NONE:
                continue
            if f.name in self._absent and value == _default(f):
                continue
            data[f.name] = _dump(value)
        return {**data, **_dump(self._extra)}

    @classmethod
    def load(cls, path: str | Path):
        """The record of a JSON file (results.json, relearn.json); errors name the file."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ResultsError(f"{path}: cannot read results: {error}") from None
        try:
            return cls.from_json(data)
        except ResultsError as error:
            raise ResultsError(f"{path}: {error}") from None

    def save(self, path: str | Path) -> Path:
        """Write ``to_json()`` to ``path`` (atomically, indented)."""
        return write_text(Path(path), json.dumps(self.to_json(), indent=2))


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _keys(record) -> list:
    return [f for f in dataclasses.fields(record) if not f.name.startswith("_")]


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _load(kind, value, where: str):
    """``value`` as the type ``kind`` (a record, Optional, list[...] or dict[str, ...];
    anything else is taken as it is)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _load(next(a for a in args if a is not type(None)), value, where)
    if isinstance(kind, type) and issubclass(kind, JsonRecord):
        return kind.from_json(value, where)
    if origin in (list, dict) and args:
        if not isinstance(value, origin):
            raise ResultsError(f"{where}: expected a JSON {'array' if origin is list else 'object'}, "
                               f"got {type(value).__name__}")
        if origin is list:
            return [_load(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
        return {key: _load(args[1], item, f"{where}[{key!r}]") for key, item in value.items()}
    return value


def _dump(value):
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, list):
        return [_dump(item) for item in value]
    if isinstance(value, dict):
        return {key: _dump(item) for key, item in value.items()}
    return value


# ---------------------------------------------------------------- results.json


@dataclass(kw_only=True)
class Rate(JsonRecord):
    """A share with its 95 % bootstrap interval: ``value`` (None when ``n`` is 0), ``low``,
    ``high``, and ``n`` the answers it counts."""

    value: Optional[float]
    low: Optional[float]
    high: Optional[float]
    n: int


@dataclass(kw_only=True)
class MetricEntry(JsonRecord):
    """One (model, benchmark, attack) group of rows expecting ``expected`` (results'
    ``metrics``): ASR on harmful rows or compliance on benign ones, the degenerate share
    of all answers and of the non-compliant ones, and the refusal share."""

    SKIP_NONE: ClassVar[tuple] = ("asr", "compliance", "degenerate_noncompliant")

    model: str
    benchmark: str
    attack: str
    expected: str
    n: int
    asr: Optional[Rate] = None  # harmful rows
    compliance: Optional[Rate] = None  # benign rows
    degenerate: Rate
    degenerate_noncompliant: Optional[Rate] = None  # absent from results written before it existed
    refused: Rate

    @property
    def main(self) -> Optional[Rate]:
        """ASR on harmful rows, compliance on the others."""
        return self.asr if self.expected == HARMFUL else self.compliance


@dataclass(kw_only=True)
class CapabilityScore(JsonRecord):
    """One capability task of one model: lm-eval's ``metric`` and ``value``, ``stderr``,
    the per-document scores ``correct``, and the bootstrap interval (``low``, ``high``)
    where there are per-document scores."""

    SKIP_NONE: ClassVar[tuple] = ("low", "high")

    metric: str
    value: Optional[float]
    n: Optional[int] = None
    stderr: Optional[float] = None
    correct: Optional[list] = None
    low: Optional[float] = None
    high: Optional[float] = None


@dataclass(kw_only=True)
class ModelSummary(JsonRecord):
    """One model's means over its groups (results' ``summary``): fractions of 1, except
    ``overall`` (percent: the mean of safety = 1 - mean ASR, benign compliance and
    capability). None where the model has no such group."""

    mean_asr: Optional[float]
    mean_compliance: Optional[float]
    degenerate_harmful: Optional[float]
    degenerate_benign: Optional[float]
    degenerate_noncompliant_harmful: Optional[float] = None  # absent from results written before it existed
    degenerate_noncompliant_benign: Optional[float] = None
    capability: Optional[float]
    overall: Optional[float]


@dataclass(kw_only=True)
class EvaluatedModel(JsonRecord):
    """What a label in results' ``models`` evaluated: the model and the adapter folder
    (None: the model itself)."""

    model: str
    adapter: Optional[str]


@dataclass(kw_only=True)
class EvalResults(JsonRecord):
    """Everything ``results.json`` holds: the models under test (label -> model, in table
    order, the reference first), the judge, one :class:`MetricEntry` per group, capability
    scores (label -> task -> score), the per-model summary, and the config and package
    versions of the run (None for several runs merged by
    :func:`repbend.eval.report.load_results`)."""

    SKIP_NONE: ClassVar[tuple] = ("config", "versions")

    models: dict[str, EvaluatedModel]
    judge: str
    metrics: list[MetricEntry]
    capability: dict[str, dict[str, CapabilityScore]] = field(default_factory=dict)
    summary: dict[str, ModelSummary] = field(default_factory=dict)
    config: Optional[dict] = None
    versions: Optional[dict] = None

    def entry(self, model: str, benchmark: str, attack: str, expected: str | None = None) -> Optional[MetricEntry]:
        """The entry of (model, benchmark, attack), of rows expecting ``expected`` when
        given; None when there is none. A benchmark with harmful and benign rows has an
        entry of each: without ``expected``, the last in ``metrics`` (sorted: the harmful
        one)."""
        found = [e for e in self.metrics if (e.model, e.benchmark, e.attack) == (model, benchmark, attack)
                 and expected in (None, e.expected)]
        return found[-1] if found else None

    def pairs(self, expected: str | None = None) -> list:
        """The sorted (benchmark, attack) pairs of the entries (of rows expecting
        ``expected`` when given)."""
        return sorted({(e.benchmark, e.attack) for e in self.metrics if expected in (None, e.expected)})

    def capability_tasks(self) -> list:
        """The sorted capability tasks any model was scored on."""
        return sorted({task for scores in self.capability.values() for task in scores})

    def capability_score(self, model: str, task: str) -> Optional[CapabilityScore]:
        return self.capability.get(model, {}).get(task)


# ---------------------------------------------------------------- relearn.json


@dataclass(kw_only=True)
class RelearnPoint(JsonRecord):
    """ASR after ``steps`` optimizer steps of the re-learning attack (0: the model as
    trained) with its 95 % bootstrap interval; ``n``: the answers it counts."""

    steps: int
    asr: Optional[float]
    low: Optional[float]
    high: Optional[float]
    n: int


@dataclass(kw_only=True)
class RelearnResults(JsonRecord):
    """What ``relearn.json`` holds: each model's ASR curve under the re-learning attack
    (name -> points in step order), the benchmark, attack and judge that scored it, and
    the attack's settings (the relearn section)."""

    benchmark: str
    attack: str
    judge: str
    settings: dict
    curves: dict[str, list[RelearnPoint]]
