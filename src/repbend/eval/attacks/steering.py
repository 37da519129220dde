"""Activation steering along the refusal direction (Arditi et al. 2024, "Refusal in
language models is mediated by a single direction").

The direction r is the difference of the mean residual-stream activations at the last
prompt token (the end of the assistant header), harmful minus harmless prompts, at hidden
state ``layer``; r / |r| is the unit direction. The attacked prompt is the request as it
is; while the hf backend answers it, ``coefficient * r`` is subtracted from that hidden
state at every position, prompt and generated tokens alike: the paper's activation
addition with the sign that removes refusal (``steer: all`` subtracts it from every
hidden state; take a smaller coefficient then, the shifts add up).

The direction is the base model's by default (``direction_from: base``): an attacker with
the public weights only, whose direction transfers to a fine-tuned model or not.
``direction_from: tested`` reads it from the model under test: an attacker holding the
trained weights, who finds where refusal now lies. Its prompts are never the evaluated
ones: harmful rows of ``harmful_benchmark`` (AdvBench by default, as in the paper) and
benign rows of ``harmless_benchmark`` (AlpacaEval's everyday instructions, in place of the
paper's Alpaca), minus every prompt of the evaluated rows, a seeded sample of ``prompts``
each. The difference of means is saved under the cache folder, keyed by the model's
identity, the layer and the prompts, and reused.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from ...data.benchmarks import deduplicate, load_benchmark, sample_rows
from ...errors import ConfigError, RepbendError
from ...hidden import last_token_states
from ...methods.base import scaled_layers
from ...models import find_blocks
from ...types import BENIGN, HARMFUL, AttackedPrompt, BehaviorRow, Steering
from . import Attack, AttackContext, register
from .embedding import embeds_digest
from .simple import request_text, user_turn
from .whitebox import require_white_box, settings_from, weights_fingerprint

# The paper's layer for Llama-2-7B-chat (of 32 blocks), scaled by "auto".
PAPER_LAYER = (14,)
OPTIONS = "eval.attack_options.steering."


@dataclass(frozen=True)
class SteeringSettings:
    # The hidden state the direction is read at and steered (index i: the output of block
    # i - 1); "auto" scales the paper's 14 of 32 to the model's depth.
    layer: Union[int, Literal["auto"]] = "auto"
    coefficient: float = 1.0  # times r: 1 subtracts the difference of means itself
    steer: Literal["layer", "all"] = "layer"  # all: every hidden state 1..L
    direction_from: Literal["base", "tested"] = "base"
    prompts: int = 64  # harmful and harmless prompts each for the direction
    harmful_benchmark: str = "advbench_pkg"
    harmful_path: Optional[str] = None
    harmless_benchmark: str = "everyday_pkg"
    harmless_path: Optional[str] = None
    batch_size: int = 16  # prompts per forward pass (speed and memory only)


def direction_prompts(settings: SteeringSettings, rows: list[BehaviorRow], seed: int) -> tuple[list, list]:
    """The harmful and the harmless prompts of the direction: a seeded sample of each
    source's harmful (benign) rows whose prompt is none of ``rows``."""
    found = []
    for side, name, path, expected in (
        ("harmful", settings.harmful_benchmark, settings.harmful_path, HARMFUL),
        ("harmless", settings.harmless_benchmark, settings.harmless_path, BENIGN),
    ):
        kept = deduplicate([row for row in load_benchmark(name, path, seed=seed) if row.expected == expected], rows)
        if not kept:
            raise ConfigError(f"{OPTIONS}{side}_benchmark: {name!r} ({path or 'packaged'}) has no {expected} rows "
                              "besides the evaluated ones")
        found.append([request_text(row) for row in sample_rows(kept, settings.prompts, seed)])
    return found[0], found[1]


def mean_difference(model, tokenizer, harmful: list, harmless: list, layer: int, batch_size: int) -> torch.Tensor:
    """r [D]: the harmful prompts' mean last-token state minus the harmless ones'."""
    means = [last_token_states(model, tokenizer, prompts, [layer], batch_size)[layer].mean(0)
             for prompts in (harmful, harmless)]
    return means[0] - means[1]


def cached_difference(cache_dir, key: dict, compute) -> tuple[torch.Tensor, Path | None]:
    """``compute()``'s difference of means, read from (or written to) the file of ``key``
    under ``cache_dir/steering/``; the file also holds the key."""
    if cache_dir is None:
        return compute(), None
    blob = json.dumps(key, sort_keys=True)
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{key['model']}-layer{key['layer']}")[:80]
    path = Path(cache_dir) / "steering" / f"{readable}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.safetensors"
    if path.is_file():
        return load_file(str(path))["difference"], path
    difference = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"difference": difference.contiguous()}, str(tmp), metadata={"key": blob})
    os.replace(tmp, path)
    return difference, path


@register
class SteeringAttack(Attack):
    """The request as it is, answered with ``coefficient * r`` subtracted from the
    residual stream; meta has the layer, the scale |coefficient * r| and the direction."""

    name = "steering"

    def prepare(self, rows: list[BehaviorRow], context: AttackContext) -> list[AttackedPrompt]:
        require_white_box(context, self.name)
        settings = settings_from(SteeringSettings, context.options, self.name)
        if settings.prompts < 1 or settings.batch_size < 1:
            raise ConfigError(f"{OPTIONS}prompts and batch_size must be at least 1, got {settings.prompts} "
                              f"and {settings.batch_size}")
        num_blocks = find_blocks(context.model).count
        (layer,) = scaled_layers(settings.layer, PAPER_LAYER, num_blocks, f"{OPTIONS}layer")
        if layer == num_blocks:  # transformers returns the last hidden state after the final norm
            raise ConfigError(f"{OPTIONS}layer: {layer} is the last hidden state; use 1..{num_blocks - 1}")
        if settings.direction_from == "base":
            if context.base is None:
                raise ConfigError(f"{OPTIONS}direction_from=base needs the base model, which repbend eval passes; "
                                  "use direction_from=tested to read the model under test")
            identity, load = context.base.identity, context.base.load
        else:
            identity = context.options.get("identity") or weights_fingerprint(context.model)
            load = lambda: (context.model, context.tokenizer)  # noqa: E731
        harmful, harmless = direction_prompts(settings, rows, context.seed)
        key = {"model": identity, "layer": layer, "harmful": harmful, "harmless": harmless}
        difference, path = cached_difference(
            context.cache_dir, key, lambda: mean_difference(*load(), harmful, harmless, layer, settings.batch_size))
        norm = difference.norm().item()
        if norm == 0:
            raise RepbendError(f"steering: harmful and harmless prompts have the same mean at hidden state {layer}")
        direction = difference / norm
        layers = tuple(range(1, num_blocks + 1)) if settings.steer == "all" else (layer,)
        steering = Steering(direction, settings.coefficient * norm, layers, embeds_digest(direction))
        meta = {"layer": layer, "coefficient": settings.coefficient, "scale": steering.scale,
                "direction": steering.digest, "direction_from": settings.direction_from,
                "direction_file": None if path is None else str(path)}
        return [AttackedPrompt(row=row, attack=self.name, messages=user_turn(request_text(row)), meta=meta,
                               steering=steering) for row in rows]
