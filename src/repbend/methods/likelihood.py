"""Response likelihoods through the runner, for the baselines that train on text
(npo, dpo, refusal_sft): logits come back only where a response token is predicted."""
from __future__ import annotations

import torch

from .base import Runner
from .terms import next_token_targets, sequence_log_probs, token_cross_entropy


def response_log_probs(runner: Runner, batch, frozen: bool = False) -> torch.Tensor:
    """[B]: each row's summed log-probability of its response tokens."""
    logit_mask, targets = next_token_targets(batch, batch.response_mask)
    logits = runner.forward(batch, logit_mask=logit_mask, frozen=frozen).logits
    return sequence_log_probs(logits, targets, logit_mask.nonzero(as_tuple=True)[0], len(batch))


def response_cross_entropy(runner: Runner, batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's response tokens (retain rows: all)."""
    logit_mask, targets = next_token_targets(batch, batch.response_mask)
    return token_cross_entropy(runner.forward(batch, logit_mask=logit_mask).logits, targets)
