"""Circuit Breakers / representation rerouting (the CB code's loss).

L = breaker_weight * mean ReLU(cos(h'_l,t, h_l,t)) over harmful text (P_uu prompt and
answer) at the target layers + retain_weight * mean ||h'_l,t - h_l,t||_2 over benign text
(P_s, P_us and retain rows) at every hidden state up to the highest target layer (CB cuts
the model there, so those are its "all layers"). The weights follow CB's schedule over
optimizer steps t = 1..T: retain alpha * t/(2T), breaker alpha * (1 - t/(2T)). CB itself
counts micro-batches, so with gradient accumulation its schedule runs ahead of training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import Layers, MethodSettings, at_least
from .base import LossOutput, Method, Runner, register_method, scaled_layers
from .terms import representation_distance, rerouting_cosine

# CB's target layers 10 and 20, of 32 blocks.
CB_LAYERS = (10, 20)


def schedule(step: int, total_steps: int, alpha: float) -> tuple:
    """(retain weight, breaker weight) at optimizer step ``step`` of ``total_steps``."""
    progress = step / (2 * total_steps)
    return alpha * progress, alpha * (1 - progress)


@dataclass
class CircuitBreakerSettings(MethodSettings):
    """``loss.circuit_breaker``: CB's launch values."""

    # The schedule's scale: at optimizer step t of T the breaker weighs alpha * (1 - t/(2T))
    # and the retain term alpha * t/(2T) (CB's launch: 10 on Llama-3, 5 on Mistral).
    alpha: float = 10.0
    # Hidden states of the breaker term: "auto" is 10 and 20 of 32, scaled to depth; the
    # retain distance reads every hidden state up to the highest of them.
    target_layers: Layers = "auto"

    rules: ClassVar[dict] = {"alpha": at_least(0)}


@register_method("circuit_breaker", settings=CircuitBreakerSettings)
class CircuitBreaker(Method):
    streams = ("safe", "unsafe", "retain")

    def __init__(self, config, num_blocks: int):
        super().__init__(config, num_blocks)
        self.target_layers = scaled_layers(self.settings.target_layers, CB_LAYERS, num_blocks,
                                           "loss.circuit_breaker.target_layers")
        self.retain_layers = list(range(max(self.target_layers) + 1))
        # Before the first optimizer step: the schedule's start (all breaker, no retain).
        self.retain_weight, self.breaker_weight = schedule(0, 1, self.settings.alpha)

    @property
    def loss_layers(self) -> list:
        return self.target_layers

    def start_step(self, step: int, total_steps: int) -> None:
        self.retain_weight, self.breaker_weight = schedule(step, total_steps, self.settings.alpha)

    def loss(self, runner: Runner, batches: dict) -> LossOutput:
        harmful = batches["unsafe"]
        lora = runner.forward(harmful, layers=self.target_layers, token_mask=harmful.attention_mask)
        frozen = runner.forward(harmful, layers=self.target_layers, token_mask=harmful.attention_mask, frozen=True)
        breaker = rerouting_cosine(lora.hidden, frozen.hidden)

        new, old = [], []
        for name in ("safe", "retain"):
            batch = batches[name]
            new.append(runner.forward(batch, layers=self.retain_layers, token_mask=batch.attention_mask).hidden)
            old.append(runner.forward(batch, layers=self.retain_layers, token_mask=batch.attention_mask, frozen=True).hidden)
        retain = representation_distance(torch.cat(new, dim=1), torch.cat(old, dim=1))

        total = self.breaker_weight * breaker + self.retain_weight * retain
        terms = {"breaker_cosine": float(breaker.detach()), "retain_distance": float(retain.detach()),
                 "breaker_weight": self.breaker_weight, "retain_weight": self.retain_weight}
        return LossOutput(total, terms)
