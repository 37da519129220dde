"""Written refusals for the P_us set of `repbend data`: one opening, then a reason, an
offer or both, composed deterministically per prompt. The sentences are package data
(``refusals.yaml`` beside this module), read once at import."""
from __future__ import annotations

import random
from pathlib import Path

import yaml

from .benchmarks import normalise_text

_TEXTS = yaml.safe_load(Path(__file__).with_name("refusals.yaml").read_text(encoding="utf-8"))
REFUSAL_OPENINGS = tuple(_TEXTS["openings"])
REFUSAL_REASONS = tuple(_TEXTS["reasons"])
REFUSAL_OFFERS = tuple(_TEXTS["offers"])


def written_refusal(prompt: str, seed: int = 0, variant: str = "") -> str:
    """A refusal composed for ``prompt``: the same prompt, seed and variant give the same
    text (a variant per pair, so two pairs of one prompt get different refusals)."""
    rng = random.Random(f"{seed}/refusal/{variant}/{normalise_text(prompt)}")
    shape = rng.randrange(3)  # 0: opening + reason, 1: opening + offer, 2: all three
    parts = [rng.choice(REFUSAL_OPENINGS)]
    if shape != 1:
        parts.append(rng.choice(REFUSAL_REASONS))
    if shape != 0:
        parts.append(rng.choice(REFUSAL_OFFERS))
    return " ".join(parts)
