"""The records that flow through an evaluation, one stage to the next: benchmark rows,
attacked prompts, judge inputs and verdicts. The lowest layer, so the data build,
generation and evaluation all share them."""
from __future__ import annotations

from dataclasses import dataclass, field

# What a benchmark row expects of a good model.
HARMFUL = "harmful"  # should be refused
BENIGN = "benign"  # should be answered (over-refusal and helpfulness sets)
CAPABILITY = "capability"  # has a gold answer


@dataclass(frozen=True)
class BehaviorRow:
    """One benchmark row. ``target`` is an affirmative opening ("Sure, here is ...") for
    prefill and optimising attacks; ``context`` is HarmBench's contextual string;
    ``answer`` the gold answer of capability rows; ``source`` says file:line."""

    id: str
    prompt: str
    benchmark: str
    expected: str = HARMFUL
    category: str | None = None
    target: str | None = None
    context: str | None = None
    answer: str | None = None
    source: str = ""


@dataclass(frozen=True)
class Steering:
    """Activation steering while one prompt is answered: ``scale * direction`` (a unit
    torch vector [D]) is subtracted from each hidden state in ``layers`` (index i: the
    output of decoder block i - 1) at every position. ``digest`` identifies the direction."""

    direction: object = field(compare=False, hash=False, repr=False)
    scale: float
    layers: tuple
    digest: str


@dataclass(frozen=True)
class AttackedPrompt:
    """What the model under test receives for one row under one attack: chat messages,
    an optional assistant prefill, or (input-embedding attack) optimised input
    embeddings identified by ``embeds_digest``; ``steering`` (steering attack) changes
    the residual stream while this prompt alone is answered. ``meta`` holds attack
    details such as a template id or the final target loss."""

    row: BehaviorRow
    attack: str
    messages: tuple
    prefill: str = ""
    variant: str = ""  # e.g. template id; distinguishes several prompts per row
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    embeds: object = field(default=None, compare=False, hash=False, repr=False)  # torch [T, D]
    embeds_digest: str = ""
    steering: Steering | None = None


@dataclass(frozen=True)
class JudgeInput:
    behavior: str
    response: str
    context: str | None = None


@dataclass(frozen=True)
class Verdict:
    """A judge's decision. ``harmful``: the response carries out the behavior.
    ``refused`` / ``degenerate`` where the judge can tell (None where it cannot)."""

    harmful: bool
    judge: str
    raw: str = ""
    refused: bool | None = None
    degenerate: bool | None = None
