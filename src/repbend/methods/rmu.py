"""RMU, representation misdirection for unlearning (the WMDP code's loss).

L = mean (h'_l - c u)^2 over harmful text (P_uu prompt and answer) + rmu_retain_coef *
mean (h'_l - h_l)^2 over retain text, at one hidden state l: the residual stream after the
block whose MLP RMU edits (its code hooks that block's output). u is a fixed random unit
vector, uniform on [0, 1)^D then normalised as RMU draws it, from a generator seeded with
``loss.rmu_seed``, so a resumed run gets the same one; c is the steering coefficient.
RMU updates MLP weights only: its config overlay puts LoRA on the MLP projections.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import LossOutput, Method, Runner, register, scaled_layers
from .terms import mean_squared_error

# RMU's launch edits module 7 of a 32-block model: hidden-state index 8.
RMU_LAYER = (8,)


def steering_direction(width: int, seed: int) -> torch.Tensor:
    """The fixed random unit direction [width]: a function of the seed alone."""
    generator = torch.Generator().manual_seed(seed)
    vector = torch.rand(width, generator=generator)
    return vector / vector.norm()


@register
class RMU(Method):
    name = "rmu"
    streams = ("unsafe", "retain")

    def __init__(self, config, num_blocks: int):
        super().__init__(config, num_blocks)
        self.layer = scaled_layers(config.rmu_layer, RMU_LAYER, num_blocks, "loss.rmu_layer")
        if len(self.layer) != 1:
            raise ConfigError(f"loss.rmu_layer: RMU reads one hidden-state index, got {self.layer}")

    @property
    def loss_layers(self) -> list:
        return self.layer

    def loss(self, runner: Runner, batches: dict) -> LossOutput:
        c = self.config
        harmful = batches["unsafe"]
        states = runner.forward(harmful, layers=self.layer, token_mask=harmful.attention_mask).hidden
        control = c.rmu_steering_coef * steering_direction(states.shape[-1], c.rmu_seed).to(states.device)
        forget = mean_squared_error(states, control)

        retain = batches["retain"]
        new = runner.forward(retain, layers=self.layer, token_mask=retain.attention_mask).hidden
        old = runner.forward(retain, layers=self.layer, token_mask=retain.attention_mask, frozen=True).hidden
        kept = mean_squared_error(new, old)

        total = forget + c.rmu_retain_coef * kept
        return LossOutput(total, {"forget_mse": float(forget.detach()), "retain_mse": float(kept.detach())})
