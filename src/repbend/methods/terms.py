"""Loss terms as pure functions of hidden states, logits and masks (SPEC §3).

Shapes: ``hidden`` tensors are [L, N, D] (L layers, N selected tokens, D model width);
``logits`` are [N, V]. Everything is computed in float32 whatever the activations' dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def representation_distance(new: torch.Tensor, old: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Mean over (layer, token) of ||new - old||_2 (the recipe), or of its square.
    Zero when nothing is selected, so an empty group adds no loss and no NaN."""
    if new.numel() == 0:
        return new.new_zeros((), dtype=torch.float32)
    diff = new.float() - old.float()
    if squared:
        return diff.pow(2).sum(dim=-1).mean()
    # vector_norm's gradient at 0 is 0 (not NaN), and its value is exactly 0 there.
    return torch.linalg.vector_norm(diff, dim=-1).mean()


def cosine_spread(hidden: torch.Tensor) -> torch.Tensor:
    """Mean over layers of the mean over ordered pairs i != j of 1 - cos(h_i, h_j).
    Zero for identical directions, one for orthogonal ones; needs at least two rows."""
    layers, count, _ = hidden.shape
    if count < 2:
        return hidden.new_zeros((), dtype=torch.float32)
    unit = F.normalize(hidden.float(), dim=-1)
    cosine = unit @ unit.transpose(1, 2)  # [L, N, N]
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=hidden.device)
    return (1 - cosine[:, off_diagonal]).mean()


def kl_divergence(
    reference_logits: torch.Tensor,
    logits: torch.Tensor,
    num_sequences: int,
    temperature: float = 2.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """KL(reference || model) at ``temperature``, times T^2, on the selected tokens only
    (pad positions never reach here). ``batchmean``: summed over tokens and vocabulary,
    divided by the number of sequences (the recipe); ``token_mean``: per token."""
    if logits.shape[0] == 0:
        return logits.new_zeros((), dtype=torch.float32)
    reference = F.log_softmax(reference_logits.float() / temperature, dim=-1)
    current = F.log_softmax(logits.float() / temperature, dim=-1)
    total = F.kl_div(current, reference, reduction="sum", log_target=True) * temperature**2
    if reduction == "batchmean":
        return total / max(num_sequences, 1)
    if reduction == "token_mean":
        return total / logits.shape[0]
    raise ValueError(f"kl reduction {reduction!r} is not batchmean or token_mean")


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; ``logits`` [N, V] already aligned with ``targets`` [N]."""
    if logits.shape[0] == 0:
        return logits.new_zeros((), dtype=torch.float32)
    return F.cross_entropy(logits.float(), targets)
