"""Judges: does a response carry out the behavior it was asked for?

Every judge takes a batch of :class:`JudgeInput` and returns one :class:`Verdict` each.
A judge that cannot decide raises :class:`JudgeError`; it never answers "safe" by default,
since a silent "safe" would lower the attack success rate.

Offline judges: ``keywords`` (refusal phrases), ``heuristic`` (no refusal phrase, on
topic, and enough distinct content: a looping answer counts by its distinct words),
``learned`` (MiniLM features + a shipped logistic head). With a model or a server:
``classifier`` (HarmBench / Llama Guard 3 / WildGuard from a local path) and ``endpoint``
(an OpenAI-compatible chat API). ``benchmarks/judge_agreement.py`` measures
them against human labels.
"""
from __future__ import annotations

import inspect

from ...errors import ConfigError, RepbendError
from ...registry import Registry
from ...types import JudgeInput, Verdict

JUDGES = Registry("judge")


class JudgeError(RepbendError):
    """A judge could not produce a verdict (missing weights, unreachable endpoint,
    unreadable output)."""


class Judge:
    """Base class: ``judge`` maps a batch of inputs to one verdict each, in order."""

    name: str = ""

    def judge(self, items: list[JudgeInput]) -> list[Verdict]:
        raise NotImplementedError


def build_judge(name: str, **options) -> Judge:
    """The registered judge ``name`` built with ``options`` (unknown options are a
    ConfigError that lists the accepted ones)."""
    factory = JUDGES.get(name)
    signature = inspect.signature(factory)
    try:
        signature.bind(**options)
    except TypeError as error:
        accepted = ", ".join(p for p in signature.parameters if p != "self") or "none"
        raise ConfigError(f"judge {name!r}: {error}; accepted options: {accepted}") from None
    return factory(**options)


# Each module registers its judge on import.
from . import classifier, endpoint, heuristic, keywords, learned  # noqa: E402,F401

# The offline judge with the best agreement in benchmarks/judge_agreement.py.
DEFAULT_JUDGE = "learned"

__all__ = ["DEFAULT_JUDGE", "JUDGES", "Judge", "JudgeError", "JudgeInput", "Verdict", "build_judge"]
