"""Attacks: benchmark rows -> the prompts the model under test receives.

An attack is a class registered in :data:`ATTACKS` by its ``name``; options come in
``AttackContext.options``. Modules listed at the bottom register themselves on import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...registry import Registry
from ...types import AttackedPrompt, BehaviorRow

ATTACKS = Registry("attack")
# Options every attack receives besides its own settings (the model under test's name).
SHARED_OPTIONS = {"identity"}


@dataclass
class AttackContext:
    """What an attack may use: the model and tokenizer (white-box attacks), a cache
    folder for expensive intermediate results, a seed and attack-specific options.
    ``base`` is the base model of the one under test, for attacks that read it (the
    steering attack's refusal direction): an object with ``identity`` (a string naming
    its weights) and ``load()`` -> (model, tokenizer), which may load it anew."""

    model: object = None
    tokenizer: object = None
    cache_dir: str | Path | None = None
    seed: int = 0
    options: dict = field(default_factory=dict)
    base: object = None


class Attack:
    """Base class: ``prepare`` turns rows into attacked prompts (zero or more per row)."""

    name: str = ""

    def prepare(self, rows: list[BehaviorRow], context: AttackContext) -> list[AttackedPrompt]:
        raise NotImplementedError


def register(attack_class: type[Attack]) -> type[Attack]:
    """Class decorator: register an attack under its ``name``."""
    return ATTACKS.register(attack_class.name)(attack_class)


# Imported last: these modules register their attacks with the names above.
from . import embedding, gcg, simple, steering, templates  # noqa: E402,F401
