"""Task arithmetic's settings. It is a weight operation, not a loss: ``repbend compare``
trains a ``refusal_sft`` and a ``sft_unsafe`` run and saves theta0 + safe_weight * tau_safe
- unsafe_weight * tau_unsafe (:mod:`repbend.commands.task_arithmetic`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import MethodSettings, at_least
from ..errors import ConfigError
from .base import Method, register_method


@dataclass
class TaskArithmeticSettings(MethodSettings):
    """``loss.task_arithmetic``: the weights of the two task vectors in the merge."""

    safe_weight: float = 0.5
    unsafe_weight: float = 0.1  # subtracted

    rules: ClassVar[dict] = {"safe_weight": at_least(0), "unsafe_weight": at_least(0)}


@register_method("task_arithmetic", settings=TaskArithmeticSettings)
class TaskArithmetic(Method):
    def __init__(self, config, num_blocks: int):
        raise ConfigError("loss.method=task_arithmetic merges two trained runs' weights, it is not a loss to "
                          "train: run it with `repbend compare` (compare.methods)")
