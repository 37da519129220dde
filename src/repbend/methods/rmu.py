"""RMU, representation misdirection for unlearning (the WMDP code's loss).

L = mean (h'_l - c u)^2 over harmful text (P_uu prompt and answer) + retain_coef *
mean (h'_l - h_l)^2 over retain text, at one hidden state l: the residual stream after the
block whose MLP RMU edits (its code hooks that block's output). u is a fixed random unit
vector, uniform on [0, 1)^D then normalised as RMU draws it, from a generator seeded with
``loss.rmu.seed``, so a resumed run gets the same one; c is the steering coefficient.
RMU updates MLP weights only: its config overlay puts LoRA on the MLP projections.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Union

import torch

from ..config import MethodSettings, above, at_least
from ..errors import ConfigError
from .base import LossOutput, Method, Runner, register_method, scaled_layers
from .terms import mean_squared_error

# RMU's launch edits module 7 of a 32-block model: hidden-state index 8.
RMU_LAYER = (8,)


def steering_direction(width: int, seed: int) -> torch.Tensor:
    """The fixed random unit direction [width]: a function of the seed alone."""
    generator = torch.Generator().manual_seed(seed)
    vector = torch.rand(width, generator=generator)
    return vector / vector.norm()


@dataclass
class RMUSettings(MethodSettings):
    """``loss.rmu``: the WMDP code's launch values."""

    # The hidden state: "auto" is index 8 of 32 (the output of RMU's module 7), scaled.
    layer: Union[int, Literal["auto"]] = "auto"
    steering_coef: float = 6.5  # c; relative to the layer's activation norm
    retain_coef: float = 1200.0
    seed: int = 0  # of the random direction u

    rules: ClassVar[dict] = {"steering_coef": above(0), "retain_coef": at_least(0), "seed": at_least(0)}


@register_method("rmu", settings=RMUSettings)
class RMU(Method):
    streams = ("unsafe", "retain")

    def __init__(self, config, num_blocks: int):
        super().__init__(config, num_blocks)
        self.layer = scaled_layers(self.settings.layer, RMU_LAYER, num_blocks, "loss.rmu.layer")
        if len(self.layer) != 1:
            raise ConfigError(f"loss.rmu.layer: RMU reads one hidden-state index, got {self.layer}")

    @property
    def loss_layers(self) -> list:
        return self.layer

    def loss(self, runner: Runner, batches: dict) -> LossOutput:
        c = self.settings
        harmful = batches["unsafe"]
        states = runner.forward(harmful, layers=self.layer, token_mask=harmful.attention_mask).hidden
        control = c.steering_coef * steering_direction(states.shape[-1], c.seed).to(states.device)
        forget = mean_squared_error(states, control)

        retain = batches["retain"]
        new = runner.forward(retain, layers=self.layer, token_mask=retain.attention_mask).hidden
        old = runner.forward(retain, layers=self.layer, token_mask=retain.attention_mask, frozen=True).hidden
        kept = mean_squared_error(new, old)

        total = forget + c.retain_coef * kept
        return LossOutput(total, {"forget_mse": float(forget.detach()), "retain_mse": float(kept.detach())})
