"""Supervised fine-tuning baselines: next-token cross-entropy on answers.

``refusal_sft``: the safe stream's answers (P_s helpful answers, P_us refusals) plus
retain_coef * cross-entropy on retain conversations. ``sft_unsafe``: the harmful P_uu
answers alone; task arithmetic subtracts the task vector it learns.
"""
from __future__ import annotations

from .base import LossOutput, Method, Runner, register_method
from .likelihood import response_cross_entropy


@register_method("refusal_sft")  # its one setting is the shared loss.retain_coef
class RefusalSFT(Method):
    def __init__(self, config, num_blocks: int):
        super().__init__(config, num_blocks)
        self.streams = ("safe", "retain") if config.retain_coef else ("safe",)

    def loss(self, runner: Runner, batches: dict) -> LossOutput:
        answers = response_cross_entropy(runner, batches["safe"])
        terms = {"sft_ce": float(answers.detach())}
        total = answers
        if self.config.retain_coef:
            retain = response_cross_entropy(runner, batches["retain"])
            terms["retain_ce"] = float(retain.detach())
            total = total + self.config.retain_coef * retain
        return LossOutput(total, terms)


@register_method("sft_unsafe")
class UnsafeSFT(Method):
    streams = ("unsafe",)

    def loss(self, runner: Runner, batches: dict) -> LossOutput:
        answers = response_cross_entropy(runner, batches["unsafe"])
        return LossOutput(answers, {"sft_ce": float(answers.detach())})
