"""Representation Bending.

L = safe_coef * d_s - unsafe_coef * d_u + cosine_coef * c + kl_coef * k + paired_coef * e
(the recipe: 0.5, 0.5, 0.1, 0.3, 0), plus the options beyond it (off in the recipe): a cap on
d_u, refusal cross-entropy on P_us, KL to the base on P_s answers, NPO on P_uu answers.
"""
from __future__ import annotations

import torch

from ..data.collate import LOSS_MODES, first_response_tokens, select_tokens
from ..errors import ConfigError
from ..models import resolve_layers
from .base import LossOutput, Method, Runner, register
from .terms import (cosine_spread, kl_divergence, npo_loss, representation_distance, sequence_log_probs,
                    token_cross_entropy)

CHOICES = {
    "loss_mode": LOSS_MODES,
    "cosine_positions": LOSS_MODES,
    "safe_layers": ("all", "target"),
    "norm": ("l2", "squared"),
    "kl_reduction": ("batchmean", "token_mean"),
    "cosine_rows": ("unsafe", "unsafe_and_refusal"),
}


def check_choices(config, choices: dict) -> None:
    for key, allowed in choices.items():
        value = getattr(config, key)
        if value not in allowed:
            raise ConfigError(f"loss.{key}: {value!r} is unknown; choose one of {', '.join(allowed)}")


def next_token_targets(batch, positions: torch.Tensor) -> tuple:
    """(logit positions, targets): logits at t predict the token at t + 1, for each
    t + 1 in ``positions`` [B, T]."""
    logit_mask = torch.zeros_like(positions)
    logit_mask[:, :-1] = positions[:, 1:]
    return logit_mask, batch.input_ids[:, 1:][positions[:, 1:]]


def within(union: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
    """Which of the tokens selected by ``union`` are also in ``subset`` (both [B, T])."""
    return subset[union]


@register
class RepBend(Method):
    name = "repbend"

    def __init__(self, config, num_blocks: int):
        super().__init__(config, num_blocks)
        check_choices(config, CHOICES)
        self.target_layers = resolve_layers(config.target_layers, num_blocks, "loss.target_layers")
        self.safe_layers = list(range(num_blocks + 1)) if config.safe_layers == "all" else self.target_layers
        streams = ["safe", "unsafe"]
        if config.kl_coef:
            streams.append("retain")
        if config.paired_coef:
            streams.append("pairs")
        self.streams = tuple(streams)

    @property
    def loss_layers(self) -> list:
        return self.target_layers

    def loss(self, runner: Runner, batches: dict) -> LossOutput:
        c = self.config
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
            terms["unsafe_npo"] = npo_loss(log_ratio, c.npo_beta, shards)
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
