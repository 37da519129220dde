"""Representation Bending.

L = safe_coef * d_s - unsafe_coef * d_u + cosine_coef * c + kl_coef * k + paired_coef * e
(the recipe: 0.5, 0.5, 0.1, 0.3, 0), plus the options beyond it (off in the recipe): a cap on
d_u, refusal cross-entropy on P_us, KL to the base on P_s answers, NPO on P_uu answers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch

from ..config import Layers, MethodSettings, above, at_least
from ..data.collate import LOSS_MODES, first_response_tokens, select_tokens
from ..models import resolve_layers
from .base import LossOutput, Method, Runner, register_method
from .terms import (cosine_spread, kl_divergence, next_token_targets, npo_loss, representation_distance,
                    sequence_log_probs, token_cross_entropy)

LossMode = Literal[LOSS_MODES]


@dataclass
class RepBendSettings(MethodSettings):
    """``loss.repbend``: the recipe's values by default; the options beyond it are off."""

    # Which tokens the two distance terms read.
    loss_mode: LossMode = "response_all"
    # Hidden-state indices (0 = embeddings, i = output of block i) for the unsafe and
    # cosine terms: "auto" scales the recipe's 20..30 of 32 to the model's depth.
    target_layers: Layers = "auto"
    safe_layers: Literal["all", "target"] = "all"
    safe_coef: float = 0.5
    unsafe_coef: float = 0.5
    cosine_coef: float = 0.1
    kl_coef: float = 0.3
    paired_coef: float = 0.0  # eta
    paired_positions: int = 20
    norm: Literal["l2", "squared"] = "l2"  # l2 (recipe) | squared (the paper's 1/2 ||.||^2)
    kl_temperature: float = 2.0
    kl_reduction: Literal["batchmean", "token_mean"] = "batchmean"  # batchmean: the recipe
    # unsafe (recipe) | unsafe_and_refusal (Algorithm 1)
    cosine_rows: Literal["unsafe", "unsafe_and_refusal"] = "unsafe"
    cosine_positions: LossMode = "prompt_last"
    # Options beyond the recipe (off there): a cap on the unsafe distance so it stops
    # pushing once far enough, and a refusal cross-entropy term on P_us responses.
    unsafe_distance_cap: Optional[float] = None
    refusal_ce_coef: float = 0.0
    # KL(base || LoRA) on P_s responses, the first token included: keeps the answer-or-
    # refuse choice on benign prompts where the base model had it.
    safe_kl_coef: float = 0.0
    # NPO on P_uu answers (the output-level twin of d_u, inverse temperature
    # unsafe_npo_beta): pushes their likelihood below the base model's, saturating once it
    # is (Zhang et al. 2024).
    unsafe_npo_coef: float = 0.0
    unsafe_npo_beta: float = 0.1
    # Leave P_us rows out of the safe distance (they are still used by other terms).
    safe_includes_refusals: bool = True

    rules: ClassVar[dict] = {
        **{name: at_least(0) for name in ("safe_coef", "unsafe_coef", "cosine_coef", "kl_coef", "paired_coef",
                                          "refusal_ce_coef", "safe_kl_coef", "unsafe_npo_coef")},
        "paired_positions": at_least(1), "kl_temperature": above(0), "unsafe_distance_cap": above(0),
        "unsafe_npo_beta": above(0),
    }


def within(union: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
    """Which of the tokens selected by ``union`` are also in ``subset`` (both [B, T])."""
    return subset[union]


@register_method("repbend", settings=RepBendSettings)
class RepBend(Method):
    def __init__(self, config, num_blocks: int):
        super().__init__(config, num_blocks)
        s = self.settings
        self.target_layers = resolve_layers(s.target_layers, num_blocks, "loss.repbend.target_layers")
        self.safe_layers = list(range(num_blocks + 1)) if s.safe_layers == "all" else self.target_layers
        streams = ["safe", "unsafe"]
        if s.kl_coef:
            streams.append("retain")
        if s.paired_coef:
            streams.append("pairs")
        self.streams = tuple(streams)

    @property
    def loss_layers(self) -> list:
        return self.target_layers

    def loss(self, runner: Runner, batches: dict) -> LossOutput:
        c = self.settings
        squared = c.norm == "squared"
        shards = runner.shards
        terms = {}

        # Safe rows (P_s and P_us): stay where the base model had them.
        safe = batches["safe"]
        distance_tokens = select_tokens(safe, c.loss_mode)
        if not c.safe_includes_refusals:
            distance_tokens = distance_tokens & ~safe.is_refusal.unsqueeze(1)
        refusal_cosine = c.cosine_rows == "unsafe_and_refusal"
        cosine_tokens = select_tokens(safe, c.cosine_positions) & safe.is_refusal.unsqueeze(1)
        safe_union = distance_tokens | cosine_tokens if refusal_cosine else distance_tokens
        # Logits: the refusal CE reads P_us responses, the safe KL P_s responses (from the
        # last prompt position on, where the model chooses between answering and refusing).
        ce_mask = kl_mask = torch.zeros_like(safe.attention_mask)
        if c.refusal_ce_coef:
            ce_mask, targets = next_token_targets(safe, safe.response_mask & safe.is_refusal.unsqueeze(1))
        if c.safe_kl_coef:
            kl_mask, _ = next_token_targets(safe, safe.response_mask & ~safe.is_refusal.unsqueeze(1))
        logit_union = ce_mask | kl_mask
        lora = runner.forward(safe, layers=self.safe_layers, token_mask=safe_union,
                              logit_mask=logit_union if c.refusal_ce_coef or c.safe_kl_coef else None)
        frozen = runner.forward(safe, layers=self.safe_layers, token_mask=distance_tokens, frozen=True,
                                logit_mask=kl_mask if c.safe_kl_coef else None)
        terms["safe_distance"] = representation_distance(
            lora.hidden[:, within(safe_union, distance_tokens)], frozen.hidden, squared, shards
        )
        if c.refusal_ce_coef:
            terms["refusal_ce"] = token_cross_entropy(lora.logits[within(logit_union, ce_mask)], targets, shards)
        if c.safe_kl_coef:
            answers = int((~safe.is_refusal).sum())
            terms["safe_kl"] = kl_divergence(
                frozen.logits, lora.logits[within(logit_union, kl_mask)], answers, c.kl_temperature, c.kl_reduction, shards
            )

        # Unsafe rows (P_uu): pushed away from the base model, pulled together.
        unsafe = batches["unsafe"]
        distance_tokens = select_tokens(unsafe, c.loss_mode)
        cosine_unsafe = select_tokens(unsafe, c.cosine_positions)
        lora_tokens = distance_tokens | cosine_unsafe
        npo_mask = None
        if c.unsafe_npo_coef:
            npo_mask, npo_targets = next_token_targets(unsafe, unsafe.response_mask)
        lora_u = runner.forward(unsafe, layers=self.target_layers, token_mask=lora_tokens, logit_mask=npo_mask)
        frozen_u = runner.forward(unsafe, layers=self.target_layers, token_mask=distance_tokens, frozen=True,
                                  logit_mask=npo_mask)
        if c.unsafe_npo_coef:
            rows = npo_mask.nonzero(as_tuple=True)[0]
            log_ratio = (sequence_log_probs(lora_u.logits, npo_targets, rows, len(unsafe))
                         - sequence_log_probs(frozen_u.logits, npo_targets, rows, len(unsafe)))
            terms["unsafe_npo"] = npo_loss(log_ratio, c.unsafe_npo_beta, shards)
        unsafe_distance = representation_distance(
            lora_u.hidden[:, within(lora_tokens, distance_tokens)], frozen_u.hidden, squared, shards
        )
        terms["unsafe_distance"] = unsafe_distance
        cosine_states = lora_u.hidden[:, within(lora_tokens, cosine_unsafe)]
        if refusal_cosine:
            layer_index = [self.safe_layers.index(layer) for layer in self.target_layers]
            refusal_states = lora.hidden[layer_index][:, within(safe_union, cosine_tokens)]
            cosine_states = torch.cat([cosine_states, refusal_states], dim=1)
        terms["cosine"] = cosine_spread(cosine_states, shards)

        # Retain rows: the output distribution on benign chat stays the base model's.
        if "retain" in batches and c.kl_coef:
            retain = batches["retain"]
            lora_r = runner.forward(retain, logit_mask=retain.attention_mask)
            frozen_r = runner.forward(retain, logit_mask=retain.attention_mask, frozen=True)
            terms["kl"] = kl_divergence(
                frozen_r.logits, lora_r.logits, len(retain), c.kl_temperature, c.kl_reduction, shards
            )

        # Paired term: the LoRA model on the harmful answer vs the base on the refusal.
        if "pair_unsafe" in batches and c.paired_coef:
            pair_u, pair_s = batches["pair_unsafe"], batches["pair_safe"]
            count = torch.minimum(pair_u.response_mask.sum(1), pair_s.response_mask.sum(1)).clamp(max=c.paired_positions)
            lora_p = runner.forward(pair_u, layers=self.target_layers, token_mask=first_response_tokens(pair_u, count))
            frozen_p = runner.forward(
                pair_s, layers=self.target_layers, token_mask=first_response_tokens(pair_s, count), frozen=True
            )
            terms["paired"] = representation_distance(lora_p.hidden, frozen_p.hidden, squared, shards)

        # The cap applies to the global distance, so the shares are summed first.
        capped_unsafe = unsafe_distance
        if c.unsafe_distance_cap is not None and shards.total(unsafe_distance) > c.unsafe_distance_cap:
            capped_unsafe = unsafe_distance.new_tensor(c.unsafe_distance_cap / shards.world)
        coefficients = {
            "safe_distance": c.safe_coef,
            "cosine": c.cosine_coef,
            "kl": c.kl_coef,
            "paired": c.paired_coef,
            "refusal_ce": c.refusal_ce_coef,
            "safe_kl": c.safe_kl_coef,
            "unsafe_npo": c.unsafe_npo_coef,
        }
        total = -c.unsafe_coef * capped_unsafe
        for name, value in terms.items():
            if name in coefficients:
                total = total + coefficients[name] * value
        logged = {name: float(value.detach()) for name, value in terms.items()}
        return LossOutput(total, logged)
