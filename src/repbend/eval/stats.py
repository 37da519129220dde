"""Confidence intervals for evaluation figures (judge agreement, attack success rates)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def mean(values: np.ndarray) -> float:
    return float(np.mean(values))


def bootstrap_interval(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = mean,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (e.g. 0/1 outcomes):
    ``resamples`` draws with replacement, seeded, so the same input gives the same interval.
    An empty input gives ``(nan, nan)``."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return float("nan"), float("nan")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, data.size, size=(resamples, data.size))
    estimates = np.array([statistic(data[row]) for row in draws])
    tail = (1 - level) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    return float(low), float(high)


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates, every coordinate to be minimised
    (at least as low everywhere and different somewhere): the Pareto front."""
    return [i for i, mine in enumerate(points)
            if not any(all(o <= m for o, m in zip(other, mine)) and tuple(other) != tuple(mine) for other in points)]
