"""DPO against harmful answers: for each WildJailbreak-style pair (one prompt
with a refusal and a harmful answer, sharing a pair_id), chosen = the refusal, rejected =
the harmful answer, reference = the same model with the adapter disabled.

L = mean -log sigmoid(beta ((log p'(y_c|x) - log p(y_c|x)) - (log p'(y_r|x) - log p(y_r|x)))).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import MethodSettings, above
from .base import LossOutput, Method, Runner, register_method
from .likelihood import response_log_probs
from .terms import dpo_loss


@dataclass
class DPOSettings(MethodSettings):
    """``loss.dpo``."""

    beta: float = 0.1  # inverse temperature of the log-ratios against the frozen model

    rules: ClassVar[dict] = {"beta": above(0)}


@register_method("dpo", settings=DPOSettings)
class DPO(Method):
    streams = ("pairs",)

    def loss(self, runner: Runner, batches: dict) -> LossOutput:
        chosen, rejected = batches["pair_safe"], batches["pair_unsafe"]
        chosen_ratio = response_log_probs(runner, chosen) - response_log_probs(runner, chosen, frozen=True)
        rejected_ratio = response_log_probs(runner, rejected) - response_log_probs(runner, rejected, frozen=True)
        total = dpo_loss(chosen_ratio, rejected_ratio, self.settings.beta)
        terms = {"dpo": float(total.detach()), "chosen_log_ratio": float(chosen_ratio.detach().mean()),
                 "rejected_log_ratio": float(rejected_ratio.detach().mean())}
        return LossOutput(total, terms)
