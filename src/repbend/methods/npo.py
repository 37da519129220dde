"""NPO-RT: negative preference optimisation on harmful answers plus a retain term.

L = (2/beta) mean -log sigmoid(-beta (log p'(y|x) - log p(y|x))) over P_uu rows (y the
harmful answer, p the frozen model) + retain_coef * cross-entropy on retain rows. Unlike
plain gradient ascent the NPO term saturates once the answer is less likely than under
the reference, so it does not drive the model to collapse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import MethodSettings, above
from .base import LossOutput, Method, Runner, register_method
from .likelihood import response_cross_entropy, response_log_probs
from .terms import npo_loss


@dataclass
class NPOSettings(MethodSettings):
    """``loss.npo`` (the retain weight is loss.retain_coef, shared with refusal_sft)."""

    beta: float = 0.1  # inverse temperature of the log-ratio against the frozen model (NPO's default)

    rules: ClassVar[dict] = {"beta": above(0)}


@register_method("npo", settings=NPOSettings)
class NPO(Method):
    def __init__(self, config, num_blocks: int):
        super().__init__(config, num_blocks)
        self.streams = ("unsafe", "retain") if config.retain_coef else ("unsafe",)

    def loss(self, runner: Runner, batches: dict) -> LossOutput:
        c = self.config
        harmful = batches["unsafe"]
        log_ratio = response_log_probs(runner, harmful) - response_log_probs(runner, harmful, frozen=True)
        forget = npo_loss(log_ratio, self.settings.beta, runner.shards)
        terms = {"npo": float(forget.detach()), "log_ratio": float(log_ratio.detach().mean())}
        total = forget
        if c.retain_coef:
            retain = response_cross_entropy(runner, batches["retain"])
            terms["retain_ce"] = float(retain.detach())
            total = total + c.retain_coef * retain
        return LossOutput(total, terms)
